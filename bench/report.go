package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// fmtS renders seconds, or "> cap" for a capped figure.
func fmtS(v float64, capped bool, cap time.Duration) string {
	if v < 0 {
		if capped {
			return fmt.Sprintf("> %.0f s", cap.Seconds())
		}
		return "n/a"
	}
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f s", v)
	case v < 10:
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%.1f s", v)
}

// value is one cell: a number (lower is better) or a bound.
type value struct {
	v     float64 // < 0: none
	lower bool    // v is a lower bound (capped)
	text  string  // overrides the number
}

func none(text string) value   { return value{v: -1, text: text} }
func num(v float64) value      { return value{v: v} }
func atLeast(v float64) value  { return value{v: v, lower: true} }
func (x value) ok() bool       { return x.v >= 0 }
func capped(cap float64) value { return atLeast(cap) }
func numOr(v float64, ok bool) value {
	if !ok || v < 0 {
		return none("n/a")
	}
	return num(v)
}

// cell formats a value with a unit formatter.
func (x value) cell(f func(float64) string) string {
	if x.text != "" {
		return x.text
	}
	if !x.ok() {
		return "n/a"
	}
	if x.lower {
		return "> " + f(x.v)
	}
	return f(x.v)
}

// ratio is kube-proxy's figure over svcproxy's (> 1: svcproxy better).
func ratio(kp, sp value) string {
	if !kp.ok() || !sp.ok() || sp.lower || sp.v == 0 {
		if kp.ok() && sp.ok() && sp.v == 0 && kp.v > 0 {
			return "inf"
		}
		return ""
	}
	r := kp.v / sp.v
	s := fmtRatio(r)
	if kp.lower {
		return "> " + s
	}
	return s
}

func fmtRatio(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0fx", r)
	case r >= 10:
		return fmt.Sprintf("%.1fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

func secs(v float64) string {
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f s", v)
	case v < 10:
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%.1f s", v)
}

func ms(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func mb(kb float64) string   { return fmt.Sprintf("%.0f MiB", kb/1024) }
func count(v float64) string { return fmt.Sprintf("%.0f", v) }
func bytesStr(v float64) string {
	switch {
	case v >= 10<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 10<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

// Figures of one run, as values for the tables.
func phaseServing(p *Phase, cap float64) value {
	if p == nil {
		return none("skipped")
	}
	if p.ServingS < 0 {
		if p.Capped {
			return capped(cap)
		}
		return none("n/a")
	}
	return num(p.ServingS)
}

func phaseSync(p *Phase, cap float64) value {
	if p == nil {
		return none("skipped")
	}
	if p.FirstSyncS < 0 {
		if p.Capped {
			return capped(cap)
		}
		return none("n/a")
	}
	return num(p.FirstSyncS)
}

func latP(l *Latency, p int) value {
	if l == nil {
		return none("skipped")
	}
	if len(l.Samples) == 0 {
		return none("no samples")
	}
	switch p {
	case 50:
		return num(l.P50)
	case 90:
		return num(l.P90)
	}
	return num(l.P99)
}

type row struct {
	label string
	f     func(float64) string
	get   func(r *Run) value
	noRat bool
}

func (rep *Report) find(proxy string, n int) *Run {
	for _, r := range rep.Runs {
		if r.Proxy == proxy && r.N == n {
			return r
		}
	}
	return nil
}

func (rep *Report) rows() []row {
	cap := rep.Settings.CapSeconds
	fast := rep.MinSync.Fast
	return []row{
		{"Cold start: serving (first TCP connection through the probe ClusterIP)", secs, func(r *Run) value { return phaseServing(&r.Cold, cap) }, false},
		{"Cold start: first full sync ends", secs, func(r *Run) value { return phaseSync(&r.Cold, cap) }, false},
		{"Cold start: CPU until then, proxy process", secs, func(r *Run) value { return num(r.Cold.CPUS) }, false},
		{"Cold start: CPU until then, children (iptables-restore)", secs, func(r *Run) value { return num(r.Cold.ChildCPUS) }, false},
		{"Restart, rules in place: serving", secs, func(r *Run) value { return phaseServing(r.Restart, cap) }, true},
		{"Restart: first full sync ends", secs, func(r *Run) value { return phaseSync(r.Restart, cap) }, false},
		{"Restart: failed probes before that sync ended", count, func(r *Run) value {
			if r.Restart == nil {
				return none("skipped")
			}
			return value{v: float64(r.Restart.FailedBeforeSync), text: fmt.Sprintf("%d of %d", r.Restart.FailedBeforeSync, r.Restart.Attempts)}
		}, true},
		{"Latency p50, minSyncPeriod " + fast, ms, func(r *Run) value { return latP(r.LatFast, 50) }, false},
		{"Latency p90, minSyncPeriod " + fast, ms, func(r *Run) value { return latP(r.LatFast, 90) }, false},
		{"Latency p99, minSyncPeriod " + fast, ms, func(r *Run) value { return latP(r.LatFast, 99) }, false},
		{"Latency: API writes alone (Service + EndpointSlice), p50, minSyncPeriod " + fast, ms, func(r *Run) value {
			if r.LatFast == nil || len(r.LatFast.WriteMs) == 0 {
				return none("skipped")
			}
			return num(percentile(r.LatFast.WriteMs, 50))
		}, true},
		{"Latency series: mean sync duration (sync_proxy_rules_duration)", ms, func(r *Run) value {
			if r.LatFast == nil || r.LatFast.Syncs == 0 {
				return none("n/a")
			}
			return num(r.LatFast.MeanSyncS * 1000)
		}, false},
		{"Latency series: mean conntrack reconcile round, run after each sync", ms, func(r *Run) value {
			if r.LatFast == nil || r.LatFast.MeanConntrackS < 0 {
				return none("n/a")
			}
			return num(r.LatFast.MeanConntrackS * 1000)
		}, false},
		{"Latency p50, minSyncPeriod 1s", ms, func(r *Run) value { return latP(r.LatSlow, 50) }, false},
		{"Latency p90, minSyncPeriod 1s", ms, func(r *Run) value { return latP(r.LatSlow, 90) }, false},
		{"Latency p99, minSyncPeriod 1s", ms, func(r *Run) value { return latP(r.LatSlow, 99) }, false},
		{"Connections per second through the probe ClusterIP, one after the other, after the cold start (higher is better)", count, func(r *Run) value {
			if r.ConnFailed > 0 {
				return value{v: r.ConnRate, text: fmt.Sprintf("%.0f (%d of %d unanswered)", r.ConnRate, r.ConnFailed, connRateAttempts)}
			}
			return numOr(r.ConnRate, r.ConnRate > 0)
		}, true},
		{"Churn: sync duration per change", ms, func(r *Run) value {
			if r.Churn == nil {
				return none("skipped")
			}
			return numOr(r.Churn.SyncSPerChange*1000, r.Churn.Syncs > 0)
		}, false},
		{"Churn: restore payload per change", bytesStr, func(r *Run) value {
			if r.Churn == nil {
				return none("skipped")
			}
			if r.Churn.BytesPerChange < 0 {
				return none("n/a (no such metric)")
			}
			return num(r.Churn.BytesPerChange)
		}, false},
		{"Churn: nat rules written by the last sync (iptables_last{table=nat})", count, func(r *Run) value {
			if r.Churn == nil {
				return none("skipped")
			}
			if r.Churn.NatRulesLast < 0 {
				return none("n/a (not exported)")
			}
			return num(r.Churn.NatRulesLast)
		}, false},
		{"nat rules the proxy owns (iptables_total{table=nat})", count, func(r *Run) value {
			if r.Churn == nil {
				return none("skipped")
			}
			return numOr(r.Churn.NatRulesTotal, true)
		}, true},
		{"Churn: changes / syncs / seconds", count, func(r *Run) value {
			if r.Churn == nil {
				return none("skipped")
			}
			return value{v: 0, text: fmt.Sprintf("%d / %.0f / %d", r.Churn.Changes, r.Churn.Syncs, r.Churn.Seconds)}
		}, true},
		{"Peak RSS (VmHWM)", mb, func(r *Run) value { return numOr(float64(r.PeakRSSKB), r.PeakRSSKB > 0) }, false},
		{"Steady RSS after churn (VmRSS)", mb, func(r *Run) value {
			if r.SteadyRSSKB == 0 {
				return none("n/a")
			}
			return num(float64(r.SteadyRSSKB))
		}, false},
		{"CPU of the first process at its stop, proxy + children", secs, func(r *Run) value {
			if r.CPUTotalS == 0 && r.ChildCPUS == 0 {
				return none("n/a")
			}
			return num(r.CPUTotalS + r.ChildCPUS)
		}, false},
		{"Final ruleset (iptables-nft-save): lines", count, func(r *Run) value {
			if r.Floor == nil {
				return none("n/a")
			}
			return num(float64(r.Floor.Lines))
		}, true},
		{"Final ruleset: bytes", bytesStr, func(r *Run) value {
			if r.Floor == nil {
				return none("n/a")
			}
			return num(float64(r.Floor.Bytes))
		}, true},
		{"iptables-nft-save of that ruleset (svcproxy's periodic drift check reads nat and filter)", secs, func(r *Run) value {
			if r.Floor == nil || r.Floor.SaveS <= 0 {
				return none("n/a")
			}
			return num(r.Floor.SaveS)
		}, true},
		{"Floor: iptables-nft-restore, one payload", secs, func(r *Run) value {
			if r.Floor == nil || r.Floor.OnePayloadS <= 0 {
				return none("n/a")
			}
			return num(r.Floor.OnePayloadS)
		}, true},
		{"Floor: batched (declarations, then --noflush batches of 20,000 rules)", secs, func(r *Run) value {
			if r.Floor == nil || r.Floor.BatchedS <= 0 {
				return none("n/a")
			}
			return value{v: r.Floor.BatchedS, text: fmt.Sprintf("%s (%d payloads)", secs(r.Floor.BatchedS), r.Floor.Batches)}
		}, true},
		{"Floor: one-change commit (a new chain, its rule and a jump from KUBE-SERVICES, `--noflush` into the same ruleset; median of 10)", secs, func(r *Run) value {
			if r.Floor == nil || r.Floor.CommitS <= 0 {
				return none("n/a")
			}
			return num(r.Floor.CommitS)
		}, true},
		{"Latency p50 (minSyncPeriod " + fast + ") / one-change commit floor", func(v float64) string { return fmt.Sprintf("%.2fx", v) }, func(r *Run) value {
			if r.Floor == nil || r.Floor.CommitS <= 0 || r.LatFast == nil || r.LatFast.P50 <= 0 {
				return none("n/a")
			}
			return num(r.LatFast.P50 / 1000 / r.Floor.CommitS)
		}, true},
		{"Cold start serving / floor (faster of the two)", func(v float64) string { return fmt.Sprintf("%.2fx", v) }, func(r *Run) value {
			if r.Floor == nil || r.Floor.Best() <= 0 || r.Cold.ServingS < 0 {
				return none("n/a")
			}
			return num(r.Cold.ServingS / r.Floor.Best())
		}, true},
		{"Wall time of this proxy's run", secs, func(r *Run) value { return num(r.WallS) }, true},
		{"Load average (1/5/15 min) as this run started", secs, func(r *Run) value { return value{v: 0, text: r.Load} }, true},
	}
}

// renderMarkdown writes the results page.
func renderMarkdown(rep *Report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	title := "svcproxy vs kube-proxy: benchmark"
	if rep.Quick {
		title += " (BENCH_QUICK development run)"
	}
	w("# %s\n\n", title)
	w("Written by `make bench` (bench/, its own module, built as `bin/bench`) from the run of %s, which took %s. Every number below comes from that run; the raw data is in `bench.json` beside this file, the plot in `bench.png`.\n\n",
		rep.Started.UTC().Format("2006-01-02 15:04 MST"), rep.Finished.Sub(rep.Started).Round(time.Second))
	m := rep.Machine
	w("## Machine\n\n| | |\n| --- | --- |\n")
	w("| CPU | %s |\n| Cores | %d |\n| Memory | %.1f GiB |\n| Kernel | %s |\n| OS | %s |\n| iptables | %s |\n", m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.OS, m.IPTables)
	w("| svcproxy | `%s` (tree %s) |\n| kube-proxy | %s; `--version` says `%s` |\n| Go | %s |\n", m.SvcProxy, m.GitRevision, m.KubeProxy, m.KubeProxyBin, m.Go)
	w("| Load average (1/5/15 min) at start / end | %s / %s |\n| Date | %s |\n\n", m.LoadStart, m.LoadEnd, rep.Started.UTC().Format(time.RFC3339))

	s := rep.Settings
	w("## Setup\n\n")
	w("- One real etcd + kube-apiserver (e2e/controlplane) in its own network namespace, `--service-cluster-ip-range=%s`. Workload: N Services (ClusterIP, one TCP port) x %d endpoints, written through the API by %d parallel writers; endpoints are fake addresses in %s except for the probe Services.\n", s.ServiceCIDR, endpointsN, s.Writers, s.ClusterCIDR)
	w("- Each proxy runs alone (one after the other, kube-proxy first at each N), in a fresh node namespace with empty tables (e2e/acceptance Topology: node, router, %d responder pods behind the router as the real backends, a client pod on the node). Same KubeProxyConfiguration for both (acceptance.ProxyConfig): `mode: iptables` on the nf_tables backend (%s), `conntrack.maxPerCore: 0` (no global conntrack sysctl is written), `syncPeriod: %s`.\n", endpointsN, m.IPTables, s.SyncPeriod)
	w("- minSyncPeriod: %s.\n", rep.MinSync.Summary)
	w("- Probing: a new TCP connection from the client pod every %s (attempts overlap, %s timeout each); a connection counts when a real responder answers. Times are from the proxy's process start (cold start, restart) or from the API write of the Service (latency: Service, then its EndpointSlice, then probe every %s until it connects; %d Services one after the other, deleted afterwards).\n", s.ProbeInterval, s.AttemptTimeout, latencyInterval, s.LatencySamples)
	w("- First full sync end: the proxy's `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}`. Cold start / restart phases and each latency series are capped at %.0f s; a capped figure reads \"> %.0f s\".\n", s.CapSeconds, s.CapSeconds)
	w("- Churn: one endpoint of a workload Service replaced per second for %d s (%d s where a kube-proxy sync takes longer than 1 s); per change = delta of the histogram sum / delta of its count over the phase (`..._sync_partial_proxy_rules_duration_seconds`, else `..._sync_proxy_rules_duration_seconds`; svcproxy's `kubeproxy_sync_proxy_rules_restore_bytes`).\n", s.ChurnSeconds, s.ShortChurn)
	if rep.hasProxy(SvcProxyNFT) {
		w("- svcproxy nftables: the same binary and KubeProxyConfiguration with `mode: nftables` (its `nftables:` section carries the same sync periods). It has no floor: the floor is an iptables-nft-restore figure.\n")
	}
	w("- Restart: SIGTERM, then the same binary again in the same namespace with its rules left in place (config with minSyncPeriod 1s, for the 1s latency series that follows).\n")
	w("- Floor: the proxy's final ruleset (`iptables-nft-save` in its namespace after the cold-start sync) loaded by a bare `iptables-nft-restore` into a fresh empty namespace, once as one payload and once as chain declarations followed by `--noflush` batches of %d rules; the proxy is stopped meanwhile.\n", floorBatchLines)
	w("- kube-proxy's ruleset has one rule with `-m nfacct --nfacct-name ct_state_invalid_dropped_pkts`; the accounting object exists only in kube-proxy's namespace, so the floor loads that rule without the match.\n")
	w("- Memory from /proc/PID/status (VmHWM peak, VmRSS steady after churn), CPU from /proc/PID/stat (utime+stime; cutime+cstime for waited-for children such as iptables-restore).\n")
	w("- The ratio column is kube-proxy's figure divided by svcproxy's: above 1 means svcproxy is faster/smaller.\n\n")

	w("## Results\n\n")
	rows := rep.rows()
	for _, n := range s.Ns {
		sp, nft, kp := rep.find(SvcProxy, n), rep.find(SvcProxyNFT, n), rep.find(KubeProxy, n)
		if sp == nil && kp == nil && nft == nil {
			continue
		}
		w("### N = %s Services x %d endpoints\n\n", thousands(n), endpointsN)
		writeTable(w, rows, sp, nft, kp)
		for _, r := range []*Run{sp, nft, kp} {
			if r == nil {
				continue
			}
			for _, nt := range runNotes(r) {
				w("\n- %s: %s", r.Proxy, nt)
			}
		}
		w("\n\n")
	}

	w("## Targets (reported, not asserted)\n\n| target | measured | met |\n| --- | --- | --- |\n")
	for _, t := range rep.targets() {
		w("| %s | %s | %s |\n", t[0], t[1], t[2])
	}
	w("\n")

	if rep.OneChange != "" {
		w("## One endpoint change on the real kernel (`go test -bench OneEndpointChange ./pkg/iptables/`)\n\n")
		w("svcproxy's planner and restore writer alone (no API server), N Services x 10 endpoints programmed, then one endpoint changed per iteration:\n\n```\n")
		for _, line := range strings.Split(rep.OneChange, "\n") {
			if strings.HasPrefix(line, "Benchmark") || strings.HasPrefix(line, "cpu:") || strings.HasPrefix(line, "goos") || strings.HasPrefix(line, "goarch") {
				w("%s\n", line)
			}
		}
		w("```\n\n")
	}
	w("![programming latency and cold start against N](bench.png)\n")
	return b.String()
}

// targets evaluates the targets on what was measured.
func (rep *Report) targets() [][3]string {
	var out [][3]string
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	cap := rep.Settings.CapSeconds
	at := func(n int) (*Run, *Run) { return rep.find(SvcProxy, n), rep.find(KubeProxy, n) }
	missing := func(what string, n int) [3]string {
		return [3]string{what, fmt.Sprintf("not measured (N=%s not in this run)", thousands(n)), "-"}
	}
	// Cold start at 5,000.
	if sp, kp := at(5000); sp != nil && kp != nil {
		s, k := phaseServing(&sp.Cold, cap), phaseServing(&kp.Cold, cap)
		r := ratio(k, s)
		ok := s.ok() && !s.lower && k.ok() && k.v/s.v >= 20
		out = append(out, [3]string{"5,000 x 10: cold start >= 20x faster than kube-proxy", fmt.Sprintf("%s vs %s: %s", s.cell(secs), k.cell(secs), r), yes(ok)})
	} else {
		out = append(out, missing("5,000 x 10: cold start >= 20x faster than kube-proxy", 5000))
	}
	if sp, _ := at(5000); sp != nil && sp.Floor != nil && sp.Floor.Best() > 0 && sp.Cold.ServingS > 0 {
		x := sp.Cold.ServingS / sp.Floor.Best()
		out = append(out, [3]string{"5,000 x 10: cold start within 2x of the floor", fmt.Sprintf("%s vs floor %s: %.2fx", secs(sp.Cold.ServingS), secs(sp.Floor.Best()), x), yes(x <= 2)})
	} else {
		out = append(out, missing("5,000 x 10: cold start within 2x of the floor", 5000))
	}
	// Latency at every N.
	for _, n := range rep.Settings.Ns {
		sp, kp := at(n)
		if sp == nil || sp.LatFast == nil || len(sp.LatFast.Samples) == 0 {
			continue
		}
		L := sp.LatFast
		out = append(out, [3]string{fmt.Sprintf("%s x 10: latency p50 <= 100 ms, p99 <= 300 ms (minSyncPeriod %s)", thousands(n), L.MinSync),
			fmt.Sprintf("p50 %s, p99 %s", ms(L.P50), ms(L.P99)), yes(L.P50 <= 100 && L.P99 <= 300)})
		if sp.Floor != nil && sp.Floor.CommitS > 0 {
			x := L.P50 / 1000 / sp.Floor.CommitS
			out = append(out, [3]string{fmt.Sprintf("%s x 10: latency p50 <= 1.3x the one-change commit floor", thousands(n)),
				fmt.Sprintf("p50 %s vs floor %s: %.2fx", ms(L.P50), secs(sp.Floor.CommitS), x), yes(x <= 1.3)})
		}
		if kp != nil && kp.LatFast != nil && len(kp.LatFast.Samples) > 0 {
			r50, r99 := kp.LatFast.P50/L.P50, kp.LatFast.P99/L.P99
			out = append(out, [3]string{fmt.Sprintf("%s x 10: latency >= 10x better than kube-proxy", thousands(n)),
				fmt.Sprintf("p50 %s vs %s (%s), p99 %s vs %s (%s)", ms(L.P50), ms(kp.LatFast.P50), fmtRatio(r50), ms(L.P99), ms(kp.LatFast.P99), fmtRatio(r99)), yes(r50 >= 10 && r99 >= 10)})
		} else if kp != nil {
			out = append(out, [3]string{fmt.Sprintf("%s x 10: latency >= 10x better than kube-proxy", thousands(n)), "kube-proxy: no latency samples (" + firstNote(kp) + ")", "-"})
		}
	}
	// Payload independent of N.
	var parts []string
	var bs []float64
	for _, n := range rep.Settings.Ns {
		if sp, _ := at(n); sp != nil && sp.Churn != nil && sp.Churn.BytesPerChange > 0 {
			parts = append(parts, fmt.Sprintf("%s: %s", thousands(n), bytesStr(sp.Churn.BytesPerChange)))
			bs = append(bs, sp.Churn.BytesPerChange)
		}
	}
	if len(bs) >= 2 {
		spread := slices.Max(bs) / slices.Min(bs)
		out = append(out, [3]string{"one-endpoint payload independent of N", strings.Join(parts, ", ") + fmt.Sprintf(" (max/min %.2f)", spread), yes(spread <= 1.25)})
	} else {
		out = append(out, [3]string{"one-endpoint payload independent of N", strings.Join(parts, ", ") + " (needs two N)", "-"})
	}
	// Memory at every N with both.
	for _, n := range rep.Settings.Ns {
		sp, kp := at(n)
		if sp == nil || kp == nil || sp.PeakRSSKB == 0 || kp.PeakRSSKB == 0 {
			continue
		}
		x := float64(sp.PeakRSSKB) / float64(kp.PeakRSSKB)
		out = append(out, [3]string{fmt.Sprintf("%s x 10: peak RSS <= half of kube-proxy's", thousands(n)),
			fmt.Sprintf("%s vs %s (%.2f)", mb(float64(sp.PeakRSSKB)), mb(float64(kp.PeakRSSKB)), x), yes(x <= 0.5)})
	}
	if sp, _ := at(10000); sp != nil {
		v := phaseServing(&sp.Cold, cap)
		out = append(out, [3]string{"10,000 x 10: cold start < 20 s", v.cell(secs), yes(v.ok() && !v.lower && v.v < 20)})
	} else {
		out = append(out, missing("10,000 x 10: cold start < 20 s", 10000))
	}
	return append(out, rep.nftTargets()...)
}

// nftTargets evaluates nftables mode's targets against iptables mode in
// the same run; none when nftables mode did not run.
func (rep *Report) nftTargets() [][3]string {
	var out [][3]string
	yes := map[bool]string{true: "yes", false: "**no**"}
	var ns []int
	for _, n := range rep.Settings.Ns {
		if r := rep.find(SvcProxyNFT, n); r != nil && r.Churn != nil && r.Churn.Syncs > 0 {
			ns = append(ns, n)
		}
	}
	if len(ns) > 1 && ns[0] <= 1000 {
		lo, hi := rep.find(SvcProxyNFT, ns[0]).Churn, rep.find(SvcProxyNFT, ns[len(ns)-1]).Churn
		x := hi.SyncSPerChange / lo.SyncSPerChange
		out = append(out, [3]string{fmt.Sprintf("nftables: one-endpoint change at %s within 1.5x of %s", thousands(ns[len(ns)-1]), thousands(ns[0])),
			fmt.Sprintf("%s vs %s: %.2fx", ms(hi.SyncSPerChange*1000), ms(lo.SyncSPerChange*1000), x), yes[x <= 1.5]})
	}
	nft, ipt := rep.find(SvcProxyNFT, 5000), rep.find(SvcProxy, 5000)
	if nft == nil || ipt == nil {
		return out
	}
	if nft.LatFast != nil && ipt.LatFast != nil && len(nft.LatFast.Samples) > 0 && len(ipt.LatFast.Samples) > 0 {
		x := nft.LatFast.P50 / ipt.LatFast.P50
		out = append(out, [3]string{"nftables 5,000 x 10: latency p50 <= 50 ms and <= 1/4 of iptables mode's",
			fmt.Sprintf("%s vs %s: %.2fx", ms(nft.LatFast.P50), ms(ipt.LatFast.P50), x), yes[nft.LatFast.P50 <= 50 && x <= 0.25]})
	}
	cap := rep.Settings.CapSeconds
	if n, i := phaseServing(&nft.Cold, cap), phaseServing(&ipt.Cold, cap); n.ok() && i.ok() {
		out = append(out, [3]string{"nftables 5,000 x 10: cold start no slower than iptables mode's",
			fmt.Sprintf("%s vs %s: %.2fx", n.cell(secs), i.cell(secs), n.v/i.v), yes[!n.lower && n.v <= i.v]})
	}
	if nft.ConnRate > 0 && ipt.ConnRate > 0 {
		x := nft.ConnRate / ipt.ConnRate
		out = append(out, [3]string{"nftables 5,000 x 10: connection setup rate >= 0.9x iptables mode's",
			fmt.Sprintf("%.0f/s vs %.0f/s: %.2fx", nft.ConnRate, ipt.ConnRate, x), yes[x >= 0.9]})
	}
	return out
}

func firstNote(r *Run) string {
	if r.Err != "" {
		return r.Err
	}
	if len(r.Notes) > 0 {
		return r.Notes[0]
	}
	return "skipped"
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	var out []string
	for len(s) > 3 {
		out = append([]string{s[len(s)-3:]}, out...)
		s = s[:len(s)-3]
	}
	out = append([]string{s}, out...)
	return strings.Join(out, ",")
}

// runNotes lists what a run noted, its churn note and how it ended early.
func runNotes(r *Run) []string {
	notes := slices.Clone(r.Notes)
	if r.Churn != nil && r.Churn.Note != "" {
		notes = append(notes, "churn: "+r.Churn.Note)
	}
	if r.Err != "" {
		notes = append(notes, "**run ended early**: `"+oneLine(r.Err)+"`")
	}
	return notes
}

// writeTable writes one N's table: svcproxy (iptables mode), then
// svcproxy in nftables mode and kube-proxy when they ran, and the ratios
// of the others' figures to svcproxy's (nftables: iptables mode's figure
// over nftables mode's, so above 1 means nftables mode is faster).
func writeTable(w func(string, ...any), rows []row, sp, nft, kp *Run) {
	head, rule := "| figure | svcproxy |", "| --- | --- |"
	if nft != nil {
		head, rule = head+" svcproxy nftables |", rule+" --- |"
	}
	if kp != nil {
		head, rule = head+" kube-proxy |", rule+" --- |"
	}
	if nft != nil {
		head, rule = head+" iptables / nftables |", rule+" --- |"
	}
	if kp != nil {
		head, rule = head+" kube-proxy / svcproxy |", rule+" --- |"
	}
	w("%s\n%s\n", head, rule)
	for _, rw := range rows {
		cell := func(r *Run) (string, value) {
			if r == nil {
				return "not run", none("")
			}
			v := rw.get(r)
			return v.cell(rw.f), v
		}
		sc, sv := cell(sp)
		line := fmt.Sprintf("| %s | %s |", rw.label, sc)
		nc, nv := cell(nft)
		kc, kv := cell(kp)
		if nft != nil {
			line += " " + nc + " |"
		}
		if kp != nil {
			line += " " + kc + " |"
		}
		rat := func(a, b value) string {
			if rw.noRat {
				return ""
			}
			return ratio(a, b)
		}
		if nft != nil {
			line += " " + rat(sv, nv) + " |"
		}
		if kp != nil {
			line += " " + rat(kv, sv) + " |"
		}
		w("%s\n", line)
	}
}

func (rep *Report) hasProxy(proxy string) bool {
	for _, r := range rep.Runs {
		if r.Proxy == proxy {
			return true
		}
	}
	return false
}
