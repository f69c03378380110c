package main

// The VM bench (issue #7's IPVS part): the host kernel has no IPVS, so
// svcproxy's ipvs mode can only run in the QEMU guest of e2e/vm. runVM
// keeps etcd and kube-apiserver on the host (as `make e2e-ipvs` does),
// writes the workload from there (fast), and boots one guest per N that
// runs this same program with -vm-guest: runGuest runs the bench's
// phases (runProxyMode) for svcproxy in iptables mode and then in ipvs
// mode, in the same guest, against the same API server, reached through
// the guest's restricted user network and a forward to the host.
// Everything under TCG is several times slower than on the host; the
// ratio of the two modes from the same boot is the figure that carries.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/vm"
)

// vmDefaultNs are the sizes -vm runs without -n or BENCH_N.
var vmDefaultNs = []int{200, 1000}

// flagSet reports whether the command line set flag name.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// vmOptions are the -vm / -vm-guest knobs.
type vmOptions struct {
	Guest      bool   // this process is the guest side
	Kubeconfig string // guest: the host API server's kubeconfig (in the share)
	Modes      []string
	Memory     int // guest MiB
	CPUs       int
	Timeout    time.Duration // one guest boot, all modes
}

type vmFlagSet struct {
	host, guest       *bool
	kubeconfig, modes *string
	memory, cpus      *int
	timeout           *time.Duration
}

func vmFlags() *vmFlagSet {
	return &vmFlagSet{
		host:       flag.Bool("vm", false, "run svcproxy in iptables and ipvs mode in the QEMU guest (e2e/vm); writes vm.md and vm.json into -out"),
		guest:      flag.Bool("vm-guest", false, "internal: the guest side of -vm"),
		kubeconfig: flag.String("vm-kubeconfig", "", "internal (-vm-guest): kubeconfig of the host's API server"),
		modes:      flag.String("vm-modes", "iptables,ipvs", "-vm: proxy modes, run in this order in each guest boot"),
		memory:     flag.Int("vm-memory", 4096, "-vm: guest memory, MiB"),
		cpus:       flag.Int("vm-cpus", 2, "-vm: guest CPUs"),
		timeout:    flag.Duration("vm-timeout", 45*time.Minute, "-vm: bound of one guest boot (one N, all modes)"),
	}
}

func (f *vmFlagSet) parse() (*vmOptions, error) {
	if !*f.host && !*f.guest {
		return nil, nil
	}
	o := &vmOptions{Guest: *f.guest, Kubeconfig: *f.kubeconfig, Memory: *f.memory, CPUs: *f.cpus, Timeout: *f.timeout}
	for _, m := range strings.Split(*f.modes, ",") {
		switch m = strings.TrimSpace(m); m {
		case "iptables", "ipvs":
			o.Modes = append(o.Modes, m)
		default:
			return nil, fmt.Errorf("-vm-modes: unknown mode %q", m)
		}
	}
	if o.Guest && o.Kubeconfig == "" {
		return nil, errors.New("-vm-guest needs -vm-kubeconfig")
	}
	return o, nil
}

// GuestResult is what one guest boot writes into the share.
type GuestResult struct {
	Started, Finished time.Time
	Machine           Machine // the guest's own view: vCPUs, memory, kernel
	Runs              []*Run
}

const guestResultFile = "guest.json"

// runVM is the host side: control plane, workload, one guest per N.
func runVM(ctx context.Context, o options) error {
	if err := vm.Available(); err != nil {
		return fmt.Errorf("%w (run `make vm`)", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The guest sees the host's / except /tmp (its own tmpfs).
	if strings.HasPrefix(exe, "/tmp/") {
		return fmt.Errorf("%s is under /tmp, which the guest cannot see: build bin/bench (`make bench-vm`)", exe)
	}
	if err := prepare(o); err != nil {
		return err
	}
	share := filepath.Join(o.LogDir, "vm")
	_ = os.RemoveAll(share)
	if err := os.MkdirAll(share, 0o755); err != nil {
		return err
	}
	rep := newVMReport(o)
	b, stop, err := startBench(ctx, o)
	if err != nil {
		return err
	}
	defer stop()
	kc := filepath.Join(share, "kubeconfig")
	if err := copyTo(b.cp.KubeconfigPath, kc); err != nil {
		return err
	}
	for _, n := range o.Ns {
		if ctx.Err() != nil {
			break
		}
		if err := b.workload(ctx, n); err != nil {
			return err
		}
		boot, gr := b.bootGuest(ctx, exe, share, kc, n)
		rep.add(boot, gr)
		if err := rep.write(o.Out); err != nil {
			return err
		}
	}
	rep.Finished = time.Now()
	rep.Host.LoadEnd = loadAvg()
	if err := rep.write(o.Out); err != nil {
		return err
	}
	logf("wrote %s", filepath.Join(o.Out, "vm.md"))
	return ctx.Err()
}

// VMBoot is one guest boot (one N, every mode), as the host saw it.
type VMBoot struct {
	N                          int
	WallS                      float64 // QEMU start to exit
	BootS                      float64 // QEMU start to the command's start
	ExitCode                   int
	HostLoadStart, HostLoadEnd string
	Err                        string `json:",omitempty"`
}

// bootGuest runs every mode at N in one guest and reads what it wrote.
func (b *bench) bootGuest(ctx context.Context, exe, share, kc string, n int) (VMBoot, *GuestResult) {
	out := filepath.Join(share, fmt.Sprintf("n%d", n))
	boot := VMBoot{N: n, HostLoadStart: loadAvg(), ExitCode: -1}
	if err := os.MkdirAll(out, 0o755); err != nil {
		boot.Err = err.Error()
		return boot, nil
	}
	v := b.o.VM
	args := []string{exe, "-vm-guest", "-vm-kubeconfig", kc, "-vm-modes", strings.Join(v.Modes, ","),
		"-n", fmt.Sprint(n), "-out", out, "-log-dir", filepath.Join(out, "logs"),
		"-proxy", b.o.Proxy, "-responder", b.o.Responder, "-cap", b.o.Cap.String(),
		"-latency-samples", fmt.Sprint(b.o.LatencySamples), "-churn-seconds", fmt.Sprint(b.o.ChurnSeconds),
		"-short-churn-seconds", fmt.Sprint(b.o.ShortChurn), "-writers", fmt.Sprint(b.o.Writers)}
	if b.o.Profile {
		args = append(args, "-profile")
	}
	if b.o.Trace {
		args = append(args, "-trace")
	}
	logf("N=%d: booting the guest (%d vCPUs, %d MiB): %s", n, v.CPUs, v.Memory, strings.Join(args, " "))
	// The guest's bench finds the repository from its working directory.
	root, err := controlplane.RepoRoot()
	if err != nil {
		boot.Err = err.Error()
		return boot, nil
	}
	res, err := vm.Run(ctx, vm.RunOptions{
		Command:  args,
		Dir:      root,
		ShareDir: share,
		Memory:   v.Memory,
		CPUs:     v.CPUs,
		Timeout:  v.Timeout,
		Network:  vm.APINetwork,
		Forwards: []vm.Forward{vm.APIForward(b.cp)},
		Console:  &linePrefixer{w: os.Stderr, prefix: "guest| "},
	})
	boot.WallS, boot.BootS, boot.HostLoadEnd = res.Duration.Seconds(), res.Boot.Seconds(), loadAvg()
	if err == nil {
		boot.ExitCode = res.ExitCode
		if res.ExitCode != 0 {
			err = fmt.Errorf("guest exited %d; output ends: %s", res.ExitCode, tail(res.Output, 2000))
		}
	}
	if err != nil {
		boot.Err = err.Error()
		logf("N=%d: %v", n, err)
	}
	if err := collectProfiles(out, b.o.Out); err != nil {
		logf("N=%d: profiles: %v", n, err)
	}
	gr, rerr := readGuestResult(filepath.Join(out, guestResultFile))
	if rerr != nil && boot.Err == "" {
		boot.Err = rerr.Error()
	}
	logf("N=%d: guest ran %s (boot %s)", n, res.Duration.Round(time.Second), res.Boot.Round(100*time.Millisecond))
	return boot, gr
}

func readGuestResult(path string) (*GuestResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var gr GuestResult
	if err := json.Unmarshal(data, &gr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &gr, nil
}

// runGuest is the guest side: every mode at the one N, one after the
// other, each in a fresh node namespace; guest.json after each.
func runGuest(ctx context.Context, o options) error {
	if os.Getenv("SVCPROXY_VM_GUEST") == "" {
		return errors.New("-vm-guest runs inside the e2e/vm guest only (use -vm)")
	}
	if len(o.Ns) != 1 {
		return fmt.Errorf("-vm-guest takes one N, got %v", o.Ns)
	}
	o.NoFloor = true
	if err := prepare(o); err != nil {
		return err
	}
	n := o.Ns[0]
	rc, err := clientcmd.BuildConfigFromFlags("", o.VM.Kubeconfig)
	if err != nil {
		return err
	}
	// Fresh churn addresses per N, apart from the other boots'.
	cl, err := attachCluster(ctx, rc, o.Writers, n, 10_000_000+int64(n)*100)
	if err != nil {
		return err
	}
	gr := &GuestResult{Started: time.Now(), Machine: machineInfo(o)}
	gr.Machine.KubeProxy, gr.Machine.KubeProxyBin, gr.Machine.GitRevision = "", "", ""
	b := &bench{o: o, cl: cl, kubeconfig: o.VM.Kubeconfig, rep: &Report{MinSync: MinSyncCheck{Fast: "1ms"}}}
	save := func() error {
		gr.Finished = time.Now()
		data, err := json.MarshalIndent(gr, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(o.Out, guestResultFile), data, 0o644)
	}
	for _, mode := range o.VM.Modes {
		if ctx.Err() != nil {
			break
		}
		r := b.runProxyMode(ctx, SvcProxy, mode, n)
		noteMinSync(r, filepath.Join(o.LogDir, fmt.Sprintf("%s-%d", runTag(r), n)))
		gr.Runs = append(gr.Runs, r)
		b.rep.Runs = append(b.rep.Runs, r)
		if err := save(); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// noteMinSync records the minSyncPeriod each start logged, so the report
// shows what was in force rather than what the config asked for.
func noteMinSync(r *Run, dir string) {
	for _, f := range []string{"proxy-cold.log", "proxy-restart.log"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		if m := minSyncLog.FindSubmatch(data); m != nil {
			r.note("%s: minSyncPeriod in force (from its log) %s", strings.TrimSuffix(f, ".log"), m[1])
		}
	}
}

func copyTo(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o600)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// linePrefixer prefixes each line of the guest's console, dropping the
// serial console's carriage returns.
type linePrefixer struct {
	w      io.Writer
	prefix string
	mid    bool
}

var crs = regexp.MustCompile("\r+")

func (p *linePrefixer) Write(b []byte) (int, error) {
	s := crs.ReplaceAllString(string(b), "")
	for s != "" {
		line, rest, nl := strings.Cut(s, "\n")
		if !p.mid {
			line = p.prefix + line
		}
		if nl {
			line += "\n"
		}
		if _, err := io.WriteString(p.w, line); err != nil {
			return 0, err
		}
		p.mid, s = !nl, rest
	}
	return len(b), nil
}
