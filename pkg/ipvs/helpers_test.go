package ipvs

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// Test objects come from watchtest, shared with the other mode's tests.
type svcSpec = watchtest.Service
type ep = watchtest.Endpoint

const testNode = watchtest.Node

var tcpPort, slice = watchtest.TCPPort, watchtest.Slice

// tracker feeds objects through a real watch.Tracker, so tests plan from
// exactly what the proxy would see.
type tracker struct{ *watch.Tracker }

func newTracker(svcs []svcSpec, slices ...*discovery.EndpointSlice) tracker {
	return tracker{watchtest.Tracker(svcs, slices...)}
}

func (t tracker) deleteService(ns, name string) {
	t.OnService(types.NamespacedName{Namespace: ns, Name: name}, nil)
}

func snapshot(t *testing.T, svcs []svcSpec, slices ...*discovery.EndpointSlice) *watch.Snapshot {
	t.Helper()
	return newTracker(svcs, slices...).Snapshot()
}

var (
	nodeIP4   = netip.MustParseAddr("192.168.0.2")
	nodeIP4b  = netip.MustParseAddr("192.168.1.2")
	nodeIP6   = netip.MustParseAddr("2001:db8::1")
	hostAddrs = []netip.Addr{nodeIP4, nodeIP4b, netip.MustParseAddr("127.0.0.1"), nodeIP6, netip.MustParseAddr("::1"), netip.MustParseAddr("fe80::2")}
)

func iptOpts() iptables.PlanOptions {
	return iptables.PlanOptions{
		Family:        v1.IPv4Protocol,
		MasqueradeBit: 14,
		LocalDetector: iptables.ClusterCIDRDetector(netip.MustParsePrefix("10.0.0.0/8")),
		NodeIP:        nodeIP4,
	}
}

func ipvsOpts() Options {
	return Options{Family: v1.IPv4Protocol, NodeIP: nodeIP4}
}

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time       { return c.t }
func (c *fakeClock) step(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

// env is a Proxier on fake kernels.
type env struct {
	p     *Proxier
	ipvs  *FakeIPVS
	link  *FakeLink
	sets  *FakeIPSets
	sys   *FakeSysctl
	ipt   *iptables.Fake
	clock *fakeClock
}

func newEnv(t *testing.T, ipt iptables.PlanOptions, opts Options) *env {
	t.Helper()
	k, fi, fl, fs, fc := NewFakeKernel(hostAddrs...)
	e := &env{ipvs: fi, link: fl, sets: fs, sys: fc, ipt: iptables.NewFake(), clock: newClock()}
	opts.Now = e.clock.now
	e.p = NewProxier(k, e.ipt, ipt, opts)
	return e
}

func (e *env) sync(t *testing.T, snap *watch.Snapshot) Result {
	t.Helper()
	res, err := e.p.Sync(snap)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}
