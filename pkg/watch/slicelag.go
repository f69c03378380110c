package watch

import (
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// sliceLag learns how long a new Service's first EndpointSlice takes to
// follow it. The EndpointSlice controller writes the slice after it sees
// the Service, so the two arrive one API round trip apart: a few
// milliseconds on an idle control plane, tens of milliseconds on a busy
// one. A sync waits that long for the slice (Tracker.AwaitingEndpoints), so the
// Service and its endpoints cost one kernel write, not two.
//
// It is not safe for concurrent use; the Tracker's lock guards it.
type sliceLag struct {
	since  map[types.NamespacedName]time.Time // new Services without a slice yet
	recent [lagSamples]time.Duration          // ring of the last gaps
	next   int
}

const (
	// lagSamples is how many recent gaps max looks at: enough to ride
	// out one quick arrival, few enough to follow a control plane that
	// slows down or recovers.
	lagSamples = 8
	// maxLagSample is the longest gap that counts as a slice following its
	// Service; a slice written later than this (by hand, for a Service
	// without a selector) says nothing about the controller's lag.
	maxLagSample = time.Second
)

// serviceAdded notes a Service that arrived without a slice.
func (l *sliceLag) serviceAdded(name types.NamespacedName, now time.Time) {
	if l.since == nil {
		l.since = map[types.NamespacedName]time.Time{}
	}
	l.since[name] = now
}

// forget drops a deleted Service.
func (l *sliceLag) forget(name types.NamespacedName) { delete(l.since, name) }

// sliceAdded notes a slice's arrival and learns the gap if its Service
// was waiting for it.
func (l *sliceLag) sliceAdded(name types.NamespacedName, now time.Time) {
	at, ok := l.since[name]
	if !ok {
		return
	}
	delete(l.since, name)
	if gap := now.Sub(at); gap >= 0 && gap <= maxLagSample {
		l.recent[l.next%lagSamples] = gap
		l.next++
	}
}

// max returns the longest of the recent gaps, 0 before the first.
func (l *sliceLag) max() time.Duration {
	var m time.Duration
	for _, g := range l.recent {
		m = max(m, g)
	}
	return m
}
