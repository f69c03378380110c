package ipvs_test

// Mode switching by config file: one KubeProxyConfiguration file whose
// `mode:` line is edited in place, the proxy restarted the way systemd
// restarts it (SIGTERM, wait for the exit, the same command line again),
// iptables -> ipvs -> iptables, with a client opening a new connection
// through the ClusterIP every 30 ms during each switch.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

const (
	// attemptEvery is the client loop's spacing (the issue asks for 20-50
	// ms); attemptTimeout bounds one attempt (connect and greeting), so a
	// dropped SYN (first retransmission after 1 s) counts as a failure.
	attemptEvery   = 30 * time.Millisecond
	attemptTimeout = time.Second
	// maxGap is the generous bound on a switch's gap under emulation.
	maxGap = 15 * time.Second
	// stopTimeout is the unit's TimeoutStopSec.
	stopTimeout = 30 * time.Second

	nodeIP     = "192.168.0.2"
	nodePort   = nodeIP + ":30080"
	extClient  = "198.51.100.7"
	clientPod  = "10.0.0.2"
	resultFile = "modeswitch.json"
)

// backends are the endpoints of ns1/web (see setupNode).
var backends = map[string]bool{"10.180.0.1": true, "10.180.2.1": true}

// TestIPVSModeSwitchByConfigFile boots a guest that runs
// TestGuestModeSwitch. With SVCPROXY_MODESWITCH_REPORT=<path> it also
// writes the measured numbers as markdown to path (e2e/ipvs/MODE_SWITCH.md
// holds the last such run).
func TestIPVSModeSwitchByConfigFile(t *testing.T) {
	share := runGuest(t, "TestGuestModeSwitch")
	b, err := os.ReadFile(share + "/" + resultFile)
	if err != nil {
		t.Fatalf("guest results: %v", err)
	}
	var res modeSwitchResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	md := res.markdown()
	t.Logf("mode switch results:\n%s", md)
	if p := os.Getenv("SVCPROXY_MODESWITCH_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// modeSwitchResult is what the guest measured, handed to the host as JSON.
type modeSwitchResult struct {
	Date           string
	CPUs           int
	InitialSync    time.Duration // iptables mode, fresh node: start -> first sync
	Switches       []switchResult
	AttemptEvery   time.Duration
	AttemptTimeout time.Duration
}

type switchResult struct {
	From, To string
	// Stop is SIGTERM -> exit of the old process; StartToSync the new
	// process's start -> its first sync; SyncAfterTerm SIGTERM -> that sync.
	Stop, StartToSync, SyncAfterTerm time.Duration
	// Gap is SIGTERM -> the start of the first successful attempt after
	// the last failed one (0 when none failed).
	Gap              time.Duration
	Attempts, Failed int
	FailedKinds      map[string]int
	// FirstFail and LastFail are the failed attempts' starts, from SIGTERM.
	FirstFail, LastFail time.Duration
	// SpacingMax is the longest pause between two attempts' starts.
	SpacingMedian, SpacingMax time.Duration
	// From the state sampler, relative to SIGTERM: the new mode's rules
	// first seen complete, the old mode's state first seen gone for good.
	NewComplete, OldGone time.Duration
	Samples, Holes       int
	// LeftoversGone is SIGTERM -> no leftover of the old mode (polled).
	LeftoversGone time.Duration
	// Backends counts which backend answered the successful attempts.
	Backends map[string]int
	// FirstFullSync is the new proxy's first full sync per IP family, as
	// its log reports it ("Synced" ... took=).
	FirstFullSync map[string]string
}

// TestGuestModeSwitch runs inside the guest (see
// TestIPVSModeSwitchByConfigFile).
func TestGuestModeSwitch(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestIPVSModeSwitchByConfigFile)")
	}
	g := &guest{t: t, ctx: t.Context()}
	g.setupNode()
	pod := g.topo.Pod(netip.MustParseAddr(clientPod)).Netns
	ext, err := g.topo.EnsureExternal(netip.MustParseAddr(extClient))
	if err != nil {
		t.Fatal(err)
	}

	// One file for the whole test, as /etc/svcproxy/config.yaml.
	cfg := g.dir + "/config.yaml"
	if err := os.WriteFile(cfg, g.proxyConfig("iptables"), 0o600); err != nil {
		t.Fatal(err)
	}
	res := modeSwitchResult{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), CPUs: runtime.NumCPU(),
		AttemptEvery: attemptEvery, AttemptTimeout: attemptTimeout}
	t.Logf("== step 1: iptables mode on a fresh node")
	started, synced := g.launch(cfg, "iptables")
	res.InitialSync = synced.Sub(started)
	g.checkRunningMode("iptables")
	g.checkStep("iptables", pod, ext)

	for i, to := range []string{"ipvs", "iptables"} {
		from := map[string]string{"ipvs": "iptables", "iptables": "ipvs"}[to]
		t.Logf("== step %d: %s -> %s", i+2, from, to)
		sw := g.switchMode(cfg, from, to, pod)
		g.checkStep(to, pod, ext)
		res.Switches = append(res.Switches, sw)
		t.Logf("%s -> %s: gap %v (%d of %d attempts failed %v, failures from +%v to +%v after SIGTERM); stop %v, start -> first sync %v, SIGTERM -> first sync %v; new rules complete at %s, old state gone at %s (%d samples, %d without a complete rule set); leftovers gone at +%v",
			from, to, ms(sw.Gap), sw.Failed, sw.Attempts, sw.FailedKinds, ms(sw.FirstFail), ms(sw.LastFail),
			ms(sw.Stop), ms(sw.StartToSync), ms(sw.SyncAfterTerm), since(sw.NewComplete), since(sw.OldGone), sw.Samples, sw.Holes, ms(sw.LeftoversGone))
		if sw.Gap > maxGap {
			t.Errorf("%s -> %s: gap %v exceeds %v", from, to, sw.Gap, maxGap)
		}
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(resultFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// switchMode edits the `mode:` line of cfg from -> to, restarts the proxy
// as systemd does and measures the switch while a client loop runs.
func (g *guest) switchMode(cfg, from, to, pod string) switchResult {
	t := g.t
	sw := switchResult{From: from, To: to}
	samples := g.startSampler(from, to)
	loop := startClientLoop(pod, clusterIP+":80", attemptEvery, attemptTimeout)
	time.Sleep(time.Second) // a baseline before the switch

	editMode(t, cfg, from, to)
	sigterm := time.Now()
	old := g.proc
	g.proc = nil
	old.Stop(stopTimeout) // SIGTERM, wait for the exit (SIGKILL after TimeoutStopSec)
	exited := time.Now()
	sw.Stop = exited.Sub(sigterm)
	oldLog, _ := os.ReadFile(g.log)
	if err := old.Err(); err != nil {
		t.Errorf("%s proxy did not exit cleanly on SIGTERM: %v\n%s", from, err, tail(oldLog, 20))
	}
	t.Logf("the %s proxy's last lines:\n%s", from, tail(oldLog, 6))
	started, synced := g.launch(cfg, to)
	sw.StartToSync = synced.Sub(started)
	sw.SyncAfterTerm = synced.Sub(sigterm)
	g.checkRunningMode(to)
	g.waitFor(from+"-mode leftovers gone", 60*time.Second, func() bool { return len(g.leftovers(to)) == 0 })
	sw.LeftoversGone = time.Since(sigterm)
	time.Sleep(2 * time.Second) // traffic after the clean-up, too

	atts := loop.Stop()
	smp := samples()
	newLog, _ := os.ReadFile(g.log)
	t.Logf("the %s proxy's log (warnings, errors, syncs):\n%s", to, notable(newLog))
	sw.FirstFullSync = firstFullSyncs(newLog)
	g.analyzeAttempts(&sw, atts, sigterm)
	g.analyzeSamples(&sw, smp, sigterm)
	return sw
}

// editMode rewrites the top-level `mode:` line of the file in place.
func editMode(t *testing.T, cfg, from, to string) {
	t.Helper()
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^mode: *(\S*) *$`)
	m := re.FindAllSubmatch(b, -1)
	if len(m) != 1 || string(m[0][1]) != from {
		t.Fatalf("%s: want one `mode: %s` line, found %q", cfg, from, m)
	}
	b = re.ReplaceAll(b, []byte("mode: "+to))
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkRunningMode checks that the running proxy says it started in mode.
func (g *guest) checkRunningMode(mode string) {
	b, _ := os.ReadFile(g.log)
	if !strings.Contains(string(b), `"Starting svcproxy"`) || !strings.Contains(string(b), `mode="`+mode+`"`) {
		g.t.Errorf("the proxy's log does not show a start in %s mode:\n%s", mode, tail(b, 20))
	}
}

// checkStep checks a mode after its start: both backends answer through
// the ClusterIP (from the client pod) and the NodePort on the node IP
// (from an outside client), the foreign virtual server is still there,
// and nothing of the other mode is left.
func (g *guest) checkStep(mode, pod, ext string) {
	t := g.t
	for _, c := range []struct{ from, name, ns, dst string }{
		{"pod " + clientPod, "ClusterIP", pod, clusterIP + ":80"},
		{"outside client " + extClient, "NodePort", ext, nodePort},
	} {
		seen := map[string]int{}
		var errs []string
		for range 20 {
			b, err := dialTo(c.ns, c.dst, 3*time.Second)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			seen[b]++
		}
		ok := len(errs) == 0 && len(seen) == len(backends)
		for b := range seen {
			ok = ok && backends[b]
		}
		if !ok {
			t.Errorf("%s mode: %s %s from %s: answered by %v, errors %q", mode, c.name, c.dst, c.from, seen, errs)
		} else {
			t.Logf("%s mode: %s %s from %s answered by %v", mode, c.name, c.dst, c.from, seen)
		}
	}
	if vs := g.ipvsState(); vs.services[foreignVS] == nil {
		t.Errorf("%s mode: the foreign virtual server %s is gone:\n%s", mode, foreignVS, vs.raw)
	}
	if left := g.leftovers(mode); len(left) > 0 {
		t.Errorf("%s mode: left of the other mode:\n  %s", mode, strings.Join(left, "\n  "))
	} else {
		t.Logf("%s mode: no leftovers of the other mode", mode)
	}
	if mode == "ipvs" {
		if vs := g.ipvsState(); !vs.complete() {
			t.Errorf("ipvs mode: virtual servers incomplete:\n%s", vs.raw)
		}
	}
}

// ipvsOnlyChains are the chains only IPVS mode creates (pkg/ipvs).
var ipvsOnlyChains = []string{"KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-LOOP-BACK", "KUBE-SOURCE-RANGES-FIREWALL"}

// iptablesOnlyChain matches the per-service chains of iptables mode.
var iptablesOnlyChain = regexp.MustCompile(`^KUBE-(SVC|SEP|EXT|FW|SVL)-`)

// leftovers lists what the other mode left while the node runs in mode,
// in both iptables backends.
func (g *guest) leftovers(mode string) []string {
	var out []string
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		b, err := nsutil.Exec(g.node, save).Output()
		if err != nil {
			out = append(out, fmt.Sprintf("%s failed: %v", save, err))
			continue
		}
		table := ""
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "*") {
				table = l[1:]
			}
			if !strings.HasPrefix(l, ":") {
				if mode == "iptables" && strings.HasPrefix(l, "-A ") && strings.Contains(l, "--match-set KUBE-") {
					out = append(out, fmt.Sprintf("%s %s: rule %s", save, table, l))
				}
				continue
			}
			chain := strings.Fields(l[1:])[0]
			if (mode == "iptables" && slices.Contains(ipvsOnlyChains, chain)) || (mode == "ipvs" && iptablesOnlyChain.MatchString(chain)) {
				out = append(out, fmt.Sprintf("%s %s: chain %s", save, table, chain))
			}
		}
	}
	if mode == "ipvs" {
		return out
	}
	if b, err := nsutil.Exec(g.node, "ip", "link", "show", "kube-ipvs0").CombinedOutput(); err == nil {
		out = append(out, "interface: "+strings.TrimSpace(string(b)))
	}
	b, _ := nsutil.Exec(g.node, "ipset", "list", "-n").CombinedOutput()
	for _, s := range strings.Fields(string(b)) {
		if strings.HasPrefix(s, "KUBE-") {
			out = append(out, "ipset "+s)
		}
	}
	for vs := range g.ipvsState().services {
		if vs != foreignVS {
			out = append(out, "virtual server "+vs)
		}
	}
	return out
}

// ipvsTable is `ipvsadm -Ln` parsed: virtual server -> real servers.
type ipvsTable struct {
	raw      string
	services map[string][]string
}

func parseIPVS(out string) ipvsTable {
	tb := ipvsTable{raw: out, services: map[string][]string{}}
	cur := ""
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP" || f[0] == "FWM"):
			cur = f[1]
			tb.services[cur] = []string{}
		case len(f) >= 2 && f[0] == "->" && cur != "" && f[1] != "RemoteAddress:Port":
			tb.services[cur] = append(tb.services[cur], f[1])
		}
	}
	return tb
}

func (g *guest) ipvsState() ipvsTable {
	out, _ := nsutil.Exec(g.node, "ipvsadm", "-Ln").CombinedOutput()
	return parseIPVS(string(out))
}

// complete: both virtual servers of ns1/web with both real servers.
func (tb ipvsTable) complete() bool {
	for _, vs := range []string{clusterIP + ":80", nodePort} {
		for b := range backends {
			if !slices.Contains(tb.services[vs], b+":80") {
				return false
			}
		}
	}
	return true
}

// modeState samples one mode's state for ns1/web in the node: whether its
// rules are complete (traffic would flow through them alone) and whether
// anything of it is present.
func (g *guest) modeState(mode string) (complete, present bool) {
	if mode == "iptables" {
		out, _ := nsutil.Exec(g.node, "iptables-save", "-t", "nat").CombinedOutput()
		s := string(out)
		complete = reSvcJump.MatchString(s) && reNodePortJump.MatchString(s)
		for _, re := range reDNAT {
			complete = complete && re.MatchString(s)
		}
		return complete, reIptablesChain.MatchString(s)
	}
	out, _ := nsutil.Exec(g.node, "sh", "-c",
		"ipvsadm -Ln; echo @@; ip -o -4 addr show dev kube-ipvs0 2>/dev/null && echo LINK; echo @@; ipset list -n; echo @@; ipset list KUBE-CLUSTER-IP 2>&1").CombinedOutput()
	parts := strings.SplitN(string(out), "@@", 4)
	for len(parts) < 4 {
		parts = append(parts, "")
	}
	tb := parseIPVS(parts[0])
	hasLink := strings.Contains(parts[1], "LINK")
	complete = tb.complete() && strings.Contains(parts[1], clusterIP+"/32") && strings.Contains(parts[3], clusterIP+",tcp:80")
	present = hasLink || strings.Contains(parts[2], "KUBE-")
	for vs := range tb.services {
		present = present || vs != foreignVS
	}
	return complete, present
}

var (
	reSvcJump       = regexp.MustCompile(`(?m)^-A KUBE-SERVICES .*-d ` + regexp.QuoteMeta(clusterIP) + `/32 .*-j KUBE-SVC-`)
	reNodePortJump  = regexp.MustCompile(`(?m)^-A KUBE-NODEPORTS .*--dport 30080 .*-j KUBE-(EXT|SVC)-`)
	reIptablesChain = regexp.MustCompile(`(?m)^:KUBE-(SVC|SEP|EXT|FW|SVL)-`)
	reDNAT          = func() (out []*regexp.Regexp) {
		for b := range backends {
			out = append(out, regexp.MustCompile(`(?m)^-A KUBE-SEP-\S+ .*--to-destination `+regexp.QuoteMeta(b)+`:80\b`))
		}
		return out
	}()
)

// sample is one look at the node during a switch.
// oldAt and newAt are the middles of the two reads (each takes a while
// under emulation).
type sample struct {
	oldAt, newAt                         time.Time
	oldComplete, newComplete, oldPresent bool
}

// startSampler looks at both modes' state until the returned function is
// called. The old mode is read first: its rules go only after the new
// mode's are in place, so a sample that straddles the change cannot show
// neither as complete unless there really was such a moment.
func (g *guest) startSampler(from, to string) func() []sample {
	stop := make(chan struct{})
	done := make(chan []sample)
	go func() {
		var out []sample
		for {
			var s sample
			t0 := time.Now()
			s.oldComplete, s.oldPresent = g.modeState(from)
			t1 := time.Now()
			s.newComplete, _ = g.modeState(to)
			s.oldAt, s.newAt = t0.Add(t1.Sub(t0)/2), t1.Add(time.Since(t1)/2)
			out = append(out, s)
			select {
			case <-stop:
				done <- out
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() []sample {
		close(stop)
		return <-done
	}
}

func (g *guest) analyzeSamples(sw *switchResult, smp []sample, sigterm time.Time) {
	t := g.t
	sw.Samples = len(smp)
	sw.NewComplete, sw.OldGone = -1, -1
	for _, s := range smp {
		if !s.oldComplete && !s.newComplete {
			sw.Holes++
		}
		if s.newComplete && sw.NewComplete < 0 {
			sw.NewComplete = s.newAt.Sub(sigterm)
		}
		if s.oldPresent {
			sw.OldGone = -1
		} else if sw.OldGone < 0 {
			sw.OldGone = s.oldAt.Sub(sigterm)
		}
	}
	if len(smp) == 0 || !smp[0].oldComplete {
		t.Errorf("%s -> %s: the %s rules were not complete before the switch", sw.From, sw.To, sw.From)
	}
	if sw.NewComplete < 0 {
		t.Errorf("%s -> %s: the %s rules were never seen complete", sw.From, sw.To, sw.To)
	}
	if sw.Holes > 0 {
		t.Errorf("%s -> %s: %d of %d samples showed neither mode's rules complete (the old mode's went before the new mode's were in place)", sw.From, sw.To, sw.Holes, sw.Samples)
	}
	if sw.OldGone >= 0 && sw.NewComplete >= 0 && sw.OldGone < sw.NewComplete {
		t.Errorf("%s -> %s: the old state was gone at +%v, before the new rules were complete at +%v", sw.From, sw.To, sw.OldGone, sw.NewComplete)
	}
}

// attempt is one connection of the client loop.
type attempt struct {
	start, end time.Time
	backend    string
	err        string
}

type clientLoop struct {
	stop chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	atts []attempt
}

// startClientLoop opens a new TCP connection from ns to dst every `every`
// (each in its own goroutine, so a hanging attempt does not delay the next)
// and records the result; a reply from anyone but the backends fails.
func startClientLoop(ns, dst string, every, timeout time.Duration) *clientLoop {
	l := &clientLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				a := attempt{start: time.Now()}
				b, err := dialTo(ns, dst, timeout)
				a.end, a.backend = time.Now(), b
				switch {
				case err != nil:
					a.err = errKind(err)
				case !backends[b]:
					a.err = fmt.Sprintf("answered by %q", b)
				}
				l.mu.Lock()
				l.atts = append(l.atts, a)
				l.mu.Unlock()
			}()
		}
	}()
	return l
}

// Stop ends the loop, waits for the attempts in flight and returns all,
// ordered by start.
func (l *clientLoop) Stop() []attempt {
	close(l.stop)
	<-l.done
	l.wg.Wait()
	sort.Slice(l.atts, func(i, j int) bool { return l.atts[i].start.Before(l.atts[j].start) })
	return l.atts
}

// errKind names a failed attempt's error briefly.
func errKind(err error) string {
	var ne net.Error
	stage := "connect"
	if strings.HasPrefix(err.Error(), "read greeting") {
		stage = "greeting"
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return stage + ": refused"
	case errors.Is(err, syscall.ECONNRESET):
		return stage + ": reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return stage + ": unreachable"
	case errors.Is(err, io.EOF):
		return stage + ": closed"
	case errors.As(err, &ne) && ne.Timeout():
		return stage + ": timeout"
	}
	return err.Error()
}

func (g *guest) analyzeAttempts(sw *switchResult, atts []attempt, sigterm time.Time) {
	t := g.t
	sw.Attempts = len(atts)
	sw.FailedKinds = map[string]int{}
	sw.Backends = map[string]int{}
	var lastFail *attempt
	var spacing []time.Duration
	for i := range atts {
		a := &atts[i]
		if i > 0 {
			spacing = append(spacing, a.start.Sub(atts[i-1].start))
		}
		if a.err == "" {
			sw.Backends[a.backend]++
			continue
		}
		if a.start.Before(sigterm) {
			t.Errorf("%s -> %s: an attempt failed before SIGTERM (%v before): %s", sw.From, sw.To, sigterm.Sub(a.start), a.err)
		}
		if sw.Failed == 0 {
			sw.FirstFail = a.start.Sub(sigterm)
		}
		sw.Failed++
		sw.FailedKinds[a.err]++
		lastFail = a
	}
	if len(spacing) > 0 {
		slices.Sort(spacing)
		sw.SpacingMedian, sw.SpacingMax = spacing[len(spacing)/2], spacing[len(spacing)-1]
	}
	if lastFail != nil {
		sw.LastFail = lastFail.start.Sub(sigterm)
		sw.Gap = -1
		for _, a := range atts {
			if a.err == "" && a.start.After(lastFail.start) {
				sw.Gap = a.start.Sub(sigterm)
				break
			}
		}
		if sw.Gap < 0 {
			t.Errorf("%s -> %s: no successful attempt after the last failure", sw.From, sw.To)
			sw.Gap = time.Since(sigterm)
		}
	}
	if sw.Attempts < 100 {
		t.Errorf("%s -> %s: only %d attempts", sw.From, sw.To, sw.Attempts)
	}
	for b := range backends {
		if sw.Backends[b] == 0 {
			t.Errorf("%s -> %s: backend %s never answered during the switch (%v)", sw.From, sw.To, b, sw.Backends)
		}
	}
}

func (r modeSwitchResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Mode switch by config file: measured\n\n")
	fmt.Fprintf(&b, "From `TestIPVSModeSwitchByConfigFile` (`e2e/ipvs/modeswitch_test.go`), run %s in the QEMU guest (TCG emulation, %d vCPUs, host shared with other work), syncPeriod %v. ", r.Date, r.CPUs, syncPeriod)
	fmt.Fprintf(&b, "One config file; its `mode:` line is edited in place, then the proxy is restarted as systemd does it (SIGTERM, wait for the exit, the same command line again). ")
	fmt.Fprintf(&b, "During each switch a client pod opens a new TCP connection to the ClusterIP every %v (timeout %v each, connect plus the backend's greeting).\n\n", ms(r.AttemptEvery), ms(r.AttemptTimeout))
	fmt.Fprintf(&b, "Fresh node, iptables mode: start to first sync %v.\n\n", ms(r.InitialSync))
	fmt.Fprintf(&b, "| switch | gap | failed / attempts | stop (SIGTERM to exit) | start to first sync | SIGTERM to first sync | new rules complete | old state gone | samples without complete rules |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, s := range r.Switches {
		fmt.Fprintf(&b, "| %s → %s | %v | %d / %d | %v | %v | %v | %s | %s | %d of %d |\n", s.From, s.To, ms(s.Gap), s.Failed, s.Attempts,
			ms(s.Stop), ms(s.StartToSync), ms(s.SyncAfterTerm), since(s.NewComplete), since(s.OldGone), s.Holes, s.Samples)
	}
	fmt.Fprintf(&b, "\n- **gap**: from SIGTERM to the start of the first successful attempt after the last failed one; 0 when no attempt failed. The test fails above %v.\n", maxGap)
	fmt.Fprintf(&b, "- **first sync**: the proxy's `kubeproxy_sync_proxy_rules_last_timestamp_seconds` when its metrics first show a sync with nothing pending; **stop**: SIGTERM to the old process's exit.\n")
	fmt.Fprintf(&b, "- **new rules complete / old state gone**: times after SIGTERM at which a sampler (about every 0.1 s plus the time `iptables-save`, `ipvsadm`, `ip` and `ipset` take under emulation) first saw the new mode's rules for the Service complete, and the old mode's state gone for good (the middle of the read that saw it). A sample without either mode's rules complete fails the test.\n")
	for _, s := range r.Switches {
		kinds := "none"
		if len(s.FailedKinds) > 0 {
			kinds = fmt.Sprint(s.FailedKinds) + fmt.Sprintf(", from +%v to +%v", ms(s.FirstFail), ms(s.LastFail))
		}
		fmt.Fprintf(&b, "- %s → %s: failures %s; answered by %v; attempt spacing median %v, max %v; first full sync took %v (the families sync one after the other; the other mode's state goes after both); leftover check (polled after the first sync) clean of %s-mode state at +%v.\n",
			s.From, s.To, kinds, s.Backends, ms(s.SpacingMedian), ms(s.SpacingMax), s.FirstFullSync, s.From, ms(s.LeftoversGone))
	}
	fmt.Fprintf(&b, "\nChecked after each step (fresh iptables, ipvs, iptables again): both backends answer the ClusterIP from a pod and the NodePort %s from an outside client; ", nodePort)
	fmt.Fprintf(&b, "in iptables mode no `kube-ipvs0`, no `KUBE-*` ipsets, no virtual servers but a foreign one (which stays), no IPVS-only chains (%s) or `--match-set KUBE-` rules; ", strings.Join(ipvsOnlyChains, ", "))
	fmt.Fprintf(&b, "in IPVS mode no `KUBE-SVC-`/`KUBE-SEP-`/`KUBE-EXT-`/`KUBE-FW-`/`KUBE-SVL-` chains (both `iptables-nft` and `iptables-legacy`).\n")
	return b.String()
}

// since formats a time after SIGTERM; negative ones were not seen.
func since(d time.Duration) string {
	if d < 0 {
		return "not seen"
	}
	return "+" + ms(d).String()
}

// ms rounds a duration for reports.
func ms(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Millisecond)
}

var reFullSync = regexp.MustCompile(`"Synced" family="(\w+)" full=true .*took="([^"]+)"`)

// firstFullSyncs returns how long each family's first full sync took.
func firstFullSyncs(log []byte) map[string]string {
	out := map[string]string{}
	for _, m := range reFullSync.FindAllSubmatch(log, -1) {
		if _, ok := out[string(m[1])]; !ok {
			if d, err := time.ParseDuration(string(m[2])); err == nil {
				out[string(m[1])] = ms(d).String()
			}
		}
	}
	return out
}

// notable keeps a proxy log's warnings, errors, start, syncs and stop.
func notable(b []byte) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "E") || strings.HasPrefix(l, "W") || strings.Contains(l, `"Starting svcproxy"`) ||
			strings.Contains(l, `"Synced"`) || strings.Contains(l, "eftover") || strings.Contains(l, "Stopped") {
			out = append(out, l)
		}
	}
	if len(out) > 30 {
		out = append(out[:30], fmt.Sprintf("... %d more", len(out)-30))
	}
	return strings.Join(out, "\n")
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
