package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Thresholds of the soak verdicts. They are fixed here, before any run,
// and every verdict is computed from the samples against them.
const (
	// The churn counts as applied at >= 95% of the asked rate.
	soakMinRateShare = 0.95
	// Goroutines: the last window's mean may exceed the first's by at
	// most max(5, 5%).
	soakGoroutineSlack    = 5
	soakGoroutineSlackPct = 0.05
	// Memory: the last window's mean RSS may exceed the first's by 10%
	// (GC and allocator noise; a leak under this churn grows without bound).
	soakRSSSlackPct = 0.10
	// Programming latency targets (issue #9, the bench targets).
	soakP50Ms = 100
	soakP99Ms = 300
	// Backlog: the last window's mean count of unsynced changes may exceed
	// the first's by at most one second's worth of changes, and the proxy
	// must have applied everything within soakMaxDrainS of the last write.
	soakMaxDrainS = 10
	// soakEdge is the length of the first and last windows compared.
	soakEdge = time.Minute
)

// Window is the mean of the samples in one stretch of the churn.
type Window struct {
	FromS, ToS float64
	Samples    int
	Goroutines float64
	RSSMiB     float64
	HeapMiB    float64
	GCGoalMiB  float64
	Unsynced   float64
	Pending    float64
	SyncMeanMs float64
	NetProgMs  float64
	CPUPct     float64
}

// Verdict is one criterion of the issue, judged from the data.
type Verdict struct {
	Criterion string
	Measured  string
	Pass      bool
}

// SoakSummary is computed from the samples (never edited by hand).
type SoakSummary struct {
	First, Last Window
	// Least-squares slopes over the churn, per minute; 0 with fewer than
	// two samples.
	GoroutinesPerMin            float64
	RSSMiBPerMin, HeapMiBPerMin float64
	GCGoalMiBPerMin             float64
	LatSamples, LatFailed       int
	LatP50, LatP90, LatP99      float64
	LatMax                      float64
	MaxUnsynced, MaxPending     float64
	MaxSyncMeanMs               float64
	MaxLastSyncAgeS             float64
	Syncs, FullSyncs            float64
	SyncFailures                float64
	Verdicts                    []Verdict
	Pass                        bool
}

// churnSamples are the samples taken during the churn (not the start
// sample, the first, nor the drain).
func churnSamples(rep *SoakReport) []SoakSample {
	var out []SoakSample
	for i, s := range rep.Samples {
		if i > 0 && !s.Drain {
			out = append(out, s)
		}
	}
	return out
}

// window averages samples (the window each covers ends at its T and is
// sampleS long); fields at -1 (not available) are left out of their mean.
func window(ss []SoakSample, sampleS float64) Window {
	var w Window
	if len(ss) == 0 {
		return Window{Goroutines: -1, RSSMiB: -1, HeapMiB: -1, GCGoalMiB: -1, Unsynced: -1, Pending: -1, SyncMeanMs: -1, NetProgMs: -1, CPUPct: -1}
	}
	w.FromS, w.ToS, w.Samples = max(0, ss[0].T-sampleS), ss[len(ss)-1].T, len(ss)
	type acc struct{ sum, n float64 }
	var g, r, h, gc, u, p, sy, np, cpu acc
	add := func(a *acc, v float64) {
		if v >= 0 {
			a.sum += v
			a.n++
		}
	}
	for _, s := range ss {
		add(&g, s.Goroutines)
		add(&r, s.RSSMiB)
		add(&h, s.HeapMiB)
		add(&gc, s.GCGoalMiB)
		add(&u, s.Unsynced)
		add(&p, s.Pending)
		add(&sy, s.SyncMeanMs)
		add(&np, s.NetProgMean)
		add(&cpu, s.CPUPct)
	}
	mean := func(a acc) float64 {
		if a.n == 0 {
			return -1
		}
		return a.sum / a.n
	}
	w.Goroutines, w.RSSMiB, w.HeapMiB, w.GCGoalMiB, w.Unsynced = mean(g), mean(r), mean(h), mean(gc), mean(u)
	w.Pending, w.SyncMeanMs, w.NetProgMs, w.CPUPct = mean(p), mean(sy), mean(np), mean(cpu)
	return w
}

// slope is the least-squares slope of y over x, per unit of x; values
// below 0 (not available) are skipped. 0 with fewer than 2 points.
func slope(xs, ys []float64) float64 {
	var n, sx, sy, sxx, sxy float64
	for i := range xs {
		if ys[i] < 0 {
			continue
		}
		n++
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if n < 2 || d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

func summarize(rep *SoakReport) SoakSummary {
	var sum SoakSummary
	ss := churnSamples(rep)
	d := rep.Settings.DurationS
	// The first and last soakEdge (a third of a shorter churn), as a
	// number of samples.
	k := max(1, int(math.Round(min(soakEdge.Seconds(), d/3)/rep.Settings.SampleS)))
	k = min(k, len(ss))
	sum.First, sum.Last = window(ss[:k], rep.Settings.SampleS), window(ss[len(ss)-k:], rep.Settings.SampleS)
	var ts, gs, rs, hs, gcs []float64
	for _, s := range ss {
		ts = append(ts, s.T/60)
		gs, rs, hs, gcs = append(gs, s.Goroutines), append(rs, s.RSSMiB), append(hs, s.HeapMiB), append(gcs, s.GCGoalMiB)
		sum.MaxUnsynced = max(sum.MaxUnsynced, s.Unsynced)
		sum.MaxPending = max(sum.MaxPending, s.Pending)
		sum.MaxSyncMeanMs = max(sum.MaxSyncMeanMs, s.SyncMeanMs)
		sum.MaxLastSyncAgeS = max(sum.MaxLastSyncAgeS, s.LastSyncAgeS)
	}
	for _, s := range rep.Samples {
		if s.T > 0 { // window figures (the start sample has none)
			sum.Syncs += s.Syncs
			sum.FullSyncs += s.FullSyncs
		}
		sum.SyncFailures = max(sum.SyncFailures, s.SyncFailures)
	}
	sum.GoroutinesPerMin, sum.RSSMiBPerMin, sum.HeapMiBPerMin = slope(ts, gs), slope(ts, rs), slope(ts, hs)
	sum.GCGoalMiBPerMin = slope(ts, gcs)
	var lat []float64
	for _, p := range rep.Probes {
		if p.Ms < 0 {
			sum.LatFailed++
			continue
		}
		lat = append(lat, p.Ms)
	}
	sum.LatSamples = len(lat)
	sum.LatP50, sum.LatP90, sum.LatP99 = percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	sum.LatMax = percentile(lat, 100)
	sum.Verdicts = verdicts(rep, &sum)
	sum.Pass = len(sum.Verdicts) > 0
	for _, v := range sum.Verdicts {
		sum.Pass = sum.Pass && v.Pass
	}
	return sum
}

func verdicts(rep *SoakReport, sum *SoakSummary) []Verdict {
	st := rep.Settings
	var vs []Verdict
	add := func(pass bool, criterion, format string, args ...any) {
		vs = append(vs, Verdict{Criterion: criterion, Measured: fmt.Sprintf(format, args...), Pass: pass})
	}
	c := rep.Churn
	add(c.AchievedRate >= soakMinRateShare*st.Rate && c.Errors == 0 && c.Seconds >= 0.95*st.DurationS,
		fmt.Sprintf("Churn applied: >= %.0f%% of %.0f changes/s for %s, no failed write", soakMinRateShare*100, st.Rate, fmtDur(st.DurationS)),
		"%d changes in %.0f s = %.1f/s, %d failed writes; API update p50 %.1f ms, p99 %.1f ms", c.Changes, c.Seconds, c.AchievedRate, c.Errors, c.WriteP50Ms, c.WriteP99Ms)

	f, l := sum.First, sum.Last
	gCrit := fmt.Sprintf("No goroutine growth: mean of the last window <= mean of the first + max(%d, %.0f%%)", soakGoroutineSlack, soakGoroutineSlackPct*100)
	if f.Goroutines < 0 || l.Goroutines < 0 {
		add(false, gCrit, "not measured (go_goroutines not exported or no samples)")
	} else {
		limit := f.Goroutines + max(soakGoroutineSlack, soakGoroutineSlackPct*f.Goroutines)
		add(l.Goroutines <= limit, gCrit, "first %.1f, last %.1f (limit %.1f); slope %+.2f/min", f.Goroutines, l.Goroutines, limit, sum.GoroutinesPerMin)
	}
	mCrit := fmt.Sprintf("No memory growth: mean RSS of the last window <= mean of the first + %.0f%%", soakRSSSlackPct*100)
	if f.RSSMiB <= 0 || l.RSSMiB <= 0 {
		add(false, mCrit, "not measured")
	} else {
		limit := f.RSSMiB * (1 + soakRSSSlackPct)
		add(l.RSSMiB <= limit, mCrit, "first %.1f MiB, last %.1f MiB (limit %.1f); slope %+.2f MiB/min. For reading, not judged: Go heap in use first %.1f, last %.1f MiB (%+.2f MiB/min); GC goal (heap size that starts the next collection) first %s, last %s MiB (%+.2f MiB/min)",
			f.RSSMiB, l.RSSMiB, limit, sum.RSSMiBPerMin, f.HeapMiB, l.HeapMiB, sum.HeapMiBPerMin, numOrDash(f.GCGoalMiB, "%.1f"), numOrDash(l.GCGoalMiB, "%.1f"), sum.GCGoalMiBPerMin)
	}
	latWhat := fmt.Sprintf("%d fresh Services during the churn, API write -> first TCP connection", sum.LatSamples+sum.LatFailed)
	if sum.LatSamples == 0 {
		add(false, fmt.Sprintf("Programming latency p50 <= %d ms", soakP50Ms), "no sample")
		add(false, fmt.Sprintf("Programming latency p99 <= %d ms", soakP99Ms), "no sample")
	} else {
		add(sum.LatP50 <= soakP50Ms, fmt.Sprintf("Programming latency p50 <= %d ms", soakP50Ms), "p50 %.0f ms (%s)", sum.LatP50, latWhat)
		p99 := fmt.Sprintf("p99 %.0f ms", sum.LatP99)
		if sum.LatSamples < 100 {
			p99 += fmt.Sprintf(" (with %d samples the p99 is close to the maximum, %.0f ms)", sum.LatSamples, sum.LatMax)
		}
		add(sum.LatP99 <= soakP99Ms, fmt.Sprintf("Programming latency p99 <= %d ms", soakP99Ms), "%s", p99)
	}
	add(sum.LatFailed == 0 && sum.LatSamples > 0, "Every probe Service served (within 30 s)", "%d of %d connected", sum.LatSamples, sum.LatSamples+sum.LatFailed)
	bCrit := "No sync backlog: unsynced changes do not grow (mean of the last window <= mean of the first + 1 s of changes)"
	if f.Unsynced < 0 || l.Unsynced < 0 {
		add(false, bCrit, "not measured")
	} else {
		limit := f.Unsynced + st.Rate
		add(l.Unsynced <= limit, bCrit, "first %.1f, last %.1f (limit %.1f); max %.0f at any sample; pending gauges max %.0f", f.Unsynced, l.Unsynced, limit, sum.MaxUnsynced, sum.MaxPending)
	}
	dCrit := fmt.Sprintf("No sync backlog: every change applied within %d s of the last write", soakMaxDrainS)
	if rep.DrainS < 0 {
		msg := "not within " + fmtDur(st.DrainTimeoutS)
		if rep.DrainErr != "" {
			msg += ": " + rep.DrainErr
		}
		add(false, dCrit, "%s", msg)
	} else {
		add(rep.DrainS <= soakMaxDrainS, dCrit, "%.2f s", rep.DrainS)
	}
	add(sum.SyncFailures == 0 && rep.Err == "", "No failed sync, proxy ran throughout", "%.0f failed syncs of %.0f%s", sum.SyncFailures, sum.Syncs, errSuffix(rep.Err))
	return vs
}

func errSuffix(err string) string {
	if err == "" {
		return ""
	}
	return "; run error: " + err
}

func passWord(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

func fmtDur(s float64) string {
	return (time.Duration(s*10) * time.Second / 10).String()
}

// msOr renders milliseconds, "-" when not available.
func msOr(v float64) string {
	if v < 0 {
		return "-"
	}
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func numOrDash(v float64, format string) string {
	if v < 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func shareOr(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", v*100)
}

func renderSoak(rep *SoakReport) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	st, sum, m := rep.Settings, rep.Summary, rep.Machine
	p("# svcproxy soak: %s Services x %d endpoints, %.0f endpoint changes/s for %s\n\n", thousands(st.N), st.EndpointsPerService, st.Rate, fmtDur(st.DurationS))
	p("Written by `make soak` (`bench -soak`, bench/soak.go) from the run of %s, which took %s. Every number and every verdict below is computed from that run's samples; the raw data is in `soak.json` beside this file.\n\n",
		rep.Started.UTC().Format("2006-01-02 15:04 UTC"), rep.Finished.Sub(rep.Started).Round(time.Second))
	if rep.Err != "" {
		p("**The run ended with an error:** `%s`\n\n", rep.Err)
	}
	p("## Verdicts\n\n| criterion | measured | result |\n| --- | --- | --- |\n")
	for _, v := range sum.Verdicts {
		res := "pass"
		if !v.Pass {
			res = "**fail**"
		}
		p("| %s | %s | %s |\n", v.Criterion, v.Measured, res)
	}
	p("\n")

	p("## Machine\n\n| | |\n| --- | --- |\n")
	p("| CPU | %s |\n| Cores | %d |\n| Memory | %.1f GiB |\n| Kernel | %s |\n| OS | %s |\n| iptables | %s |\n| svcproxy | `%s` (tree %s) |\n| Go | %s |\n",
		m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.OS, m.IPTables, m.SvcProxy, m.GitRevision, m.Go)
	p("| Load average (1/5/15 min) at start / end | %s / %s |\n| Date | %s |\n\n", m.LoadStart, m.LoadEnd, rep.Started.UTC().Format(time.RFC3339))

	p("## Setup\n\n")
	p("- One real etcd + kube-apiserver (e2e/controlplane); %s Services (ClusterIP, one TCP port) x %d endpoints written through the API by %d parallel writers in %.1f s.\n", thousands(st.N), st.EndpointsPerService, st.Writers, rep.WorkloadS)
	p("- svcproxy (`bin/proxy`) in iptables mode (nf_tables backend) in a fresh node network namespace (e2e/acceptance Topology, as `make bench`): `minSyncPeriod: %s` (the proxy logged %s), `syncPeriod: %s` (each periodic sync also checks the kernel for drift), metrics on 127.0.0.1:10249 in the node namespace.\n", st.MinSync, orNA(rep.EffectiveMinSync), st.SyncPeriod)
	p("- Cold start at this N: serving after %s, first sync ended after %s; nat rules owned: %s.\n", fmtS(rep.Cold.ServingS, rep.Cold.Capped, 0), fmtS(rep.Cold.FirstSyncS, rep.Cold.Capped, 0), numOrDash(rep.RulesNat, "%.0f"))
	p("- Churn, starting once the first sync had settled: %.0f times a second one endpoint of a random workload Service (fixed seed) is replaced by a fresh address (EndpointSlice update, stamped with `endpoints.kubernetes.io/last-change-trigger-time`), by %d writers, for %s.\n", st.Rate, st.ChurnWriters, fmtDur(st.DurationS))
	p("- Every %s a fresh probe Service + EndpointSlice (real responder backends) is written and its ClusterIP probed from a client pod every %s until a TCP connection succeeds (timeout 30 s); then it is deleted. Programming latency = API write of the Service -> first connection.\n", fmtDur(st.ProbeEveryS), latencyInterval)
	p("- Every %s: VmRSS/VmHWM and CPU from /proc; from the proxy's /metrics: `go_goroutines`, `go_memstats_heap_inuse_bytes`, the sync duration histograms, `..._last_timestamp_seconds`, the pending-change gauges, `..._changes_total` and `network_programming_duration_seconds`.\n", fmtDur(st.SampleS))
	p("- Unsynced changes = the Service and EndpointSlice writes this run made since the churn started minus what the proxy counts as synced (`kubeproxy_sync_proxy_rules_{endpoint,service}_changes_total` delta): changes in the watch, pending, or in a sync under way.\n")
	p("- First and last window: the first and the last %s of the churn.\n\n", fmtDur(sum.First.ToS-sum.First.FromS))

	p("## Programming latency (fresh Services during the churn)\n\n| samples | failed | p50 | p90 | p99 | max |\n| --- | --- | --- | --- | --- | --- |\n")
	p("| %d | %d | %s ms | %s ms | %s ms | %s ms |\n\n", sum.LatSamples, sum.LatFailed, msOr(sum.LatP50), msOr(sum.LatP90), msOr(sum.LatP99), msOr(sum.LatMax))
	np := rep.NetProg
	if np.Count > 0 {
		p100 := fmt.Sprintf("<= %.2f s", np.P99BucketS)
		if np.P99Over {
			p100 = fmt.Sprintf("> %.0f s", np.P99BucketS)
		}
		p("The proxy's own `kubeproxy_network_programming_duration_seconds` over the churn (churn write stamp -> end of the sync that programmed it; kube-proxy's buckets): %.0f observations, mean %.0f ms; within 250 ms: %s, within 500 ms: %s, within 1 s: %s; p99 %s.\n\n",
			np.Count, np.MeanMs, shareOr(np.Within250ms), shareOr(np.Within500ms), shareOr(np.Within1s), p100)
	}
	p("Probe samples (s since churn start: ms): ")
	var ps []string
	for _, pr := range rep.Probes {
		v := "failed"
		if pr.Ms >= 0 {
			v = fmt.Sprintf("%.0f", pr.Ms)
		}
		ps = append(ps, fmt.Sprintf("%.0f: %s", pr.T, v))
	}
	p("%s.\n\n", strings.Join(ps, ", "))

	p("## First vs last window\n\n| | first (%s..%s s) | last (%s..%s s) | slope over the churn |\n| --- | --- | --- | --- |\n",
		numOrDash(sum.First.FromS, "%.0f"), numOrDash(sum.First.ToS, "%.0f"), numOrDash(sum.Last.FromS, "%.0f"), numOrDash(math.Min(sum.Last.ToS, st.DurationS), "%.0f"))
	p("| goroutines (go_goroutines) | %s | %s | %s /min |\n", numOrDash(sum.First.Goroutines, "%.1f"), numOrDash(sum.Last.Goroutines, "%.1f"), fmt.Sprintf("%+.2f", sum.GoroutinesPerMin))
	p("| RSS (MiB) | %s | %s | %s MiB/min |\n", numOrDash(sum.First.RSSMiB, "%.1f"), numOrDash(sum.Last.RSSMiB, "%.1f"), fmt.Sprintf("%+.2f", sum.RSSMiBPerMin))
	p("| Go heap in use (MiB) | %s | %s | %s MiB/min |\n", numOrDash(sum.First.HeapMiB, "%.1f"), numOrDash(sum.Last.HeapMiB, "%.1f"), fmt.Sprintf("%+.2f", sum.HeapMiBPerMin))
	p("| GC goal, go_memstats_next_gc_bytes (MiB; about 2x the heap live after the last GC) | %s | %s | %s MiB/min |\n", numOrDash(sum.First.GCGoalMiB, "%.1f"), numOrDash(sum.Last.GCGoalMiB, "%.1f"), fmt.Sprintf("%+.2f", sum.GCGoalMiBPerMin))
	p("| unsynced changes | %s | %s | |\n", numOrDash(sum.First.Unsynced, "%.1f"), numOrDash(sum.Last.Unsynced, "%.1f"))
	p("| pending changes (gauges) | %s | %s | |\n", numOrDash(sum.First.Pending, "%.1f"), numOrDash(sum.Last.Pending, "%.1f"))
	p("| mean sync duration (ms) | %s | %s | |\n", msOr(sum.First.SyncMeanMs), msOr(sum.Last.SyncMeanMs))
	p("| mean network programming duration (ms) | %s | %s | |\n", msOr(sum.First.NetProgMs), msOr(sum.Last.NetProgMs))
	p("| CPU, proxy + children (%% of one core) | %s | %s | |\n", numOrDash(sum.First.CPUPct, "%.0f"), numOrDash(sum.Last.CPUPct, "%.0f"))
	p("\nOver the whole churn: %.0f syncs (%.0f full), %.0f failed; largest window mean sync %s ms; largest unsynced count %.0f; oldest last sync at a sample %.1f s. Churn schedule: worst delay of a change behind its slot %.0f ms.\n\n",
		sum.Syncs, sum.FullSyncs, sum.SyncFailures, msOr(sum.MaxSyncMeanMs), sum.MaxUnsynced, sum.MaxLastSyncAgeS, rep.Churn.MaxLagMs)
	if len(rep.Notes) > 0 {
		p("Notes:\n\n")
		for _, n := range rep.Notes {
			p("- %s\n", n)
		}
		p("\n")
	}

	p("## Samples\n\nWindow columns cover the %s before the sample; the `drain` row is the window from the churn's end until every change was applied. Sync p99 is the upper bound of the histogram bucket that holds it.\n\n", fmtDur(st.SampleS))
	p("| t (s) | RSS MiB | heap MiB | GC goal MiB | goroutines | threads | CPU %% | changes | API write p50 / max ms | syncs (full) | sync mean / p99 ms | netprog mean ms | pending | unsynced | last sync age s | load 1 min |\n")
	p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, s := range rep.Samples {
		t := fmt.Sprintf("%.0f", s.T)
		if s.Drain {
			t += " drain"
		}
		p99 := msOr(s.SyncP99Ms)
		if s.SyncP99Over {
			p99 = "> " + p99
		}
		p("| %s | %.1f | %s | %s | %s | %s | %.0f | %d | %s / %s | %.0f (%.0f) | %s / %s | %s | %.0f | %.0f | %s | %s |\n",
			t, s.RSSMiB, numOrDash(s.HeapMiB, "%.1f"), numOrDash(s.GCGoalMiB, "%.0f"), numOrDash(s.Goroutines, "%.0f"), numOrDash(s.Threads, "%.0f"), s.CPUPct, s.Changes,
			msOr(s.WriteP50Ms), msOr(s.WriteMaxMs), s.Syncs, s.FullSyncs, msOr(s.SyncMeanMs), p99, msOr(s.NetProgMean), s.Pending, s.Unsynced, numOrDash(s.LastSyncAgeS, "%.1f"), s.Load)
	}
	return b.String()
}

func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}
