package iptables

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// cluster is a tracker pre-filled with n Services of 10 endpoints each.
type cluster struct {
	t  *testing.T
	tr *watch.Tracker
}

func newCluster(t *testing.T, n int) *cluster {
	c := &cluster{t: t, tr: watch.NewTracker(watchtest.Node)}
	for i := range n {
		c.setService(i, 10, 0)
	}
	return c
}

func (c *cluster) setService(i, endpoints, shift int) {
	name := fmt.Sprintf("svc-%d", i)
	s := watchtest.Service{Namespace: "bench", Name: name, Type: v1.ServiceTypeNodePort,
		ClusterIPs: []string{fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)}, Ports: []v1.ServicePort{watchtest.TCPPort("http", 80, int32(3000+i))}}
	c.tr.OnService(types.NamespacedName{Namespace: "bench", Name: name}, s.Object())
	var eps []watchtest.Endpoint
	for e := range endpoints {
		eps = append(eps, watchtest.Endpoint{IP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, e+1+shift), Node: "n"})
	}
	c.tr.OnEndpointSlice(watchtest.Slice("bench", name, name+"-1", 8080, "http", eps...), false)
}

// converge applies a sync to the fake and checks that the fake now holds
// exactly the planned ruleset, chain by chain and in order: a Service's own
// chains rule for rule; a shared chain with the fixed rules last (the
// NodePort dispatch must stay the last rule of KUBE-SERVICES) and the
// Services' entries before them in any order (they match disjoint traffic,
// and a delta inserts new ones at the head).
func converge(t *testing.T, p *Proxier, fake *Fake, snap *watch.Snapshot) SyncResult {
	t.Helper()
	res, err := p.Sync(snap)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	for _, k := range res.Ruleset.ChainKeys() {
		want, _ := res.Ruleset.Chain(k)
		got := fake.Rules(k.Table, k.Name)
		if !chainMatches(got, want, res.Ruleset.Base[k], sharedChains[k]) {
			t.Fatalf("%s/%s in kernel:\n%s\nwant:\n%s", k.Table, k.Name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	for _, table := range []string{TableNAT, TableFilter} {
		for _, c := range fake.Chains(table) {
			if IsServiceChain(c) {
				if _, ok := res.Ruleset.Chain(ChainKey{table, c}); !ok {
					t.Fatalf("stale chain %s/%s left in kernel", table, c)
				}
			}
		}
	}
	return res
}

// chainMatches compares a chain as the kernel holds it with the plan; see
// converge.
func chainMatches(got, want, fixed []string, shared bool) bool {
	if !shared {
		return slices.Equal(got, want)
	}
	n := len(got) - len(fixed)
	if len(got) != len(want) || n < 0 || !slices.Equal(got[n:], fixed) {
		return false
	}
	gotEntries, wantEntries := slices.Clone(got[:n]), slices.Clone(want[:n])
	slices.Sort(gotEntries)
	slices.Sort(wantEntries)
	return slices.Equal(gotEntries, wantEntries)
}

// TestDeltaIndependentOfServiceCount checks the central promise of delta
// syncs: one endpoint change writes only that Service's lines, and the
// payload is the same size however many Services there are. Comments go
// above LargeClusterEndpoints, so sizes compare within each regime: 20 and
// 90 Services (200 and 900 endpoints), 150 and 2,000 (1,500 and 20,000).
func TestDeltaIndependentOfServiceCount(t *testing.T) {
	for _, pair := range [][2]int{{20, 90}, {150, 2000}} {
		a, b := deltaPayloadSize(t, pair[0]), deltaPayloadSize(t, pair[1])
		if a != b {
			t.Errorf("one-endpoint payload grew with the number of Services: %d bytes at %d, %d at %d", a, pair[0], b, pair[1])
		}
	}
}

func deltaPayloadSize(t *testing.T, n int) int {
	t.Helper()
	c := newCluster(t, n)
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	if res := converge(t, p, fake, c.tr.Snapshot()); !res.Full {
		t.Fatal("first sync must be full")
	}
	c.setService(7, 10, 1) // replace one endpoint: .1 goes, .11 comes
	snap := c.tr.Snapshot()
	res := converge(t, p, fake, snap)
	if res.Full {
		t.Fatal("endpoint change must be a delta")
	}
	payload := string(fake.Restores[len(fake.Restores)-1])
	for _, line := range strings.Split(payload, "\n") {
		if strings.HasPrefix(line, "-A KUBE-SERVICES") || strings.HasPrefix(line, "-A KUBE-NODEPORTS") {
			t.Errorf("delta rewrote a shared chain: %s", line)
		}
	}
	if !strings.Contains(payload, svcChainOf(snap, "svc-7")) || strings.Contains(payload, svcChainOf(snap, "svc-8")) {
		t.Errorf("delta at %d Services touches other Services:\n%s", n, payload)
	}
	endpointComments := strings.Contains(payload, "--comment \"bench/svc-7:http\" ") || strings.Contains(payload, "bench/svc-7:http -> ")
	if large := n*10 > LargeClusterEndpoints; large == endpointComments {
		t.Errorf("at %d Services: endpoint comments present = %v, want %v:\n%s", n, large, !large, payload)
	}
	return res.PayloadBytes
}

// svcChainOf returns the KUBE-SVC chain of port "http" of bench/name.
func svcChainOf(snap *watch.Snapshot, name string) string {
	for spn, port := range snap.Services.All() {
		if spn.Name == name && spn.Port == "http" {
			return portChain(prefixSVC, port)
		}
	}
	return "no such Service " + name
}

func TestDeltaAddAndDeleteService(t *testing.T) {
	c := newCluster(t, 20)
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	converge(t, p, fake, c.tr.Snapshot())

	c.setService(100, 3, 0)
	if res := converge(t, p, fake, c.tr.Snapshot()); res.Full {
		t.Error("adding a Service must be a delta")
	}
	c.tr.OnService(types.NamespacedName{Namespace: "bench", Name: "svc-3"}, nil)
	res := converge(t, p, fake, c.tr.Snapshot())
	if res.Full {
		t.Error("deleting a Service must be a delta")
	}
	if !strings.Contains(string(fake.Restores[len(fake.Restores)-1]), "-X KUBE-SVC-") {
		t.Error("deleting a Service must remove its chains")
	}
	// Going to zero endpoints swaps the nat jump for a filter REJECT.
	c.setService(5, 0, 0)
	converge(t, p, fake, c.tr.Snapshot())
	if !slices.ContainsFunc(fake.Rules(TableFilter, ChainServices), func(r string) bool { return strings.Contains(r, "svc-5:http") && strings.HasSuffix(r, "-j REJECT") }) {
		t.Error("a Service without endpoints must REJECT")
	}
}

func TestFailedRestoreForcesFullSync(t *testing.T) {
	c := newCluster(t, 5)
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	converge(t, p, fake, c.tr.Snapshot())
	before := fake.Rules(TableNAT, ChainServices)

	fake.FailRestore = fmt.Errorf("injected")
	c.setService(1, 10, 3)
	if _, err := p.Sync(c.tr.Snapshot()); err == nil {
		t.Fatal("sync must report the failed restore")
	}
	if !slices.Equal(before, fake.Rules(TableNAT, ChainServices)) {
		t.Fatal("a failed restore changed the rules")
	}
	fake.FailRestore = nil
	res := converge(t, p, fake, c.tr.Snapshot())
	if !res.Full {
		t.Error("the sync after a failure must be full")
	}
}

func TestVerifyFindsDrift(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(*Fake)
		reason string
	}{
		{"flushed chain", func(f *Fake) { f.Flush(TableNAT, ChainServices) }, "rules"},
		{"stray rule", func(f *Fake) {
			_ = f.Restore([]byte("*filter\n-A KUBE-SERVICES -j DROP\nCOMMIT\n"))
		}, "rules"},
		{"deleted canary", func(f *Fake) { f.DeleteChainForTest(TableMangle, ChainCanary) }, "canary"},
		{"deleted jump", func(f *Fake) { f.DeleteChainForTest(TableNAT, ChainPostrouting) }, "chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3)
			fake := NewFake()
			p := NewProxier(fake, defaultOpts())
			snap := c.tr.Snapshot()
			converge(t, p, fake, snap)
			if d, err := p.Verify(); err != nil || d != nil {
				t.Fatalf("fresh rules reported drift %v, %v", d, err)
			}
			tc.break_(fake)
			d, err := p.Verify()
			if err != nil || d == nil || d.Reason != tc.reason {
				t.Fatalf("Verify = %+v, %v; want reason %q", d, err, tc.reason)
			}
			p.ForceFull()
			converge(t, p, fake, snap)
			if d, _ := p.Verify(); d != nil {
				t.Fatalf("drift remains after full sync: %+v", d)
			}
		})
	}
}

// TestFullSyncBatches checks that a large full sync is split and that a
// restart adopts the rules in place (no chain is deleted and recreated).
func TestFullSyncBatches(t *testing.T) {
	c := newCluster(t, 300)
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	p.batchLines = 1000
	res := converge(t, p, fake, c.tr.Snapshot())
	if res.Payloads < 5 {
		t.Errorf("full sync of 300 Services wrote %d payloads, want it split", res.Payloads)
	}
	restarted := NewProxier(fake, defaultOpts())
	restarted.batchLines = 1000
	fake.Restores = nil
	converge(t, restarted, fake, c.tr.Snapshot())
	for _, pl := range fake.Restores {
		if strings.Contains(string(pl), "-X ") {
			t.Errorf("restart removed chains it should adopt:\n%s", pl)
		}
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	c := newCluster(t, 3)
	fake := NewFake()
	// Someone else's chain and a jump of theirs in a built-in chain.
	if err := fake.Restore([]byte("*nat\n:OTHER-CHAIN - [0:0]\n-A OTHER-CHAIN -j RETURN\n-A PREROUTING -j OTHER-CHAIN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	p := NewProxier(fake, defaultOpts())
	converge(t, p, fake, c.tr.Snapshot())
	if err := Cleanup(fake); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{TableNAT, TableFilter, TableMangle} {
		for _, ch := range fake.Chains(table) {
			if strings.HasPrefix(ch, "KUBE-") {
				t.Errorf("%s/%s left behind", table, ch)
			}
		}
	}
	if got := fake.Rules(TableNAT, "PREROUTING"); !slices.Equal(got, []string{"-j OTHER-CHAIN"}) {
		t.Errorf("PREROUTING = %v, want only the other component's jump", got)
	}
}

// Crossing LargeClusterEndpoints changes every endpoint rule (comments go
// or come back), so it takes a full sync, as kube-proxy does.
func TestLargeClusterFlipIsFull(t *testing.T) {
	c := newCluster(t, 99) // 990 endpoints
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	converge(t, p, fake, c.tr.Snapshot())
	hasComments := func() bool {
		return strings.Contains(strings.Join(fake.Rules(TableNAT, svcChainOf(c.tr.Snapshot(), "svc-3")), "\n"), "bench/svc-3:http -> ")
	}
	if !hasComments() {
		t.Fatal("below the threshold the endpoint rules should carry comments")
	}
	c.setService(99, 10, 0)
	c.setService(100, 10, 0) // 1,010 endpoints
	if res := converge(t, p, fake, c.tr.Snapshot()); !res.Full || !res.Ruleset.LargeCluster {
		t.Fatalf("crossing the threshold: full = %v, large = %v; want a full sync in large-cluster mode", res.Full, res.Ruleset.LargeCluster)
	}
	if hasComments() {
		t.Fatal("above the threshold the endpoint rules of unchanged Services still carry comments")
	}
	c.setService(100, 0, 0) // back to 1,000
	if res := converge(t, p, fake, c.tr.Snapshot()); !res.Full || res.Ruleset.LargeCluster {
		t.Fatalf("back below: full = %v, large = %v; want a full sync with comments", res.Full, res.Ruleset.LargeCluster)
	}
	if !hasComments() {
		t.Fatal("back below the threshold the comments did not come back")
	}
}

// The sync result counts the rules written per table, and the ports whose
// Local policy has no local endpoint (for kube-proxy's metrics).
func TestSyncResultCounts(t *testing.T) {
	c := newCluster(t, 3)
	fake := NewFake()
	p := NewProxier(fake, defaultOpts())
	full := converge(t, p, fake, c.tr.Snapshot())
	if full.Written[TableNAT] != full.Ruleset.RuleCount()[TableNAT] {
		t.Errorf("full sync wrote %d nat rules, ruleset has %d", full.Written[TableNAT], full.Ruleset.RuleCount()[TableNAT])
	}
	c.setService(1, 10, 1)
	delta := converge(t, p, fake, c.tr.Snapshot())
	// KUBE-SVC: masquerade + 10 endpoints; new KUBE-SEP: 2 rules.
	if delta.Written[TableNAT] != 13 || delta.Written[TableFilter] != 0 {
		t.Errorf("one-endpoint delta wrote %v, want 13 nat rules", delta.Written)
	}
	if in, ex := delta.Ruleset.NoLocalEndpoints(); in != 0 || ex != 0 {
		t.Errorf("no Local policies, yet no-local counts %d/%d", in, ex)
	}
}

func TestNoLocalEndpointsCounted(t *testing.T) {
	tr := watch.NewTracker(watchtest.Node)
	for i, s := range []watchtest.Service{
		{Namespace: "a", Name: "etp", Type: v1.ServiceTypeNodePort, ETPLocal: true},
		{Namespace: "a", Name: "itp", Type: v1.ServiceTypeClusterIP, ITPLocal: true},
		{Namespace: "a", Name: "both", Type: v1.ServiceTypeNodePort, ETPLocal: true, ITPLocal: true},
	} {
		s.ClusterIPs = []string{fmt.Sprintf("172.30.9.%d", i+1)}
		s.Ports = []v1.ServicePort{watchtest.TCPPort("http", 80, int32(30100+i))}
		tr.OnService(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, s.Object())
		tr.OnEndpointSlice(watchtest.Slice(s.Namespace, s.Name, s.Name+"-1", 8080, "http", watchtest.Endpoint{IP: "10.9.9.9", Node: "elsewhere"}), false)
	}
	rs := Plan(tr.Snapshot(), defaultOpts())
	if in, ex := rs.NoLocalEndpoints(); in != 2 || ex != 2 {
		t.Fatalf("no-local counts internal %d, external %d; want 2 and 2", in, ex)
	}
}

// size predicts Bytes' length exactly, so rendering never regrows.
func TestPayloadSize(t *testing.T) {
	c := newCluster(t, 30)
	rs := Plan(c.tr.Snapshot(), defaultOpts())
	p := prelude(rs, nil)
	for _, svc := range rs.ServiceKeys() {
		for k, rules := range rs.Services.Get(svc).Chains {
			p.declare(k)
			p.appendRules(k, rules)
		}
	}
	p.table(TableNAT).del = append(p.table(TableNAT).del, "-D KUBE-SERVICES -j X")
	if got, want := len(p.Bytes()), p.size(); got != want {
		t.Fatalf("Bytes wrote %d bytes, size said %d", got, want)
	}
}

// TestLargeDeltaIsBatched: a delta touching many Services at once (the
// first sync after a long outage) is written in payloads of about
// batchLines lines, each whole Services, and still converges; meanwhile
// the drift check has nothing to compare against.
func TestLargeDeltaIsBatched(t *testing.T) {
	c, fake, hook, p := largeDelta(t)
	restores := len(fake.Restores)
	hook.before = func() {
		if p.Applied() != nil {
			t.Error("a drift check could start between the payloads of one delta")
		}
	}
	res := converge(t, p, fake, c.tr.Snapshot())
	if res.Full || res.Payloads < 2 || res.Payloads != len(fake.Restores)-restores {
		t.Fatalf("sync: full %v, %d payloads (%d restores); want a delta in several payloads", res.Full, res.Payloads, len(fake.Restores)-restores)
	}
	for _, payload := range fake.Restores[restores:] {
		if lines := strings.Count(string(payload), "\n"); lines > 200+60 {
			t.Errorf("a delta payload has %d lines, batchLines is 200", lines)
		}
	}
}

// TestLargeDeltaFailsPartway: when a later payload of a delta fails, the
// earlier ones have landed, so nothing is taken as applied and the next
// sync is a full one, which converges.
func TestLargeDeltaFailsPartway(t *testing.T) {
	c, fake, hook, p := largeDelta(t)
	calls := 0
	hook.before = func() {
		if calls++; calls == 2 {
			fake.FailRestore = errors.New("refused by the kernel")
		}
	}
	_, err := p.Sync(c.tr.Snapshot())
	var partial *PartialError
	if !errors.As(err, &partial) || calls != 2 {
		t.Fatalf("sync: %v after %d restores, want a PartialError at the second", err, calls)
	}
	if p.Applied() != nil {
		t.Fatal("a half-written delta is taken as applied")
	}
	fake.FailRestore, hook.before = nil, nil
	if res := converge(t, p, fake, c.tr.Snapshot()); !res.Full {
		t.Error("the sync after a failed delta is not full")
	}
}

// largeDelta converges 60 Services with batchLines 200, then changes an
// endpoint of 50 of them, so the next sync is a delta of several payloads.
func largeDelta(t *testing.T) (*cluster, *Fake, *beforeRestore, *Proxier) {
	t.Helper()
	c := newCluster(t, 60)
	fake := NewFake()
	hook := &beforeRestore{Interface: fake}
	p := NewProxier(hook, defaultOpts())
	p.batchLines = 200
	converge(t, p, fake, c.tr.Snapshot())
	for i := range 50 {
		c.setService(i, 10, 1)
	}
	return c, fake, hook, p
}

// beforeRestore calls before ahead of every Restore.
type beforeRestore struct {
	Interface
	before func()
}

func (h *beforeRestore) Restore(payload []byte) error {
	if h.before != nil {
		h.before()
	}
	return h.Interface.Restore(payload)
}

// TestRuleCountFollowsDeltas: the rule counts a delta plan carries forward
// from the previous plan equal a recount of the planned ruleset, through
// endpoint changes, a new Service and a deleted one.
func TestRuleCountFollowsDeltas(t *testing.T) {
	c := newCluster(t, 4)
	prev := PlanFrom(nil, c.tr.Snapshot(), defaultOpts())
	recount := func(rs *Ruleset) map[string]int {
		return (&Ruleset{Base: rs.Base, Services: rs.Services}).RuleCount()
	}
	steps := []func(){
		func() { c.setService(1, 3, 1) },
		func() { c.setService(7, 2, 0) },
		func() { c.tr.OnService(types.NamespacedName{Namespace: "bench", Name: "svc-2"}, nil) },
		func() { c.setService(1, 0, 0) },
	}
	for i, step := range steps {
		step()
		rs := PlanFrom(prev, c.tr.Snapshot(), defaultOpts())
		if got, want := rs.RuleCount(), recount(rs); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("step %d: RuleCount %v, recount %v", i, got, want)
		}
		prev = rs
	}
}
