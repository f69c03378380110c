package nftables

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

var update = flag.Bool("update", false, "rewrite golden files")

func testOptions() PlanOptions {
	return PlanOptions{Family: v1.IPv4Protocol, Shards: 4, MasqueradeBit: 14,
		LocalDetector:     &LocalDetector{CIDR: netip.MustParsePrefix("10.180.0.0/16")},
		NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")},
		ServiceCIDRs:      []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16")}}
}

func syncOrFail(t *testing.T, p *Provider, snap *watch.Snapshot) {
	t.Helper()
	if _, err := p.Sync(snap); err != nil {
		t.Fatal(err)
	}
}

// TestPlanGolden pins the whole layout of a small cluster (a load balancer
// with source ranges, Local external policy and affinity; a Service
// without endpoints; a ClusterIP Service sharing an endpoint with the
// first) as the validating fake holds it after a full sync.
func TestPlanGolden(t *testing.T) {
	tr := watchtest.Tracker(testServices(), watchtest.Slice("ns1", "web", "web-1", 8080, "http",
		watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}),
		watchtest.Slice("ns2", "api", "api-1", 8443, "https",
			watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}, watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}))
	fake := NewFake()
	syncOrFail(t, NewProvider(fake, testOptions()), tr.Snapshot())
	got := fake.Dump()
	path := filepath.Join("testdata", "layout.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("layout differs from %s (run with -update to rewrite); got:\n%s", path, got)
	}
}

// clusterOf is n ClusterIP Services, each with two endpoints.
func clusterOf(n int) *watch.Tracker {
	var svcs []watchtest.Service
	tr := watchtest.Tracker(nil)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		svcs = append(svcs, watchtest.Service{Namespace: "ns", Name: name,
			ClusterIPs: []string{fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)}, Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}})
	}
	for _, s := range svcs {
		tr.OnService(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, s.Object())
		tr.OnEndpointSlice(watchtest.Slice("ns", s.Name, s.Name+"-1", 8080, "p",
			watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}), false)
	}
	return tr
}

// TestOneEndpointChangeCostFlat: removing one endpoint writes the same
// ops whether the cluster has 50 Services or 2,000.
func TestOneEndpointChangeCostFlat(t *testing.T) {
	ops := map[int]string{}
	for _, n := range []int{50, 2000} {
		tr := clusterOf(n)
		fake := NewFake()
		p := NewProvider(fake, testOptions())
		removeLeftoversByHand(p)
		syncOrFail(t, p, tr.Snapshot())
		tr.OnEndpointSlice(watchtest.Slice("ns", "svc-7", "svc-7-1", 8080, "p", watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}), false)
		res, err := p.Sync(tr.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		if res.Full {
			t.Fatalf("N=%d: an endpoint change made a full sync", n)
		}
		ops[n] = fmt.Sprint(fake.LastOps, res.Written)
	}
	if ops[50] != ops[2000] {
		t.Errorf("ops of one endpoint change: %s at 50 Services, %s at 2,000", ops[50], ops[2000])
	}
	t.Logf("one endpoint change: ops, rules written = %s", ops[50])
}

// TestPickedServiceChangesElementsOnly: a Service port served by its
// shard's pick chains changes endpoints by map elements alone; no chain
// is written, flushed or deleted.
func TestPickedServiceChangesElementsOnly(t *testing.T) {
	tr := clusterOf(50)
	rec := &recorder{Interface: NewFake()}
	p := NewProvider(rec, testOptions())
	removeLeftoversByHand(p)
	syncOrFail(t, p, tr.Snapshot())
	for _, eps := range [][]string{{"10.180.1.1", "10.180.2.1"}, {"10.180.1.1"}, {"10.180.3.1", "10.180.4.1", "10.180.5.1"}} {
		var list []watchtest.Endpoint
		for _, ip := range eps {
			list = append(list, watchtest.Endpoint{IP: ip, Node: "other"})
		}
		tr.OnEndpointSlice(watchtest.Slice("ns", "svc-7", "svc-7-1", 8080, "p", list...), false)
		rec.txs = nil
		syncOrFail(t, p, tr.Snapshot())
		var kinds []string
		for _, tx := range rec.txs {
			for _, op := range tx.Ops {
				if op.Elem == nil {
					t.Errorf("endpoints %v: the sync writes %s of %s", eps, op.Kind, op.table())
					continue
				}
				kinds = append(kinds, op.Kind.String()+" "+op.Elem.Set)
			}
		}
		if !slices.ContainsFunc(kinds, func(k string) bool { return strings.HasSuffix(k, " "+mapEndpointPicks) }) {
			t.Errorf("endpoints %v: the sync wrote %v, no element of %s", eps, kinds, mapEndpointPicks)
		}
	}
}

// TestDeltasMatchAFullSync applies a run of changes as partial syncs and
// compares the fake's tables, after each, with a fresh full sync of the
// same snapshot: deltas must leave exactly what a rewrite would.
func TestDeltasMatchAFullSync(t *testing.T) {
	tr := watchtest.Tracker(testServices())
	fake := NewFake()
	p := NewProvider(fake, testOptions())
	syncOrFail(t, p, tr.Snapshot())
	web := testServices()[0]
	steps := []struct {
		name string
		do   func()
	}{
		{"endpoints arrive", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns1", "web", "web-1", 8080, "http",
				watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}), false)
		}},
		{"local endpoint leaves", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns1", "web", "web-1", 8080, "http", watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}), false)
		}},
		{"policies back to Cluster, no affinity", func() {
			s := web
			s.ETPLocal, s.AffinitySeconds, s.SourceRanges = false, 0, nil
			tr.OnService(types.NamespacedName{Namespace: "ns1", Name: "web"}, s.Object())
		}},
		{"affinity timeout changes", func() {
			s := web
			s.AffinitySeconds = 30
			tr.OnService(types.NamespacedName{Namespace: "ns1", Name: "web"}, s.Object())
		}},
		{"empty Service gets an endpoint", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns1", "empty", "empty-1", 81, "p", watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}), false)
		}},
		{"api shares 10.180.1.1 with web", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns2", "api", "api-1", 8443, "https",
				watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}, watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}), false)
		}},
		{"api gets an external IP: a chain of its own", func() {
			s := testServices()[2]
			s.ExternalIPs = []string{"192.0.2.12"}
			tr.OnService(types.NamespacedName{Namespace: "ns2", Name: "api"}, s.Object())
		}},
		{"api reached by its ClusterIP alone again: picked", func() {
			tr.OnService(types.NamespacedName{Namespace: "ns2", Name: "api"}, testServices()[2].Object())
		}},
		{"api has more endpoints than maxPicks: a chain", func() {
			var eps []watchtest.Endpoint
			for i := range maxPicks + 1 {
				eps = append(eps, watchtest.Endpoint{IP: fmt.Sprintf("10.181.0.%d", i+1), Node: "other"})
			}
			tr.OnEndpointSlice(watchtest.Slice("ns2", "api", "api-1", 8443, "https", eps...), false)
		}},
		{"api back to two endpoints: picked", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns2", "api", "api-1", 8443, "https",
				watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}, watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}), false)
		}},
		{"web deleted", func() { tr.OnService(types.NamespacedName{Namespace: "ns1", Name: "web"}, nil) }},
		{"api loses 10.180.1.1", func() {
			tr.OnEndpointSlice(watchtest.Slice("ns2", "api", "api-1", 8443, "https", watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}), false)
		}},
	}
	for _, step := range steps {
		step.do()
		snap := tr.Snapshot()
		if _, err := p.Sync(snap); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		p.Settle()
		fresh := NewFake()
		syncOrFail(t, NewProvider(fresh, testOptions()), snap)
		if got, want := fake.Dump(), fresh.Dump(); got != want {
			t.Fatalf("%s: after the delta the tables differ from a full sync:\n%s", step.name, lineDiff(got, want))
		}
	}
}

func lineDiff(got, want string) string {
	var b strings.Builder
	wantLines := map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		wantLines[l] = true
	}
	gotLines := map[string]bool{}
	for _, l := range strings.Split(got, "\n") {
		gotLines[l] = true
		if !wantLines[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if !gotLines[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	return b.String()
}

// TestFakeRefusesWhatTheKernelRefuses: a jump to a missing chain, an
// element in a missing set and deleting a chain still in use fail, and a
// failed transaction changes nothing.
func TestFakeRefusesWhatTheKernelRefuses(t *testing.T) {
	base := []Op{{Kind: ResetTable, Table: "t"}, {Kind: AddChain, Chain: &Chain{Table: "t", Name: "a"}},
		{Kind: AddSet, Set: &Set{Table: "t", Name: "m", Key: KeyDestPort, Map: true}}}
	goB := Goto("b")
	cases := map[string]Op{
		"jump to a missing chain":  {Kind: AddRules, Chain: &Chain{Table: "t", Name: "a", Rules: []Rule{{Jump("b")}}}},
		"element of a missing set": {Kind: AddElem, Elem: &Elem{Table: "t", Set: "nope", Key: ElemKey{Addr: netip.MustParseAddr("1.2.3.4")}}},
		"map element to a missing chain": {Kind: AddElem, Elem: &Elem{Table: "t", Set: "m",
			Key: ElemKey{Addr: netip.MustParseAddr("1.2.3.4"), Proto: "tcp", Port: 80}, Verdict: &goB}},
		"plain element in a map": {Kind: AddElem, Elem: &Elem{Table: "t", Set: "m", Key: ElemKey{Addr: netip.MustParseAddr("1.2.3.4"), Proto: "tcp", Port: 80}}},
		"wrong key shape":        {Kind: AddElem, Elem: &Elem{Table: "t", Set: "m", Key: ElemKey{Addr: netip.MustParseAddr("1.2.3.4")}, Verdict: &Drop}},
		"chain added twice":      {Kind: AddChain, Chain: &Chain{Table: "t", Name: "a"}},
		"delete a missing chain": {Kind: DelChain, Chain: &Chain{Table: "t", Name: "b"}},
	}
	for name, op := range cases {
		fake := NewFake()
		if err := fake.Apply(&Transaction{Ops: base}); err != nil {
			t.Fatal(err)
		}
		before := fake.Dump()
		if err := fake.Apply(&Transaction{Ops: []Op{{Kind: AddChain, Chain: &Chain{Table: "t", Name: "c"}}, op}}); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if fake.Dump() != before {
			t.Errorf("%s: a refused transaction changed the tables", name)
		}
	}
	fake := NewFake()
	inUse := append(base, Op{Kind: AddChain, Chain: &Chain{Table: "t", Name: "b"}},
		Op{Kind: AddRules, Chain: &Chain{Table: "t", Name: "a", Rules: []Rule{{Goto("b")}}}})
	if err := fake.Apply(&Transaction{Ops: append(inUse, Op{Kind: DelChain, Chain: &Chain{Table: "t", Name: "b"}})}); err == nil {
		t.Error("deleting a chain in use was accepted")
	}
}

// TestTotalsKeptAcrossDeltas: the rule and no-local-endpoint counts a
// sync reports after deltas equal those of a full plan.
func TestTotalsKeptAcrossDeltas(t *testing.T) {
	s := testServices()
	tr := watchtest.Tracker(s, watchtest.Slice("ns1", "web", "web-1", 8080, "http", watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}))
	p := NewProvider(NewFake(), testOptions())
	syncOrFail(t, p, tr.Snapshot())
	tr.OnService(types.NamespacedName{Namespace: "ns1", Name: "empty"}, nil)
	tr.OnEndpointSlice(watchtest.Slice("ns2", "api", "api-1", 8443, "https", watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}), false)
	snap := tr.Snapshot()
	got, err := p.Sync(snap)
	if err != nil {
		t.Fatal(err)
	}
	want, err := NewProvider(NewFake(), testOptions()).Sync(snap)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rules["nftables"] != want.Rules["nftables"] || got.NoLocalExternal != want.NoLocalExternal || got.NoLocalExternal != 1 {
		t.Errorf("after deltas: rules %d, no-local external %d; a full plan: %d, %d (want 1)",
			got.Rules["nftables"], got.NoLocalExternal, want.Rules["nftables"], want.NoLocalExternal)
	}
}

// byHand holds a Provider's leftover removals until run.
type byHand struct{ queued []func() }

func removeLeftoversByHand(p *Provider) *byHand {
	h := &byHand{}
	p.runLater = func(f func()) { h.queued = append(h.queued, f) }
	return h
}

func (h *byHand) run() {
	for _, f := range h.queued {
		f()
	}
	h.queued = nil
}

// recorder keeps the transactions applied.
type recorder struct {
	Interface
	txs []*Transaction
}

func (r *recorder) Apply(tx *Transaction) error {
	r.txs = append(r.txs, tx)
	return r.Interface.Apply(tx)
}

// TestEndpointChangesDeleteLater: a partial sync that replaces endpoints
// deletes nothing (its new rules go ahead of the old ones, which they
// shadow, and an unused hairpin element stays); the second transaction
// then leaves exactly what a full sync writes, with the rules of the
// latest sync even when two syncs ran before it, and a hairpin address a
// Service takes again before its deletion is not added twice.
func TestEndpointChangesDeleteLater(t *testing.T) {
	tr := clusterOf(50)
	// An external IP gives svc-7 a chain of its own (see picked).
	svc7 := watchtest.Service{Namespace: "ns", Name: "svc-7", ClusterIPs: []string{"172.30.0.8"}, ExternalIPs: []string{"192.0.2.7"},
		Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "svc-7"}, svc7.Object())
	fake := NewFake()
	rec := &recorder{Interface: fake}
	p := NewProvider(rec, testOptions())
	later := removeLeftoversByHand(p)
	syncOrFail(t, p, tr.Snapshot())
	endpoints := func(ips ...string) {
		var eps []watchtest.Endpoint
		for _, ip := range ips {
			eps = append(eps, watchtest.Endpoint{IP: ip, Node: "other"})
		}
		tr.OnEndpointSlice(watchtest.Slice("ns", "svc-7", "svc-7-1", 8080, "p", eps...), false)
	}
	sync := func(step string) {
		t.Helper()
		rec.txs = nil
		syncOrFail(t, p, tr.Snapshot())
		for _, tx := range rec.txs {
			for _, op := range tx.Ops {
				if op.Kind == FlushChain || op.Kind == DelElem || op.Kind == DelChain || op.Kind == DelSet {
					t.Errorf("%s: the sync deletes (%s)", step, op.Kind)
				}
			}
		}
		svc := p.Applied().Services.Get("ns/svc-7").Chains[0]
		if got := fakeChain(fake, svc); len(got) < len(svc.Rules) || fmt.Sprint(got[:len(svc.Rules)]) != fmt.Sprint(svc.Rules) {
			t.Errorf("%s: chain %s does not start with the planned rules:\n%v\nplanned:\n%v", step, svc.Name, got, svc.Rules)
		}
	}
	matchesFullSync := func(step string) {
		t.Helper()
		fresh := NewFake()
		syncOrFail(t, NewProvider(fresh, testOptions()), tr.Snapshot())
		if got, want := fake.Dump(), fresh.Dump(); got != want {
			t.Errorf("%s: the tables differ from a full sync:\n%s", step, lineDiff(got, want))
		}
	}
	endpoints("10.180.1.1", "10.199.0.1")
	sync("a new address")
	later.run()
	matchesFullSync("a new address, leftovers removed")

	endpoints("10.180.1.1", "10.199.0.2")
	sync("10.199.0.1 replaced")
	endpoints("10.199.0.1", "10.199.0.3")
	sync("10.199.0.1 back before its element went")
	if len(later.queued) != 2 {
		t.Fatalf("%d removals queued, want one per sync", len(later.queued))
	}
	later.run()
	matchesFullSync("two syncs, then their leftovers removed")
}

func fakeChain(f *Fake, c *Chain) []Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tables[c.Table].chains[c.Name].Rules
}

// tablesWritten lists the tables the non-empty transactions wrote.
func tablesWritten(txs []*Transaction) []string {
	var out []string
	for _, tx := range txs {
		for _, op := range tx.Ops {
			if t := op.table(); !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	return out
}

// TestFullSyncRewritesOnlyTablesThatDiffer: a restarted provider finds
// every table as planned and writes nothing; after an element of a
// Service's endpoint map and a hairpin element are deleted behind its
// back, the next full
// sync rewrites that shard and the shared table only, and leaves what a
// fresh full sync leaves.
func TestFullSyncRewritesOnlyTablesThatDiffer(t *testing.T) {
	tr := watchtest.Tracker(testServices(), watchtest.Slice("ns2", "api", "api-1", 8443, "https",
		watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}, watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}))
	fake := NewFake()
	syncOrFail(t, NewProvider(fake, testOptions()), tr.Snapshot())
	want := fake.Dump()

	restart := func() []string {
		t.Helper()
		rec := &recorder{Interface: fake}
		p := NewProvider(rec, testOptions())
		if res, err := p.Sync(tr.Snapshot()); err != nil || !res.Full {
			t.Fatalf("first sync after a restart: full=%v, %v", res.Full, err)
		}
		return tablesWritten(rec.txs)
	}
	if written := restart(); len(written) != 0 {
		t.Errorf("a restart over the planned tables wrote %v", written)
	}

	pick := apiPick(t, tr)
	if err := fake.Apply(&Transaction{Ops: []Op{{Kind: DelElem, Elem: pick},
		{Kind: DelElem, Elem: hairpinElem(netip.MustParseAddr("10.180.2.1"))}}}); err != nil {
		t.Fatal(err)
	}
	if written, want := restart(), []string{SharedTable, pick.Table}; !slices.Equal(written, want) {
		t.Errorf("after two elements were deleted, the full sync wrote %v, want %v", written, want)
	}
	if got := fake.Dump(); got != want {
		t.Errorf("after the repair the tables differ from the planned ones:\n%s", lineDiff(got, want))
	}
}

// apiPick is an element of ns2/api's endpoint map as planned.
func apiPick(t *testing.T, tr *watch.Tracker) *Elem {
	t.Helper()
	p := NewProvider(NewFake(), testOptions())
	syncOrFail(t, p, tr.Snapshot())
	for _, e := range p.Applied().Services.Get("ns2/api").Elems {
		if e.Set == mapEndpointPicks {
			return e
		}
	}
	t.Fatal("ns2/api has no element in " + mapEndpointPicks)
	return nil
}
