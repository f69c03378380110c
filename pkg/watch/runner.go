package watch

import (
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// RunnerOptions configures a Runner.
type RunnerOptions struct {
	// MinInterval is the least time between two syncs (minSyncPeriod):
	// changes arriving faster than that are coalesced into one sync.
	MinInterval time.Duration
	// MaxInterval is the most time between two syncs (syncPeriod), so a
	// sync runs periodically even when nothing changed.
	MaxInterval time.Duration
	// Burst is how many syncs may run back to back after a quiet spell
	// before MinInterval spaces them (a token bucket, as kube-proxy's
	// BoundedFrequencyRunner with its burst of 2): a Service and its
	// EndpointSlice, written a moment apart, then cost one MinInterval
	// instead of two. 0 means 1.
	Burst int
	// Gather, when set, says how long a change that could be synced at once
	// (after a quiet spell, or with a token of the burst free) waits for
	// others to join its sync. A Service and its
	// EndpointSlice are written a few milliseconds apart; without the wait
	// the Service is synced alone (a REJECT rule) and its endpoints in a
	// second sync, two kernel commits where one would do. The wait counts
	// from the first change, and never adds to a sync that MinInterval
	// holds back anyway. It is asked again at every change, so a change
	// can end the wait. The daemon sizes it from the last partial sync
	// that wrote a change, so it stays a small fraction of a commit, and
	// asks for none when no changed Service waits for its endpoints.
	Gather func() time.Duration
	// InitialBackoff is the first retry delay after a failed sync; it
	// doubles on each further failure, up to MaxInterval. A retry still
	// waits at least MinInterval.
	InitialBackoff time.Duration
	// Clock is the time source (a fake one in tests).
	Clock clock.WithTicker
}

// Runner calls a sync function when asked to, but no more often than
// MinInterval, at least every MaxInterval, and again after a failure with
// exponential backoff. It never syncs before Run's ready channel closes, so a
// backend never programs a half-filled cache.
type Runner struct {
	sync    func(context.Context) error
	trigger chan struct{}
	// wake interrupts a sleep so that new intervals take effect at once.
	wake chan struct{}

	mu   sync.Mutex
	opts RunnerOptions
}

// NewRunner returns a Runner that calls sync.
func NewRunner(sync func(context.Context) error, opts RunnerOptions) *Runner {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.MaxInterval <= 0 {
		opts.MaxInterval = 30 * time.Second
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = time.Second
	}
	opts.Burst = max(opts.Burst, 1)
	return &Runner{opts: opts, sync: sync, trigger: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
}

// SetIntervals changes MinInterval and MaxInterval of a running Runner (a
// reloaded configuration); the sleep in progress is recomputed with them.
func (r *Runner) SetIntervals(minInterval, maxInterval time.Duration) {
	r.mu.Lock()
	r.opts.MinInterval = minInterval
	if maxInterval > 0 {
		r.opts.MaxInterval = maxInterval
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Runner) options() RunnerOptions {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opts
}

// Trigger asks for a sync soon. It never blocks; several triggers before the
// next sync count as one.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run waits for ready to close, then syncs until ctx is done.
func (r *Runner) Run(ctx context.Context, ready <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-ready:
	}
	st := runnerState{pending: true}
	for r.sleep(ctx, &st) {
		// Every trigger queued so far is covered by this sync (it takes a
		// fresh Snapshot); only triggers that arrive from now on call for
		// another one. Without this, the events queued while the caches
		// filled would cause a second, empty sync right after the first.
		select {
		case <-r.trigger:
		default:
		}
		st.last = r.opts.Clock.Now()
		st.ran = true
		st.pending, st.firstChange = false, time.Time{}
		st.take(st.last, r.options())
		if err := r.sync(ctx); err != nil {
			st.backoff = r.nextBackoff(st.backoff)
		} else {
			st.backoff = 0
		}
	}
}

// sleep waits until the next sync is due, taking in triggers meanwhile. It
// returns false when ctx is done. A sync that is already due runs without a
// timer, so it never depends on the clock firing a zero-length timer.
func (r *Runner) sleep(ctx context.Context, st *runnerState) bool {
	for {
		d := r.wait(st)
		if d <= 0 {
			return ctx.Err() == nil
		}
		timer := r.opts.Clock.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-r.wake:
			timer.Stop()
		case <-r.trigger:
			timer.Stop()
			if !st.pending {
				st.pending, st.firstChange = true, r.opts.Clock.Now()
			}
		case <-timer.C():
			return true
		}
	}
}

type runnerState struct {
	ran     bool
	last    time.Time
	pending bool
	// firstChange is when the pending sync was first asked for.
	firstChange time.Time
	backoff     time.Duration // non-zero after a failure

	// tat is the token bucket as a "theoretical arrival time" (GCRA): a
	// sync may start once now >= tat - (Burst-1) x MinInterval, and each
	// sync moves tat to max(tat, now) + MinInterval. Integer time, so no
	// rounding leaves a sync a nanosecond short of its turn.
	tat time.Time
}

// take records a sync that starts now.
func (st *runnerState) take(now time.Time, opts RunnerOptions) {
	if st.tat.Before(now) {
		st.tat = now
	}
	st.tat = st.tat.Add(opts.MinInterval)
}

// nextToken is when a pending sync may start.
func (st *runnerState) nextToken(opts RunnerOptions) time.Time {
	return st.tat.Add(-time.Duration(opts.Burst-1) * opts.MinInterval)
}

// wait returns how long to sleep before the next sync.
func (r *Runner) wait(st *runnerState) time.Duration {
	if !st.ran {
		return 0
	}
	opts := r.options()
	var next time.Time
	switch {
	case st.backoff > 0:
		// A retry is a sync like any other: never sooner than MinInterval.
		next = st.last.Add(max(st.backoff, opts.MinInterval))
	case st.pending:
		next = st.nextToken(opts)
		if opts.Gather != nil && !st.firstChange.IsZero() {
			next = later(next, st.firstChange.Add(opts.Gather()))
		}
	default:
		next = st.last.Add(opts.MaxInterval)
	}
	return max(next.Sub(r.opts.Clock.Now()), 0)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (r *Runner) nextBackoff(prev time.Duration) time.Duration {
	opts := r.options()
	if prev == 0 {
		return min(opts.InitialBackoff, opts.MaxInterval)
	}
	return min(2*prev, opts.MaxInterval)
}
