package nftables

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// BenchmarkShards measures the two costs the shard count trades, on the
// real kernel in a throwaway namespace holding N Services x 10 endpoints
// (N = SVCPROXY_SHARD_N, default 5,000):
//
//   - commit: a partial sync that adds one Service (new chains, and the
//     map element that goes to them), which makes the kernel revalidate
//     the chains of that Service's table;
//   - endpoint: a partial sync that replaces one endpoint of a Service
//     (sync-us/op), then the transaction that deletes what it left
//     (deferred-us/op); apply-us/op is both transactions;
//   - endpoint-paced: endpoint at one change a second, the pace of make
//     bench's churn, with caches cold between changes;
//   - restart: the first (full) sync of a new Provider over the tables
//     in place, which reads them back and writes nothing;
//   - connect: a TCP connection through a ClusterIP from the namespace
//     itself, whose first packet walks every shard's nat output chain.
//
// go test -run '^$' -bench Shards ./pkg/nftables
func BenchmarkShards(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("SVCPROXY_SHARD_N")); err == nil {
		n = v
	}
	for _, shards := range []int{1, 4, 16, 64, 256} {
		b.Run(fmt.Sprintf("N=%d/shards=%d", n, shards), func(b *testing.B) { benchShards(b, n, shards) })
	}
}

func benchShards(b *testing.B, n, shards int) {
	ns := nsutil.Name("nftsh")
	if err := nsutil.Add(ns); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	h, err := netns.GetFromName(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "10.128.0.1/32", "dev", "lo"},
		{"link", "add", "svc0", "type", "veth", "peer", "name", "svc1"}, {"link", "set", "svc0", "up"}, {"route", "add", "172.30.0.0/16", "dev", "svc0"}} {
		if out, err := nsutil.Exec(ns, "ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	tr := benchCluster(n)
	opts := PlanOptions{Family: v1.IPv4Protocol, Shards: shards, MasqueradeBit: 14, NodePortAddresses: []netip.Addr{}}
	k := NewKernelAt(v1.IPv4Protocol, int(h))
	defer k.Close()
	kernel := &timedKernel{Interface: k}
	p := NewProvider(kernel, opts)
	later := removeLeftoversByHand(p)
	start := time.Now()
	if _, err := p.Sync(tr.Snapshot()); err != nil {
		b.Fatal(err)
	}
	b.Logf("N=%d shards=%d: full sync %.2f s", n, shards, time.Since(start).Seconds())
	b.Run("commit", func(b *testing.B) {
		kernel.spent = 0
		for i := 0; b.Loop(); i++ {
			addService(tr, n+i)
			if _, err := p.Sync(tr.Snapshot()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(kernel.spent.Microseconds())/float64(b.N), "apply-us/op")
	})
	b.Run("endpoint", func(b *testing.B) {
		kernel.spent = 0
		var syncs, deletions time.Duration
		for i := 0; b.Loop(); i++ {
			replaceEndpoint(tr, 1, i)
			start := time.Now()
			if _, err := p.Sync(tr.Snapshot()); err != nil {
				b.Fatal(err)
			}
			syncs += time.Since(start)
			start = time.Now()
			later.run()
			deletions += time.Since(start)
		}
		b.ReportMetric(float64(kernel.spent.Microseconds())/float64(b.N), "apply-us/op")
		b.ReportMetric(float64(syncs.Microseconds())/float64(b.N), "sync-us/op")
		b.ReportMetric(float64(deletions.Microseconds())/float64(b.N), "deferred-us/op")
	})
	b.Run("endpoint-paced", func(b *testing.B) { benchEndpointPaced(b, tr, p, kernel, later.run) })
	b.Run("restart", func(b *testing.B) {
		for b.Loop() {
			rec := &recorder{Interface: kernel}
			if _, err := NewProvider(rec, opts).Sync(tr.Snapshot()); err != nil {
				b.Fatal(err)
			}
			if w := tablesWritten(rec.txs); len(w) > 0 {
				b.Fatalf("a restart over the planned tables wrote %v", w)
			}
		}
	})
	b.Run("connect", func(b *testing.B) { benchConnect(b, h) })
}

// benchEndpointPaced is the endpoint case at the proxy's churn pace in
// make bench, one change a second: caches go cold between changes.
func benchEndpointPaced(b *testing.B, tr *watch.Tracker, p *Provider, kernel *timedKernel, removeLeftovers func()) {
	kernel.spent = 0
	var syncs time.Duration
	for i := 0; b.Loop(); i++ {
		time.Sleep(time.Second)
		replaceEndpoint(tr, 2, i)
		start := time.Now()
		if _, err := p.Sync(tr.Snapshot()); err != nil {
			b.Fatal(err)
		}
		syncs += time.Since(start)
		removeLeftovers()
	}
	b.ReportMetric(float64(kernel.spent.Microseconds())/float64(b.N), "apply-us/op")
	b.ReportMetric(float64(syncs.Microseconds())/float64(b.N), "sync-us/op")
}

// benchCluster is n Services, each with 10 endpoints; endpoint 0 of
// Service 0 (10.128.0.1:8080) is an address of the namespace.
func benchCluster(n int) *watch.Tracker {
	tr := watchtest.Tracker(nil)
	for i := range n {
		addService(tr, i)
	}
	return tr
}

func addService(tr *watch.Tracker, i int) {
	name := fmt.Sprintf("svc-%d", i)
	s := watchtest.Service{Namespace: "ns", Name: name, ClusterIPs: []string{fmt.Sprintf("172.30.%d.%d", i/250, i%250+1)},
		Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: name}, s.Object())
	var eps []watchtest.Endpoint
	for e := range 10 {
		ip := endpointAddr(i, e)
		if i == 0 {
			ip = "10.128.0.1" // the namespace's own address: every pick lands here
		}
		eps = append(eps, watchtest.Endpoint{IP: ip, Node: "other"})
	}
	tr.OnEndpointSlice(watchtest.Slice("ns", name, name+"-1", 8080, "p", eps...), false)
}

// endpointAddr is endpoint e of Service i: every endpoint has an address
// of its own, as in make bench (10 N addresses in the hairpin set).
func endpointAddr(i, e int) string {
	x := i*10 + e + 1
	return fmt.Sprintf("10.%d.%d.%d", 132+x>>16, x>>8&255, x&255)
}

// replaceEndpoint gives Service i a first endpoint no other Service has
// (round r), as the bench's churn does: its chain is rewritten and the
// hairpin set loses one address and gains another.
func replaceEndpoint(tr *watch.Tracker, i, r int) {
	name := fmt.Sprintf("svc-%d", i)
	eps := []watchtest.Endpoint{{IP: fmt.Sprintf("10.130.%d.%d", r/250%250, r%250+1), Node: "other"}}
	for e := 1; e < 10; e++ {
		eps = append(eps, watchtest.Endpoint{IP: endpointAddr(i, e), Node: "other"})
	}
	tr.OnEndpointSlice(watchtest.Slice("ns", name, name+"-1", 8080, "p", eps...), false)
}

// benchConnect opens and closes TCP connections to Service 0's ClusterIP
// from inside the namespace; each one is DNATed by the nat output hooks.
func benchConnect(b *testing.B, h netns.NsHandle) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = netns.Set(orig) }()
	ln, err := net.Listen("tcp4", "10.128.0.1:8080")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	const perOp = 20
	for b.Loop() {
		for range perOp {
			c, err := net.DialTimeout("tcp4", "172.30.0.1:80", time.Second)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*perOp), "us/connection")
}

// timedKernel adds up the time spent in Apply.
type timedKernel struct {
	Interface
	spent time.Duration
}

func (k *timedKernel) Apply(tx *Transaction) error {
	start := time.Now()
	defer func() { k.spent += time.Since(start) }()
	return k.Interface.Apply(tx)
}
