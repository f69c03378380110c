package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/watch"
)

func TestGatherDelay(t *testing.T) {
	d := New(Options{})
	for _, tc := range []struct{ lastPartial, want time.Duration }{
		{0, 0}, // no partial sync yet: no wait
		{15 * time.Millisecond, 1500 * time.Microsecond}, // a cheap commit: a tiny wait
		{200 * time.Millisecond, 20 * time.Millisecond},  // 5,000 Services
		{3 * time.Second, maxShareGather},                // never more than the cap
	} {
		d.lastPartial.Store(int64(tc.lastPartial))
		if got := d.GatherDelay(); got != tc.want {
			t.Errorf("last partial sync %v: gather %v, want %v", tc.lastPartial, got, tc.want)
		}
	}
}

// TestGatherDelayOnlyForAServiceWithoutEndpoints: a changed Service with
// no EndpointSlice yet waits its share of the last partial sync; its slice,
// or a lone endpoint change, waits for nothing.
func TestGatherDelayOnlyForAServiceWithoutEndpoints(t *testing.T) {
	tr := watch.NewTracker("node-a")
	d := New(Options{Tracker: tr})
	d.lastPartial.Store(int64(200 * time.Millisecond))
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	tr.OnService(name, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "172.30.0.1", ClusterIPs: []string{"172.30.0.1"}, Type: v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	})
	if got := d.GatherDelay(); got != 20*time.Millisecond {
		t.Errorf("a Service without endpoints: gather %v, want 20ms", got)
	}
	tr.OnSlice(&watch.Slice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1"}, Service: "web"}, false)
	if got := d.GatherDelay(); got != 0 {
		t.Errorf("its slice arrived: gather %v, want 0", got)
	}
}

// TestGatherDelayCoversTheSliceLag: once slices have been seen to follow
// their Services 80 ms later, a new Service waits that long and a quarter
// more, even where syncs are cheap, but never more than maxLagGather.
func TestGatherDelayCoversTheSliceLag(t *testing.T) {
	tr := watch.NewTracker("node-a")
	tr.Snapshot() // slices are learned from after the first
	d := New(Options{Tracker: tr})
	d.lastPartial.Store(int64(20 * time.Millisecond))
	svc := func(name string) *v1.Service {
		return &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: v1.ServiceSpec{ClusterIP: "172.30.0.1", ClusterIPs: []string{"172.30.0.1"}, Type: v1.ServiceTypeClusterIP,
				Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
		}
	}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "a"}, svc("a"))
	time.Sleep(80 * time.Millisecond)
	tr.OnSlice(&watch.Slice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-1"}, Service: "a"}, false)
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "b"}, svc("b"))
	_, lag := tr.AwaitingEndpoints()
	if lag < 80*time.Millisecond || lag > maxLagGather {
		t.Fatalf("slice 80 ms after its Service: lag %v", lag)
	}
	if got, want := d.GatherDelay(), lag+lag/4; got != want {
		t.Errorf("a new Service after a slice lag of %v: gather %v, want %v", lag, got, want)
	}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "c"}, svc("c"))
	time.Sleep(time.Second / 2)
	tr.OnSlice(&watch.Slice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c-1"}, Service: "c"}, false)
	if got := d.GatherDelay(); got != maxLagGather {
		t.Errorf("a slice lag of half a second: gather %v, want the cap %v", got, maxLagGather)
	}
}

// slowBackend takes a fixed time per sync and never does a full one.
type slowBackend struct{ took time.Duration }

func (b *slowBackend) Family() v1.IPFamily { return v1.IPv4Protocol }
func (b *slowBackend) Sync(*watch.Snapshot) (Result, error) {
	time.Sleep(b.took)
	return Result{}, nil
}
func (b *slowBackend) Verify() (string, string, error) { return "", "", nil }
func (b *slowBackend) ForceFull()                      {}

// TestGatherDelayFollowsSyncsThatWrote: a sync that wrote a change sets
// the wait; the periodic sync with nothing to write (after a quiet spell)
// leaves it alone.
func TestGatherDelayFollowsSyncsThatWrote(t *testing.T) {
	tr := watch.NewTracker("node-a")
	b := &slowBackend{took: 100 * time.Millisecond}
	d := New(Options{Tracker: tr, Providers: []Provider{b}})
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "172.30.0.1", ClusterIPs: []string{"172.30.0.1"}, Type: v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	if err := d.Sync(context.Background()); err != nil { // the first sync
		t.Fatal(err)
	}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "web"}, svc)
	if err := d.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// GatherDelay is 0 now (nothing awaits endpoints); the share it takes
	// is of lastPartial.
	wrote := time.Duration(d.lastPartial.Load())
	if wrote < 100*time.Millisecond || wrote > time.Second {
		t.Fatalf("the sync that wrote a Service took 100 ms; lastPartial %v", wrote)
	}
	b.took = time.Millisecond
	if err := d.Sync(context.Background()); err != nil { // nothing changed
		t.Fatal(err)
	}
	if got := time.Duration(d.lastPartial.Load()); got != wrote {
		t.Errorf("a sync with nothing to write changed lastPartial from %v to %v", wrote, got)
	}
}

// scriptedBackend fails the syncs it is told to, reports drift when told
// to, and counts what the daemon asked of it.
type scriptedBackend struct {
	fail       error
	drift      string
	syncs      int
	forceFulls int
}

func (b *scriptedBackend) Family() v1.IPFamily { return v1.IPv4Protocol }
func (b *scriptedBackend) Sync(*watch.Snapshot) (Result, error) {
	b.syncs++
	return Result{}, b.fail
}
func (b *scriptedBackend) Verify() (string, string, error) { return b.drift, "detail", nil }
func (b *scriptedBackend) ForceFull()                      { b.forceFulls++ }

// TestFailedSyncIsTheBackendsToRepair: a failed sync is reported and
// counted; full-versus-partial stays the backend's own business (the
// Backend contract), so the daemon forces nothing.
func TestFailedSyncIsTheBackendsToRepair(t *testing.T) {
	b := &scriptedBackend{fail: errors.New("restore failed")}
	d := New(Options{Tracker: watch.NewTracker("node-a"), Providers: []Provider{b}})
	failures := testutil.ToFloat64(metrics.SyncProxyRulesSyncFailuresTotal.WithLabelValues("IPv4"))
	if err := d.Sync(context.Background()); err == nil {
		t.Fatal("a failing backend's error was not returned")
	}
	if got := testutil.ToFloat64(metrics.SyncProxyRulesSyncFailuresTotal.WithLabelValues("IPv4")); got != failures+1 {
		t.Errorf("sync failures counted %v, want %v", got, failures+1)
	}
	b.fail = nil
	if err := d.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.syncs != 2 || b.forceFulls != 0 {
		t.Errorf("syncs %d, ForceFull calls %d; want 2 and 0", b.syncs, b.forceFulls)
	}
}

// TestDriftForcesFullAndRepair: drift found between syncs makes the
// backend's next sync full, asks for that sync and is counted by reason.
func TestDriftForcesFullAndRepair(t *testing.T) {
	b := &scriptedBackend{drift: "chain"}
	repairs := 0
	d := New(Options{Tracker: watch.NewTracker("node-a"), Providers: []Provider{b}, Repair: func() { repairs++ }})
	before := testutil.ToFloat64(metrics.SyncProxyRulesDriftRepairsTotal.WithLabelValues("chain", "IPv4"))
	d.checkDrift()
	if b.forceFulls != 1 || repairs != 1 {
		t.Errorf("after drift: ForceFull %d, repairs asked %d; want 1 and 1", b.forceFulls, repairs)
	}
	if got := testutil.ToFloat64(metrics.SyncProxyRulesDriftRepairsTotal.WithLabelValues("chain", "IPv4")); got != before+1 {
		t.Errorf("drift repairs counted %v, want %v", got, before+1)
	}
	b.drift = ""
	d.checkDrift()
	if b.forceFulls != 1 || repairs != 1 {
		t.Errorf("no drift, yet ForceFull %d, repairs %d", b.forceFulls, repairs)
	}
}
