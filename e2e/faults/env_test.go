package faults

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// Addresses every bed uses (the acceptance examples' plan).
const (
	nodeIP1     = "192.168.0.2" // primary node IP
	nodeIP2     = "192.168.1.2" // secondary node IP
	clusterCIDR = "10.0.0.0/8"
	clientIP    = "10.0.0.2" // a pod on the node, the usual client
	syncPeriod  = 5 * time.Second
)

// Backends: remote pods (behind the router) and local ones (on the node).
var (
	backendA = netip.MustParseAddr("10.180.0.1")
	backendB = netip.MustParseAddr("10.180.0.2")
	backendC = netip.MustParseAddr("10.180.0.3")
	backendL = netip.MustParseAddr("10.180.2.1") // local
)

// suite is what the tests of this package share: one control plane (started
// on first use), the responder binary and the proxy binary.
var suite struct {
	mu        sync.Mutex
	cp        *controlplane.ControlPlane
	dir       string
	responder string
	buildErr  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopSharedControlPlane()
	if suite.dir != "" && os.Getenv("SVCPROXY_KEEP_TMP") == "" {
		_ = os.RemoveAll(suite.dir)
	}
	os.Exit(code)
}

// requireRoot skips unless the test can create namespaces and find the
// binaries it drives.
func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("fault tests start a real control plane and proxy; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: network namespaces, iptables")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "binary %s missing in %s: run e2e/build-tools.sh (or set SVCPROXY_BIN_DIR)", b, controlplane.DefaultBinDir())
		}
	}
	for _, b := range []string{"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "iptables-legacy", "iptables-legacy-restore", "flock", "ss", "conntrack"} {
		if _, err := exec.LookPath(b); err != nil {
			testenv.Missing(t, "%s not installed (apt-get install iptables util-linux iproute2 conntrack)", b)
		}
	}
	controlplane.ProxyBinary(t)
}

func suiteDir(t *testing.T) string {
	t.Helper()
	if suite.dir == "" {
		d, err := nsutil.TempDir("faults")
		if err != nil {
			t.Fatal(err)
		}
		suite.dir = d
		for _, err := range nsutil.RemoveStale() {
			t.Log("stale cleanup:", err)
		}
	}
	return suite.dir
}

// responderBinary builds e2e/cmd/responder once.
func responderBinary(t *testing.T) string {
	t.Helper()
	suite.mu.Lock()
	defer suite.mu.Unlock()
	if suite.responder == "" && suite.buildErr == nil {
		root, err := controlplane.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(suiteDir(t), "responder")
		cmd := exec.Command("go", "build", "-o", out, "./e2e/cmd/responder")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			suite.buildErr = fmt.Errorf("build responder: %v: %s", err, b)
		} else {
			suite.responder = out
		}
	}
	if suite.buildErr != nil {
		t.Fatal(suite.buildErr)
	}
	return suite.responder
}

// sharedControlPlane returns the package's control plane, starting it on
// first use (and again after stopSharedControlPlane).
func sharedControlPlane(t *testing.T) *controlplane.ControlPlane {
	t.Helper()
	suite.mu.Lock()
	defer suite.mu.Unlock()
	suiteDir(t)
	if suite.cp == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		cp, err := controlplane.Start(ctx, controlplane.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("control plane started in %s", time.Since(start).Round(time.Millisecond))
		suite.cp = cp
	}
	return suite.cp
}

// stopSharedControlPlane stops the shared control plane, e.g. so that the
// acceptance runner can start its own (the control plane's netns name is
// per process).
func stopSharedControlPlane() {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	if suite.cp != nil {
		_ = suite.cp.Stop()
		suite.cp = nil
	}
}

// bed is one test's world: a node namespace with the proxy, pods, a router,
// and API objects in a Kubernetes namespace of its own.
type bed struct {
	t        *testing.T
	ctx      context.Context
	cp       *controlplane.ControlPlane
	api      *acceptance.API
	topo     *acceptance.Topology
	dir      string
	nodeName string
	ns       string
	proxyBin string
	cfgPath  string
	env      []string
	iptables string // "iptables-nft" or "iptables-legacy"

	proc     *nsutil.Proc
	logPaths []string
	clients  map[netip.Addr]acceptance.Client
}

type bedOptions struct {
	// Config edits the KubeProxyConfiguration (as a generic map) after the
	// defaults of acceptance.ProxyConfig and syncPeriod 5s are applied.
	Config func(cfg map[string]any)
	// Env is added to the proxy's environment.
	Env []string
	// Legacy makes the proxy pick the iptables-legacy backend (through
	// the kubelet's hint chain in the node namespace).
	Legacy bool
	// LocalhostNodePorts sets iptables.localhostNodePorts (nil: default).
	LocalhostNodePorts *bool
}

// newBed builds the topology, the Node object and the proxy config; the
// proxy is started by startProxy. name is short and DNS-safe.
func newBed(t *testing.T, name string, opts bedOptions) *bed {
	t.Helper()
	requireRoot(t)
	cp := sharedControlPlane(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp(suiteDir(t), name+"-")
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{
		t: t, ctx: ctx, cp: cp, dir: dir,
		nodeName: "node-" + name, ns: "faults-" + name,
		proxyBin: controlplane.ProxyBinary(t), env: opts.Env, iptables: "iptables-nft",
		clients: map[netip.Addr]acceptance.Client{},
	}
	if opts.Legacy {
		b.iptables = "iptables-legacy"
	}
	if b.api, err = acceptance.NewAPI(cp.Client, cp.ServiceCIDRs); err != nil {
		t.Fatal(err)
	}
	node := acceptance.Node{Name: b.nodeName, IPs: []string{nodeIP1, nodeIP2}, ClusterCIDR: clusterCIDR}
	if err := b.api.CreateNode(ctx, node, "IPv4"); err != nil {
		t.Fatal(err)
	}
	b.topo, err = acceptance.NewTopology([]netip.Addr{netip.MustParseAddr(nodeIP1), netip.MustParseAddr(nodeIP2)}, responderBinary(t), dir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.teardown)
	if err := cp.LinkNetns(b.topo.Node); err != nil {
		t.Fatal(err)
	}
	if opts.Legacy {
		b.mustRun("iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
	}
	sc := &acceptance.Scenario{Node: node, Config: acceptance.Config{LocalhostNodePorts: opts.LocalhostNodePorts}}
	raw, err := acceptance.ProxyConfig(sc, "iptables", cp.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	ipt := cfg["iptables"].(map[string]any)
	ipt["syncPeriod"] = syncPeriod.String()
	ipt["minSyncPeriod"] = "1s"
	if opts.Config != nil {
		opts.Config(cfg)
	}
	if raw, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	b.cfgPath = filepath.Join(dir, "proxy-config.yaml")
	if err := os.WriteFile(b.cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *bed) teardown() {
	if b.proc != nil {
		b.proc.Stop(5 * time.Second)
	}
	if b.t.Failed() {
		log := b.proxyLog()
		if len(log) > 20000 {
			log = "...\n" + log[len(log)-20000:]
		}
		b.t.Logf("proxy log (%s):\n%s", b.dir, log)
	}
	if b.topo != nil {
		b.topo.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.api.Reset(ctx); err != nil {
		b.t.Logf("API reset: %v", err)
	}
}

// startProxy starts the proxy in the node namespace (with the bed's extra
// environment; its output goes to a new log file per start) and waits for
// its first sync.
func (b *bed) startProxy() {
	b.t.Helper()
	start := time.Now()
	logPath := filepath.Join(b.dir, fmt.Sprintf("proxy-%d.log", len(b.logPaths)+1))
	logf, err := os.Create(logPath)
	if err != nil {
		b.t.Fatal(err)
	}
	defer logf.Close()
	cmd := nsutil.Exec(b.topo.Node, b.proxyBin, "--config", b.cfgPath, "--hostname-override", b.nodeName, "-v=2")
	cmd.Env = append(os.Environ(), b.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if b.proc, err = nsutil.Start(cmd); err != nil {
		b.t.Fatal(err)
	}
	b.logPaths = append(b.logPaths, logPath)
	b.waitSynced(start)
	b.t.Logf("proxy started and synced in %s", time.Since(start).Round(time.Millisecond))
}

// waitSynced waits until the proxy has synced everything written since.
func (b *bed) waitSynced(since time.Time) {
	b.t.Helper()
	if err := acceptance.WaitSynced(b.ctx, b.topo.Node, b.proc, since, 60*time.Second); err != nil {
		b.t.Fatal(err)
	}
}

// proxyLog returns every log of this bed's proxy runs, in order.
func (b *bed) proxyLog() string {
	var sb strings.Builder
	for _, p := range b.logPaths {
		data, _ := os.ReadFile(p)
		sb.Write(data)
	}
	return sb.String()
}

// logLines returns the proxy log lines containing every one of subs.
func (b *bed) logLines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(b.proxyLog(), "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				ok = false
				break
			}
		}
		if ok && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// --- pods, services, traffic ---------------------------------------------

// backend creates a pod (local: on the node) running the responder on the
// given TCP ports.
func (b *bed) backend(addr netip.Addr, local bool, ports ...uint16) *acceptance.Pod {
	b.t.Helper()
	p, err := b.topo.EnsurePod(addr, local)
	if err != nil {
		b.t.Fatal(err)
	}
	p.Ports.TCP = ports
	if err := b.topo.StartResponder(p); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// client returns a client pod on the node with addr.
func (b *bed) client(addr string) acceptance.Client {
	b.t.Helper()
	a := netip.MustParseAddr(addr)
	if c, ok := b.clients[a]; ok {
		return c
	}
	p, err := b.topo.EnsurePod(a, true)
	if err != nil {
		b.t.Fatal(err)
	}
	c := acceptance.Client{Netns: p.Netns, Bind: a}
	b.clients[a] = c
	return c
}

type port struct {
	name string
	port int32
}

// service writes a ClusterIP Service whose ports target the same number.
func (b *bed) service(name, clusterIP string, ports ...port) {
	b.t.Helper()
	svc := acceptance.Service{Namespace: b.ns, Name: name, ClusterIP: clusterIP}
	for _, p := range ports {
		svc.Ports = append(svc.Ports, acceptance.ServicePort{Name: p.name, Protocol: "TCP", Port: p.port, TargetPort: intstr.FromInt32(p.port)})
	}
	if err := b.api.ApplyService(b.ctx, svc); err != nil {
		b.t.Fatal(err)
	}
}

// slice writes an IPv4 EndpointSlice; endpoints on 10.180.2.0/24 are on
// this node.
func (b *bed) slice(svc, name string, ports []port, eps ...netip.Addr) {
	b.t.Helper()
	if err := b.api.ApplySlice(b.ctx, b.sliceObj(svc, name, ports, eps...)); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) sliceObj(svc, name string, ports []port, eps ...netip.Addr) acceptance.EndpointSlice {
	es := acceptance.EndpointSlice{Namespace: b.ns, Service: svc, Name: name, AddressType: "IPv4"}
	for _, p := range ports {
		es.Ports = append(es.Ports, acceptance.SlicePort{Name: ptr.To(p.name), Protocol: "TCP", Port: ptr.To(p.port)})
	}
	local := netip.MustParsePrefix("10.180.2.0/24")
	for _, ep := range eps {
		e := acceptance.Endpoint{Addresses: []string{ep.String()}}
		if local.Contains(ep) {
			e.NodeName = ptr.To(b.nodeName)
		}
		es.Endpoints = append(es.Endpoints, e)
	}
	return es
}

// attempt opens one new TCP connection and returns what answered.
func attempt(c acceptance.Client, dst string, timeout time.Duration) acceptance.Attempt {
	return c.Attempt("TCP", netip.MustParseAddrPort(dst), timeout)
}

// webOnTwoBackends starts the proxy with Service web (vip, TCP 80) on
// backends A and B, checks both answer, and returns the usual client.
func (b *bed) webOnTwoBackends(vip string) acceptance.Client {
	b.t.Helper()
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA, backendB)
	b.startProxy()
	b.expectBackends(c, vip+":80", 20, backendA, backendB)
	return c
}

// expectBackends makes n connections and fails unless each reached one of
// want (and, with all, every one of want was seen).
func (b *bed) expectBackends(c acceptance.Client, dst string, n int, want ...netip.Addr) {
	b.t.Helper()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		a := attempt(c, dst, 2*time.Second)
		if a.Class != acceptance.ClassBackend {
			b.t.Fatalf("%s -> %s: attempt %d got %s (%s), want one of %v", c.Bind, dst, i+1, a.Label(), a.Detail, want)
		}
		ok := false
		for _, w := range want {
			ok = ok || a.Backend.Addr() == w
		}
		if !ok {
			b.t.Fatalf("%s -> %s: reached %s, want one of %v", c.Bind, dst, a.Backend, want)
		}
		seen[a.Backend.Addr()]++
	}
	if len(want) > 1 && len(seen) < len(want) && n >= 10*len(want) {
		b.t.Fatalf("%s -> %s: saw only %v of %v in %d connections", c.Bind, dst, seen, want, n)
	}
}

// waitBackend polls until a new connection to dst reaches want, and
// returns when it first did.
func (b *bed) waitBackend(c acceptance.Client, dst string, want netip.Addr, timeout time.Duration) time.Time {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	var last acceptance.Attempt
	for time.Now().Before(deadline) {
		at := time.Now()
		last = attempt(c, dst, 300*time.Millisecond)
		if last.Class == acceptance.ClassBackend && last.Backend.Addr() == want {
			return at
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("%s -> %s never reached %s within %s (last: %s %s)", c.Bind, dst, want, timeout, last.Label(), last.Detail)
	return time.Time{}
}

// loop opens new connections to dst one after the other until stopped and
// records every outcome.
type loop struct {
	mu       sync.Mutex
	results  []loopResult
	stop     chan struct{}
	done     chan struct{}
	interval time.Duration
}

type loopResult struct {
	at    time.Time
	ok    bool
	label string
}

func startLoop(c acceptance.Client, dst string, interval time.Duration) *loop {
	l := &loop{stop: make(chan struct{}), done: make(chan struct{}), interval: interval}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			start := time.Now()
			a := attempt(c, dst, time.Second)
			r := loopResult{at: start, ok: a.Class == acceptance.ClassBackend, label: a.Label()}
			if !r.ok && a.Detail != "" {
				r.label += " (" + a.Detail + ")"
			}
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
			select {
			case <-l.stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return l
}

// Stop ends the loop and returns its results.
func (l *loop) Stop() []loopResult {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]loopResult(nil), l.results...)
}

// summarize counts outcomes in [from, to) and describes the failures.
func summarize(rs []loopResult, from, to time.Time) (total, failed int, first, last time.Time, labels map[string]int) {
	labels = map[string]int{}
	for _, r := range rs {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		total++
		labels[r.label]++
		if !r.ok {
			if failed == 0 {
				first = r.at
			}
			last = r.at
			failed++
		}
	}
	return
}

// --- node namespace: commands, metrics, health ------------------------------

// run runs a command in the node namespace and returns its combined output.
func (b *bed) run(name string, args ...string) (string, error) {
	cmd := nsutil.Exec(b.topo.Node, name, args...)
	cmd.Env = append(os.Environ(), b.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (b *bed) mustRun(name string, args ...string) string {
	b.t.Helper()
	out, err := b.run(name, args...)
	if err != nil {
		b.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// rules returns `iptables -t table -S chain` in the node namespace.
func (b *bed) rules(table, chain string) (string, error) {
	return b.run(b.iptables, "-w", "5", "-t", table, "-S", chain)
}

var svcChainRE = regexp.MustCompile(`-j (KUBE-SVC-[A-Z0-9]+)`)

// svcChain returns the KUBE-SVC chain KUBE-SERVICES sends clusterIP:port to.
func (b *bed) svcChain(clusterIP string, port int) string {
	b.t.Helper()
	out := b.mustRun(b.iptables, "-t", "nat", "-S", "KUBE-SERVICES")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "-d "+clusterIP+"/32") && strings.Contains(l, "--dport "+strconv.Itoa(port)) {
			if m := svcChainRE.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
	}
	b.t.Fatalf("no KUBE-SVC chain for %s:%d in:\n%s", clusterIP, port, out)
	return ""
}

func countRules(s string) int {
	return strings.Count(s, "\n-A ") + boolInt(strings.HasPrefix(s, "-A "))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nodeHTTP returns an HTTP client whose connections open inside the node
// namespace.
func (b *bed) nodeHTTP(timeout time.Duration) *http.Client {
	return nsutil.HTTPClient(b.topo.Node, timeout)
}

// metrics scrapes the proxy's /metrics: series ("name{labels}") -> value.
func (b *bed) metrics() (map[string]float64, error) {
	resp, err := b.nodeHTTP(3 * time.Second).Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body), nil
}

func parseMetrics(r io.Reader) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// metric sums the series of name whose labels contain every one of labels
// (e.g. `reason="rules"`).
func metric(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for series, v := range m {
		n, l, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, want := range labels {
			ok = ok && strings.Contains(l, want)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

func (b *bed) mustMetrics() map[string]float64 {
	b.t.Helper()
	m, err := b.metrics()
	if err != nil {
		b.t.Fatal(err)
	}
	return m
}

// v4 selects the IPv4 family's series (the proxy also runs an IPv6 loop).
const v4 = `ip_family="IPv4"`

const (
	mFullCount      = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
	mPartialCount   = "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
	mDrift          = "kubeproxy_sync_proxy_rules_drift_repairs_total"
	mSyncFailures   = "kubeproxy_sync_proxy_rules_sync_failures_total"
	mRestoreFail    = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
	mPartialRestore = "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"
)

// healthz returns the status code of /healthz on the node's loopback (0 when
// nothing answered).
func (b *bed) healthz() int {
	resp, err := b.nodeHTTP(2 * time.Second).Get("http://127.0.0.1:10256/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// poller samples something every interval until stopped.
type poller[T any] struct {
	mu      sync.Mutex
	samples []sample[T]
	stop    chan struct{}
	done    chan struct{}
}

type sample[T any] struct {
	at time.Time
	v  T
}

func startPoller[T any](interval time.Duration, f func() T) *poller[T] {
	p := &poller[T]{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			s := sample[T]{at: time.Now()}
			s.v = f()
			p.mu.Lock()
			p.samples = append(p.samples, s)
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return p
}

func (p *poller[T]) Stop() []sample[T] {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]sample[T](nil), p.samples...)
}

// echoServer listens on ap inside the pod's namespace and answers every line
// with "<own addr> <line>", for as long as the connection lasts.
func echoServer(t *testing.T, pod *acceptance.Pod, p uint16) {
	t.Helper()
	ln, err := nsutil.Listen(pod.Netns, "tcp", netip.AddrPortFrom(pod.Addr, p).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", c.LocalAddr(), line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// dialFrom opens a TCP connection from the client's namespace and address.
func dialFrom(c acceptance.Client, dst string) (net.Conn, error) {
	var conn net.Conn
	err := nsutil.Do(c.Netns, func() error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: c.Bind.AsSlice()}}
		conn, err = d.Dial("tcp", dst)
		return err
	})
	return conn, err
}

// exchange writes msg and reads the echoed line.
func exchange(conn net.Conn, msg string) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(conn, msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(strings.TrimSpace(line), msg) {
		return line, errors.New("unexpected echo " + line)
	}
	return strings.TrimSpace(line), nil
}

// within fails unless d <= limit, and logs d either way.
func within(t *testing.T, what string, d, limit time.Duration) {
	t.Helper()
	t.Logf("%s: %s (limit %s)", what, d.Round(10*time.Millisecond), limit)
	if d > limit {
		t.Errorf("%s took %s, more than %s", what, d.Round(10*time.Millisecond), limit)
	}
}

// record prints a result line that README.md's table is built from.
func record(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("RESULT %s: "+format, append([]any{t.Name()}, args...)...)
}
