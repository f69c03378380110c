package watch

import (
	"fmt"
	"testing"
)

// TestAwaitingEndpoints: a new Service without a slice waits for one; its
// slice's arrival, a lone endpoint change, a deletion and a Service whose
// slice came first do not; a burst above awaitingLimit always gathers.
func TestAwaitingEndpoints(t *testing.T) {
	tr := newTestTracker(t)
	if awaiting(tr) {
		t.Fatal("nothing pending, yet awaiting endpoints")
	}
	tr.OnService(nn("ns1", "new"), service("ns1", "new", "172.30.0.5", tcp("http", 80)))
	if !awaiting(tr) {
		t.Error("a new Service without a slice: not awaiting endpoints")
	}
	tr.OnEndpointSlice(endpointSlice("ns1", "new", "new-1", "http", 80, endpoint("10.0.0.1", "")), false)
	if awaiting(tr) {
		t.Error("the Service's slice arrived, yet still awaiting endpoints")
	}
	tr.Snapshot()

	tr.OnEndpointSlice(endpointSlice("ns1", "new", "new-1", "http", 80, endpoint("10.0.0.2", "")), false)
	if awaiting(tr) {
		t.Error("a lone endpoint change: awaiting endpoints")
	}
	tr.Snapshot()

	tr.OnEndpointSlice(endpointSlice("ns1", "early", "early-1", "http", 80, endpoint("10.0.0.3", "")), false)
	tr.OnService(nn("ns1", "early"), service("ns1", "early", "172.30.0.6", tcp("http", 80)))
	tr.OnService(nn("ns1", "new"), nil)
	if awaiting(tr) {
		t.Error("a Service whose slice came first and a deleted one: awaiting endpoints")
	}
	tr.Snapshot()

	for i := range awaitingLimit + 1 {
		name := fmt.Sprintf("s%d", i)
		tr.OnEndpointSlice(endpointSlice("ns2", name, name+"-1", "http", 80, endpoint("10.0.1.1", "")), false)
	}
	if !awaiting(tr) {
		t.Errorf("a burst of %d changes: not gathered", awaitingLimit+1)
	}
}

func awaiting(tr *Tracker) bool {
	a, _ := tr.AwaitingEndpoints()
	return a
}
