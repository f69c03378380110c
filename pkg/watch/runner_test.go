package watch

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"
)

// waitFor bounds every wait for the runner goroutine; it is only reached
// when a test fails.
const waitFor = 10 * time.Second

// timerClock is a FakeClock that reports every timer the Runner creates.
// The Runner makes a timer right before it blocks, so receiving from timers
// tells the test both that the Runner is idle and how long it means to
// sleep; the unbuffered channel keeps the two goroutines in lock step.
type timerClock struct {
	*testingclock.FakeClock
	timers chan time.Duration
	done   chan struct{}
}

func (c *timerClock) NewTimer(d time.Duration) clock.Timer {
	t := c.FakeClock.NewTimer(d)
	select {
	case c.timers <- d:
	case <-c.done:
	}
	return t
}

// runnerHarness runs a Runner whose sync function reports the (fake) time
// of each call and returns the errors queued with failNext.
type runnerHarness struct {
	t      *testing.T
	clock  *timerClock
	runner *Runner
	ready  chan struct{}
	syncs  chan time.Time
	t0     time.Time

	mu   sync.Mutex
	errs []error
}

func startRunner(t *testing.T, opts RunnerOptions) *runnerHarness {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	done := make(chan struct{})
	h := &runnerHarness{
		t:     t,
		clock: &timerClock{FakeClock: testingclock.NewFakeClock(t0), timers: make(chan time.Duration), done: done},
		ready: make(chan struct{}),
		syncs: make(chan time.Time),
		t0:    t0,
	}
	opts.Clock = h.clock
	h.runner = NewRunner(func(context.Context) error {
		select {
		case h.syncs <- h.clock.Now():
		case <-done:
			return nil
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.errs) == 0 {
			return nil
		}
		err := h.errs[0]
		h.errs = h.errs[1:]
		return err
	}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		h.runner.Run(ctx, h.ready)
	}()
	t.Cleanup(func() {
		cancel()
		close(done)
		select {
		case <-exited:
		case <-time.After(waitFor):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return h
}

// failNext makes the next n syncs fail.
func (h *runnerHarness) failNext(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for range n {
		h.errs = append(h.errs, errors.New("injected sync failure"))
	}
}

// expectTimer waits for the Runner to go to sleep and checks for how long.
func (h *runnerHarness) expectTimer(want time.Duration) {
	h.t.Helper()
	select {
	case d := <-h.clock.timers:
		if d != want {
			h.t.Fatalf("Runner sleeps %v, want %v", d, want)
		}
	case at := <-h.syncs:
		h.t.Fatalf("unexpected sync at +%v, want a sleep of %v", at.Sub(h.t0), want)
	case <-time.After(waitFor):
		h.t.Fatalf("Runner did not go to sleep (want %v)", want)
	}
	if !h.clock.HasWaiters() {
		h.t.Fatal("Runner reported a timer but the clock has no waiter")
	}
}

// expectSync waits for a sync and checks the fake time it happened at.
func (h *runnerHarness) expectSync(at time.Duration) {
	h.t.Helper()
	select {
	case got := <-h.syncs:
		if got.Sub(h.t0) != at {
			h.t.Fatalf("sync at +%v, want +%v", got.Sub(h.t0), at)
		}
	case d := <-h.clock.timers:
		h.t.Fatalf("Runner went to sleep for %v, want a sync at +%v", d, at)
	case <-time.After(waitFor):
		h.t.Fatalf("no sync (want one at +%v)", at)
	}
}

// step advances the fake clock. Only call it while the Runner sleeps (after
// expectTimer): then nothing else can make it sync.
func (h *runnerHarness) step(d time.Duration) { h.clock.Step(d) }

// expectIdle checks that the Runner, asleep after expectTimer, has neither
// synced nor re-armed its timer.
func (h *runnerHarness) expectIdle() {
	h.t.Helper()
	select {
	case at := <-h.syncs:
		h.t.Fatalf("unexpected sync at +%v", at.Sub(h.t0))
	case d := <-h.clock.timers:
		h.t.Fatalf("unexpected new timer of %v", d)
	default:
	}
	if !h.clock.HasWaiters() {
		h.t.Fatal("Runner is not waiting on its timer")
	}
}

func TestRunnerNoSyncBeforeReady(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	h.runner.Trigger()
	h.runner.Trigger()
	h.step(time.Hour)
	// A negative can only be sampled: give the goroutine a few ms to
	// misbehave before ready closes.
	select {
	case at := <-h.syncs:
		t.Fatalf("sync at +%v before ready closed", at.Sub(h.t0))
	case d := <-h.clock.timers:
		t.Fatalf("timer of %v before ready closed", d)
	case <-time.After(5 * time.Millisecond):
	}
	if h.clock.HasWaiters() {
		t.Fatal("Runner armed a timer before ready closed")
	}

	// The first sync comes right away, with no timer at all, and covers
	// the triggers queued while waiting: the next wait is the periodic one.
	close(h.ready)
	h.expectSync(time.Hour)
	h.expectTimer(time.Minute)
}

func TestRunnerFirstSyncImmediately(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)
}

func TestRunnerCoalescesWithinMinInterval(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)

	h.step(300 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(700 * time.Millisecond) // due at last sync + MinInterval
	h.runner.Trigger()
	h.expectTimer(700 * time.Millisecond)
	h.step(200 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(500 * time.Millisecond)

	h.step(499 * time.Millisecond)
	h.expectIdle()
	h.step(time.Millisecond)
	h.expectSync(time.Second) // one sync for the three triggers
	h.expectTimer(time.Minute)
	h.expectIdle()

	// A trigger long after the last sync is served at once.
	h.step(5 * time.Second)
	h.runner.Trigger()
	h.expectSync(6 * time.Second)
	h.expectTimer(time.Minute)
}

func TestRunnerTriggerDuringSync(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	close(h.ready)
	// The sync is blocked handing its time to us: trigger inside it.
	select {
	case <-h.syncs:
		h.runner.Trigger()
		h.runner.Trigger()
	case <-time.After(waitFor):
		t.Fatal("no first sync")
	}
	// The Runner arms its periodic timer, then takes the trigger and
	// re-arms for last + MinInterval: the change gets its own sync.
	h.expectTimer(time.Minute)
	h.expectTimer(time.Second)
	h.step(time.Second)
	h.expectSync(time.Second)
	h.expectTimer(time.Minute)
}

func TestRunnerPeriodicSync(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)
	h.step(time.Minute - time.Millisecond)
	h.expectIdle()
	h.step(time.Millisecond)
	h.expectSync(time.Minute)
	h.expectTimer(time.Minute)
	h.step(time.Minute)
	h.expectSync(2 * time.Minute)
	h.expectTimer(time.Minute)
}

func TestRunnerBackoff(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second, InitialBackoff: time.Second})
	h.failNext(5)
	close(h.ready)
	h.expectSync(0) // fails
	h.expectTimer(time.Second)

	// A trigger during the backoff does not cut it short.
	h.step(500 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(500 * time.Millisecond)
	h.step(500 * time.Millisecond)

	at := time.Second
	for _, backoff := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second} {
		h.expectSync(at) // fails
		h.expectTimer(backoff)
		h.step(backoff)
		at += backoff
	}
	h.expectSync(at) // 25s: succeeds
	h.expectTimer(10 * time.Second)

	// After a success the backoff starts over.
	h.failNext(1)
	h.runner.Trigger()
	h.expectTimer(100 * time.Millisecond)
	h.step(100 * time.Millisecond)
	at += 100 * time.Millisecond
	h.expectSync(at) // fails
	h.expectTimer(time.Second)
	h.step(time.Second)
	h.expectSync(at + time.Second) // succeeds
	h.expectTimer(10 * time.Second)
}

func TestRunnerBackoffRespectsMinInterval(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: 5 * time.Second, MaxInterval: time.Minute, InitialBackoff: time.Second})
	h.failNext(2)
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(5 * time.Second) // not 1s: MinInterval bounds retries too
	h.step(5 * time.Second)
	h.expectSync(5 * time.Second)
	h.expectTimer(5 * time.Second) // backoff 2s, still below MinInterval
	h.step(5 * time.Second)
	h.expectSync(10 * time.Second)
	h.expectTimer(time.Minute)
}

func TestRunnerStopsWithContext(t *testing.T) {
	r := NewRunner(func(context.Context) error { t.Error("sync called"); return nil }, RunnerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		r.Run(ctx, make(chan struct{})) // never ready
	}()
	cancel()
	select {
	case <-exited:
	case <-time.After(waitFor):
		t.Fatal("Run did not return when cancelled before ready")
	}
}

func TestRunnerDefaults(t *testing.T) {
	r := NewRunner(func(context.Context) error { return nil }, RunnerOptions{})
	if r.opts.MaxInterval != 30*time.Second || r.opts.InitialBackoff != time.Second || r.opts.Clock == nil {
		t.Errorf("defaults = %+v", r.opts)
	}
	// Trigger never blocks, however often it is called.
	for range 10 {
		r.Trigger()
	}
}

// A reloaded configuration shortens syncPeriod: the sleep in progress is
// recomputed from the last sync, not finished at the old length.
func TestRunnerSetIntervals(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)
	h.step(10 * time.Second)
	h.runner.SetIntervals(2*time.Second, 30*time.Second)
	h.expectTimer(20 * time.Second)
	h.step(20 * time.Second)
	h.expectSync(30 * time.Second)
	h.expectTimer(30 * time.Second)
	h.runner.Trigger()
	h.expectTimer(2 * time.Second)
}

// With Burst 2 (kube-proxy's), a change right after a quiet sync is served
// at once; the one after that waits its MinInterval, and a steady stream
// still gets no more than one sync per MinInterval.
func TestRunnerBurst(t *testing.T) {
	h := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute, Burst: 2})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)
	h.step(100 * time.Millisecond)
	h.runner.Trigger()
	h.expectSync(100 * time.Millisecond) // the second token
	h.expectTimer(time.Minute)
	h.step(100 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(800 * time.Millisecond) // tokens spent: first sync + 1 s
	h.step(800 * time.Millisecond)
	h.expectSync(time.Second)
	h.expectTimer(time.Minute)
	h.runner.Trigger()
	h.expectTimer(time.Second)
	h.step(time.Second)
	h.expectSync(2 * time.Second)
	h.expectTimer(time.Minute)

	// After a quiet spell both tokens are back.
	h.step(10 * time.Second)
	h.runner.Trigger()
	h.expectSync(12 * time.Second)
	h.expectTimer(time.Minute)
	h.runner.Trigger()
	h.expectSync(12 * time.Second)
}

// TestRunnerGathersAfterQuietSpell: a change after a quiet spell waits
// Gather (counted from that first change) for companions, which join its
// sync; a sync that MinInterval holds back anyway waits no longer for it.
func TestRunnerGathersAfterQuietSpell(t *testing.T) {
	gather := 20 * time.Millisecond
	h := startRunner(t, RunnerOptions{MinInterval: time.Millisecond, MaxInterval: time.Minute, Burst: 2,
		Gather: func() time.Duration { return gather }})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)

	h.step(5 * time.Second) // quiet spell; the periodic timer has not fired
	h.runner.Trigger()      // the Service
	h.expectTimer(gather)
	h.step(5 * time.Millisecond)
	h.runner.Trigger() // its EndpointSlice, 5 ms later
	h.expectTimer(15 * time.Millisecond)
	h.step(15 * time.Millisecond)
	h.expectSync(5*time.Second + gather) // one sync for both
	h.expectTimer(time.Minute)

	// MinInterval holds the next sync back longer than Gather: no extra wait.
	h2 := startRunner(t, RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute,
		Gather: func() time.Duration { return gather }})
	close(h2.ready)
	h2.expectSync(0)
	h2.expectTimer(time.Minute)
	h2.step(100 * time.Millisecond)
	h2.runner.Trigger()
	h2.expectTimer(900 * time.Millisecond)
	h2.step(900 * time.Millisecond)
	h2.expectSync(time.Second)
}

// TestRunnerGatherEndsWithTheAwaitedChange: Gather is asked again at each
// change, so the change it waited for (the Service's EndpointSlice) starts
// the sync at once instead of at the end of the wait.
func TestRunnerGatherEndsWithTheAwaitedChange(t *testing.T) {
	var gather atomic.Int64
	gather.Store(int64(20 * time.Millisecond))
	h := startRunner(t, RunnerOptions{MinInterval: time.Millisecond, MaxInterval: time.Minute, Burst: 2,
		Gather: func() time.Duration { return time.Duration(gather.Load()) }})
	close(h.ready)
	h.expectSync(0)
	h.expectTimer(time.Minute)

	h.step(5 * time.Second)
	h.runner.Trigger() // a Service without endpoints
	h.expectTimer(20 * time.Millisecond)
	h.step(5 * time.Millisecond)
	gather.Store(0)    // nothing awaits endpoints any more
	h.runner.Trigger() // its EndpointSlice
	h.expectSync(5*time.Second + 5*time.Millisecond)
	h.expectTimer(time.Minute)
}
