package ipvs

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"svcproxy.dev/svcproxy/pkg/metrics"
)

// TestDrainingGauge: the gauge counts a removed real server that still has
// connections from the sync that sets it to weight 0 until the Reap that
// deletes it.
func TestDrainingGauge(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	prov := Provider{Proxier: e.p}
	gauge := metrics.IPVSRealServersDraining.WithLabelValues(string(e.p.Family()))
	if _, err := prov.Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(gauge); got != 0 {
		t.Fatalf("nothing removed yet: gauge %v", got)
	}
	gone := ap("10.180.2.1:8080")
	e.ipvs.SetConns(vip, gone, 1, 0)
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}), false)
	if _, err := prov.Sync(tr.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(gauge); got != 1 {
		t.Errorf("a real server draining: gauge %v, want 1", got)
	}
	e.ipvs.SetConns(vip, gone, 0, 0)
	if err := prov.Reap(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(gauge); got != 0 {
		t.Errorf("after the Reap that deleted it: gauge %v, want 0", got)
	}
}
