// Package proxy runs the sync loop: it takes Snapshots from the watch
// Tracker when the Runner says so, hands them to every provider (one per IP
// family), and reports the outcome to metrics and the health servers. It
// holds no kernel logic of its own.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/health"
	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Provider programs one IP family of the kernel from Snapshots: a proxy
// mode (iptables.Provider, ipvs.Provider) as the sync loop sees it.
//
// The provider alone decides between a full and a partial sync: its first
// Sync is full, and so is the Sync after any failed one (snap's change set
// is consumed by the failed Sync, so the next must not trust its idea of
// the kernel) and after ForceFull. Otherwise it writes only what
// snap.Changed names.
type Provider interface {
	// Family is the IP family the provider programs.
	Family() v1.IPFamily
	// Sync makes the kernel match snap. After an error the next Sync is
	// a full one.
	Sync(snap *watch.Snapshot) (Result, error)
	// Verify looks for drift between the kernel and the last successful
	// sync; a non-empty reason means the next Sync must rewrite everything.
	// It runs beside Sync (reading a large table takes seconds), so it must
	// not report as drift a change that a concurrent Sync made.
	Verify() (reason, detail string, err error)
	// ForceFull makes the next Sync a full one.
	ForceFull()
}

// Result is what a provider reports about one successful sync.
type Result struct {
	Full         bool
	PayloadBytes int
	// Rules counts the rules (or real servers) per table after the sync.
	Rules map[string]int
	// Written counts the rules this sync wrote, per table.
	Written map[string]int
	// NoLocalInternal and NoLocalExternal count the Service ports whose
	// Local traffic policy finds no local endpoint.
	NoLocalInternal, NoLocalExternal int
	// KernelCalls counts the sync's calls into the kernel by kind
	// (kubeproxy_sync_kernel_calls_total).
	KernelCalls map[string]int
}

// Options configures a Daemon.
type Options struct {
	Tracker   *watch.Tracker
	Providers []Provider
	Health    *health.ProxyHealthServer
	SvcHealth *health.ServiceHealthServer
	// SyncPeriod is how often the kernel is checked for drift.
	SyncPeriod time.Duration
	// Repair asks for a sync soon (the Runner's Trigger); drift found
	// between syncs is repaired by it.
	Repair func()
	// OnSynced is called after each successful sync (for conntrack
	// cleanup); full says a provider rewrote its rules from a read of the
	// kernel (start-up, repair of drift, a Node change).
	OnSynced func(snap *watch.Snapshot, full bool)
}

// Daemon is the sync loop.
type Daemon struct {
	opts Options

	mu sync.Mutex // held by Sync, and by the drift check to force a full sync

	syncPeriod    atomic.Int64 // time.Duration; a reloaded config changes it
	periodChanged chan struct{}
	// lastPartial is how long the last partial sync that wrote a change
	// took, all providers together (time.Duration): the cost of writing a
	// change, which GatherDelay keeps a small fraction of.
	lastPartial atomic.Int64
}

// Gathering a Service's companion (its EndpointSlice) before a sync costs
// at most this share of the last partial sync, capped at maxShareGather;
// or, if longer, the time slices have lately taken to follow their
// Services, with a quarter more for jitter, capped at maxLagGather. The
// second cap bounds how late a Service whose slice never comes (one
// without a selector) gets its REJECT, and how long the changes that
// arrive meanwhile wait; a control plane slower than that costs two
// writes, as it would without the wait.
const (
	gatherShare    = 10
	maxShareGather = 50 * time.Millisecond
	maxLagGather   = 200 * time.Millisecond
)

// GatherDelay is how long a change that arrives after a quiet spell waits
// for others to join its sync (watch.RunnerOptions.Gather): while a changed
// Service waits for its EndpointSlice (Tracker.AwaitingEndpoints), the
// longer of a tenth of the last partial sync and the recent slice lag it
// reports, and nothing otherwise. The runner asks again at every
// change, so the slice's arrival ends the wait: it costs time only when no
// slice comes.
func (d *Daemon) GatherDelay() time.Duration {
	var lag time.Duration
	if tr := d.opts.Tracker; tr != nil {
		var awaiting bool
		if awaiting, lag = tr.AwaitingEndpoints(); !awaiting {
			return 0
		}
	}
	share := min(time.Duration(d.lastPartial.Load())/gatherShare, maxShareGather)
	return max(share, min(lag+lag/4, maxLagGather))
}

// New returns a Daemon.
func New(opts Options) *Daemon {
	d := &Daemon{opts: opts, periodChanged: make(chan struct{}, 1)}
	d.syncPeriod.Store(int64(opts.SyncPeriod))
	return d
}

// Queued is called for every watch event: it marks an update as pending for
// the health check and the queued-timestamp metric.
func (d *Daemon) Queued() {
	now := time.Now()
	for _, b := range d.opts.Providers {
		if d.opts.Health != nil {
			d.opts.Health.QueuedUpdate(b.Family())
		}
		metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(b.Family())).Set(float64(now.Unix()))
	}
	svc, ep := d.opts.Tracker.Pending()
	metrics.ServiceChangesPending.Set(float64(svc))
	metrics.EndpointChangesPending.Set(float64(ep))
}

// Sync takes a Snapshot and syncs every provider. It is the Runner's sync
// function.
func (d *Daemon) Sync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()

	svcChanges, epChanges := d.opts.Tracker.Pending()
	snap := d.opts.Tracker.Snapshot()
	metrics.ServiceChangesPending.Set(0)
	metrics.EndpointChangesPending.Set(0)
	metrics.ServiceChangesTotal.Add(float64(svcChanges))
	metrics.EndpointChangesTotal.Add(float64(epChanges))

	var errs []error
	start, full := time.Now(), false
	for _, b := range d.opts.Providers {
		wasFull, err := d.syncProvider(b, snap)
		if err != nil {
			errs = append(errs, err)
		}
		full = full || wasFull
	}
	// Only a sync that wrote a change says what a change costs: the
	// periodic one with nothing to write takes microseconds, and after a
	// quiet spell it would leave GatherDelay at nothing.
	if len(errs) == 0 && !full && (len(snap.Changed) > 0 || snap.NodeChanged) {
		d.lastPartial.Store(int64(time.Since(start)))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if d.opts.Health != nil {
		d.opts.Health.SyncNode(d.opts.Tracker.Node())
	}
	d.syncHealthChecks(snap)
	if d.opts.OnSynced != nil {
		d.opts.OnSynced(snap, full)
	}
	return nil
}

// syncProvider syncs one provider and records the outcome; it reports
// whether the sync was a full one.
func (d *Daemon) syncProvider(b Provider, snap *watch.Snapshot) (bool, error) {
	fam := string(b.Family())
	start := time.Now()
	res, err := b.Sync(snap)
	elapsed := metrics.SinceInSeconds(start)
	if err != nil {
		metrics.SyncProxyRulesSyncFailuresTotal.WithLabelValues(fam).Inc()
		klog.ErrorS(err, "Sync failed; previous rules stay in place and the next sync rewrites everything", "family", fam)
		return false, fmt.Errorf("%s: %w", fam, err)
	}
	metrics.SyncProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
	if res.Full {
		metrics.SyncFullProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
	} else {
		metrics.SyncPartialProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
	}
	if res.PayloadBytes > 0 {
		metrics.SyncProxyRulesRestoreBytes.WithLabelValues(fam).Observe(float64(res.PayloadBytes))
	}
	for table, n := range res.Rules {
		metrics.IPTablesRulesTotal.WithLabelValues(table, fam).Set(float64(n))
	}
	for _, table := range []string{"nat", "filter"} {
		metrics.IPTablesRulesLastSync.WithLabelValues(table, fam).Set(float64(res.Written[table]))
	}
	for call, n := range res.KernelCalls {
		metrics.SyncKernelCallsTotal.WithLabelValues(call, fam).Add(float64(n))
	}
	metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", fam).Set(float64(res.NoLocalInternal))
	metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("external", fam).Set(float64(res.NoLocalExternal))
	metrics.SyncProxyRulesLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
	for _, at := range snap.TriggerTimes {
		metrics.NetworkProgrammingLatency.WithLabelValues(fam).Observe(metrics.SinceInSeconds(at))
	}
	if d.opts.Health != nil {
		d.opts.Health.Updated(b.Family())
	}
	klog.V(2).InfoS("Synced", "family", fam, "full", res.Full, "bytes", res.PayloadBytes, "took", time.Since(start))
	return res.Full, nil
}

// SetSyncPeriod changes how often the kernel is checked for drift (a
// reloaded configuration).
func (d *Daemon) SetSyncPeriod(p time.Duration) {
	d.syncPeriod.Store(int64(p))
	select {
	case d.periodChanged <- struct{}{}:
	default:
	}
}

// RunDriftChecks asks each provider every SyncPeriod whether the kernel
// still holds what it wrote, until ctx is done. It runs beside the sync
// loop rather than inside it: reading back a large table takes seconds
// (3 s at 5,000 Services), and a sync waiting for it would delay every
// change queued meanwhile. Drift is logged once and repaired by a full
// sync, asked for through Repair.
func (d *Daemon) RunDriftChecks(ctx context.Context) {
	for {
		period := time.Duration(d.syncPeriod.Load())
		if period <= 0 {
			return
		}
		timer := time.NewTimer(period)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.periodChanged:
			timer.Stop()
			continue
		case <-timer.C:
		}
		d.checkDrift()
	}
}

func (d *Daemon) checkDrift() {
	for _, b := range d.opts.Providers {
		reason, detail, err := b.Verify()
		if err != nil {
			klog.ErrorS(err, "Checking kernel state", "family", b.Family())
			continue
		}
		if reason == "" {
			continue
		}
		klog.InfoS("Kernel rules drifted from what was written; repairing", "family", b.Family(), "reason", reason, "detail", detail)
		metrics.SyncProxyRulesDriftRepairsTotal.WithLabelValues(reason, string(b.Family())).Inc()
		d.mu.Lock()
		b.ForceFull()
		d.mu.Unlock()
		if d.opts.Repair != nil {
			d.opts.Repair()
		}
	}
}

// syncHealthChecks opens the health-check NodePorts of eTP=Local Services
// and tells each how many local endpoints it has.
func (d *Daemon) syncHealthChecks(snap *watch.Snapshot) {
	if d.opts.SvcHealth == nil {
		return
	}
	hc := watch.HealthChecksOf(snap)
	if err := d.opts.SvcHealth.SyncServices(hc.Ports); err != nil {
		klog.ErrorS(err, "Opening health-check NodePorts")
	}
	if err := d.opts.SvcHealth.SyncEndpoints(hc.LocalReady); err != nil {
		klog.ErrorS(err, "Updating health-check NodePorts")
	}
}
