package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// VMReport is everything the VM bench measured; vm.json holds it as is.
type VMReport struct {
	Started, Finished time.Time
	Host              Machine // runs QEMU, etcd and kube-apiserver
	Guest             Machine // runs the proxies, namespaces and probes (from the last boot)
	GuestMemoryMiB    int     // as configured for QEMU
	GuestCPUs         int
	Settings          Settings
	MinSync           MinSyncCheck
	Modes             []string
	Boots             []VMBoot
	Runs              []*Run
}

func newVMReport(o options) *VMReport {
	rep := &VMReport{
		Started:        time.Now(),
		Host:           machineInfo(o),
		GuestMemoryMiB: o.VM.Memory,
		GuestCPUs:      o.VM.CPUs,
		Modes:          o.VM.Modes,
		Settings: Settings{
			Ns: o.Ns, CapSeconds: o.Cap.Seconds(),
			LatencySamples: o.LatencySamples, ChurnSeconds: o.ChurnSeconds, ShortChurn: o.ShortChurn,
			ServiceCIDR: serviceCIDR, ClusterCIDR: clusterCIDR, Writers: o.Writers,
			ProbeInterval: probeInterval.String(), AttemptTimeout: attemptTimeout.String(), SyncPeriod: "30s",
			Profiled: o.Profile,
		},
		// Both config loaders default 0s to 1s (see checkMinSync), so
		// the fast series asks for 1ms; each start's log says what it got.
		MinSync: MinSyncCheck{Fast: "1ms", Summary: "the fast series configures 1ms (0s is defaulted to 1s by the config loader); what each start logged is in the notes"},
	}
	rep.Host.KubeProxy, rep.Host.KubeProxyBin = "", ""
	return rep
}

func (rep *VMReport) add(boot VMBoot, gr *GuestResult) {
	rep.Boots = append(rep.Boots, boot)
	if gr == nil {
		return
	}
	rep.Guest = gr.Machine
	rep.Runs = append(rep.Runs, gr.Runs...)
}

func (rep *VMReport) find(mode string, n int) *Run {
	for _, r := range rep.Runs {
		if r.Mode == mode && r.N == n {
			return r
		}
	}
	return nil
}

// write saves vm.json and vm.md (after every boot, so a crash keeps data).
func (rep *VMReport) write(dir string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "vm.json"), data, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "vm.md"), []byte(renderVM(rep)), 0o644)
}

// vmRows are the host bench's rows without the iptables-only ones (the
// floor, restore payloads, nat rule counts), which have no ipvs
// counterpart.
func (rep *VMReport) vmRows() []row {
	skip := []string{"restore payload", "nat rules", "ruleset", "Floor", "floor", "iptables-nft-save"}
	var out []row
	all := (&Report{Settings: rep.Settings, MinSync: rep.MinSync}).rows()
outer:
	for _, r := range all {
		for _, s := range skip {
			if strings.Contains(r.label, s) {
				continue outer
			}
		}
		r.label = strings.Replace(r.label, "children (iptables-restore)", "children (iptables-restore, ipset, ... the proxy runs)", 1)
		r.label = strings.Replace(r.label, "Load average", "Guest load average", 1)
		out = append(out, r)
	}
	out = append(out, row{"Churn: histogram of the sync duration above", count, func(r *Run) value {
		if r.Churn == nil || r.Churn.SyncMetric == "" {
			return none("n/a")
		}
		return value{v: 0, text: "`" + r.Churn.SyncMetric + "`"}
	}, true})
	return append(out, kernelCallRows()...)
}

// Kernel call kinds as kubeproxy_sync_kernel_calls_total names them.
// iptables mode counts only its iptables-restore runs.
var (
	netlinkCalls = callKind{func(call string) bool {
		return strings.HasPrefix(call, "ipvs_") || strings.HasPrefix(call, "link_") || strings.HasPrefix(call, "ipsetnl_")
	}, true}
	ipsetRuns   = callKind{func(call string) bool { return strings.HasPrefix(call, "ipset_") }, true}
	restoreRuns = callKind{func(call string) bool { return call == "iptables_restore" }, false}
)

type callKind struct {
	match    func(call string) bool
	ipvsOnly bool
}

// callsPerChange sums the churn's kernel calls per change of one kind.
func callsPerChange(r *Run, kind callKind) value {
	if kind.ipvsOnly && r.Mode != "ipvs" {
		return none("not counted")
	}
	if r.Churn == nil || r.Churn.KernelCallsPerChange == nil {
		return none("n/a")
	}
	match := kind.match
	sum := 0.0
	for call, v := range r.Churn.KernelCallsPerChange {
		if match(call) {
			sum += v
		}
	}
	return num(sum)
}

func twoPlaces(v float64) string { return fmt.Sprintf("%.2f", v) }

func kernelCallRows() []row {
	return []row{
		{"Churn: netlink requests per change (`sync_kernel_calls_total` ipvs_*, link_*, ipsetnl_*)", twoPlaces, func(r *Run) value { return callsPerChange(r, netlinkCalls) }, true},
		{"Churn: ipset runs per change", twoPlaces, func(r *Run) value { return callsPerChange(r, ipsetRuns) }, true},
		{"Churn: iptables-restore runs per change", twoPlaces, func(r *Run) value { return callsPerChange(r, restoreRuns) }, true},
		{"Churn: kernel calls per change, by call", count, func(r *Run) value {
			if r.Churn == nil || r.Churn.KernelCallsPerChange == nil {
				return none("n/a")
			}
			var parts []string
			for _, call := range slices.Sorted(maps.Keys(r.Churn.KernelCallsPerChange)) {
				parts = append(parts, fmt.Sprintf("%s %.2f", call, r.Churn.KernelCallsPerChange[call]))
			}
			return value{v: 0, text: strings.Join(parts, ", ")}
		}, true},
	}
}

// renderVM writes the results page.
func renderVM(rep *VMReport) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# svcproxy in the QEMU guest: ipvs mode vs iptables mode\n\n")
	end := rep.Finished
	if end.IsZero() {
		w("**Partial: the run had not finished when this was written.**\n\n")
		end = time.Now()
	}
	w("Written by `make bench-vm` (bench/, `bin/bench -vm`) from the run of %s, which took %s. Every number below comes from that run; the raw data is in `vm.json` beside this file.\n\n",
		rep.Started.UTC().Format("2006-01-02 15:04 MST"), end.Sub(rep.Started).Round(time.Second))
	w("**Read the ratios, not the times.** The host kernel has no IPVS, so both modes run in a QEMU guest under TCG emulation (no KVM), which makes everything in the guest several times slower than on the host and sensitive to the host's load. These times are not comparable with `bench.md`'s. The meaningful figure is the ipvs / iptables ratio: both modes ran in the same guest boot, against the same API server and workload, one after the other.\n\n")
	renderVMMachines(w, rep)
	renderVMSetup(w, rep)
	renderVMSlopes(w, rep)
	for _, n := range rep.Settings.Ns {
		renderVMN(w, rep, n)
	}
	return b.String()
}

func renderVMMachines(w func(string, ...any), rep *VMReport) {
	h, g := rep.Host, rep.Guest
	w("## Machines\n\n| | host: QEMU, etcd, kube-apiserver, workload writes | guest: both proxies, namespaces, probes |\n| --- | --- | --- |\n")
	w("| CPU | %s | %s (QEMU `-accel tcg -cpu max`) |\n", h.CPU, g.CPU)
	w("| Cores | %d | %d vCPUs (configured %d) |\n", h.Cores, g.Cores, rep.GuestCPUs)
	w("| Memory | %.1f GiB | %.1f GiB (configured %d MiB) |\n", h.MemoryGiB, g.MemoryGiB, rep.GuestMemoryMiB)
	w("| Kernel | %s | %s |\n| OS | %s | the host's files (read-only 9p root) |\n", h.Kernel, g.Kernel, h.OS)
	w("| iptables | %s | %s |\n| svcproxy | `%s` (tree %s) | the same binary |\n| Go | %s | |\n", h.IPTables, g.IPTables, h.SvcProxy, h.GitRevision, h.Go)
	w("| Load average (1/5/15 min) at start / end | %s / %s | per run in the tables |\n| Date | %s | |\n\n", h.LoadStart, h.LoadEnd, rep.Started.UTC().Format(time.RFC3339))
	w("The host has %d cores for QEMU's %d vCPUs, etcd, kube-apiserver and anything else running meanwhile; its load average is given for each guest boot below.\n\n", h.Cores, rep.GuestCPUs)
}

func renderVMSetup(w func(string, ...any), rep *VMReport) {
	s := rep.Settings
	w("## Setup\n\n")
	w("- One real etcd + kube-apiserver (e2e/controlplane) on the host, in its own network namespace, `--service-cluster-ip-range=%s`. Workload: N Services (ClusterIP, one TCP port) x %d endpoints, written from the host through the API by %d parallel writers before the guest boots; endpoints are fake addresses in %s except for the probe Services.\n", s.ServiceCIDR, endpointsN, s.Writers, s.ClusterCIDR)
	w("- One guest boot per N (e2e/vm: Debian's kernel, the host's files read-only). The guest has no link to any host interface: QEMU's user network with `restrict=on` and one forward, guest 169.254.250.1:6443 -> `socat` in the control plane's namespace on the host. In the guest, the bench (`bin/bench -vm-guest`) runs svcproxy in %s mode, one after the other, each in a fresh node namespace with empty tables (e2e/acceptance Topology, a relay in the node namespace to the API), with the host bench's phases (bench/run.go) minus the floor.\n", strings.Join(rep.Modes, " and then "))
	w("- Config: acceptance.ProxyConfig (`conntrack.maxPerCore: 0`, `syncPeriod: %s`, ipvs scheduler `rr`), minSyncPeriod in the mode's own section: %s.\n", s.SyncPeriod, rep.MinSync.Summary)
	w("- Probing: a new TCP connection from the client pod every %s (attempts overlap, %s timeout each); a connection counts when a real responder answers. Cold start and restart are timed from the proxy's process start; latency from the API write of a new Service (then its EndpointSlice) to the first connection through its ClusterIP, %d Services one after the other per series, deleted afterwards.\n", s.ProbeInterval, s.AttemptTimeout, s.LatencySamples)
	w("- First full sync end: `kubeproxy_sync_proxy_rules_last_timestamp_seconds`. Phases and each latency series are capped at %.0f s.\n", s.CapSeconds)
	w("- Churn: one endpoint of a workload Service replaced per second for %d s (%d s where a sync takes longer than 1 s); per change = delta of the histogram's sum / delta of its count over the phase.\n", s.ChurnSeconds, s.ShortChurn)
	w("- Restart: SIGTERM, then the same binary again in the same namespace with its kernel state left in place (config with minSyncPeriod 1s, for the 1s latency series that follows).\n")
	w("- The modes run in the order above in every boot, so the later one may find warmer caches (9p page cache of the binaries) or a busier host; the load averages are per run.\n")
	w("- The ratio column is the second mode's figure over the first's: below 1, %s is lower (faster, smaller) than %s.\n", rep.Modes[len(rep.Modes)-1], rep.Modes[0])
	w("- Memory: VmHWM (peak, over both processes) and VmRSS after the churn; CPU: utime+stime of the first process at its stop, plus its waited-for children.\n")
	if s.Profiled {
		w("- Profiled (`-profile`): svcproxy ran with `enableProfiling: true`; a CPU profile (100 Hz sampling, which costs the proxy a little CPU) covered its whole churn and the first %d s of its fast latency series. The profiles and a `go tool pprof -top` of each are in `profiles/` beside this file.\n", latencyProfileSecs)
	}
	w("\n")
}

func renderVMN(w func(string, ...any), rep *VMReport, n int) {
	w("## N = %d\n\n", n)
	for _, bt := range rep.Boots {
		if bt.N == n {
			w("Guest boot: %s in all, %s to boot; host load average %s at its start, %s at its end.", secs(bt.WallS), secs(bt.BootS), bt.HostLoadStart, bt.HostLoadEnd)
			if bt.Err != "" {
				w(" **Error:** `%s`", oneLine(bt.Err))
			}
			w("\n\n")
		}
	}
	base, other := rep.find(rep.Modes[0], n), (*Run)(nil)
	if len(rep.Modes) > 1 {
		other = rep.find(rep.Modes[1], n)
	}
	if base == nil && other == nil {
		w("No results.\n\n")
		return
	}
	w("| | %s |\n| --- | --- | --- | --- |\n", strings.Join(append(append([]string{}, rep.Modes...), modeRatioHeader(rep.Modes)), " | "))
	for _, rw := range rep.vmRows() {
		a, c := cellOf(base, rw), cellOf(other, rw)
		rat := ""
		if !rw.noRat && base != nil && other != nil {
			rat = ratio(rw.get(other), rw.get(base))
		}
		w("| %s | %s | %s | %s |\n", rw.label, a, c, rat)
	}
	w("\n")
	for _, r := range []*Run{base, other} {
		if r == nil {
			continue
		}
		for _, note := range runNotes(r) {
			w("- %s: %s\n", r.Mode, note)
		}
	}
	w("\n")
}

func modeRatioHeader(modes []string) string {
	if len(modes) < 2 {
		return ""
	}
	return modes[1] + " / " + modes[0]
}

func cellOf(r *Run, rw row) string {
	if r == nil {
		return "not run"
	}
	return rw.get(r).cell(rw.f)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "`", "'")), " ")
}

// slopeRows are the figures of one mode whose growth with N the slope
// table shows.
func slopeRows(mode string) []row {
	churnSync := func(r *Run) value {
		if r.Churn == nil {
			return none("skipped")
		}
		return numOr(r.Churn.SyncSPerChange*1000, r.Churn.Syncs > 0)
	}
	rows := []row{{"sync duration per change", ms, churnSync, false}}
	if mode == "ipvs" {
		rows = append(rows,
			row{"netlink requests per change", twoPlaces, func(r *Run) value { return callsPerChange(r, netlinkCalls) }, false},
			row{"ipset runs per change", twoPlaces, func(r *Run) value { return callsPerChange(r, ipsetRuns) }, false})
	}
	return append(rows,
		row{"iptables-restore runs per change", twoPlaces, func(r *Run) value { return callsPerChange(r, restoreRuns) }, false},
		row{"latency p50, minSyncPeriod 1ms", ms, func(r *Run) value { return latP(r.LatFast, 50) }, false},
		row{"latency p99, minSyncPeriod 1ms", ms, func(r *Run) value { return latP(r.LatFast, 99) }, false})
}

// renderVMSlopes writes, per mode and figure, its value at every N, the
// slope per 1,000 Services between the smallest and largest N, and the
// ratio of those two values.
func renderVMSlopes(w func(string, ...any), rep *VMReport) {
	ns := rep.Settings.Ns
	if len(ns) < 2 {
		return
	}
	lo, hi := slices.Min(ns), slices.Max(ns)
	w("## How each figure grows with N\n\n")
	w("Values from the tables below; slope = (value at N = %d - value at N = %d) / %.1f thousand Services; growth = value at %d / value at %d.\n\n", hi, lo, float64(hi-lo)/1000, hi, lo)
	w("| mode | figure |")
	for _, n := range ns {
		w(" N = %d |", n)
	}
	w(" slope per 1,000 Services | growth %d / %d |\n|%s\n", hi, lo, strings.Repeat(" --- |", len(ns)+4))
	for _, mode := range rep.Modes {
		for _, rw := range slopeRows(mode) {
			w("| %s | %s |", mode, rw.label)
			vals := map[int]value{}
			for _, n := range ns {
				v := none("not run")
				if r := rep.find(mode, n); r != nil {
					v = rw.get(r)
				}
				vals[n] = v
				w(" %s |", v.cell(rw.f))
			}
			a, b := vals[lo], vals[hi]
			slope, growth := "", ""
			if a.ok() && b.ok() {
				slope = rw.f((b.v - a.v) / (float64(hi-lo) / 1000))
				growth = ratio(b, a)
			}
			w(" %s | %s |\n", slope, growth)
		}
	}
	w("\n")
}
