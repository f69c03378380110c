package watch

import (
	"fmt"
	"testing"
	"time"
)

// TestSliceLagLearnsTheGap: the gap between a new Service and its first
// slice is learned; an update of either, a slice that came first, a slice
// much later than maxLagSample and a deleted Service teach nothing; the
// longest of the last lagSamples gaps is reported, so one long gap ages out.
func TestSliceLagLearnsTheGap(t *testing.T) {
	var l sliceLag
	t0 := time.Unix(1000, 0)
	web, db := nn("ns", "web"), nn("ns", "db")
	if got := l.max(); got != 0 {
		t.Fatalf("nothing learned yet: lag %v, want 0", got)
	}
	l.serviceAdded(web, t0)
	l.sliceAdded(web, t0.Add(80*time.Millisecond))
	l.sliceAdded(web, t0.Add(900*time.Millisecond)) // a second slice
	if got := l.max(); got != 80*time.Millisecond {
		t.Errorf("one Service, its slice 80ms later and a second slice: lag %v, want 80ms", got)
	}
	l.serviceAdded(db, t0)
	l.forget(db)
	l.sliceAdded(db, t0.Add(500*time.Millisecond))
	l.serviceAdded(db, t0)
	l.sliceAdded(db, t0.Add(maxLagSample+time.Millisecond))
	if got := l.max(); got != 80*time.Millisecond {
		t.Errorf("a deleted Service's slice and one later than %v taught something: lag %v", maxLagSample, got)
	}
	for i := range lagSamples {
		l.serviceAdded(web, t0)
		l.sliceAdded(web, t0.Add(time.Duration(i+1)*time.Millisecond))
	}
	if got := l.max(); got != lagSamples*time.Millisecond {
		t.Errorf("after %d quicker slices: lag %v, want %v", lagSamples, got, lagSamples*time.Millisecond)
	}
}

// TestTrackerSliceLag: the Tracker learns only from a Service that
// arrived without a slice after the first Snapshot (before it, the
// informers list what exists), at the slice's arrival, and reports the lag
// while a Service awaits its slice, not for a burst.
func TestTrackerSliceLag(t *testing.T) {
	tr := NewTracker(trNode)
	tr.OnService(nn("ns", "old"), service("ns", "old", "172.30.0.4", tcp("http", 80)))
	time.Sleep(5 * time.Millisecond)
	tr.OnEndpointSlice(endpointSlice("ns", "old", "old-1", "http", 80, endpoint("10.0.0.4", "")), false)
	tr.Snapshot()
	tr.OnEndpointSlice(endpointSlice("ns", "early", "early-1", "http", 80, endpoint("10.0.0.3", "")), false)
	tr.OnService(nn("ns", "early"), service("ns", "early", "172.30.0.6", tcp("http", 80)))
	tr.OnService(nn("ns", "web"), service("ns", "web", "172.30.0.5", tcp("http", 80)))
	if awaiting, lag := tr.AwaitingEndpoints(); !awaiting || lag != 0 {
		t.Errorf("web awaits its slice, no slice followed a Service since the first Snapshot: awaiting %v, lag %v", awaiting, lag)
	}
	time.Sleep(20 * time.Millisecond)
	tr.OnService(nn("ns", "web"), service("ns", "web", "172.30.0.5", tcp("http", 81))) // an update
	tr.OnEndpointSlice(endpointSlice("ns", "web", "web-1", "http", 80, endpoint("10.0.0.1", "")), false)
	tr.Snapshot()
	tr.OnService(nn("ns", "next"), service("ns", "next", "172.30.0.7", tcp("http", 80)))
	if awaiting, lag := tr.AwaitingEndpoints(); !awaiting || lag < 20*time.Millisecond || lag > maxLagSample {
		t.Errorf("web's slice came 20ms or more after web's first arrival: awaiting %v, lag %v", awaiting, lag)
	}
	for i := range awaitingLimit + 1 {
		name := fmt.Sprintf("s%d", i)
		tr.OnEndpointSlice(endpointSlice("ns2", name, name+"-1", "http", 80, endpoint("10.0.1.1", "")), false)
	}
	if awaiting, lag := tr.AwaitingEndpoints(); !awaiting || lag != 0 {
		t.Errorf("a burst of %d changes: awaiting %v, lag %v; want true and no lag", awaitingLimit+1, awaiting, lag)
	}
}
