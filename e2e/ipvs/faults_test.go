package ipvs_test

// Fault tests in IPVS mode (issue #9), in one guest: the proxy SIGKILLed
// and restarted under live traffic, and the API server stopped for 60 s
// and started again. The guest asks the host to stop and start the API
// server (and to write into etcd) over a control forward: a guestfwd to
// a unix socket the host test serves. Drift (virtual server, real server,
// kube-ipvs0 address, ipset members, helper chains) is TestGuestIPVS's
// drift subtest in ipvs_test.go. e2e/faults has the iptables-mode
// versions; e2e/faults/README.md has the results of both.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/vm"
)

const (
	// faultCtlAddr is where the guest reaches the host's control socket.
	faultCtlAddr = "169.254.250.1:7000"
	// faultOutage is how long the API server stays down.
	faultOutage = 60 * time.Second
	// faultRelistLimit bounds the informers' re-list after the outage:
	// client-go's reflectors back off up to 30 s with jitter (see
	// e2e/faults/README.md), so up to about two minutes.
	faultRelistLimit = 150 * time.Second
	// laterIP is the ClusterIP of the Service written right after the API
	// server is back.
	laterIP = "172.30.0.42"
	// faultAttemptTimeout bounds one attempt of the fault tests' client
	// loops. It allows one SYN retransmission (after 1 s): under emulation
	// on a shared host an attempt sometimes takes over a second with the
	// kernel state unchanged. Attempts slower than slowAttempt are counted
	// and reported apart.
	faultAttemptTimeout = 3 * time.Second
	slowAttempt         = time.Second
)

// Metric names (kube-proxy's).
const (
	mFull    = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
	mPartial = "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
	mDriftRe = "kubeproxy_sync_proxy_rules_drift_repairs_total"
	mFailed  = "kubeproxy_sync_proxy_rules_sync_failures_total"
	ipv4     = `ip_family="IPv4"`
)

// TestIPVSFaults boots one guest that runs TestGuestIPVSFaults, with the
// host's API server forwarded in and a control forward through which the
// guest stops and starts that API server.
func TestIPVSFaults(t *testing.T) {
	out := runFaultsGuest(t)
	var results []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "RESULT "); i >= 0 {
			results = append(results, strings.TrimSpace(l[i:]))
		}
	}
	t.Logf("results:\n%s", strings.Join(results, "\n"))
}

// runFaultsGuest is runGuest with the control forward: it starts the
// control plane on the host and a control server for it, boots the guest
// and runs TestGuestIPVSFaults there. It returns the guest's output.
func runFaultsGuest(t *testing.T) string {
	t.Helper()
	proxy := proxyBin(t)
	vm.RequireHost(t, proxy)
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()

	sockDir, err := nsutil.TempDir("ipvsctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	hc, err := startHostControl(cp, filepath.Join(sockDir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.close()

	share := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, self, filepath.Join(share, "ipvs.test"), 0o755)
	copyFile(t, cp.KubeconfigPath, filepath.Join(share, "kubeconfig"), 0o644)
	// A copy, not the repository's binary: the guest's view of the host's
	// / is cached, and a rebuild of bin/proxy on the host during the run
	// would leave the guest exec-ing a mix of old and new pages (seen:
	// "invalid pc-encoded table" crashes).
	copyFile(t, proxy, filepath.Join(share, "proxy"), 0o755)
	proxy = filepath.Join(share, "proxy")
	res, err := vm.Run(ctx, vm.RunOptions{
		Command: []string{"./ipvs.test", "-test.run", "^TestGuestIPVSFaults$", "-test.v", "-test.count=1", "-test.timeout=12m"},
		Env: []string{"KUBECONFIG=" + filepath.Join(share, "kubeconfig"), "SVCPROXY_PROXY=" + proxy,
			"SERVICE_CIDRS=" + strings.Join(cp.ServiceCIDRs, ",")},
		Dir:        share,
		ShareDir:   share,
		ShareCache: true,
		Network:    vm.APINetwork,
		Forwards:   []vm.Forward{vm.APIForward(cp), vm.ForwardTCP(faultCtlAddr, "unix:"+hc.path)},
		Timeout:    13 * time.Minute,
	})
	t.Logf("guest: boot %v, command %v, exit %d", res.Boot.Round(time.Millisecond), res.CommandTime.Round(time.Millisecond), res.ExitCode)
	t.Logf("guest output:\n%s", res.Output)
	for _, l := range hc.log() {
		t.Logf("host control: %s", l)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("guest test failed (exit %d); setup log:\n%s", res.ExitCode, res.SetupLog)
	}
	return res.Output
}

// ctlRequest is one request of the guest to the host: "stop-apiserver",
// "start-apiserver" or "etcd-put" (Value stored under Key straight in
// etcd, and etcd's history compacted past it when Compact is set).
type ctlRequest struct {
	Op      string          `json:"op"`
	Key     string          `json:"key,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
	Compact bool            `json:"compact,omitempty"`
}

type ctlReply struct {
	Err      string `json:"err,omitempty"`
	Revision int64  `json:"revision,omitempty"`
	// Took is how long the host took to carry the request out.
	Took time.Duration `json:"took"`
}

// hostControl serves the guest's requests on a unix socket (one JSON
// request and one JSON reply per connection).
type hostControl struct {
	cp   *controlplane.ControlPlane
	path string
	ln   net.Listener
	mu   sync.Mutex
	down bool
	logs []string
	wg   sync.WaitGroup
}

func startHostControl(cp *controlplane.ControlPlane, path string) (*hostControl, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	hc := &hostControl{cp: cp, path: path, ln: ln}
	hc.wg.Add(1)
	go func() {
		defer hc.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hc.serve(c)
		}
	}()
	return hc, nil
}

func (hc *hostControl) logf(format string, args ...any) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	hc.logs = append(hc.logs, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
}

func (hc *hostControl) log() []string {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	return append([]string(nil), hc.logs...)
}

// serve handles one connection; requests are handled one at a time.
func (hc *hostControl) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
	var req ctlRequest
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		hc.logf("bad request: %v", err)
		return
	}
	start := time.Now()
	var rep ctlReply
	err := hc.do(req, &rep)
	rep.Took = time.Since(start)
	if err != nil {
		rep.Err = err.Error()
	}
	hc.logf("%s %s: took %v, revision %d, err %v", req.Op, req.Key, rep.Took.Round(time.Millisecond), rep.Revision, err)
	_ = json.NewEncoder(c).Encode(rep)
}

func (hc *hostControl) do(req ctlRequest, rep *ctlReply) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch req.Op {
	case "stop-apiserver":
		hc.down = true
		return hc.cp.StopAPIServer()
	case "start-apiserver":
		if err := hc.cp.StartAPIServer(ctx); err != nil {
			return err
		}
		hc.down = false
		return nil
	case "etcd-put":
		rev, err := hc.cp.EtcdPut(ctx, req.Key, req.Value)
		if err != nil {
			return err
		}
		rep.Revision = rev
		if req.Compact {
			return hc.cp.EtcdCompact(ctx, rev)
		}
		return nil
	}
	return fmt.Errorf("unknown op %q", req.Op)
}

// close stops serving and starts the API server again if the guest left
// it stopped.
func (hc *hostControl) close() {
	_ = hc.ln.Close()
	hc.wg.Wait()
	if hc.down {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := hc.cp.StartAPIServer(ctx); err != nil {
			hc.logf("restarting the API server at the end: %v", err)
		}
	}
}

// hostCall sends one request to the host (from the guest).
func hostCall(req ctlRequest) (ctlReply, error) {
	var rep ctlReply
	c, err := net.DialTimeout("tcp", faultCtlAddr, 10*time.Second)
	if err != nil {
		return rep, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return rep, err
	}
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&rep); err != nil {
		return rep, fmt.Errorf("%s: reading the host's reply: %w", req.Op, err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("%s on the host: %s", req.Op, rep.Err)
	}
	return rep, nil
}

// faultGuest is the node of TestGuestIPVSFaults.
type faultGuest struct {
	*guest
	client kubernetes.Interface
	cfg    string // the one config file every start uses
	pod    string // the client pod's netns
}

// TestGuestIPVSFaults runs inside the guest (see TestIPVSFaults).
func TestGuestIPVSFaults(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestIPVSFaults)")
	}
	f := &faultGuest{guest: &guest{t: t, ctx: t.Context()}}
	f.setupNode()
	rc, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if f.client, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	f.pod = f.topo.Pod(netip.MustParseAddr(clientPod)).Netns
	f.cfg = filepath.Join(f.dir, "config.yaml")
	if err := os.WriteFile(f.cfg, f.proxyConfig("ipvs"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.launch(f.cfg, "ipvs")
	f.waitFor("ns1/web complete in IPVS", 30*time.Second, func() bool { return f.ipvsState().complete() })

	// The subtests run on the same node one after the other; each makes
	// sense only if the one before left the node working.
	if !t.Run("proxy killed", f.killed) {
		return
	}
	t.Run("apiserver outage", f.outage)
}

// use makes the subtest's t the one helpers report to.
func (f *faultGuest) use(t *testing.T) { f.t = t }

// --- SIGKILL and restart ------------------------------------------------

// killed kills the proxy with SIGKILL under traffic and starts it again
// with the same command line. A TCP connection held open through the
// ClusterIP keeps working (same backend, its IPVS connection entry still
// there); a client loop opening a new connection every 30 ms counts its
// failures. Two samplers watch the node meanwhile: over netlink every 50
// ms, ns1/web's ClusterIP and NodePort virtual servers with both real
// servers at weight 1 and the ClusterIP on kube-ipvs0, and the ClusterIP
// virtual server's connection counter, which must never go down (a
// virtual server deleted and created again starts from 0); through the
// tools, as fast as they run, the KUBE-CLUSTER-IP ipset member and nat
// KUBE-SERVICES's rules. The new process logs no real server deleted or
// drained and makes exactly one full sync.
func (f *faultGuest) killed(t *testing.T) {
	f.use(t)
	held, heldBackend := open(t, f.pod)
	defer held.Close()
	hr := bufio.NewReader(held)
	talk := func(msg string) error {
		_ = held.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(held, "%s\n", msg); err != nil {
			return err
		}
		line, err := hr.ReadString('\n')
		if err != nil {
			return err
		}
		if want := heldBackend + " " + msg + "\n"; line != want {
			return fmt.Errorf("reply %q, want %q", line, want)
		}
		return nil
	}
	if err := talk("before-kill"); err != nil {
		t.Fatal(err)
	}
	heldLocal := held.LocalAddr().String()

	nl, err := newNodeReader(f.node)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.close()
	natRules := func() int {
		out, _ := nsutil.Exec(f.node, "iptables", "-t", "nat", "-S", "KUBE-SERVICES").CombinedOutput()
		return strings.Count(string(out), "-A KUBE-SERVICES ")
	}
	baseRules := natRules()
	fast := startSampler(50*time.Millisecond, nl.read)
	slow := startSampler(0, func() toolSample {
		out, _ := nsutil.Exec(f.node, "ipset", "test", "KUBE-CLUSTER-IP", clusterIP+",tcp:80").CombinedOutput()
		return toolSample{member: strings.Contains(string(out), "is in set"), rules: natRules()}
	})
	loop := startClientLoop(f.pod, clusterIP+":80", attemptEvery, faultAttemptTimeout)
	time.Sleep(2 * time.Second)

	statsBefore := f.vsStats(clusterIP + ":80")
	entryBefore := f.connEntry(heldLocal)
	killed := time.Now()
	f.proc.Kill()
	f.proc = nil
	t.Logf("proxy killed with SIGKILL; %s connection counters just before: %v; held connection's entry: %q", clusterIP+":80", statsBefore, entryBefore)
	time.Sleep(time.Until(killed.Add(2 * time.Second))) // the node runs on without a proxy
	errDead := talk("while-dead")
	if errDead != nil {
		t.Errorf("held connection while the proxy is dead: %v", errDead)
	}
	started, synced := f.launch(f.cfg, "ipvs")
	statsAfter := f.vsStats(clusterIP + ":80")
	time.Sleep(3 * time.Second)
	atts := loop.Stop()
	fs := fast()
	ss := slow()
	errAfter := talk("after-restart")
	if errAfter != nil {
		t.Errorf("held connection after the restart: %v", errAfter)
	}
	entryAfter := f.connEntry(heldLocal)
	t.Logf("held connection (%s -> %s) entry after the restart: %q", heldLocal, heldBackend, entryAfter)
	if !strings.Contains(entryAfter, "ESTABLISHED") || !strings.Contains(entryAfter, heldBackend+":80") {
		t.Errorf("the held connection's IPVS entry is gone or changed after the restart: %q (before %q)", entryAfter, entryBefore)
	}

	// New connections.
	ac := countAttempts(atts, time.Time{}, time.Now().Add(time.Hour), killed)
	total, failed, kinds := ac.total, ac.failed, ac.kinds
	t.Logf("new connections: %d, %d failed %v at %v after the kill; %d slower than %v, at %v", total, failed, kinds, ac.failedAt, len(ac.slowAt), slowAttempt, ac.slowAt)
	if limit := max(3, total/100); failed > limit {
		t.Errorf("%d of %d new connections failed across the kill and restart (limit %d)", failed, total, limit)
	}

	// The kernel state, as the samplers saw it.
	var bad []string
	var prevConns uint32
	drops, netBad := 0, 0
	for i, s := range fs {
		if s.v.err != "" {
			netBad++
			bad = append(bad, fmt.Sprintf("+%v: %s", ms(s.at.Sub(killed)), s.v.err))
		}
		if i > 0 && s.v.conns < prevConns {
			drops++
			bad = append(bad, fmt.Sprintf("+%v: %s connection counter went down from %d to %d", ms(s.at.Sub(killed)), clusterIP+":80", prevConns, s.v.conns))
		}
		prevConns = s.v.conns
	}
	minRules, noMember := 1<<30, 0
	for _, s := range ss {
		minRules = min(minRules, s.v.rules)
		if !s.v.member {
			noMember++
			bad = append(bad, fmt.Sprintf("+%v: %s,tcp:80 not in KUBE-CLUSTER-IP", ms(s.at.Sub(killed)), clusterIP))
		}
	}
	if minRules < baseRules {
		bad = append(bad, fmt.Sprintf("nat KUBE-SERVICES went down to %d rules from %d", minRules, baseRules))
	}
	for _, b := range bad {
		t.Errorf("kernel state during the kill and restart: %s", b)
	}
	last := fs[len(fs)-1].v.conns
	t.Logf("netlink samples: %d (first %v before the kill, last %v after), virtual server counter %d -> %d, never down: %v; tool samples: %d, member always there: %v, nat KUBE-SERVICES rules min %d (baseline %d)",
		len(fs), ms(killed.Sub(fs[0].at)), ms(fs[len(fs)-1].at.Sub(killed)), fs[0].v.conns, last, drops == 0, len(ss), noMember == 0, minRules, baseRules)
	t.Logf("%s connection counters (ipvsadm --stats): before the kill %v, after the restarted proxy's first sync %v", clusterIP+":80", statsBefore, statsAfter)
	for k, before := range statsBefore {
		if statsAfter[k] < before {
			t.Errorf("%s: connection counter went from %d to %d: deleted and created again", k, before, statsAfter[k])
		}
	}
	if len(statsBefore) != 3 {
		t.Errorf("counters of %s: %v, want the virtual server and 2 real servers", clusterIP+":80", statsBefore)
	}
	logb, _ := os.ReadFile(f.log)
	for _, l := range strings.Split(string(logb), "\n") {
		if strings.Contains(l, "Deleted") || strings.Contains(l, "Draining") || strings.Contains(l, "eftover") {
			t.Errorf("the restarted proxy's log: %s", l)
		}
	}
	m, err := f.scrape()
	if err != nil {
		t.Fatal(err)
	}
	full := metricSum(m, mFull, ipv4)
	if full != 1 {
		t.Errorf("restarted proxy made %v full IPv4 syncs, want exactly 1 (start-up)", full)
	}
	t.Logf("the restarted proxy's log (warnings, errors, syncs):\n%s", notable(logb))
	t.Logf("RESULT proxy killed (SIGKILL) and restarted: %d/%d new connections failed %v, %d took over %v; held connection survived=%v (same backend, IPVS entry kept); state complete in %d/%d netlink samples and %d/%d tool samples; VS conns %d -> %d, never down; restart to first sync %v, kill to first sync %v; %v full IPv4 syncs",
		failed, total, kinds, len(ac.slowAt), slowAttempt, errDead == nil && errAfter == nil, len(fs)-netBad, len(fs), len(ss)-noMember, len(ss),
		statsBefore[clusterIP+":80"], statsAfter[clusterIP+":80"], ms(synced.Sub(started)), ms(synced.Sub(killed)), full)
}

type timed[T any] struct {
	at time.Time
	v  T
}

// startSampler calls read every interval (0: back to back) until the
// returned function is called.
func startSampler[T any](interval time.Duration, read func() T) func() []timed[T] {
	stop := make(chan struct{})
	done := make(chan []timed[T])
	go func() {
		var out []timed[T]
		for {
			t0 := time.Now()
			v := read()
			out = append(out, timed[T]{at: t0.Add(time.Since(t0) / 2), v: v})
			select {
			case <-stop:
				done <- out
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() []timed[T] {
		close(stop)
		return <-done
	}
}

type toolSample struct {
	member bool
	rules  int
}

// netSample is one netlink look at ns1/web: err says what is missing.
type netSample struct {
	err   string
	conns uint32
}

// nodeReader reads the node's IPVS table and kube-ipvs0 over netlink,
// without starting a process (each exec is slow under emulation).
type nodeReader struct {
	ipvs *ipvs.Handle
	link *netlink.Handle
}

func newNodeReader(node string) (*nodeReader, error) {
	h, err := ipvs.New("/run/netns/" + node)
	if err != nil {
		return nil, err
	}
	ns, err := netns.GetFromName(node)
	if err != nil {
		h.Close()
		return nil, err
	}
	defer ns.Close()
	lh, err := netlink.NewHandleAt(ns)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &nodeReader{ipvs: h, link: lh}, nil
}

func (r *nodeReader) close() {
	r.ipvs.Close()
	r.link.Close()
}

// read checks ns1/web's ClusterIP and NodePort virtual servers (both real
// servers at weight 1) and the ClusterIP on kube-ipvs0.
func (r *nodeReader) read() netSample {
	var s netSample
	var missing []string
	svcs, err := r.ipvs.GetServices()
	if err != nil {
		return netSample{err: err.Error()}
	}
	for _, want := range []string{clusterIP + ":80", nodePort} {
		var vs *ipvs.Service
		for _, sv := range svcs {
			if sv.Protocol == syscall.IPPROTO_TCP && net.JoinHostPort(sv.Address.String(), strconv.Itoa(int(sv.Port))) == want {
				vs = sv
			}
		}
		if vs == nil {
			missing = append(missing, "virtual server "+want)
			continue
		}
		if want == clusterIP+":80" {
			s.conns = vs.Stats.Connections
		}
		dests, err := r.ipvs.GetDestinations(vs)
		if err != nil {
			missing = append(missing, want+": "+err.Error())
			continue
		}
		got := map[string]int{}
		for _, d := range dests {
			got[d.Address.String()] = d.Weight
		}
		for b := range backends {
			if got[b] != 1 {
				missing = append(missing, fmt.Sprintf("%s real servers %v", want, got))
				break
			}
		}
	}
	ok := false
	if l, err := r.link.LinkByName("kube-ipvs0"); err == nil {
		addrs, _ := r.link.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			ok = ok || a.IP.String() == clusterIP
		}
	}
	if !ok {
		missing = append(missing, clusterIP+" not on kube-ipvs0")
	}
	s.err = strings.Join(missing, "; ")
	return s
}

// vsStats returns the Conns counters of a virtual server and of its real
// servers (`ipvsadm -Ln --stats --exact`), by address.
func (f *faultGuest) vsStats(vs string) map[string]int64 {
	out, err := nsutil.Exec(f.node, "ipvsadm", "-Ln", "--stats", "--exact", "-t", vs).CombinedOutput()
	res := map[string]int64{}
	if err != nil {
		f.t.Errorf("ipvsadm --stats: %v: %s", err, out)
		return res
	}
	for _, l := range strings.Split(string(out), "\n") {
		fl := strings.Fields(l)
		if len(fl) < 3 || (fl[0] != "TCP" && fl[0] != "->") {
			continue
		}
		if n, err := strconv.ParseInt(fl[2], 10, 64); err == nil {
			res[fl[1]] = n
		}
	}
	return res
}

// connEntry returns the IPVS connection entry whose source is src.
func (f *faultGuest) connEntry(src string) string {
	out, _ := nsutil.Exec(f.node, "ipvsadm", "-Lnc").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if fl := strings.Fields(l); len(fl) >= 6 && fl[3] == src {
			return strings.Join(fl, " ")
		}
	}
	return ""
}

// --- API server outage ----------------------------------------------------

// outage has the host stop the API server for 60 s and start it again.
// Meanwhile traffic keeps flowing on the last rules and /healthz stays 200
// (nothing is queued, so nothing is late: kube-proxy's semantics). During
// the outage ns1/web's EndpointSlice loses its remote endpoint straight in
// etcd and etcd's history is compacted past the change, so only a re-list
// can bring it; right after the API is back a new Service is written
// through it. Both must go live, with at most 2 full syncs.
func (f *faultGuest) outage(t *testing.T) {
	f.use(t)
	cur, err := f.client.DiscoveryV1().EndpointSlices("ns1").Get(f.ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.Endpoints) != 2 {
		t.Fatalf("web-1 has %d endpoints, want 2", len(cur.Endpoints))
	}
	time.Sleep(time.Second)
	m0, err := f.scrape()
	if err != nil {
		t.Fatal(err)
	}
	loop := startClientLoop(f.pod, clusterIP+":80", 100*time.Millisecond, faultAttemptTimeout)
	health := startHealthSampler(f.node)
	lists0 := len(f.logLines("Caches populated", "EndpointSlice"))

	stopped := time.Now()
	rep, err := hostCall(ctlRequest{Op: "stop-apiserver"})
	if err != nil {
		t.Fatal(err)
	}
	gone := time.Now() // StopAPIServer returns once the process has exited
	stopTook := rep.Took
	t.Logf("API server stopped (the host took %v)", ms(rep.Took))
	if _, err := f.client.CoreV1().Nodes().Get(f.ctx, nodeName, metav1.GetOptions{}); err == nil {
		t.Fatal("the API server still answers")
	}
	time.Sleep(5 * time.Second)

	es := cur.DeepCopy()
	es.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	es.ResourceVersion = ""
	es.ManagedFields = nil
	es.Endpoints = nil
	for _, e := range cur.Endpoints {
		if e.Addresses[0] == "10.180.0.1" {
			es.Endpoints = append(es.Endpoints, e)
		}
	}
	value, err := json.Marshal(es)
	if err != nil {
		t.Fatal(err)
	}
	rep, err = hostCall(ctlRequest{Op: "etcd-put", Key: "/registry/endpointslices/ns1/web-1", Value: value, Compact: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("web-1 now holds 10.180.0.1 only, in etcd (revision %d, history compacted)", rep.Revision)

	time.Sleep(time.Until(gone.Add(faultOutage)))
	if f.proc.Exited() {
		t.Fatalf("proxy exited during the outage: %v", f.proc.Err())
	}
	rep, err = hostCall(ctlRequest{Op: "start-apiserver"})
	if err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	startTook := rep.Took
	t.Logf("API server back %v after the stop request (stopping took %v, down %v, starting %v)", ms(back.Sub(stopped)), ms(stopTook), faultOutage, ms(startTook))

	// A change made right after the API came back: ns1/later -> 10.180.2.1.
	later := acceptance.Service{Namespace: "ns1", Name: "later", ClusterIP: laterIP,
		Ports: []acceptance.ServicePort{{Name: "p80", Protocol: "TCP", Port: 80}}}
	f.retryAPI("Service ns1/later", func() error { return f.api.ApplyService(f.ctx, later) })
	f.retryAPI("EndpointSlice ns1/later-1", func() error {
		return f.api.ApplySlice(f.ctx, acceptance.EndpointSlice{Namespace: "ns1", Service: "later", Name: "later-1", AddressType: "IPv4",
			Ports:     []acceptance.SlicePort{{Name: ptr.To("p80"), Protocol: "TCP", Port: ptr.To(int32(80))}},
			Endpoints: []acceptance.Endpoint{{Addresses: []string{"10.180.2.1"}, NodeName: ptr.To("node2")}}})
	})
	written := time.Now()

	var liveLater, liveRelist time.Time
	deadline := back.Add(faultRelistLimit + 30*time.Second)
	for (liveLater.IsZero() || liveRelist.IsZero()) && time.Now().Before(deadline) {
		now := time.Now()
		if liveRelist.IsZero() && f.remoteRetired() {
			liveRelist = now
			t.Logf("web-1's change (from etcd) live %v after the API came back", ms(now.Sub(back)))
		}
		if liveLater.IsZero() {
			if b, _ := dialTo(f.pod, laterIP+":80", 300*time.Millisecond); b == "10.180.2.1" {
				liveLater = now
				t.Logf("ns1/later live %v after the API came back", ms(now.Sub(back)))
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if liveLater.IsZero() || liveRelist.IsZero() {
		t.Errorf("not live %v after the API came back: web-1's change from etcd live=%v, ns1/later live=%v\nipvsadm:\n%s",
			ms(time.Since(back)), !liveRelist.IsZero(), !liveLater.IsZero(), f.ipvsState().raw)
	}
	if err := acceptance.WaitSynced(f.ctx, f.node, f.proc, written, time.Minute); err != nil {
		t.Error(err)
	}
	time.Sleep(2 * time.Second)
	atts := loop.Stop()
	hs := health()
	m1, err := f.scrape()
	if err != nil {
		t.Fatal(err)
	}

	down := countAttempts(atts, stopped, back, stopped)
	all := countAttempts(atts, stopped, time.Now(), stopped)
	t.Logf("web during the outage: %d connections, %d failed %v; from the outage to the end: %d, %d failed %v at %v after the stop request; %d slower than %v, at %v",
		down.total, down.failed, down.kinds, all.total, all.failed, all.kinds, all.failedAt, len(all.slowAt), slowAttempt, all.slowAt)
	if all.failed > 0 {
		t.Errorf("%d of %d connections to ns1/web failed from the outage to the end", all.failed, all.total)
	}
	if !liveRelist.IsZero() {
		// New connections after the change reach the remaining endpoint
		// only (the remote one drains at weight 0).
		if after := countAttempts(atts, liveRelist.Add(time.Second), time.Now(), stopped); after.backends["10.180.2.1"] > 0 {
			t.Errorf("connections after web-1's change still reached 10.180.2.1: %v", after.backends)
		}
	}
	codes := map[int]int{}
	for _, c := range hs {
		codes[c]++
	}
	t.Logf("/healthz samples from the outage to the end: %v", codes)
	if codes[http.StatusOK] != len(hs) {
		t.Errorf("/healthz was not 200 throughout: %v", codes)
	}
	full := metricSum(m1, mFull, ipv4) - metricSum(m0, mFull, ipv4)
	partial := metricSum(m1, mPartial, ipv4) - metricSum(m0, mPartial, ipv4)
	drift := metricSum(m1, mDriftRe, ipv4) - metricSum(m0, mDriftRe, ipv4)
	fails := metricSum(m1, mFailed, ipv4) - metricSum(m0, mFailed, ipv4)
	t.Logf("IPv4 syncs from the outage to the end: %v full, %v partial; drift repairs +%v; sync failures +%v", full, partial, drift, fails)
	if full > 2 {
		t.Errorf("%v full syncs after the API came back, want at most 2", full)
	}
	lists := f.logLines("Caches populated")
	for _, l := range lists {
		t.Logf("informer list: %s", l)
	}
	relists := len(f.logLines("Caches populated", "EndpointSlice")) - lists0
	if relists < 1 {
		t.Errorf("the EndpointSlice informer did not list again after the outage")
	}
	for _, c := range []struct {
		what string
		at   time.Time
	}{{"web-1's change made in etcd during the outage (re-list)", liveRelist}, {"ns1/later, written after the API came back", liveLater}} {
		if !c.at.IsZero() && c.at.Sub(back) > faultRelistLimit {
			t.Errorf("%s live %v after the API came back, limit %v", c.what, ms(c.at.Sub(back)), faultRelistLimit)
		}
	}
	t.Logf("RESULT API server down %v (stop %v + %v + start %v): web %d/%d ok during the outage (%d/%d to the end, %d took over %v); /healthz %v; etcd-only change live %v after the API was back, new Service %v; %v full + %v partial IPv4 syncs, %v drift repairs, %v sync failures; EndpointSlice informer re-listed %d time(s)",
		ms(back.Sub(stopped)), ms(stopTook), faultOutage, ms(startTook), down.total-down.failed, down.total, all.total-all.failed, all.total, len(all.slowAt), slowAttempt, codes, ms(liveRelist.Sub(back)), ms(liveLater.Sub(back)), full, partial, drift, fails, relists)
}

// attemptCount summarizes the client loop's attempts that started in
// [from, to); times are given from ref.
type attemptCount struct {
	total, failed    int
	kinds, backends  map[string]int
	failedAt, slowAt []time.Duration
}

func countAttempts(atts []attempt, from, to, ref time.Time) attemptCount {
	c := attemptCount{kinds: map[string]int{}, backends: map[string]int{}}
	for _, a := range atts {
		if a.start.Before(from) || !a.start.Before(to) {
			continue
		}
		c.total++
		switch {
		case a.err != "":
			c.failed++
			c.kinds[a.err]++
			c.failedAt = append(c.failedAt, ms(a.start.Sub(ref)))
		default:
			c.backends[a.backend]++
			if a.end.Sub(a.start) > slowAttempt {
				c.slowAt = append(c.slowAt, ms(a.start.Sub(ref)))
			}
		}
	}
	return c
}

// retryAPI retries a write for a while right after the API server's
// return (the first requests may meet a stale connection).
func (f *faultGuest) retryAPI(what string, fn func() error) {
	f.t.Helper()
	var err error
	for i := 0; i < 20; i++ {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	f.t.Fatalf("%s: %v", what, err)
}

// remoteRetired reports whether ns1/web's ClusterIP virtual server no
// longer sends new connections to 10.180.2.1 (weight 0 or gone) while
// 10.180.0.1 is still there.
func (f *faultGuest) remoteRetired() bool {
	out := f.ipvsadm()
	if !strings.Contains(out, "10.180.0.1:80") {
		return false
	}
	for _, l := range strings.Split(out, "\n") {
		if fl := strings.Fields(l); len(fl) >= 4 && fl[0] == "->" && fl[1] == "10.180.2.1:80" {
			return fl[3] == "0"
		}
	}
	return true
}

// startHealthSampler samples /healthz in ns every 500 ms until the
// returned function is called; 0 means no answer.
func startHealthSampler(ns string) func() []int {
	hc := nsutil.HTTPClient(ns, 2*time.Second)
	stop := make(chan struct{})
	done := make(chan []int)
	go func() {
		var out []int
		for {
			code := 0
			if resp, err := hc.Get("http://127.0.0.1:10256/healthz"); err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			out = append(out, code)
			select {
			case <-stop:
				done <- out
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() []int {
		close(stop)
		return <-done
	}
}

// --- proxy metrics and log -------------------------------------------------

// scrape reads the running proxy's /metrics: series -> value.
func (g *guest) scrape() (map[string]float64, error) {
	resp, err := nsutil.HTTPClient(g.node, 3*time.Second).Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		i := strings.LastIndexByte(l, ' ')
		if l == "" || l[0] == '#' || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out, sc.Err()
}

// metricSum sums the series of name whose labels contain every one of
// labels.
func metricSum(m map[string]float64, name string, labels ...string) float64 {
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

// logLines returns the running proxy's log lines containing all of subs.
func (g *guest) logLines(subs ...string) []string {
	b, _ := os.ReadFile(g.log)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		ok := l != ""
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}
