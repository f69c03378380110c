// Command bench runs svcproxy and the reference kube-proxy side by side on
// this machine, against the same real kube-apiserver, with the same
// KubeProxyConfiguration (iptables mode, nf_tables backend), each in a fresh
// node network namespace of its own, one after the other. For every
// workload size N (N Services x 10 endpoints) it measures cold start,
// restart with the rules in place, programming latency, endpoint churn,
// memory and CPU, and the floor (a bare iptables-nft-restore of the same
// ruleset), then writes a markdown table, a JSON file and a PNG plot.
//
// With -vm it runs svcproxy in iptables and in ipvs mode in the QEMU
// guest of e2e/vm instead (vm.go), with -soak a long load run (soak.go).
//
// Every number in the outputs comes from the run. See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Proxy names as they appear in the outputs. SvcProxyNFT is svcproxy in
// nftables mode (the others run iptables mode).
const (
	SvcProxy    = "svcproxy"
	SvcProxyNFT = "svcproxy-nftables"
	KubeProxy   = "kube-proxy"
)

type options struct {
	Ns             []int
	KubeProxyMaxN  int
	Cap            time.Duration
	Out            string
	Proxy          string
	KubeProxy      string
	Responder      string
	BinDir         string
	LatencySamples int
	ChurnSeconds   int
	ShortChurn     int
	Writers        int
	OneChange      string
	Quick          bool
	Proxies        []string
	LogDir         string
	Soak           *soakOptions // set by -soak: the long load run instead of the bench
	VM             *vmOptions   // set by -vm or -vm-guest: the IPVS vs iptables run in the QEMU guest
	NoFloor        bool         // skip the floor (iptables-nft-restore of the dump)
	Profile        bool         // svcproxy with enableProfiling; CPU profiles of churn and the fast latency series
	Trace          bool         // with Profile: an execution trace of the churn too
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func parseNs(s string) ([]int, error) {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad N %q", f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func main() {
	root, err := controlplane.RepoRoot()
	if err != nil {
		fatal(err)
	}
	var o options
	quick := envOr("BENCH_QUICK", "") != "" && envOr("BENCH_QUICK", "") != "0"
	defN := "1000 5000 10000 20000"
	defOut := filepath.Join(root, "bench", "results")
	defSamples, defChurn, defShort := 50, 60, 20
	if quick {
		defN, defOut, defSamples, defChurn, defShort = "200", filepath.Join(root, ".cache", "bench", "quick"), 15, 10, 10
	}
	nStr := flag.String("n", envOr("BENCH_N", defN), "workload sizes (Services x 10 endpoints), space or comma separated; env BENCH_N")
	flag.IntVar(&o.KubeProxyMaxN, "kube-proxy-max-n", 10000, "run kube-proxy only for N up to this")
	capStr := flag.String("cap", envOr("BENCH_CAP", "300s"), "time cap per phase (cold start, restart, latency series); env BENCH_CAP")
	flag.StringVar(&o.Out, "out", envOr("BENCH_OUT", defOut), "output directory for bench.md, bench.json, bench.png; env BENCH_OUT")
	flag.StringVar(&o.Proxy, "proxy", filepath.Join(root, "bin", "proxy"), "svcproxy binary")
	flag.StringVar(&o.KubeProxy, "kube-proxy", filepath.Join(controlplane.DefaultBinDir(), "kube-proxy"), "reference kube-proxy binary")
	flag.StringVar(&o.Responder, "responder", filepath.Join(root, "bin", "responder"), "responder binary (e2e/cmd/responder)")
	flag.StringVar(&o.BinDir, "bin-dir", controlplane.DefaultBinDir(), "directory with etcd and kube-apiserver")
	flag.IntVar(&o.LatencySamples, "latency-samples", defSamples, "programming latency samples per proxy, N and minSyncPeriod")
	flag.IntVar(&o.ChurnSeconds, "churn-seconds", defChurn, "endpoint churn duration (one change per second)")
	flag.IntVar(&o.ShortChurn, "short-churn-seconds", defShort, "churn duration where a kube-proxy sync takes longer than 1 s")
	flag.IntVar(&o.Writers, "writers", 16, "parallel API writers when creating the workload")
	flag.StringVar(&o.OneChange, "one-change", "", "output of `go test -bench OneEndpointChange ./pkg/iptables/` to include in the report")
	flag.BoolVar(&o.Profile, "profile", false, "run svcproxy with enableProfiling and take CPU profiles of its churn and fast latency series (profile-<mode>-<phase>-n<N>.pb.gz in -out; with -vm, in -out/profiles with a pprof -top beside each)")
	flag.BoolVar(&o.Trace, "trace", false, "with -profile: also take an execution trace of svcproxy's churn (trace-<mode>-churn-n<N>.out beside the profiles; `go tool trace` reads it), which shows where syncs wait")
	proxies := flag.String("proxies", envOr("BENCH_PROXIES", SvcProxy+","+KubeProxy), "proxies to run, comma separated; env BENCH_PROXIES")
	flag.StringVar(&o.LogDir, "log-dir", filepath.Join(root, ".cache", "bench", "logs"), "proxy logs and rule dumps")
	soak := soakFlags()
	vmf := vmFlags()
	flag.Parse()
	o.Quick = quick
	if o.Ns, err = parseNs(*nStr); err != nil || len(o.Ns) == 0 {
		fatal(fmt.Errorf("-n %q: %v", *nStr, err))
	}
	if o.Cap, err = time.ParseDuration(*capStr); err != nil {
		fatal(fmt.Errorf("-cap: %w", err))
	}
	for _, p := range strings.Split(*proxies, ",") {
		p = strings.TrimSpace(p)
		if p != SvcProxy && p != SvcProxyNFT && p != KubeProxy {
			fatal(fmt.Errorf("-proxies: unknown proxy %q", p))
		}
		o.Proxies = append(o.Proxies, p)
	}
	if o.Soak, err = soak.parse(); err != nil {
		fatal(err)
	}
	if o.VM, err = vmf.parse(); err != nil {
		fatal(err)
	}
	if o.VM != nil && !o.VM.Guest && !flagSet("n") && os.Getenv("BENCH_N") == "" {
		o.Ns = vmDefaultNs // the host's sizes take hours under TCG
	}
	if os.Geteuid() != 0 {
		fatal(fmt.Errorf("bench needs root (network namespaces, iptables)"))
	}
	bins := []string{o.Proxy, o.KubeProxy, o.Responder}
	if o.Soak != nil || o.VM != nil {
		bins = []string{o.Proxy, o.Responder}
	}
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			fatal(fmt.Errorf("%v (run `make tools build`)", err))
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	run := run
	if o.Soak != nil {
		run = runSoak
	}
	if o.VM != nil {
		run = runVM
		if o.VM.Guest {
			run = runGuest
		}
	}
	if err := run(ctx, o); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Report is everything the run measured; bench.json holds it as is.
type Report struct {
	Started, Finished time.Time
	Quick             bool
	Machine           Machine
	Settings          Settings
	MinSync           MinSyncCheck
	Runs              []*Run
	OneChange         string `json:",omitempty"`
}

// Settings are the knobs of this run, for the report.
type Settings struct {
	Ns             []int
	KubeProxyMaxN  int
	CapSeconds     float64
	LatencySamples int
	ChurnSeconds   int
	ShortChurn     int
	ServiceCIDR    string
	ClusterCIDR    string
	Writers        int
	ProbeInterval  string
	AttemptTimeout string
	SyncPeriod     string
	Profiled       bool `json:",omitempty"` // -profile: svcproxy ran with enableProfiling, CPU profiles taken
}

func run(ctx context.Context, o options) error {
	if err := prepare(o); err != nil {
		return err
	}
	rep := &Report{
		Started: time.Now(),
		Quick:   o.Quick,
		Settings: Settings{
			Ns: o.Ns, KubeProxyMaxN: o.KubeProxyMaxN, CapSeconds: o.Cap.Seconds(),
			LatencySamples: o.LatencySamples, ChurnSeconds: o.ChurnSeconds, ShortChurn: o.ShortChurn,
			ServiceCIDR: serviceCIDR, ClusterCIDR: clusterCIDR, Writers: o.Writers,
			ProbeInterval: probeInterval.String(), AttemptTimeout: attemptTimeout.String(), SyncPeriod: "30s",
		},
	}
	rep.Machine = machineInfo(o)
	if o.OneChange != "" {
		if b, err := os.ReadFile(o.OneChange); err == nil {
			rep.OneChange = string(b)
		} else {
			logf("one-change results: %v", err)
		}
	}
	b, stop, err := startBench(ctx, o)
	if err != nil {
		return err
	}
	defer stop()
	b.rep = rep
	rep.MinSync, err = b.checkMinSync(ctx)
	if err != nil {
		return fmt.Errorf("minSyncPeriod check: %w", err)
	}
	logf("minSyncPeriod 0s: %s", rep.MinSync.Summary)
	for _, n := range o.Ns {
		if ctx.Err() != nil {
			break
		}
		if err := b.workload(ctx, n); err != nil {
			return err
		}
		// kube-proxy first, so the churn length for svcproxy follows
		// kube-proxy's measured sync time at the same N.
		for _, p := range []string{KubeProxy, SvcProxy, SvcProxyNFT} {
			if !slices.Contains(o.Proxies, p) || (p == KubeProxy && n > o.KubeProxyMaxN) {
				continue
			}
			if ctx.Err() != nil {
				break
			}
			r := b.runProxy(ctx, p, n)
			rep.Runs = append(rep.Runs, r)
			if err := b.save(); err != nil {
				logf("save: %v", err)
			}
		}
	}
	rep.Finished = time.Now()
	rep.Machine.LoadEnd = loadAvg()
	if err := b.save(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.Out, "bench.md"), []byte(renderMarkdown(rep)), 0o644); err != nil {
		return err
	}
	if err := writePlot(rep, filepath.Join(o.Out, "bench.png")); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	logf("wrote %s", filepath.Join(o.Out, "bench.md"))
	return ctx.Err()
}

// prepare removes stale namespaces of an aborted run and makes the output
// and log directories.
func prepare(o options) error {
	for _, err := range nsutil.RemoveStale() {
		logf("stale cleanup: %v", err)
	}
	for _, d := range []string{o.Out, o.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// startBench starts the control plane and writes the node, the namespace
// and the probe Service; stop stops the control plane.
func startBench(ctx context.Context, o options) (b *bench, stop func(), err error) {
	logf("starting control plane (service CIDR %s)", serviceCIDR)
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: o.BinDir, ServiceCIDRs: []string{serviceCIDR}})
	if err != nil {
		return nil, nil, fmt.Errorf("control plane: %w", err)
	}
	stop = func() {
		if err := cp.Stop(); err != nil {
			logf("control plane stop: %v", err)
		}
	}
	cl, err := newCluster(ctx, cp, o.Writers)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return &bench{o: o, cp: cp, cl: cl}, stop, nil
}

type bench struct {
	o   options
	cp  *controlplane.ControlPlane // nil in the VM guest
	cl  *cluster
	rep *Report
	// kubeconfig of the host's API server, in the VM guest (cp is nil).
	kubeconfig string
}

// save writes bench.json (after every proxy run, so a crash keeps data).
func (b *bench) save() error {
	data, err := json.MarshalIndent(b.rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.o.Out, "bench.json"), data, 0o644)
}

// workload makes the API hold N Services x 10 endpoints.
func (b *bench) workload(ctx context.Context, n int) error {
	start := time.Now()
	if err := b.cl.ensureWorkload(ctx, n); err != nil {
		return fmt.Errorf("workload N=%d: %w", n, err)
	}
	logf("N=%d: workload in place (%s)", n, time.Since(start).Round(time.Millisecond))
	return nil
}
