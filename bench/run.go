package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Phase is one start of a proxy: cold (empty tables) or restart (its
// rules left in place).
type Phase struct {
	ServingS   float64 // process start -> first TCP connection through the probe ClusterIP; -1: none within the cap
	FirstSyncS float64 // process start -> end of the first full sync (last_timestamp); -1: none within the cap
	Capped     bool
	// Probe attempts that failed, among those started before the first
	// sync ended (restart: connections lost while the proxy came up).
	FailedBeforeSync int
	Attempts         int
	CPUS             float64 // utime+stime of the proxy at the end of the first sync (or the cap)
	ChildCPUS        float64 // cutime+cstime: iptables-restore and other children, same moment
	HWMKB            int64
	FullSyncS        float64 // first full sync's own duration (full-sync histogram), -1 if not exported
}

// Latency is one programming latency series.
type Latency struct {
	MinSync       string    // minSyncPeriod as written in the config
	Samples       []float64 // ms, API write of the Service -> first TCP connection through its ClusterIP
	Failed        int       // samples that never connected within their timeout
	Capped        bool      // the series hit the phase cap
	P50, P90, P99 float64
	WriteMs       []float64 // ms, API write of the Service -> the EndpointSlice write returned
	MeanSyncS     float64   // mean sync duration during the series (sync_proxy_rules_duration)
	Syncs         float64
	// MeanConntrackS is the mean conntrack reconcile round during the
	// series (conntrack_reconciler_sync_duration), -1 if not exported.
	MeanConntrackS float64
}

// Churn is the endpoint churn phase: one endpoint replaced per second.
type Churn struct {
	Seconds        int
	Changes        int
	Syncs          float64 // syncs during the phase
	BytesPerChange float64 // restore payload bytes per sync (svcproxy's restore_bytes histogram); -1 n/a
	SyncSPerChange float64 // mean sync duration
	SyncMetric     string  // which histogram SyncSPerChange comes from
	NatRulesLast   float64 // nat rules written by the last sync (iptables_last{table=nat}); -1 n/a
	NatRulesTotal  float64 // nat rules the proxy owns (iptables_total{table=nat}); -1 n/a
	// KernelCallsPerChange is svcproxy's kubeproxy_sync_kernel_calls_total
	// increase over the phase divided by the changes, by call.
	KernelCallsPerChange map[string]float64 `json:",omitempty"`
	Note                 string             `json:",omitempty"`
}

// Run is one proxy at one N.
type Run struct {
	Proxy string
	// Mode is the proxy mode when the run picks one (the VM bench runs
	// svcproxy in iptables and ipvs mode); empty: iptables.
	Mode        string `json:",omitempty"`
	N           int
	Cold        Phase
	Restart     *Phase   `json:",omitempty"`
	LatFast     *Latency `json:",omitempty"`
	LatSlow     *Latency `json:",omitempty"`
	Churn       *Churn   `json:",omitempty"`
	PeakRSSKB   int64    // VmHWM, max over both processes
	SteadyRSSKB int64    // VmRSS after churn, idle
	CPUTotalS   float64  // utime+stime of the first process at its stop
	ChildCPUS   float64  // cutime+cstime of the first process at its stop
	Floor       *Floor   `json:",omitempty"`
	// ConnRate is TCP connections per second through the probe ClusterIP,
	// one after the other from the client pod, after the cold start.
	ConnRate   float64  `json:",omitempty"`
	ConnFailed int      `json:",omitempty"`
	Notes      []string `json:",omitempty"`
	Err        string   `json:",omitempty"`
	WallS      float64
	Load       string // /proc/loadavg (1, 5, 15 min) as the run started
}

func (r *Run) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.Notes = append(r.Notes, msg)
	logf("  %s N=%d: %s", r.Proxy, r.N, msg)
}

// env is the network of one run: a fresh node namespace (empty tables),
// real backends behind the router and a client pod on the node.
type env struct {
	topo   *acceptance.Topology
	client acceptance.Client
	dir    string
	link   io.Closer // the node namespace's way to the API server
}

func (e *env) close() {
	if e.link != nil {
		e.link.Close()
	}
	e.topo.Close()
}

// linkNetns lets processes in ns reach the API server: a veth to the
// control plane's namespace on the host; in the VM guest, where the API
// server is the host's behind QEMU's forward, a relay inside ns.
func (b *bench) linkNetns(ns string) (io.Closer, error) {
	if b.cp != nil {
		return io.NopCloser(nil), b.cp.LinkNetns(ns)
	}
	return acceptance.StartRelay(ns, b.kubeconfig)
}

// kubeconfigPath is the kubeconfig the proxies use.
func (b *bench) kubeconfigPath() string {
	if b.cp != nil {
		return b.cp.KubeconfigPath
	}
	return b.kubeconfig
}

func (b *bench) newEnv(dir string) (*env, error) {
	topo, err := acceptance.NewTopology([]netip.Addr{nodeIP}, b.o.Responder, dir, func(f string, a ...any) { logf(f, a...) })
	if err != nil {
		return nil, err
	}
	e := &env{topo: topo, dir: dir}
	for _, a := range realBackends {
		p, err := topo.EnsurePod(a, false)
		if err != nil {
			topo.Close()
			return nil, err
		}
		p.Ports.TCP = []uint16{backendPort}
		if err := topo.StartResponder(p); err != nil {
			topo.Close()
			return nil, err
		}
	}
	if _, err := topo.EnsurePod(clientIP, true); err != nil {
		topo.Close()
		return nil, err
	}
	e.client = acceptance.Client{Netns: topo.Pod(clientIP).Netns, Bind: clientIP}
	if e.link, err = b.linkNetns(topo.Node); err != nil {
		topo.Close()
		return nil, err
	}
	return e, nil
}

// proxyConfig renders acceptance.ProxyConfig (mode "" is iptables;
// conntrack sizing zeroed, so no global conntrack sysctl is written) with
// the given minSyncPeriod in the mode's own section, the one it reads.
func (b *bench) proxyConfig(path, mode, minSync string) error {
	if mode == "" {
		mode = "iptables"
	}
	s := &acceptance.Scenario{Node: acceptance.Node{Name: nodeName, IPs: []string{nodeIPStr}, ClusterCIDR: clusterCIDR}}
	raw, err := acceptance.ProxyConfig(s, mode, b.kubeconfigPath())
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	sec, _ := cfg[mode].(map[string]any)
	if sec == nil {
		return fmt.Errorf("config has no %s section", mode)
	}
	sec["minSyncPeriod"] = minSync
	if b.o.Profile {
		cfg["enableProfiling"] = true
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

func (b *bench) binary(proxy string) string {
	if proxy == KubeProxy {
		return b.o.KubeProxy
	}
	return b.o.Proxy
}

// isSvcProxy reports a run of svcproxy in either mode.
func isSvcProxy(proxy string) bool { return proxy == SvcProxy || proxy == SvcProxyNFT }

// runProxy runs every phase for one proxy at one N. Failures end the run
// early and are recorded, never fatal for the whole bench.
func (b *bench) runProxy(ctx context.Context, proxy string, n int) *Run {
	if proxy == SvcProxyNFT {
		return b.runProxyMode(ctx, proxy, "nftables", n)
	}
	return b.runProxyMode(ctx, proxy, "", n)
}

// runProxyMode is runProxy in a given proxy mode ("": iptables).
func (b *bench) runProxyMode(ctx context.Context, proxy, mode string, n int) *Run {
	r := &Run{Proxy: proxy, Mode: mode, N: n, Load: loadAvg()}
	start := time.Now()
	defer func() { r.WallS = time.Since(start).Seconds() }()
	logf("=== %s %s N=%d (load %s)", proxy, mode, n, r.Load)
	if err := b.runPhases(ctx, r); err != nil {
		r.Err = err.Error()
		logf("  %s N=%d: error: %v", proxy, n, err)
	}
	return r
}

func (b *bench) runPhases(ctx context.Context, r *Run) error {
	dir := filepath.Join(b.o.LogDir, fmt.Sprintf("%s-%d", runTag(r), r.N))
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	e, err := b.newEnv(dir)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer e.close()
	fast, slow := filepath.Join(dir, "config-fast.yaml"), filepath.Join(dir, "config-1s.yaml")
	if err := b.proxyConfig(fast, r.Mode, b.rep.MinSync.Fast); err != nil {
		return err
	}
	if err := b.proxyConfig(slow, r.Mode, "1s"); err != nil {
		return err
	}
	probeDst := netip.AddrPortFrom(b.cl.probeIP, servicePort)

	// 1. Cold start: empty tables.
	proc, ph, err := b.startPhase(ctx, r.Proxy, e, fast, filepath.Join(dir, "proxy-cold.log"), probeDst, false)
	if proc != nil {
		defer proc.Kill()
	}
	r.Cold = ph
	r.PeakRSSKB = ph.HWMKB
	logf("  cold start: serving %s, first sync %s", fmtS(ph.ServingS, ph.Capped, b.o.Cap), fmtS(ph.FirstSyncS, ph.Capped, b.o.Cap))
	if err != nil {
		return err
	}
	if ph.Capped {
		r.note("cold start hit the %s cap; later phases skipped", b.o.Cap)
		b.noteStats(r, proc)
		proc.Stop(10 * time.Second)
		return nil
	}
	// Connection setup rate through the probe ClusterIP: what each new
	// connection's first packet costs in this mode's rules.
	r.ConnRate, r.ConnFailed = connectionRate(e.client, probeDst)
	logf("  connection rate: %.0f/s (%d of %d unanswered)", r.ConnRate, r.ConnFailed, connRateAttempts)

	// The floor is an iptables figure; the VM bench and nftables mode
	// leave it out.
	var dump []byte
	var saveS float64
	floor := !b.o.NoFloor && r.Mode != "nftables"
	if floor {
		saveStart := time.Now()
		if dump, err = dumpRules(e.topo.Node); err != nil {
			return err
		}
		saveS = time.Since(saveStart).Seconds()
		writeDump(filepath.Join(dir, "rules.save"), dump)
	}

	// 2. Programming latency with the fast minSyncPeriod.
	if r.LatFast, err = b.latency(ctx, r, e, proc, "fast", b.rep.MinSync.Fast); err != nil {
		return err
	}

	// 3. Endpoint churn.
	if r.Churn, err = b.churn(ctx, r, e, proc); err != nil {
		return err
	}

	// 4. Steady memory and CPU of the first process, then stop it.
	time.Sleep(2 * time.Second)
	b.noteStats(r, proc)
	proc.Stop(10 * time.Second)
	if proc.Exited() {
		logf("  stopped (%v)", proc.Err())
	}

	// 5. The floor: the same ruleset into an empty namespace, proxy stopped.
	if floor {
		f := measureFloor(dump)
		f.SaveS = saveS
		r.Floor = &f
		logf("  floor: save %.2fs; %d lines, %d bytes: one payload %.2fs, %d batches %.2fs %s", f.SaveS, f.Lines, f.Bytes, f.OnePayloadS, f.Batches, f.BatchedS, f.Err)
	}

	// 6. Restart with the rules in place (config with minSyncPeriod 1s).
	proc2, ph2, err := b.startPhase(ctx, r.Proxy, e, slow, filepath.Join(dir, "proxy-restart.log"), probeDst, true)
	if proc2 != nil {
		defer proc2.Kill()
	}
	r.Restart = &ph2
	r.PeakRSSKB = max(r.PeakRSSKB, ph2.HWMKB)
	logf("  restart: serving %s, first sync %s, %d of %d probes failed before it", fmtS(ph2.ServingS, ph2.Capped, b.o.Cap), fmtS(ph2.FirstSyncS, ph2.Capped, b.o.Cap), ph2.FailedBeforeSync, ph2.Attempts)
	if err != nil {
		return err
	}
	if ph2.Capped {
		r.note("restart hit the %s cap; latency with minSyncPeriod 1s skipped", b.o.Cap)
		proc2.Stop(10 * time.Second)
		return nil
	}

	// 7. Programming latency with minSyncPeriod 1s.
	if r.LatSlow, err = b.latency(ctx, r, e, proc2, "1s", "1s"); err != nil {
		return err
	}
	if st, err := readProc(proc2.Cmd.Process.Pid); err == nil {
		r.PeakRSSKB = max(r.PeakRSSKB, st.HWMKB)
	}
	proc2.Stop(10 * time.Second)
	return nil
}

// noteStats records memory and CPU of the first process.
func (b *bench) noteStats(r *Run, proc *nsutil.Proc) {
	st, err := readProc(proc.Cmd.Process.Pid)
	if err != nil {
		r.note("reading /proc: %v", err)
		return
	}
	r.PeakRSSKB = max(r.PeakRSSKB, st.HWMKB)
	r.SteadyRSSKB = st.RSSKB
	r.CPUTotalS, r.ChildCPUS = st.UserSys, st.Children
	logf("  memory: peak %d MB, steady %d MB; CPU %.1fs (+%.1fs children)", st.HWMKB/1024, st.RSSKB/1024, st.UserSys, st.Children)
}

// startPhase starts the proxy and measures until it serves the probe
// Service and has finished its first full sync, or the cap passes.
func (b *bench) startPhase(ctx context.Context, proxy string, e *env, cfg, logPath string, dst netip.AddrPort, restart bool) (*nsutil.Proc, Phase, error) {
	ph := Phase{ServingS: -1, FirstSyncS: -1, FullSyncS: -1}
	pctx, cancel := context.WithTimeout(ctx, b.o.Cap)
	defer cancel()
	t0 := time.Now()
	proc, err := acceptance.StartProxy(b.binary(proxy), e.topo.Node, cfg, nodeName, logPath)
	if err != nil {
		return nil, ph, err
	}
	pid := proc.Cmd.Process.Pid
	synced := make(chan struct{})
	probeDone := make(chan probeLog, 1)
	go func() {
		probeDone <- probe(pctx, e.client, dst, startupCadence, func(l probeLog) bool {
			if !untilOK(l) {
				return false
			}
			if !restart {
				return true
			}
			select {
			case <-synced:
				return true
			default:
				return false
			}
		})
	}()
	var syncEnd time.Time
	var perr error
poll:
	for {
		if proc.Exited() {
			perr = fmt.Errorf("%s exited: %v (log %s)", proxy, proc.Err(), logPath)
			break
		}
		if m, err := scrape(pctx, e.topo.Node); err == nil {
			if ts, ok := m.v4(mLastTimestamp); ok && ts > float64(t0.UnixNano())/1e9 {
				syncEnd = time.Unix(0, int64(ts*1e9))
				if st, err := readProc(pid); err == nil {
					ph.CPUS, ph.ChildCPUS, ph.HWMKB = st.UserSys, st.Children, st.HWMKB
				}
				if s, c, ok := m.hist(mFullDuration); ok && c > 0 {
					ph.FullSyncS = s / c
				}
				close(synced)
				break poll
			}
		}
		select {
		case <-pctx.Done():
			break poll
		case <-time.After(100 * time.Millisecond):
		}
	}
	if syncEnd.IsZero() {
		ph.Capped = ctx.Err() == nil && perr == nil
		if st, err := readProc(pid); err == nil {
			ph.CPUS, ph.ChildCPUS, ph.HWMKB = st.UserSys, st.Children, st.HWMKB
		}
		cancel()
	} else {
		ph.FirstSyncS = syncEnd.Sub(t0).Seconds()
	}
	log := <-probeDone
	if first, ok := log.firstOK(); ok {
		ph.ServingS = first.Sub(t0).Seconds()
	} else if !ph.Capped && perr == nil && ctx.Err() == nil {
		ph.Capped = true // synced, but never served within the cap
	}
	ph.Attempts = len(log)
	if !syncEnd.IsZero() {
		ph.FailedBeforeSync = log.failedStartedBefore(syncEnd)
	}
	if perr == nil {
		perr = ctx.Err()
	}
	return proc, ph, perr
}

// latency writes LatencySamples new Services one after the other and
// measures each from its API write to the first TCP connection through
// its ClusterIP; then it deletes them again and waits for the proxy.
// latencyProfileSecs is how much of the fast latency series -profile
// covers: its first Services, each written, synced and probed.
const latencyProfileSecs = 30

func (b *bench) latency(ctx context.Context, r *Run, e *env, proc *nsutil.Proc, tag, minSync string) (*Latency, error) {
	L := &Latency{MinSync: minSync, MeanConntrackS: -1}
	if tag == "fast" {
		profiled := b.startProfile(ctx, r, e.topo.Node, "latency", latencyProfileSecs)
		defer func() {
			if err := profiled(); err != nil {
				logf("  latency: %v", err)
			}
		}()
	}
	m0, _ := scrape(ctx, e.topo.Node)
	deadline := time.Now().Add(b.o.Cap)
	var names []string
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		for _, name := range names {
			if err := b.cl.deleteService(dctx, name); err != nil {
				logf("  delete %s: %v", name, err)
			}
		}
		if len(names) > 0 && ctx.Err() == nil {
			if err := acceptance.WaitSynced(ctx, e.topo.Node, proc, time.Now(), b.o.Cap); err != nil {
				logf("  after latency series: %v", err)
			}
		}
	}()
	for i := 0; i < b.o.LatencySamples; i++ {
		if ctx.Err() != nil {
			return L, ctx.Err()
		}
		if proc.Exited() {
			return L, fmt.Errorf("%s exited: %v", r.Proxy, proc.Err())
		}
		left := time.Until(deadline)
		if left <= 0 {
			L.Capped = true
			r.note("latency (%s) series hit the %s cap after %d samples", minSync, b.o.Cap, i)
			break
		}
		name := fmt.Sprintf("lat-%s-%d-%s-%03d", runTag(r), r.N, tag, i)
		names = append(names, name)
		s, err := b.programmingLatency(ctx, e, name, min(left, 60*time.Second))
		if err != nil {
			return L, err
		}
		L.WriteMs = append(L.WriteMs, s.WriteMs)
		if !s.OK {
			L.Failed++
			continue
		}
		L.Samples = append(L.Samples, s.Ms)
		// Writes arrive at spread-out times after the previous sync, so
		// with minSyncPeriod 1s the series samples every phase of the
		// runner's wait, the same for both proxies.
		time.Sleep(samplePause(i))
	}
	if m1, err := scrape(ctx, e.topo.Node); err == nil && m0 != nil {
		s0, c0, _ := m0.hist(mSyncDuration)
		s1, c1, _ := m1.hist(mSyncDuration)
		if c1 > c0 {
			L.MeanSyncS = (s1 - s0) / (c1 - c0)
			L.Syncs = c1 - c0
		}
		s0, c0, _ = m0.hist(mConntrack)
		if s1, c1, ok := m1.hist(mConntrack); ok && c1 > c0 {
			L.MeanConntrackS = (s1 - s0) / (c1 - c0)
		}
	}
	L.P50, L.P90, L.P99 = percentile(L.Samples, 50), percentile(L.Samples, 90), percentile(L.Samples, 99)
	logf("  latency minSyncPeriod %s: p50 %.0f ms, p90 %.0f ms, p99 %.0f ms (%d samples, %d failed; API writes p50 %.0f ms; %.0f syncs, mean %.3fs; mean conntrack round %.3fs)", minSync, L.P50, L.P90, L.P99, len(L.Samples), L.Failed, percentile(L.WriteMs, 50), L.Syncs, L.MeanSyncS, L.MeanConntrackS)
	return L, nil
}

// latencySample is one programming latency measurement.
type latencySample struct {
	Ms      float64 // API write of the Service -> first TCP connection through its ClusterIP
	WriteMs float64 // API write of the Service -> the EndpointSlice write returned
	OK      bool    // connected within the timeout
}

// programmingLatency creates Service name and its EndpointSlice (the real
// backends) and probes its ClusterIP until a connection succeeds or
// timeout passes. The caller deletes the Service.
func (b *bench) programmingLatency(ctx context.Context, e *env, name string, timeout time.Duration) (latencySample, error) {
	var s latencySample
	t0 := time.Now()
	ip, err := b.cl.createService(ctx, name, realBackends)
	if err != nil {
		return s, err
	}
	s.WriteMs = float64(time.Since(t0).Microseconds()) / 1000
	sctx, cancel := context.WithTimeout(ctx, timeout)
	log := probe(sctx, e.client, netip.AddrPortFrom(ip, servicePort), latencyCadence, untilOK)
	cancel()
	if first, ok := log.firstOK(); ok {
		s.Ms, s.OK = float64(first.Sub(t0).Microseconds())/1000, true
	}
	return s, nil
}

// samplePause is the pause after sample i: 100 ms to 1.08 s, spread
// evenly and the same for every run.
func samplePause(i int) time.Duration {
	return 100*time.Millisecond + time.Duration((i*37)%50)*20*time.Millisecond
}

func short(proxy string) string {
	if proxy == KubeProxy {
		return "kp"
	}
	return "sp"
}

// runTag names a run in object names and log directories: the proxy's
// short name, plus the mode when the run sets one.
func runTag(r *Run) string {
	if r.Mode == "" {
		return short(r.Proxy)
	}
	return short(r.Proxy) + "-" + r.Mode
}

// churnSeconds is the churn length at N: short where kube-proxy's sync
// takes longer than 1 s (or kube-proxy never finished its first sync).
func (b *bench) churnSeconds(n int) (int, string) {
	for _, r := range b.rep.Runs {
		if r.Proxy != KubeProxy || r.N != n {
			continue
		}
		if r.Cold.Capped || r.LatFast == nil {
			return b.o.ShortChurn, "kube-proxy did not finish its first sync within the cap"
		}
		if r.LatFast.MeanSyncS > 1 {
			return b.o.ShortChurn, fmt.Sprintf("a kube-proxy sync takes %.1f s at this N", r.LatFast.MeanSyncS)
		}
		return b.o.ChurnSeconds, ""
	}
	return b.o.ChurnSeconds, ""
}

// churn replaces one endpoint of a workload Service every second and reads
// the proxy's metrics before and after.
func (b *bench) churn(ctx context.Context, r *Run, e *env, proc *nsutil.Proc) (*Churn, error) {
	secs, why := b.churnSeconds(r.N)
	if r.Proxy == KubeProxy && r.LatFast != nil && r.LatFast.MeanSyncS > 1 {
		secs, why = b.o.ShortChurn, fmt.Sprintf("a kube-proxy sync takes %.1f s at this N", r.LatFast.MeanSyncS)
	}
	if isSvcProxy(r.Proxy) && r.LatFast != nil && r.LatFast.MeanSyncS > 1 && secs > b.o.ShortChurn {
		secs, why = b.o.ShortChurn, fmt.Sprintf("a svcproxy sync takes %.1f s at this N", r.LatFast.MeanSyncS)
	}
	c := &Churn{Seconds: secs, BytesPerChange: -1, NatRulesLast: -1, NatRulesTotal: -1}
	if secs != b.o.ChurnSeconds && why != "" {
		c.Note = fmt.Sprintf("shortened to %d s: %s", secs, why)
	}
	// The latency series' Services drain for up to the grace period after
	// their deletion, and a deletion that reached the proxy late would be
	// synced inside the churn; neither is the churn's work.
	if err := waitDrained(ctx, e.topo.Node, drainWait); err != nil {
		c.Note = joinNotes(c.Note, "before the churn: "+err.Error())
		logf("  churn: %v", err)
	}
	m0, err := scrape(ctx, e.topo.Node)
	if err != nil {
		return c, err
	}
	profiled := b.startProfile(ctx, r, e.topo.Node, "churn", secs)
	defer func() {
		if err := profiled(); err != nil {
			logf("  churn: %v", err)
		}
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last time.Time
	for i := 0; i < secs; i++ {
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-t.C:
		}
		svc := (i*7919 + 13) % r.N
		if err := b.cl.replaceEndpoint(ctx, svc, i%endpointsN); err != nil {
			return c, fmt.Errorf("churn: %w", err)
		}
		last = time.Now()
		c.Changes++
	}
	if err := acceptance.WaitSynced(ctx, e.topo.Node, proc, last, b.o.Cap); err != nil {
		return c, fmt.Errorf("churn: %w", err)
	}
	m1, err := scrape(ctx, e.topo.Node)
	if err != nil {
		return c, err
	}
	for _, name := range []string{mPartDuration, mSyncDuration} {
		s0, c0, _ := m0.hist(name)
		s1, c1, ok := m1.hist(name)
		if ok && c1 > c0 {
			c.SyncSPerChange, c.Syncs, c.SyncMetric = (s1-s0)/(c1-c0), c1-c0, name
			break
		}
	}
	if s1, c1, ok := m1.hist(mRestoreBytes); ok {
		s0, c0, _ := m0.hist(mRestoreBytes)
		if c1 > c0 {
			c.BytesPerChange = (s1 - s0) / (c1 - c0)
		}
	}
	if c.Changes > 0 {
		c.KernelCallsPerChange = perChange(m0.byLabel(mKernelCalls, "call"), m1.byLabel(mKernelCalls, "call"), c.Changes)
	}
	if v, ok := m1.v4(mRulesLast, "table", "nat"); ok {
		c.NatRulesLast = v
	}
	if v, ok := m1.v4(mRulesTotal, "table", "nat"); ok {
		c.NatRulesTotal = v
	}
	logf("  churn: %d changes in %d s, %.0f syncs, %.3f s/sync (%s), %.0f bytes/sync, %.0f nat rules in last sync", c.Changes, secs, c.Syncs, c.SyncSPerChange, c.SyncMetric, c.BytesPerChange, c.NatRulesLast)
	return c, nil
}

// joinNotes joins two notes with "; ", either of which may be empty.
func joinNotes(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// drainWait bounds waitDrained: svcproxy's default grace period (30 s)
// plus a few reap rounds.
const drainWait = 45 * time.Second

// waitDrained waits until the proxy in netns reports no IPVS real server
// draining (kubeproxy_sync_proxy_rules_ipvs_real_servers_draining) on two
// scrapes a second apart, the second one so that deletions still on their
// way from the API server are seen; a proxy without the gauge has nothing
// to wait for. The churn's kernel call counts then hold none of the
// latency series' deletions.
func waitDrained(ctx context.Context, netns string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	zeros := 0
	for {
		m, err := scrape(ctx, netns)
		if err != nil {
			return err
		}
		n, ok := m.v4(mDraining)
		if !ok {
			return nil
		}
		if zeros = zeros + 1; n != 0 {
			zeros = 0
		}
		if zeros == 2 {
			return nil
		}
		if n != 0 && time.Now().After(deadline) {
			return fmt.Errorf("%.0f IPVS real servers still draining after %s", n, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// MinSyncCheck is what each binary does with minSyncPeriod 0s (and the
// stand-in), read from its own startup log.
type MinSyncCheck struct {
	// Effective[proxy][configured] is the minSyncPeriod the proxy logged.
	Effective map[string]map[string]string
	Fast      string // the value used for the "0s" series
	Summary   string
}

var minSyncLog = regexp.MustCompile(`minSyncPeriod="?([0-9][0-9a-zµ.]*)"?`)

// checkMinSync starts each proxy briefly with minSyncPeriod 0s and 1ms in
// a scratch namespace and reads the value it reports in its log
// (svcproxy: "Starting svcproxy ... minSyncPeriod=", kube-proxy at -v=2:
// "Iptables sync params ... minSyncPeriod=").
func (b *bench) checkMinSync(ctx context.Context) (MinSyncCheck, error) {
	mc := MinSyncCheck{Effective: map[string]map[string]string{}}
	dir := filepath.Join(b.o.LogDir, "minsync")
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return mc, err
	}
	for _, proxy := range b.o.Proxies {
		mc.Effective[proxy] = map[string]string{}
		for _, v := range []string{"0s", "1ms"} {
			got, err := b.effectiveMinSync(ctx, proxy, v, dir)
			if err != nil {
				return mc, fmt.Errorf("%s with minSyncPeriod %s: %w", proxy, v, err)
			}
			mc.Effective[proxy][v] = got
		}
	}
	zeroOK := true
	for _, m := range mc.Effective {
		if d, err := time.ParseDuration(m["0s"]); err != nil || d != 0 {
			zeroOK = false
		}
	}
	mc.Fast = "0s"
	var parts []string
	for _, p := range b.o.Proxies {
		parts = append(parts, fmt.Sprintf("%s runs with %s", p, mc.Effective[p]["0s"]))
	}
	if !zeroOK {
		mc.Fast = "1ms"
		oneOK := true
		for _, p := range b.o.Proxies {
			if d, err := time.ParseDuration(mc.Effective[p]["1ms"]); err != nil || d != time.Millisecond {
				oneOK = false
			}
		}
		mc.Summary = fmt.Sprintf("configured 0s: %s (defaulting treats 0 as unset), so the \"0s\" series uses 1ms", joinAnd(parts))
		if !oneOK {
			mc.Summary += fmt.Sprintf(" (but 1ms is reported as %v)", mc.Effective)
		}
	} else {
		mc.Summary = fmt.Sprintf("configured 0s: %s", joinAnd(parts))
	}
	return mc, nil
}

func joinAnd(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	return fmt.Sprintf("%s and %s", joinComma(s[:len(s)-1]), s[len(s)-1])
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

func (b *bench) effectiveMinSync(ctx context.Context, proxy, v, dir string) (string, error) {
	ns := nsutil.Name("msync")
	if err := nsutil.Add(ns); err != nil {
		return "", err
	}
	defer func() { _ = nsutil.Delete(ns) }()
	link, err := b.linkNetns(ns)
	if err != nil {
		return "", err
	}
	defer link.Close()
	cfg := filepath.Join(dir, fmt.Sprintf("%s-%s.yaml", proxy, v))
	if err := b.proxyConfig(cfg, "", v); err != nil {
		return "", err
	}
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%s.log", proxy, v))
	proc, err := acceptance.StartProxy(b.binary(proxy), ns, cfg, nodeName, logPath)
	if err != nil {
		return "", err
	}
	defer proc.Stop(5 * time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if data, err := os.ReadFile(logPath); err == nil {
			if m := minSyncLog.FindSubmatch(data); m != nil {
				return string(m[1]), nil
			}
		}
		if proc.Exited() {
			return "", fmt.Errorf("exited before logging minSyncPeriod (%v); log %s", proc.Err(), logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("no minSyncPeriod in its log within 60 s; log %s", logPath)
}

// percentile is the p-th percentile (linear interpolation between ranks).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	pos := p / 100 * float64(len(s)-1)
	lo := int(pos)
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	frac := pos - float64(lo)
	return s[lo] + frac*(s[lo+1]-s[lo])
}
