// Package controlplane runs a real etcd and kube-apiserver inside a network
// namespace of their own, so tests get a genuine API server without touching
// the host's network. The calling process reaches it through a dialer that
// opens sockets inside that namespace; processes in other namespaces reach it
// over a veth made by LinkNetns.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// Fixed addresses of the API server. 169.254.250.1 lives on the loopback of
// the control plane namespace so it exists before any link is made.
const (
	APIIP   = "169.254.250.1"
	APIPort = 6443
)

// Options configures Start; zero values select the defaults the acceptance
// scenarios assume.
type Options struct {
	// BinDir holds etcd and kube-apiserver. Default: $SVCPROXY_BIN_DIR, else
	// <repo>/.cache/bin.
	BinDir string
	// ServiceCIDRs for --service-cluster-ip-range. Default 172.30.0.0/16 and
	// fd00:172:30::/112 (dual-stack).
	ServiceCIDRs []string
	// NodePortRange for --service-node-port-range. Default "3000-32767".
	NodePortRange string
	// Authorization selects the API server's authorizers: "" or
	// "AlwaysAllow" (the default) lets every authenticated client do
	// anything; "RBAC" runs --authorization-mode=Node,RBAC, so clients get
	// only what their roles grant. The admin token (RESTConfig, Client,
	// KubeconfigPath) is in group system:masters and keeps full access
	// either way.
	Authorization string
	// AllowPrivileged runs --allow-privileged=true, as kubeadm clusters do,
	// so workloads with privileged containers (kube-proxy's DaemonSet,
	// svcproxy's) are accepted. Default false, the API server's default.
	AllowPrivileged bool
	// Log receives the processes' output; default: files in the temp dir.
	Log func(format string, args ...any)
}

// ControlPlane is a running etcd + kube-apiserver pair.
type ControlPlane struct {
	Netns          string // the control plane's own netns, e.g. svcp-cp-<pid>
	APIAddress     string // 169.254.250.1:6443
	RESTConfig     *rest.Config
	Client         kubernetes.Interface
	KubeconfigPath string // for processes in a netns linked with LinkNetns
	ServiceCIDRs   []string
	Dir            string // temp dir with data, certs and logs

	token string
	procs []*nsutil.Proc

	mu    sync.Mutex
	links map[string]int // netns -> link index
	next  int
}

// DefaultServiceCIDRs is the dual-stack range pair used when none is given.
var DefaultServiceCIDRs = []string{"172.30.0.0/16", "fd00:172:30::/112"}

// RepoRoot finds the main module's root by walking up from the working
// directory to the go.mod of svcproxy.dev/svcproxy.
func RepoRoot() (string, error) { return testenv.RepoRoot() }

// DefaultBinDir returns $SVCPROXY_BIN_DIR or <repo>/.cache/bin.
func DefaultBinDir() string {
	if d := os.Getenv("SVCPROXY_BIN_DIR"); d != "" {
		return d
	}
	root, err := RepoRoot()
	if err != nil {
		return ".cache/bin"
	}
	return filepath.Join(root, ".cache", "bin")
}

// Start launches etcd and kube-apiserver in a fresh namespace and waits until
// the API server reports ready. On error everything started is removed.
func Start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	if opts.BinDir == "" {
		opts.BinDir = DefaultBinDir()
	}
	if len(opts.ServiceCIDRs) == 0 {
		opts.ServiceCIDRs = DefaultServiceCIDRs
	}
	if opts.NodePortRange == "" {
		opts.NodePortRange = "3000-32767"
	}
	authz, err := authorizationMode(opts.Authorization)
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("control plane binary missing (run e2e/build-tools.sh): %w", err)
		}
	}
	dir, err := nsutil.TempDir("cp")
	if err != nil {
		return nil, err
	}
	cp = &ControlPlane{
		Netns:        fmt.Sprintf("%scp-%d", nsutil.Prefix, os.Getpid()),
		APIAddress:   net.JoinHostPort(APIIP, fmt.Sprint(APIPort)),
		ServiceCIDRs: opts.ServiceCIDRs,
		Dir:          dir,
		links:        map[string]int{},
	}
	defer func() {
		if err != nil {
			_ = cp.Stop()
			cp = nil
		}
	}()
	if err := cp.setupNetns(); err != nil {
		return cp, err
	}
	if err := cp.writeFiles(); err != nil {
		return cp, err
	}
	if err := cp.startEtcd(opts.BinDir); err != nil {
		return cp, err
	}
	if err := cp.startAPIServer(opts, authz); err != nil {
		return cp, err
	}
	if err := cp.buildClients(); err != nil {
		return cp, err
	}
	if err := cp.waitReady(ctx, 60*time.Second); err != nil {
		return cp, err
	}
	return cp, nil
}

// setupNetns creates the namespace with the API address on its loopback,
// so the address is up before any namespace is linked.
func (c *ControlPlane) setupNetns() error {
	_ = nsutil.Delete(c.Netns) // a leftover of an earlier process with our pid
	if err := nsutil.Add(c.Netns); err != nil {
		return err
	}
	// This kernel has no dummy device type, so the address goes on lo.
	if err := nsutil.IP("-n", c.Netns, "addr", "add", APIIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	return nsutil.Sysctls(c.Netns, [][2]string{{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}})
}

// writeFiles writes the token file, the service-account key pair and the
// kubeconfig for linked namespaces.
func (c *ControlPlane) writeFiles() error {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	c.token = hex.EncodeToString(tok)
	tokens := fmt.Sprintf("%s,admin,admin,system:masters\n", c.token)
	if err := os.WriteFile(filepath.Join(c.Dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(c.Dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(c.Dir, "sa.pub"), "PUBLIC KEY", pub); err != nil {
		return err
	}
	c.KubeconfigPath = filepath.Join(c.Dir, "kubeconfig")
	return os.WriteFile(c.KubeconfigPath, []byte(c.kubeconfig()), 0o600)
}

func (c *ControlPlane) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: svcp
  cluster:
    server: https://%s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: svcp
  context:
    cluster: svcp
    user: admin
current-context: svcp
`, c.APIAddress, c.token)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// startEtcd runs etcd on the namespace's loopback.
func (c *ControlPlane) startEtcd(binDir string) error {
	return c.startProc("etcd", filepath.Join(binDir, "etcd"),
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379",
		"--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380",
		"--listen-metrics-urls", "",
		"--log-level", "warn",
		"--unsafe-no-fsync",
	)
}

// authorizationMode maps Options.Authorization to --authorization-mode.
func authorizationMode(a string) (string, error) {
	switch a {
	case "", "AlwaysAllow":
		return "AlwaysAllow", nil
	case "RBAC":
		return "Node,RBAC", nil
	}
	return "", fmt.Errorf("controlplane: unknown Authorization %q (want \"\", \"AlwaysAllow\" or \"RBAC\")", a)
}

func (c *ControlPlane) startAPIServer(opts Options, authz string) error {
	return c.startProc("kube-apiserver", filepath.Join(opts.BinDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--service-cluster-ip-range="+strings.Join(opts.ServiceCIDRs, ","),
		"--service-node-port-range="+opts.NodePortRange,
		"--secure-port="+fmt.Sprint(APIPort),
		"--bind-address="+APIIP,
		"--advertise-address="+APIIP,
		"--cert-dir="+filepath.Join(c.Dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(c.Dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(c.Dir, "sa.key"),
		"--authorization-mode="+authz,
		fmt.Sprintf("--allow-privileged=%t", opts.AllowPrivileged),
		"--token-auth-file="+filepath.Join(c.Dir, "tokens.csv"),
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--v=1",
	)
}

// startProc starts a program inside the namespace with its output in a log
// file of the temp dir.
func (c *ControlPlane) startProc(name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	p, err := nsutil.StartIn(c.Netns, logf, bin, args...)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

// DialContext opens a TCP connection from inside the control plane namespace.
// It is what lets the host-namespace test process talk to the API server.
func (c *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := nsutil.Do(c.Netns, func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

func (c *ControlPlane) buildClients() error {
	c.RESTConfig = &rest.Config{
		Host:            "https://" + c.APIAddress,
		BearerToken:     c.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            c.DialContext,
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
		// Deprecation warnings (externalIPs, PreferClose) are expected here.
		WarningHandler: rest.NoWarnings{},
	}
	cl, err := kubernetes.NewForConfig(c.RESTConfig)
	if err != nil {
		return err
	}
	c.Client = cl
	return nil
}

// waitReady polls /readyz until it answers 200, a process dies or the time
// is up.
func (c *ControlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	hc := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext:     c.DialContext,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		},
	}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		for _, p := range c.procs {
			if p.Exited() {
				return fmt.Errorf("%s exited during startup (%v); logs in %s", filepath.Base(p.Cmd.Args[4]), p.Err(), c.Dir)
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.APIAddress+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s (last: %s); logs in %s", timeout, last, c.Dir)
}

// LinkNetns connects namespace ns to the control plane with a veth so that
// processes in ns reach the API server at 169.254.250.1:6443. The first linked
// namespace gets 169.254.250.2 (the k-th, 169.254.250.(k+1)) as a link-scoped
// /32 with a host route to the API address, so the address is never picked as
// a source for other traffic (for instance by MASQUERADE). Idempotent per ns.
func (c *ControlPlane) LinkNetns(ns string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.links[ns]; ok && nsutil.IP("-n", ns, "link", "show", "cplink") == nil {
		return nil
	}
	k := c.freeLinkIndex()
	peerIP := fmt.Sprintf("169.254.250.%d", k+1)
	cpSide := fmt.Sprintf("cpl%d", k)
	steps := [][]string{
		{"-n", c.Netns, "link", "add", "name", cpSide, "type", "veth", "peer", "name", "cplink", "netns", ns},
		{"-n", c.Netns, "link", "set", cpSide, "up"},
		{"-n", c.Netns, "route", "replace", peerIP + "/32", "dev", cpSide},
		{"-n", ns, "addr", "add", peerIP + "/32", "scope", "link", "dev", "cplink"},
		{"-n", ns, "link", "set", "cplink", "up"},
		{"-n", ns, "route", "replace", APIIP + "/32", "dev", "cplink", "src", peerIP},
	}
	_ = nsutil.IP("-n", c.Netns, "link", "del", cpSide) // left from a namespace that was deleted
	for _, s := range steps {
		if err := nsutil.IP(s...); err != nil {
			_ = nsutil.IP("-n", c.Netns, "link", "del", cpSide)
			return err
		}
	}
	c.links[ns] = k
	return nil
}

// freeLinkIndex picks a link index whose cp-side veth is gone (its peer
// namespace was deleted) or never existed, cycling through 1..250.
func (c *ControlPlane) freeLinkIndex() int {
	for i := 0; i < 250; i++ {
		c.next = c.next%250 + 1
		if nsutil.IP("-n", c.Netns, "link", "show", fmt.Sprintf("cpl%d", c.next)) != nil {
			for ns, k := range c.links {
				if k == c.next {
					delete(c.links, ns)
				}
			}
			return c.next
		}
	}
	return c.next
}

// Stop kills etcd and kube-apiserver, deletes the namespace and the temp
// dir. Safe to call more than once.
func (c *ControlPlane) Stop() error {
	var errs []error
	// The API server first, so it does not log etcd errors while stopping.
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Stop(5 * time.Second)
	}
	c.procs = nil
	if c.Netns != "" {
		if err := nsutil.Delete(c.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Dir != "" && os.Getenv("SVCPROXY_KEEP_TMP") == "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
