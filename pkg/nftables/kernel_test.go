package nftables

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/testenv"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// kernelAt returns a Kernel of family in a throwaway network namespace
// and the function that runs nft there.
func kernelAt(t *testing.T, fam v1.IPFamily) (*Kernel, func(args ...string) string) {
	t.Helper()
	k, ns := kernelIn(t, fam)
	nft := func(args ...string) string {
		out, err := nsutil.Exec(ns, "nft", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	return k, nft
}

// kernelIn returns a Kernel of family in a throwaway network namespace,
// and the namespace's name.
func kernelIn(t *testing.T, fam v1.IPFamily) (*Kernel, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	ns := nsutil.Name("nftk")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(ns) })
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	k := NewKernelAt(fam, int(h))
	t.Cleanup(func() { _ = k.Close() })
	return k, ns
}

func testServices() []watchtest.Service {
	return []watchtest.Service{
		{Namespace: "ns1", Name: "web", ClusterIPs: []string{"172.30.0.10"}, Type: v1.ServiceTypeLoadBalancer,
			Ports: []v1.ServicePort{watchtest.TCPPort("http", 80, 30080)}, LBIPs: []string{"5.6.7.8"},
			SourceRanges: []string{"203.0.113.0/24"}, ETPLocal: true, HealthCheckNodePort: 30900, AffinitySeconds: 60},
		{Namespace: "ns1", Name: "empty", ClusterIPs: []string{"172.30.0.11"}, Ports: []v1.ServicePort{watchtest.TCPPort("p", 81, 0)}},
		{Namespace: "ns2", Name: "api", ClusterIPs: []string{"172.30.0.12"}, Ports: []v1.ServicePort{watchtest.TCPPort("https", 443, 0)}},
	}
}

// TestKernelTakesThePlan writes a full and then a partial transaction to a
// real kernel and reads the ruleset back with nft: what the planner
// describes is what the kernel holds, and Verify sees a deleted chain.
func TestKernelTakesThePlan(t *testing.T) {
	kernel, nft := kernelAt(t, v1.IPv4Protocol)
	tr := watchtest.Tracker(testServices(), watchtest.Slice("ns1", "web", "web-1", 8080, "http",
		watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}))
	p := NewProvider(kernel, PlanOptions{Family: v1.IPv4Protocol, Shards: 4, MasqueradeBit: 14,
		LocalDetector: &LocalDetector{CIDR: mustPrefix("10.180.0.0/16")}})
	if _, err := p.Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	shard := ShardTable(ShardOf(types.NamespacedName{Namespace: "ns1", Name: "web"}, 4))
	got := nft("list", "table", "ip", shard)
	for _, want := range []string{
		"172.30.0.10 . tcp . 80 : goto service-",
		"5.6.7.8 . tcp . 80 : goto external-",
		"numgen random mod 2 0 goto endpoint-",
		"dnat to 10.180.0.1:8080",
		"update @affinity-",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("shard %s lacks %q:\n%s", shard, want, got)
		}
	}
	shared := nft("list", "table", "ip", SharedTable)
	for _, want := range []string{"172.30.0.11 . tcp . 81 : goto reject-chain", "5.6.7.8 . tcp . 80 : goto firewall-", "ip saddr 203.0.113.0/24 return"} {
		if !strings.Contains(shared, want) {
			t.Errorf("shared table lacks %q:\n%s", want, shared)
		}
	}

	tr.OnEndpointSlice(watchtest.Slice("ns1", "web", "web-1", 8080, "http", watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}), false)
	res, err := p.Sync(tr.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if res.Full {
		t.Error("an endpoint change made a full sync")
	}
	if got := nft("list", "table", "ip", shard); strings.Contains(got, "10.180.0.1") || !strings.Contains(got, "dnat to 10.180.1.1:8080") {
		t.Errorf("after removing 10.180.0.1, shard %s is:\n%s", shard, got)
	}
	if reason, _, err := p.Verify(); err != nil || reason != "" {
		t.Fatalf("Verify after a sync: %q, %v", reason, err)
	}
	nft("delete", "table", "ip", ShardTable(0))
	if reason, detail, _ := p.Verify(); reason != "table-missing" {
		t.Errorf("Verify after deleting a shard: %q (%s), want table-missing", reason, detail)
	}
}

// TestKernelShadowsThenDeletes: on the real kernel, an endpoint change
// writes its rules at the head of the Service chain, in order, ahead of
// the old ones; the second transaction leaves only the new rules and
// drops the unused hairpin element.
func TestKernelShadowsThenDeletes(t *testing.T) {
	kernel, nft := kernelAt(t, v1.IPv4Protocol)
	slice := func(ips ...string) *discoveryv1.EndpointSlice {
		var eps []watchtest.Endpoint
		for _, ip := range ips {
			eps = append(eps, watchtest.Endpoint{IP: ip, Node: "other"})
		}
		return watchtest.Slice("ns2", "api", "api-1", 8443, "https", eps...)
	}
	// An external IP gives the Service a chain of its own (see picked).
	svcs := testServices()
	svcs[2].ExternalIPs = []string{"192.0.2.12"}
	tr := watchtest.Tracker(svcs, slice("10.180.1.1", "10.180.2.1"))
	p := NewProvider(kernel, PlanOptions{Family: v1.IPv4Protocol, Shards: 4, MasqueradeBit: 14})
	later := removeLeftoversByHand(p)
	if _, err := p.Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	tr.OnEndpointSlice(slice("10.180.2.1", "10.180.3.1"), false)
	if _, err := p.Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	shard := ShardTable(ShardOf(types.NamespacedName{Namespace: "ns2", Name: "api"}, 4))
	chain := p.Applied().Services.Get("ns2/api").Chains[0].Name
	dnats := func() []string {
		var out []string
		for _, l := range strings.Split(nft("list", "chain", "ip", shard, chain), "\n") {
			if i := strings.Index(l, "dnat to "); i >= 0 {
				out = append(out, strings.TrimSpace(l[i+len("dnat to "):]))
			}
		}
		return out
	}
	if got, want := dnats(), []string{"10.180.2.1:8443", "10.180.3.1:8443", "10.180.1.1:8443", "10.180.2.1:8443"}; !slices.Equal(got, want) {
		t.Errorf("before the second transaction, %s DNATs to %v, want %v", chain, got, want)
	}
	if hp := nft("list", "set", "ip", SharedTable, setHairpin); !strings.Contains(hp, "10.180.1.1 . 10.180.1.1") {
		t.Errorf("the hairpin element of 10.180.1.1 went with the sync:\n%s", hp)
	}
	later.run()
	if got, want := dnats(), []string{"10.180.2.1:8443", "10.180.3.1:8443"}; !slices.Equal(got, want) {
		t.Errorf("after the second transaction, %s DNATs to %v, want %v", chain, got, want)
	}
	if hp := nft("list", "set", "ip", SharedTable, setHairpin); strings.Contains(hp, "10.180.1.1") || !strings.Contains(hp, "10.180.3.1 . 10.180.3.1") {
		t.Errorf("hairpin set after the second transaction:\n%s", hp)
	}
}

// TestKernelRestartKeepsTables: on the real kernel, a restarted provider
// reads every table back (rule stamps, hooks, set shapes, elements),
// finds them as planned and writes nothing; it drops owned tables it does
// not plan; after `nft flush chain` on a Service chain it rewrites that
// shard alone.
func TestKernelRestartKeepsTables(t *testing.T) {
	kernel, nft := kernelAt(t, v1.IPv4Protocol)
	tr := watchtest.Tracker(testServices(), watchtest.Slice("ns1", "web", "web-1", 8080, "http",
		watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.1", Node: "other"}),
		watchtest.Slice("ns2", "api", "api-1", 8443, "https", watchtest.Endpoint{IP: "10.180.2.1", Node: "other"}))
	opts := PlanOptions{Family: v1.IPv4Protocol, Shards: 4, MasqueradeBit: 14,
		LocalDetector:     &LocalDetector{CIDR: mustPrefix("10.180.0.0/16")},
		NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	if _, err := NewProvider(kernel, opts).Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	restart := func() []string {
		t.Helper()
		rec := &recorder{Interface: kernel}
		if _, err := NewProvider(rec, opts).Sync(tr.Snapshot()); err != nil {
			t.Fatal(err)
		}
		return tablesWritten(rec.txs)
	}
	if written := restart(); len(written) != 0 {
		t.Fatalf("a restart over the planned tables wrote %v", written)
	}
	// Tables this mode owns but does not plan go: a shard beyond the
	// count (empty), and kube-proxy's table (with a chain and a set).
	nft("add", "table", "ip", ShardTable(77))
	nft("add", "table", "ip", KubeProxyTable)
	nft("add", "chain", "ip", KubeProxyTable, "services")
	nft("add", "set", "ip", KubeProxyTable, "cluster-ips", "{ type ipv4_addr ; }")
	if written := restart(); !slices.Equal(written, []string{KubeProxyTable, ShardTable(77)}) {
		t.Errorf("with two unplanned tables, the full sync wrote %v, want them dropped alone", written)
	}
	if got := nft("list", "tables"); strings.Contains(got, ShardTable(77)) || strings.Contains(got, KubeProxyTable) {
		t.Errorf("unplanned tables left:\n%s", got)
	}
	// ns2/api has one endpoint: its shard's pick-1 chain and one element
	// of the shard's endpoint map serve it.
	shard := ShardTable(ShardOf(types.NamespacedName{Namespace: "ns2", Name: "api"}, 4))
	nft("flush", "chain", "ip", shard, pickChain(1))
	if written := restart(); !slices.Equal(written, []string{shard}) {
		t.Errorf("after nft flush chain %s, the full sync wrote %v, want %s alone", pickChain(1), written, shard)
	}
	nft("delete", "element", "ip", shard, mapEndpointPicks, "{ 172.30.0.12 . tcp . 443 . 0x0 }")
	if written := restart(); !slices.Equal(written, []string{shard}) {
		t.Errorf("after nft delete element, the full sync wrote %v, want %s alone", written, shard)
	}
	if got := nft("list", "map", "ip", shard, mapEndpointPicks); !strings.Contains(got, "10.180.2.1 . 8443") {
		t.Errorf("map %s after the repair:\n%s", mapEndpointPicks, got)
	}
}
