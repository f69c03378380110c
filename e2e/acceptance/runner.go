package acceptance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Options configures a run.
type Options struct {
	Mode  string
	File  string
	Run   *regexp.Regexp // nil: everything
	Proxy string         // proxy binary
	// Verbose prints the proxy log of failed scenarios and setup details.
	Verbose bool
	Out     io.Writer // report lines
	Log     io.Writer // verbose output; nil discards
	// BinDir holds etcd and kube-apiserver (default: controlplane's).
	BinDir string
	// ResponderBin is a prebuilt responder; empty builds one.
	ResponderBin string
	// SyncTimeout bounds the wait for the proxy to sync (default 60 s).
	SyncTimeout time.Duration
	// AttemptTimeout bounds one connection attempt (default 2 s).
	AttemptTimeout time.Duration
	// Kubeconfig, when set, names a running API server to use instead of
	// starting a control plane: the runner inside the IPVS guest reaches
	// the host's API server through the VM's forward (see vm.go). The
	// proxy reaches it through a relay in the node namespace.
	Kubeconfig string
	// ServiceCIDRs are the external API server's service CIDRs.
	ServiceCIDRs []string
	// Observer, when set, is called at fixed points of every scenario
	// (see Observer); `make demo` shows what the proxy did through one.
	Observer Observer
	// GuestFlags are extra flags for the guest side of a VM run, so the
	// guest can build the same Observer (e.g. --demo).
	GuestFlags []string
}

// Result is the verdict on one flow.
type Result struct {
	Scenario, Flow string
	Status         string // pass, fail, skip
	Reason         string
}

// Line renders the report line.
func (r Result) Line() string {
	if r.Reason == "" {
		return fmt.Sprintf("%s/%s: %s", r.Scenario, r.Flow, r.Status)
	}
	return fmt.Sprintf("%s/%s: %s: %s", r.Scenario, r.Flow, r.Status, r.Reason)
}

// Summary collects the results of a run.
type Summary struct {
	Results                 []Result
	Passed, Failed, Skipped int
}

// Line renders the closing line.
func (s *Summary) Line() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", s.Passed, s.Failed, s.Skipped)
}

// Runner executes scenario files; it owns the control plane and the temp
// directory, both removed by Close.
type Runner struct {
	opts     Options
	dir      string
	cp       *controlplane.ControlPlane
	api      *API
	relays   map[string]*apiRelay
	summary  Summary
	mu       sync.Mutex
	closed   bool
	closeErr error
}

// NewRunner prepares a run: removes namespaces left by killed runs and
// builds the responder.
func NewRunner(opts Options) (*Runner, error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 60 * time.Second
	}
	if opts.AttemptTimeout == 0 {
		opts.AttemptTimeout = 2 * time.Second
	}
	switch opts.Mode {
	case "iptables", "ipvs", "nftables":
	default:
		return nil, fmt.Errorf("unknown mode %q (iptables, ipvs or nftables)", opts.Mode)
	}
	for _, err := range nsutil.RemoveStale() {
		fmt.Fprintln(opts.Log, "stale netns cleanup:", err)
	}
	dir, err := nsutil.TempDir("acceptance")
	if err != nil {
		return nil, err
	}
	r := &Runner{opts: opts, dir: dir, relays: map[string]*apiRelay{}}
	if r.opts.ResponderBin == "" {
		if r.opts.ResponderBin, err = buildResponder(dir); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

// buildResponder compiles e2e/cmd/responder into dir.
func buildResponder(dir string) (string, error) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "responder")
	cmd := exec.Command("go", "build", "-o", out, "./e2e/cmd/responder")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build responder: %v: %s", err, b)
	}
	return out, nil
}

// Close stops the control plane and removes the temp directory. It is safe
// to call from a signal handler while a scenario runs: namespaces of the
// scenario are removed by the scenario's own cleanup, or by RemoveStale on
// the next run if the process dies first.
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.closeErr
	}
	r.closed = true
	var errs []error
	if r.cp != nil {
		errs = append(errs, r.cp.Stop())
	}
	for ns, rl := range r.relays {
		rl.Close()
		delete(r.relays, ns)
	}
	if os.Getenv("SVCPROXY_KEEP_TMP") == "" {
		errs = append(errs, os.RemoveAll(r.dir))
	}
	r.closeErr = errors.Join(errs...)
	return r.closeErr
}

func (r *Runner) logf(format string, args ...any) {
	if r.opts.Verbose {
		fmt.Fprintf(r.opts.Log, format+"\n", args...)
	}
}

// report records and prints one flow result.
func (r *Runner) report(res Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.summary.Results = append(r.summary.Results, res)
	switch res.Status {
	case "pass":
		r.summary.Passed++
	case "fail":
		r.summary.Failed++
	default:
		r.summary.Skipped++
	}
	fmt.Fprintln(r.opts.Out, res.Line())
}

// RunFile runs every selected scenario of the file and returns the summary.
func (r *Runner) RunFile(ctx context.Context) (*Summary, error) {
	scenarios, notes, err := LoadFile(r.opts.File)
	if err != nil {
		return nil, err
	}
	for _, n := range notes {
		r.logf("note: %s", n)
	}
	for i := range scenarios {
		if ctx.Err() != nil {
			return &r.summary, ctx.Err()
		}
		s := &scenarios[i]
		flows := r.selected(s)
		if len(flows) == 0 {
			continue
		}
		if !s.HasMode(r.opts.Mode) {
			for _, f := range s.AllFlows() {
				if flows[f.Name] {
					r.report(Result{s.Name, f.Name, "skip", fmt.Sprintf("scenario is not for mode %s (modes: %v)", r.opts.Mode, s.Modes)})
				}
			}
			continue
		}
		r.runScenario(ctx, s, flows)
	}
	return &r.summary, ctx.Err()
}

// selected returns the flows of s that --run selects (all when the
// pattern matches the scenario name).
func (r *Runner) selected(s *Scenario) map[string]bool {
	out := map[string]bool{}
	for _, f := range s.AllFlows() {
		if r.opts.Run == nil || r.opts.Run.MatchString(s.Name) || r.opts.Run.MatchString(s.Name+"/"+f.Name) {
			out[f.Name] = true
		}
	}
	return out
}

// controlPlane starts the shared control plane on first use.
func (r *Runner) controlPlane(ctx context.Context) (*API, error) {
	if r.api != nil {
		return r.api, nil
	}
	if r.opts.Kubeconfig != "" {
		client, err := clientFromKubeconfig(r.opts.Kubeconfig)
		if err != nil {
			return nil, err
		}
		if r.api, err = NewAPI(client, r.opts.ServiceCIDRs); err != nil {
			return nil, err
		}
		return r.api, nil
	}
	r.logf("starting control plane")
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: r.opts.BinDir})
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	r.mu.Lock()
	r.cp = cp
	closed := r.closed
	r.mu.Unlock()
	if closed {
		_ = cp.Stop()
		return nil, errors.New("runner closed")
	}
	api, err := NewAPI(cp.Client, cp.ServiceCIDRs)
	if err != nil {
		return nil, err
	}
	r.api = api
	return api, nil
}

// linkNetns lets processes in ns reach the API server: a veth to the
// control plane's namespace, or with an external API server (in the IPVS
// guest) a relay listening at the API address inside ns.
func (r *Runner) linkNetns(ns string) error {
	if r.opts.Kubeconfig == "" {
		return r.cp.LinkNetns(ns)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.relays[ns] != nil {
		return nil
	}
	rl, err := startRelay(ns, r.opts.Kubeconfig)
	if err != nil {
		return err
	}
	r.relays[ns] = rl
	return nil
}

// unlinkNetns stops ns's relay, if any (the veth goes with the namespace).
func (r *Runner) unlinkNetns(ns string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rl := r.relays[ns]; rl != nil {
		rl.Close()
		delete(r.relays, ns)
	}
}

// kubeconfigPath is the kubeconfig the proxy uses.
func (r *Runner) kubeconfigPath() string {
	if r.opts.Kubeconfig != "" {
		return r.opts.Kubeconfig
	}
	return r.cp.KubeconfigPath
}
