package acceptance

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// clientFromKubeconfig builds a client for an API server that is already
// running (the host's, reached from the IPVS guest).
func clientFromKubeconfig(path string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return kubernetes.NewForConfig(cfg)
}

// APIFromKubeconfig is NewAPI for an API server that is already running,
// reached through a kubeconfig (a guest test's, from the host), with its
// service CIDRs.
func APIFromKubeconfig(path string, ranges []string) (*API, error) {
	c, err := clientFromKubeconfig(path)
	if err != nil {
		return nil, err
	}
	return NewAPI(c, ranges)
}

// apiServerAddr returns the host:port of a kubeconfig's server.
func apiServerAddr(kubeconfig string) (netip.AddrPort, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return netip.AddrPort{}, err
	}
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(u.Host)
}

// apiRelay lets processes in a namespace reach the API server at its own
// address: it listens there inside the namespace and forwards each
// connection from the runner's namespace, where the API server is
// reachable (in the IPVS guest, through QEMU's forward to the host). TLS
// passes through untouched, so the kubeconfig works unchanged.
type apiRelay struct {
	l     net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
}

// startRelay puts the API address on ns's loopback (link scope, so it is
// never picked as a source for other traffic) and starts relaying.
func startRelay(ns, kubeconfig string) (*apiRelay, error) {
	api, err := apiServerAddr(kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := nsutil.IP("-n", ns, "addr", "add", hostPrefix(api.Addr()).String(), "scope", "link", "dev", "lo"); err != nil {
		return nil, err
	}
	rl := &apiRelay{conns: map[net.Conn]bool{}}
	if err := nsutil.Do(ns, func() error {
		var err error
		rl.l, err = net.Listen("tcp", api.String())
		return err
	}); err != nil {
		return nil, err
	}
	go rl.serve(api.String())
	return rl, nil
}

func (rl *apiRelay) serve(target string) {
	for {
		c, err := rl.l.Accept()
		if err != nil {
			return
		}
		go rl.pipe(c, target)
	}
}

func (rl *apiRelay) track(c net.Conn, on bool) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.conns == nil {
		return false
	}
	if on {
		rl.conns[c] = true
	} else {
		delete(rl.conns, c)
	}
	return true
}

func (rl *apiRelay) pipe(in net.Conn, target string) {
	defer in.Close()
	out, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer out.Close()
	if !rl.track(in, true) {
		return
	}
	defer rl.track(in, false)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
	<-done
}

// Close stops listening and cuts every relayed connection.
func (rl *apiRelay) Close() {
	_ = rl.l.Close()
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for c := range rl.conns {
		_ = c.Close()
	}
	rl.conns = nil
}

// StartRelay lets processes in namespace ns reach the API server of
// kubeconfig at its own address, through this process (see apiRelay). The
// caller closes it.
func StartRelay(ns, kubeconfig string) (io.Closer, error) {
	rl, err := startRelay(ns, kubeconfig)
	if err != nil {
		return nil, err
	}
	return closer{rl.Close}, nil
}

type closer struct{ f func() }

func (c closer) Close() error { c.f(); return nil }
