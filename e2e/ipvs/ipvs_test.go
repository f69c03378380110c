// Package ipvs_test runs svcproxy in IPVS mode inside the VM guest (the host
// kernel has no IPVS) against the host's control plane, and checks what the
// acceptance scenarios cannot: drift repair (a virtual server, a real
// server, a kube-ipvs0 address or an ipset's members removed by hand come
// back within syncPeriod) and graceful termination (a TCP connection
// through a real server whose endpoint goes away keeps working until it is
// closed; the real server is deleted afterwards).
package ipvs_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/vm"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

const (
	nodeName   = "test-node"
	syncPeriod = 5 * time.Second
	clusterIP  = "172.30.0.41"
)

func inGuest() bool { return os.Getenv("SVCPROXY_VM_GUEST") == "1" }

func proxyBin(t *testing.T) string {
	if p := os.Getenv("SVCPROXY_PROXY"); p != "" {
		return p
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		testenv.Missing(t, "%v", err)
	}
	return filepath.Join(root, "bin", "proxy")
}

// TestIPVSDriftAndGraceful boots one guest that runs TestGuestIPVS with
// the host's API server forwarded in.
func TestIPVSDriftAndGraceful(t *testing.T) {
	runGuest(t, "TestGuestIPVS")
}

// runGuest starts the control plane on the host, boots a guest with its
// API server forwarded in, and runs the guest test named guestTest there
// (the test binary is copied into the share, which is the guest's working
// directory). env is added to the guest's environment; the share is
// returned so the caller can read what the guest left in it.
func runGuest(t *testing.T, guestTest string, env ...string) (share string) {
	t.Helper()
	proxy := proxyBin(t)
	vm.RequireHost(t, proxy)
	return vm.RunGuestTest(t, vm.GuestTest{
		Name:  guestTest,
		Proxy: proxy,
		Env:   env,
	})
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// guest is the node of TestGuestIPVS: topology, API and the running proxy.
type guest struct {
	t          *testing.T
	ctx        context.Context
	api        *acceptance.API
	topo       *acceptance.Topology
	node       string
	dir        string
	kubeconfig string
	proc       *nsutil.Proc
	log        string // the running proxy's output
	runs       int
}

const foreignVS = "10.9.9.9:80"

// proxyConfig is the KubeProxyConfiguration the guest's proxy runs with.
func (g *guest) proxyConfig(mode string) []byte {
	cfg, err := yaml.Marshal(map[string]any{
		"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
		"mode": mode, "hostnameOverride": nodeName, "clusterCIDR": "10.0.0.0/8",
		"clientConnection":   map[string]any{"kubeconfig": g.kubeconfig},
		"metricsBindAddress": "127.0.0.1:10249",
		"ipvs":               map[string]any{"syncPeriod": syncPeriod.String(), "minSyncPeriod": "0s", "scheduler": "rr"},
		"iptables":           map[string]any{"syncPeriod": syncPeriod.String(), "minSyncPeriod": "0s"},
		"conntrack":          map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
	})
	if err != nil {
		g.t.Fatal(err)
	}
	return cfg
}

// startProxy runs the proxy in mode (from a new config file) and waits
// for its first sync.
func (g *guest) startProxy(mode string) {
	cfgPath := filepath.Join(g.dir, fmt.Sprintf("proxy-%d.yaml", g.runs+1))
	if err := os.WriteFile(cfgPath, g.proxyConfig(mode), 0o600); err != nil {
		g.t.Fatal(err)
	}
	g.launch(cfgPath, mode)
}

// launch starts the proxy with the config file cfgPath (always the same
// command line for the same file) and waits for its first sync. It returns
// when the process was started and when its first sync completed (from
// the proxy's own sync timestamp metric). mode only names the log file.
func (g *guest) launch(cfgPath, mode string) (started, synced time.Time) {
	t := g.t
	g.runs++
	log := filepath.Join(g.dir, fmt.Sprintf("proxy-%d-%s.log", g.runs, mode))
	var err error
	started = time.Now()
	g.proc, err = acceptance.StartProxy(proxyBin(t), g.node, cfgPath, nodeName, log)
	if err != nil {
		t.Fatal(err)
	}
	g.log = log
	if err := acceptance.WaitSynced(g.ctx, g.node, g.proc, started, 3*time.Minute); err != nil {
		b, _ := os.ReadFile(log)
		t.Fatalf("%s proxy: %v\n%s", mode, err, b)
	}
	synced = time.Now()
	if st, err := acceptance.ReadSyncState(g.ctx, g.node); err == nil && st.Last > 0 {
		if at := time.Unix(0, int64(st.Last*1e9)); at.After(started) && at.Before(synced) {
			synced = at
		}
	}
	t.Logf("%s proxy synced in %v", mode, synced.Sub(started).Round(100*time.Millisecond))
	return started, synced
}

func (g *guest) stopProxy() {
	if g.proc != nil {
		g.proc.Stop(5 * time.Second)
		g.proc = nil
	}
}

// TestGuestIPVS runs inside the guest (see TestIPVSDriftAndGraceful).
func TestGuestIPVS(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestIPVSDriftAndGraceful)")
	}
	ctx := context.Background()
	g := &guest{t: t, ctx: ctx}
	g.setup()
	t.Run("drift", g.drift)
	t.Run("graceful", g.graceful)
	t.Run("mode switch", g.modeSwitch)
}

// modeSwitch moves the node to iptables mode and back: each mode removes
// the other's state (virtual servers on kube-ipvs0 and NodePorts on node
// IPs, kube-ipvs0, ipsets, chains) and never someone else's.
func (g *guest) modeSwitch(t *testing.T) {
	pod := g.topo.Pod(netip.MustParseAddr("10.0.0.2")).Netns
	g.stopProxy()
	g.startProxy("iptables")
	g.waitFor("IPVS-mode state gone", 30*time.Second, func() bool {
		out, _ := nsutil.Exec(g.node, "ipvsadm", "-Ln").CombinedOutput()
		sets, _ := nsutil.Exec(g.node, "ipset", "list", "-n").CombinedOutput()
		_, noLink := nsutil.Exec(g.node, "ip", "link", "show", "kube-ipvs0").CombinedOutput()
		return strings.Count(string(out), "TCP ") == 1 && strings.Contains(string(out), foreignVS) &&
			!strings.Contains(string(sets), "KUBE-") && noLink != nil
	})
	if save := g.run("iptables-save"); strings.Contains(save, "KUBE-IPVS-FILTER") || strings.Contains(save, "KUBE-LOAD-BALANCER") {
		t.Errorf("IPVS-mode chains left in iptables mode:\n%s", save)
	}
	if b := dial(t, pod); b != "10.180.0.1" {
		t.Errorf("iptables mode: ClusterIP answered by %q", b)
	}
	g.stopProxy()
	g.startProxy("ipvs")
	if save := g.run("iptables-save"); strings.Contains(save, "KUBE-SVC-") || strings.Contains(save, "KUBE-SEP-") {
		t.Errorf("iptables-mode chains left in IPVS mode:\n%s", save)
	}
	out := g.run("ipvsadm", "-Ln")
	if !strings.Contains(out, foreignVS) || !strings.Contains(out, "192.168.0.2:30080") {
		t.Errorf("IPVS table after switching back:\n%s", out)
	}
	if b := dial(t, pod); b != "10.180.0.1" {
		t.Errorf("IPVS mode again: ClusterIP answered by %q", b)
	}
}

// setup prepares the node (setupNode) and starts the proxy in IPVS mode.
func (g *guest) setup() {
	g.setupNode()
	g.startProxy("ipvs")
	g.waitFor("the virtual server with both real servers", 30*time.Second, func() bool {
		out := g.ipvsadm()
		return strings.Contains(out, "10.180.0.1:80") && strings.Contains(out, "10.180.2.1:80")
	})
}

// setupNode creates the API objects (the NodePort Service ns1/web on
// clusterIP and NodePort 30080, endpoints 10.180.0.1 on this node and
// 10.180.2.1 on another), the topology (node IP 192.168.0.2, the endpoint
// pods with echo servers, client pod 10.0.0.2), the API relay and a
// foreign virtual server. No proxy runs yet.
func (g *guest) setupNode() {
	t := g.t
	kc := os.Getenv("KUBECONFIG")
	var err error
	if g.api, err = acceptance.APIFromKubeconfig(kc, strings.Split(os.Getenv("SERVICE_CIDRS"), ",")); err != nil {
		t.Fatal(err)
	}
	node := acceptance.Node{Name: nodeName, IPs: []string{"192.168.0.2"}, ClusterCIDR: "10.0.0.0/8"}
	svc := acceptance.Service{Namespace: "ns1", Name: "web", Type: "NodePort", ClusterIP: clusterIP,
		Ports: []acceptance.ServicePort{{Name: "p80", Protocol: "TCP", Port: 80, NodePort: 30080}}}
	if err := g.api.EnsureServiceCIDRs(g.ctx, nil, []acceptance.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if err := g.api.CreateNode(g.ctx, node, ""); err != nil {
		t.Fatal(err)
	}
	if err := g.api.ApplyService(g.ctx, svc); err != nil {
		t.Fatal(err)
	}
	g.applySlice("10.180.0.1", "10.180.2.1")

	dir := t.TempDir()
	g.topo, err = acceptance.NewTopology([]netip.Addr{netip.MustParseAddr("192.168.0.2")}, "", dir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.topo.Close)
	g.node = g.topo.Node
	for _, ep := range []struct {
		addr  string
		local bool
	}{{"10.180.0.1", true}, {"10.180.2.1", false}, {"10.0.0.2", true}} {
		p, err := g.topo.EnsurePod(netip.MustParseAddr(ep.addr), ep.local)
		if err != nil {
			t.Fatal(err)
		}
		if ep.addr != "10.0.0.2" {
			echo(t, p.Netns, ep.addr)
		}
	}
	relay, err := acceptance.StartRelay(g.node, kc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Close() })

	// Someone else's virtual server: no mode of ours may touch it.
	g.run("ipvsadm", "-A", "-t", foreignVS, "-s", "rr")
	g.dir, g.kubeconfig = dir, kc
	t.Cleanup(func() { g.stopProxy() })
}

func (g *guest) applySlice(addrs ...string) {
	g.t.Helper()
	var eps []acceptance.Endpoint
	for _, a := range addrs {
		e := acceptance.Endpoint{Addresses: []string{a}}
		if strings.HasPrefix(a, "10.180.0.") {
			e.NodeName = ptr.To(nodeName)
		} else {
			e.NodeName = ptr.To("node2")
		}
		eps = append(eps, e)
	}
	es := acceptance.EndpointSlice{Namespace: "ns1", Service: "web", Name: "web-1", AddressType: "IPv4",
		Ports: []acceptance.SlicePort{{Name: ptr.To("p80"), Protocol: "TCP", Port: ptr.To(int32(80))}}, Endpoints: eps}
	if err := g.api.ApplySlice(g.ctx, es); err != nil {
		g.t.Fatal(err)
	}
}

// run runs a command in the node namespace.
func (g *guest) run(name string, args ...string) string {
	out, err := nsutil.Exec(g.node, name, args...).CombinedOutput()
	if err != nil {
		g.t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}

func (g *guest) ipvsadm() string {
	out, _ := nsutil.Exec(g.node, "ipvsadm", "-Ln", "-t", clusterIP+":80").CombinedOutput()
	return string(out)
}

func (g *guest) waitFor(what string, timeout time.Duration, ok func() bool) time.Duration {
	g.t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > timeout {
			g.t.Fatalf("%s: not within %v\nipvsadm:\n%s", what, timeout, g.ipvsadm())
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	g.t.Logf("%s after %v", what, took.Round(100*time.Millisecond))
	return took
}

// drift removes pieces by hand and expects each back within syncPeriod
// (the daemon checks once per syncPeriod, so allow two, plus emulation),
// counted once in kubeproxy_sync_proxy_rules_drift_repairs_total with the
// piece's reason and logged once ("drifted"), not on every later check.
func (g *guest) drift(t *testing.T) {
	within := 3*syncPeriod + 5*time.Second
	natServices := func() string {
		out, _ := nsutil.Exec(g.node, "iptables", "-t", "nat", "-S", "KUBE-SERVICES").CombinedOutput()
		return string(out)
	}
	baseServices := natServices()
	if !strings.Contains(baseServices, "-A KUBE-SERVICES ") {
		t.Fatalf("nat KUBE-SERVICES has no rules:\n%s", baseServices)
	}
	var summary []string
	for _, tc := range []struct {
		name, reason string
		break_       func()
		back         func() bool
	}{
		{"virtual server", "ipvs", func() { g.run("ipvsadm", "-D", "-t", clusterIP+":80") },
			func() bool { return strings.Contains(g.ipvsadm(), "10.180.2.1:80") }},
		{"real server", "realserver", func() { g.run("ipvsadm", "-d", "-t", clusterIP+":80", "-r", "10.180.2.1:80") },
			func() bool { return strings.Contains(g.ipvsadm(), "10.180.2.1:80") }},
		{"kube-ipvs0 address", "address", func() { g.run("ip", "addr", "del", clusterIP+"/32", "dev", "kube-ipvs0") },
			func() bool {
				out, _ := nsutil.Exec(g.node, "ip", "-4", "-o", "addr", "show", "dev", "kube-ipvs0").CombinedOutput()
				return strings.Contains(string(out), clusterIP+"/32")
			}},
		{"ipset members", "ipset", func() { g.run("ipset", "flush", "KUBE-CLUSTER-IP") },
			func() bool {
				out, _ := nsutil.Exec(g.node, "ipset", "list", "KUBE-CLUSTER-IP").CombinedOutput()
				return strings.Contains(string(out), clusterIP+",tcp:80")
			}},
		{"nat KUBE-SERVICES rules", "iptables-rules", func() { g.run("iptables", "-t", "nat", "-F", "KUBE-SERVICES") },
			func() bool { return natServices() == baseServices }},
	} {
		m0, err := g.scrape()
		if err != nil {
			t.Fatal(err)
		}
		logs0 := len(g.logLines("drifted"))
		syncs0 := len(g.logLines("Synced"))
		broken := time.Now()
		tc.break_()
		took := g.waitFor(tc.name+" back", within, tc.back)
		// Let another drift check pass: the incident is counted and
		// logged once, not on every check.
		time.Sleep(syncPeriod + time.Second)
		m1, err := g.scrape()
		if err != nil {
			t.Fatal(err)
		}
		all := metricSum(m1, mDriftRe, ipv4) - metricSum(m0, mDriftRe, ipv4)
		byReason := metricSum(m1, mDriftRe, ipv4, `reason="`+tc.reason+`"`) - metricSum(m0, mDriftRe, ipv4, `reason="`+tc.reason+`"`)
		lines := g.logLines("drifted")[logs0:]
		t.Logf("%s: back after %v; drift repairs +%v (reason %s +%v); %d log line(s): %s",
			tc.name, ms(took), all, tc.reason, byReason, len(lines), strings.Join(lines, " | "))
		if took > syncPeriod+time.Second {
			// Slower than one period: show the syncs between (a long
			// sync delays the next check).
			t.Logf("%s: broken at %s; the proxy's syncs since:\n%s", tc.name, broken.Format("15:04:05.000"), strings.Join(g.logLines("Synced")[syncs0:], "\n"))
		}
		if all != 1 || byReason != 1 {
			t.Errorf("%s: drift repairs grew by %v (reason %q by %v), want 1", tc.name, all, tc.reason, byReason)
		}
		if len(lines) != 1 {
			t.Errorf("%s: %d \"drifted\" log lines, want 1", tc.name, len(lines))
		}
		// Traffic flows again.
		if got := dial(t, g.topo.Pod(netip.MustParseAddr("10.0.0.2")).Netns); got == "" {
			t.Errorf("after repairing the %s: no answer through %s", tc.name, clusterIP)
		}
		summary = append(summary, fmt.Sprintf("%s back in %v (+%v %s, %d line)", tc.name, ms(took), byReason, tc.reason, len(lines)))
	}
	t.Logf("RESULT drift repaired (syncPeriod %v): %s", syncPeriod, strings.Join(summary, "; "))
}

// graceful keeps a connection open through a real server whose endpoint is
// removed: it keeps working, new connections avoid the real server (weight
// 0), and once the connection is closed the real server goes.
func (g *guest) graceful(t *testing.T) {
	client := g.topo.Pod(netip.MustParseAddr("10.0.0.2")).Netns
	var conn net.Conn
	var backend string
	for i := 0; i < 10 && backend != "10.180.2.1"; i++ {
		if conn != nil {
			conn.Close()
		}
		conn, backend = open(t, client)
	}
	if backend != "10.180.2.1" {
		t.Fatalf("never reached the remote endpoint")
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	talk := func(when string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(conn, "ping\n"); err != nil {
			t.Fatalf("%s: write: %v", when, err)
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "10.180.2.1 ") {
			t.Fatalf("%s: reply %q, %v", when, line, err)
		}
	}
	talk("before the endpoint goes")

	g.applySlice("10.180.0.1")
	g.waitFor("the real server drains at weight 0", 60*time.Second, func() bool {
		for _, l := range strings.Split(g.ipvsadm(), "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[1] == "10.180.2.1:80" && f[3] == "0" {
				return true
			}
		}
		return false
	})
	// Several reap rounds pass with the connection open.
	for i := 0; i < 4; i++ {
		time.Sleep(2 * time.Second)
		talk(fmt.Sprintf("draining, round %d", i))
	}
	for i := 0; i < 5; i++ {
		if b := dial(t, client); b != "10.180.0.1" {
			t.Errorf("new connection while draining reached %q", b)
		}
	}
	if !strings.Contains(g.ipvsadm(), "10.180.2.1:80") {
		t.Fatalf("the real server went while its connection was open")
	}
	conn.Close()
	g.waitFor("the drained real server is deleted", 60*time.Second, func() bool {
		return !strings.Contains(g.ipvsadm(), "10.180.2.1:80")
	})
}

// echo serves TCP on addr:80 in ns: each line is answered with
// "<own ip> <line>".
func echo(t *testing.T, ns, addr string) {
	l, err := nsutil.Listen(ns, "tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s hello\n", addr)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "%s %s\n", addr, sc.Text())
				}
			}()
		}
	}()
}

// open connects from ns to the ClusterIP and returns the connection and
// the backend that greeted it.
func open(t *testing.T, ns string) (net.Conn, string) {
	t.Helper()
	var c net.Conn
	if err := nsutil.Do(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", clusterIP+":80", 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := readLine(c)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Time{})
	backend, _, _ := strings.Cut(line, " ")
	return c, backend
}

// readLine reads one line byte by byte, so nothing after it is buffered
// away from the caller's reader.
func readLine(c net.Conn) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, one); err != nil {
			return b.String(), err
		}
		if one[0] == '\n' {
			return b.String(), nil
		}
		b.WriteByte(one[0])
	}
}

// dial makes one short connection to the ClusterIP and returns the
// backend that answered ("" for none).
func dial(_ *testing.T, ns string) string {
	backend, _ := dialTo(ns, clusterIP+":80", 3*time.Second)
	return backend
}

// dialTo opens a new TCP connection from ns to dst, reads the backend's
// greeting and returns the backend's address.
func dialTo(ns, dst string, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := nsutil.Do(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst, timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := readLine(c)
	if err != nil {
		return "", fmt.Errorf("read greeting: %w", err)
	}
	backend, _, _ := strings.Cut(line, " ")
	return backend, nil
}
