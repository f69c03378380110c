package main

// The soak run (`make soak`, `bench -soak`): issue #9's load case. N
// Services x 10 endpoints, svcproxy in iptables mode on the real kernel,
// then endpoint churn at a fixed rate for a fixed time while the proxy's
// memory, goroutines, sync metrics and backlog are sampled and fresh
// Services are probed for programming latency. Writes soak.md and
// soak.json; every verdict in soak.md is computed from the samples.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"svcproxy.dev/svcproxy/e2e/acceptance"
)

// soakOptions are the knobs of a soak run.
type soakOptions struct {
	N          int
	Rate       float64       // endpoint changes per second
	Duration   time.Duration // of the churn
	Sample     time.Duration // sampling interval
	ProbeEvery time.Duration // a fresh probe Service this often
	MinSync    string        // minSyncPeriod in the proxy's config
	Churners   int           // parallel churn writers
}

type soakFlagSet struct {
	on                        *bool
	n, dur, sample, probe, ms *string
	rate                      *float64
	churners                  *int
}

// soakFlags registers the soak flags (defaults from SOAK_N, SOAK_RATE,
// SOAK_DURATION).
func soakFlags() *soakFlagSet {
	rate, err := strconv.ParseFloat(envOr("SOAK_RATE", "50"), 64)
	if err != nil {
		rate = -1 // rejected by parse
	}
	return &soakFlagSet{
		on:       flag.Bool("soak", false, "run the soak (issue #9's load case) instead of the bench; writes soak.md and soak.json into -out"),
		n:        flag.String("soak-n", envOr("SOAK_N", "10000"), "soak: Services x 10 endpoints; env SOAK_N"),
		rate:     flag.Float64("soak-rate", rate, "soak: endpoint changes per second; env SOAK_RATE"),
		dur:      flag.String("soak-duration", envOr("SOAK_DURATION", "10m"), "soak: churn duration; env SOAK_DURATION"),
		sample:   flag.String("soak-sample", "10s", "soak: sampling interval"),
		probe:    flag.String("soak-probe-every", "30s", "soak: create a fresh probe Service and measure its programming latency this often"),
		ms:       flag.String("soak-min-sync", "1ms", "soak: minSyncPeriod in the proxy's config (0s is defaulted to 1s by the config loader, as in kube-proxy)"),
		churners: flag.Int("soak-writers", 4, "soak: parallel churn writers"),
	}
}

// parse returns nil when -soak is not set.
func (f *soakFlagSet) parse() (*soakOptions, error) {
	if !*f.on {
		return nil, nil
	}
	so := &soakOptions{Rate: *f.rate, MinSync: *f.ms, Churners: *f.churners}
	n, err := strconv.Atoi(strings.ReplaceAll(*f.n, "_", ""))
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("-soak-n %q: want a positive integer", *f.n)
	}
	so.N = n
	if so.Rate <= 0 {
		return nil, fmt.Errorf("-soak-rate: want a positive number")
	}
	if so.Churners <= 0 {
		return nil, fmt.Errorf("-soak-writers: want a positive number")
	}
	for _, d := range []struct {
		s   string
		dst *time.Duration
		nm  string
	}{{*f.dur, &so.Duration, "-soak-duration"}, {*f.sample, &so.Sample, "-soak-sample"}, {*f.probe, &so.ProbeEvery, "-soak-probe-every"}} {
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%s %q: want a positive duration", d.nm, d.s)
		}
		*d.dst = v
	}
	if _, err := time.ParseDuration(so.MinSync); err != nil {
		return nil, fmt.Errorf("-soak-min-sync: %w", err)
	}
	return so, nil
}

// SoakReport is everything a soak run measured; soak.json holds it as is.
type SoakReport struct {
	Started, Finished time.Time
	Machine           Machine
	Settings          SoakSettings
	WorkloadS         float64 // creating the N Services and slices
	Cold              Phase   // proxy start -> first sync, serving
	EffectiveMinSync  string  // as the proxy logged it
	RulesNat          float64 // nat rules owned after the first sync; -1 n/a
	Samples           []SoakSample
	Probes            []SoakProbe
	Churn             SoakChurn
	DrainS            float64 // last churn write -> everything applied; -1: not within DrainTimeout
	DrainErr          string  `json:",omitempty"`
	NetProg           NetProg // network_programming_duration over the churn
	Summary           SoakSummary
	Notes             []string `json:",omitempty"`
	Err               string   `json:",omitempty"`
}

// SoakSettings are the knobs of this run, for the report.
type SoakSettings struct {
	N, EndpointsPerService int
	Rate                   float64
	DurationS              float64
	SampleS                float64
	ProbeEveryS            float64
	MinSync                string
	SyncPeriod             string
	Writers, ChurnWriters  int
	DrainTimeoutS          float64
}

// SoakSample is one sample; window figures cover the time since the
// previous sample.
type SoakSample struct {
	T       float64 // seconds since the churn started
	RSSMiB  float64 // VmRSS
	HWMMiB  float64 // VmHWM
	HeapMiB float64 // go_memstats_heap_inuse_bytes; -1 n/a
	// GCGoalMiB is go_memstats_next_gc_bytes, the heap size at which the
	// next GC starts: with GOGC=100 about twice the heap live after the
	// last GC, so it follows the live heap without the garbage; -1 n/a.
	GCGoalMiB    float64
	Goroutines   float64 // go_goroutines; -1 n/a
	Threads      float64 // go_threads; -1 n/a
	CPUPct       float64 // proxy + children (iptables-restore/-save), % of one core, window
	Changes      int64   // churn writes completed, window
	WriteP50Ms   float64 // API update latency, window
	WriteMaxMs   float64
	Syncs        float64 // window
	FullSyncs    float64 // window
	SyncMeanMs   float64 // window; -1: no sync
	SyncP99Ms    float64 // upper bound of the bucket holding p99, window; -1: no sync
	SyncP99Over  bool    `json:",omitempty"`
	NetProgMean  float64 // ms, network_programming_duration mean, window; -1: none
	Pending      float64 // service + endpoint changes pending (gauges) at the sample
	Unsynced     float64 // our writes since the churn started not yet counted as synced by the proxy
	LastSyncAgeS float64 // sample time - last_timestamp
	SyncFailures float64 // cumulative since the churn started
	Drain        bool    `json:",omitempty"` // the window after the churn ended (drain)
	Load         string  // 1-minute load average of the machine
}

// SoakProbe is one fresh probe Service.
type SoakProbe struct {
	T       float64 // seconds since the churn started
	Ms      float64 // API write -> first TCP connection; -1: failed
	WriteMs float64
}

// SoakChurn is what the churn driver did.
type SoakChurn struct {
	Changes      int64   // endpoint changes the API accepted
	Errors       int64   // failed writes (after one retry)
	ProbeWrites  int64   // Service and slice writes of the probe Services
	AchievedRate float64 // Changes / churn seconds
	WriteP50Ms   float64
	WriteP99Ms   float64
	MaxLagMs     float64 // worst delay of a change behind its schedule
	Seconds      float64
}

// NetProg is the proxy's network_programming_duration over the churn,
// stamped at each churn write (last-change-trigger-time), so one
// observation per programmed Service change.
type NetProg struct {
	Count                    float64
	MeanMs                   float64
	Within250ms, Within500ms float64 // shares; -1 n/a
	Within1s                 float64
	P99BucketS               float64 // upper bound of the bucket holding p99
	P99Over                  bool    `json:",omitempty"`
}

const (
	soakDrainTimeout = 60 * time.Second
	probeTimeout     = 30 * time.Second
)

// churner replaces endpoints of random workload Services at a fixed rate.
type churner struct {
	cl      *cluster
	n       int
	changes atomic.Int64 // slice updates the API accepted
	errs    atomic.Int64
	probeWr atomic.Int64 // probe Service/slice writes (they count towards unsynced too)
	svcWr   atomic.Int64 // Service writes (probe Services)
	sliceWr atomic.Int64 // slice writes: churn + probe slices

	mu        sync.Mutex
	window    []float64 // API write ms since the last take
	all       []float64
	lastWrite time.Time
	maxLag    time.Duration
}

func (c *churner) note(ms float64, at time.Time) {
	c.mu.Lock()
	c.window = append(c.window, ms)
	c.all = append(c.all, ms)
	if at.After(c.lastWrite) {
		c.lastWrite = at
	}
	c.mu.Unlock()
}

func (c *churner) take() []float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.window
	c.window = nil
	return w
}

// run issues changes at rate until ctx ends. Services are partitioned
// over the writers, so no two writers update the same slice. A change
// issued before ctx ended is still written (with its own timeout), so the
// end of the churn does not count as failed writes.
func (c *churner) run(ctx context.Context, rate float64, writers int) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 24*time.Hour)
	defer cancel()
	rng := rand.New(rand.NewPCG(9, 50))
	queues := make([]chan [2]int, writers)
	var wg sync.WaitGroup
	for w := range queues {
		queues[w] = make(chan [2]int, 8)
		wg.Add(1)
		go func(q chan [2]int) {
			defer wg.Done()
			for job := range q {
				jctx, cancel := context.WithTimeout(wctx, 30*time.Second)
				c.change(jctx, job[0], job[1])
				cancel()
			}
		}(queues[w])
	}
	start := time.Now()
	for k := 0; ; k++ {
		at := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			break
		}
		i, j := rng.IntN(c.n), rng.IntN(endpointsN)
		select {
		case queues[i%writers] <- [2]int{i, j}:
		case <-ctx.Done():
		}
		if lag := time.Since(at); lag > c.maxLag {
			c.mu.Lock()
			c.maxLag = lag
			c.mu.Unlock()
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
}

// change replaces endpoint j of workload Service i, retrying once (a
// failed write drops the cached slice, so the retry reads it fresh).
func (c *churner) change(ctx context.Context, i, j int) {
	for try := 0; try < 2; try++ {
		t0 := time.Now()
		err := c.cl.replaceEndpoint(ctx, i, j)
		if err == nil {
			c.changes.Add(1)
			c.sliceWr.Add(1)
			c.note(float64(time.Since(t0).Microseconds())/1000, time.Now())
			return
		}
		if ctx.Err() != nil {
			return
		}
		if try == 1 || !(apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err)) {
			c.errs.Add(1)
			logf("  churn: Service %d: %v", i, err)
			return
		}
	}
}

// runSoak is `bench -soak`.
func runSoak(ctx context.Context, o options) error {
	so := o.Soak
	if err := prepare(o); err != nil {
		return err
	}
	rep := &SoakReport{
		Started: time.Now(),
		Settings: SoakSettings{
			N: so.N, EndpointsPerService: endpointsN, Rate: so.Rate, DurationS: so.Duration.Seconds(),
			SampleS: so.Sample.Seconds(), ProbeEveryS: so.ProbeEvery.Seconds(), MinSync: so.MinSync,
			SyncPeriod: "30s", Writers: o.Writers, ChurnWriters: so.Churners, DrainTimeoutS: soakDrainTimeout.Seconds(),
		},
		DrainS:   -1,
		RulesNat: -1,
	}
	rep.Machine = machineInfo(o)
	save := func() {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(o.Out, "soak.json"), data, 0o644)
		}
		if err != nil {
			logf("save soak.json: %v", err)
		}
	}
	err := soak(ctx, o, rep, save)
	if err != nil {
		rep.Err = err.Error()
		logf("soak: %v", err)
	}
	rep.Finished = time.Now()
	rep.Machine.LoadEnd = loadAvg()
	rep.Summary = summarize(rep)
	save()
	if werr := os.WriteFile(filepath.Join(o.Out, "soak.md"), []byte(renderSoak(rep)), 0o644); werr != nil {
		return werr
	}
	logf("wrote %s", filepath.Join(o.Out, "soak.md"))
	for _, v := range rep.Summary.Verdicts {
		logf("  %-4s %s: %s", passWord(v.Pass), v.Criterion, v.Measured)
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

func soak(ctx context.Context, o options, rep *SoakReport, save func()) error {
	so := o.Soak
	b, stop, err := startBench(ctx, o)
	if err != nil {
		return err
	}
	defer stop()
	t0 := time.Now()
	if err := b.cl.ensureWorkload(ctx, so.N); err != nil {
		return fmt.Errorf("workload N=%d: %w", so.N, err)
	}
	rep.WorkloadS = time.Since(t0).Seconds()
	logf("N=%d: workload in place (%.1fs)", so.N, rep.WorkloadS)

	dir := filepath.Join(o.LogDir, "soak")
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	e, err := b.newEnv(dir)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer e.close()
	cfg := filepath.Join(dir, "config.yaml")
	if err := b.proxyConfig(cfg, "", so.MinSync); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "proxy.log")
	proc, ph, err := b.startPhase(ctx, SvcProxy, e, cfg, logPath, netip.AddrPortFrom(b.cl.probeIP, servicePort), false)
	if proc != nil {
		defer proc.Stop(10 * time.Second)
	}
	rep.Cold = ph
	logf("cold start: serving %s, first sync %s", fmtS(ph.ServingS, ph.Capped, o.Cap), fmtS(ph.FirstSyncS, ph.Capped, o.Cap))
	if err != nil {
		return err
	}
	if ph.Capped {
		return fmt.Errorf("cold start hit the %s cap", o.Cap)
	}
	if data, err := os.ReadFile(logPath); err == nil {
		if m := minSyncLog.FindSubmatch(data); m != nil {
			rep.EffectiveMinSync = string(m[1])
		}
	}
	if err := acceptance.WaitSynced(ctx, e.topo.Node, proc, time.Now(), o.Cap); err != nil {
		return fmt.Errorf("settling after the first sync: %w", err)
	}
	m0, err := scrape(ctx, e.topo.Node)
	if err != nil {
		return err
	}
	if v, ok := m0.v4(mRulesTotal, "table", "nat"); ok {
		rep.RulesNat = v
	}
	for _, name := range []string{mGoroutines, mHeapInuse, mNextGC, mEPTotal, mEPPending, mSvcTotal} {
		if _, ok := m0[name]; !ok {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the proxy does not export %s", name))
		}
	}
	pid := proc.Cmd.Process.Pid

	s := &soakState{b: b, e: e, so: so, rep: rep, pid: pid, m0: m0, prev: m0,
		ch: &churner{cl: b.cl, n: so.N}}
	if st, err := readProc(pid); err == nil {
		s.prevCPU = st.UserSys + st.Children
	}
	s.start = time.Now()
	s.prevT = s.start
	rep.Samples = append(rep.Samples, s.sample(ctx))
	cctx, cancel := context.WithTimeout(ctx, so.Duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.ch.run(cctx, so.Rate, so.Churners) }()
	go func() { defer wg.Done(); s.probes(cctx) }()
	logf("churn: %.0f changes/s for %s over %d Services; sampling every %s, a probe Service every %s", so.Rate, so.Duration, so.N, so.Sample, so.ProbeEvery)
	tick := time.NewTicker(so.Sample)
	defer tick.Stop()
	var perr error
loop:
	for {
		select {
		case <-cctx.Done():
			break loop
		case <-proc.Done():
			perr = fmt.Errorf("svcproxy exited during the churn: %v (log %s)", proc.Err(), logPath)
			cancel()
			break loop
		case <-tick.C:
			rep.Samples = append(rep.Samples, s.sample(ctx))
			save()
		}
	}
	wg.Wait()
	churnEnd := time.Now()
	rep.Churn = s.churnSummary(churnEnd)
	if perr != nil {
		return perr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Drain: from the last write, until the proxy has applied everything.
	s.ch.mu.Lock()
	last := s.ch.lastWrite
	s.ch.mu.Unlock()
	if err := acceptance.WaitSynced(ctx, e.topo.Node, proc, last, soakDrainTimeout); err != nil {
		rep.DrainErr = err.Error()
	} else {
		rep.DrainS = time.Since(last).Seconds()
	}
	// The last window (churn end and drain) as a final sample.
	final := s.sample(ctx)
	final.Drain = true
	rep.Samples = append(rep.Samples, final)
	if m, err := scrape(ctx, e.topo.Node); err == nil {
		rep.NetProg = netProg(s.m0, m)
		if rep.NetProg.Count == 0 {
			rep.Notes = append(rep.Notes, "the proxy observed no "+mNetProg+" during the churn")
		}
	}
	rep.Notes = append(rep.Notes, "the proxy serves no /debug/pprof (metrics server: /metrics only), so goroutines are read from go_goroutines, not from a goroutine profile")
	logf("churn: %d changes (%.1f/s), %d errors; drained %.2fs after the last write %s", rep.Churn.Changes, rep.Churn.AchievedRate, rep.Churn.Errors, rep.DrainS, rep.DrainErr)
	return nil
}

// soakState is the sampler's state.
type soakState struct {
	b       *bench
	e       *env
	so      *soakOptions
	rep     *SoakReport
	ch      *churner
	pid     int
	m0      Metrics // at the churn start
	prev    Metrics // at the previous sample
	prevT   time.Time
	prevCPU float64
	start   time.Time

	pmu sync.Mutex // guards rep.Probes
}

// sample reads /proc and the proxy's metrics.
func (s *soakState) sample(ctx context.Context) SoakSample {
	now := time.Now()
	sm := SoakSample{T: now.Sub(s.start).Seconds(), HeapMiB: -1, GCGoalMiB: -1, Goroutines: -1, Threads: -1,
		SyncMeanMs: -1, SyncP99Ms: -1, NetProgMean: -1, LastSyncAgeS: -1}
	if f := strings.Fields(loadAvg()); len(f) > 0 {
		sm.Load = f[0]
	}
	if st, err := readProc(s.pid); err == nil {
		sm.RSSMiB, sm.HWMMiB = float64(st.RSSKB)/1024, float64(st.HWMKB)/1024
		cpu := st.UserSys + st.Children
		if dt := now.Sub(s.prevT).Seconds(); dt > 0 && s.prevCPU > 0 {
			sm.CPUPct = (cpu - s.prevCPU) / dt * 100
		}
		s.prevCPU = cpu
	}
	s.prevT = now
	w := s.ch.take()
	sm.Changes = int64(len(w))
	if len(w) > 0 {
		sm.WriteP50Ms, sm.WriteMaxMs = percentile(w, 50), slices.Max(w)
	}
	m, err := scrape(ctx, s.e.topo.Node)
	if err != nil {
		logf("  sample: %v", err)
		return sm
	}
	if v, ok := m.v4(mGoroutines); ok {
		sm.Goroutines = v
	}
	if v, ok := m.v4(mThreads); ok {
		sm.Threads = v
	}
	if v, ok := m.v4(mHeapInuse); ok {
		sm.HeapMiB = v / (1 << 20)
	}
	if v, ok := m.v4(mNextGC); ok {
		sm.GCGoalMiB = v / (1 << 20)
	}
	s0, c0, _ := s.prev.hist(mSyncDuration)
	if s1, c1, ok := m.hist(mSyncDuration); ok && c1 > c0 {
		sm.Syncs, sm.SyncMeanMs = c1-c0, (s1-s0)/(c1-c0)*1000
		q, over := bucketQuantile(bucketDelta(s.prev.buckets(mSyncDuration), m.buckets(mSyncDuration)), 0.99)
		sm.SyncP99Ms, sm.SyncP99Over = q*1000, over
	}
	_, f0, _ := s.prev.hist(mFullDuration)
	if _, f1, ok := m.hist(mFullDuration); ok {
		sm.FullSyncs = f1 - f0
	}
	n0s, n0c, _ := s.prev.hist(mNetProg)
	if n1s, n1c, ok := m.hist(mNetProg); ok && n1c > n0c {
		sm.NetProgMean = (n1s - n0s) / (n1c - n0c) * 1000
	}
	ep, _ := m.v4(mEPPending)
	sv, _ := m.v4(mSvcPending)
	sm.Pending = ep + sv
	ep0, _ := s.m0.v4(mEPTotal)
	ep1, _ := m.v4(mEPTotal)
	sv0, _ := s.m0.v4(mSvcTotal)
	sv1, _ := m.v4(mSvcTotal)
	sm.Unsynced = max(0, float64(s.ch.sliceWr.Load())-(ep1-ep0)+float64(s.ch.svcWr.Load())-(sv1-sv0))
	if ts, ok := m.v4(mLastTimestamp); ok {
		sm.LastSyncAgeS = float64(now.UnixNano())/1e9 - ts
	}
	f0v, _ := s.m0.v4(mSyncFailures)
	f1v, _ := m.v4(mSyncFailures)
	sm.SyncFailures = f1v - f0v
	s.prev = m
	logf("  t=%4.0fs rss %.0f MiB heap %.0f MiB gc goal %.0f MiB goroutines %.0f cpu %.0f%% | %d changes, %.0f syncs (%.0f full) mean %.0f ms | netprog %.0f ms, pending %.0f, unsynced %.0f, last sync %.1fs ago",
		sm.T, sm.RSSMiB, sm.HeapMiB, sm.GCGoalMiB, sm.Goroutines, sm.CPUPct, sm.Changes, sm.Syncs, sm.FullSyncs, sm.SyncMeanMs, sm.NetProgMean, sm.Pending, sm.Unsynced, sm.LastSyncAgeS)
	return sm
}

// probes creates a fresh probe Service every ProbeEvery (the first after
// half an interval) and measures its programming latency, then deletes it.
func (s *soakState) probes(ctx context.Context) {
	next := s.so.ProbeEvery / 2
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(s.start.Add(next))):
		}
		next += s.so.ProbeEvery
		name := fmt.Sprintf("soak-probe-%03d", i)
		t := time.Since(s.start).Seconds()
		// The probe outlives the churn's context by up to probeTimeout, so
		// a probe started near the end still completes.
		pctx := context.WithoutCancel(ctx)
		ls, err := s.b.programmingLatency(pctx, s.e, name, probeTimeout)
		if err == nil {
			s.ch.svcWr.Add(1)
			s.ch.sliceWr.Add(1)
			s.ch.probeWr.Add(2)
		}
		p := SoakProbe{T: t, Ms: -1, WriteMs: ls.WriteMs}
		if ls.OK {
			p.Ms = ls.Ms
		}
		if err != nil {
			logf("  probe %s: %v", name, err)
		} else {
			logf("  probe %s: %.0f ms", name, p.Ms)
		}
		s.pmu.Lock()
		s.rep.Probes = append(s.rep.Probes, p)
		s.pmu.Unlock()
		if err := s.b.cl.deleteService(pctx, name); err != nil {
			logf("  delete %s: %v", name, err)
		} else {
			s.ch.svcWr.Add(1)
			s.ch.sliceWr.Add(1)
			s.ch.probeWr.Add(2)
		}
	}
}

func (s *soakState) churnSummary(end time.Time) SoakChurn {
	c := SoakChurn{Changes: s.ch.changes.Load(), Errors: s.ch.errs.Load(), ProbeWrites: s.ch.probeWr.Load(),
		Seconds: end.Sub(s.start).Seconds()}
	s.ch.mu.Lock()
	defer s.ch.mu.Unlock()
	if c.Seconds > 0 {
		c.AchievedRate = float64(c.Changes) / c.Seconds
	}
	c.WriteP50Ms, c.WriteP99Ms = percentile(s.ch.all, 50), percentile(s.ch.all, 99)
	c.MaxLagMs = float64(s.ch.maxLag.Microseconds()) / 1000
	return c
}

// netProg is network_programming_duration between two scrapes.
func netProg(m0, m1 Metrics) NetProg {
	np := NetProg{MeanMs: -1, Within250ms: -1, Within500ms: -1, Within1s: -1, P99BucketS: -1}
	s0, c0, _ := m0.hist(mNetProg)
	s1, c1, ok := m1.hist(mNetProg)
	if !ok || c1 <= c0 {
		return np
	}
	np.Count, np.MeanMs = c1-c0, (s1-s0)/(c1-c0)*1000
	bs := bucketDelta(m0.buckets(mNetProg), m1.buckets(mNetProg))
	np.Within250ms, np.Within500ms, np.Within1s = bucketShare(bs, 0.25), bucketShare(bs, 0.5), bucketShare(bs, 1)
	np.P99BucketS, np.P99Over = bucketQuantile(bs, 0.99)
	return np
}
