package acceptance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/vm"
)

// IPVS mode needs a kernel with IPVS, which the host lacks. RunInVM keeps
// the control plane (etcd, kube-apiserver) on the host and boots one QEMU
// guest for the whole file, running this same program with --in-vm: the
// guest builds every scenario's namespaces, responders and proxy itself
// and reaches the host's API server through the VM harness's forward
// (169.254.250.1:6443, as on the host). Result lines come back on the
// guest's console as they happen, marked with ResultMarker.

// ResultMarker starts every result line the guest prints, so the host can
// pick them out of the console.
const ResultMarker = "@@ "

// VMOptions configures RunInVM.
type VMOptions struct {
	Options
	// Exe is this program (default: os.Executable()); it must take the
	// flags of e2e/cmd/acceptance.
	Exe string
	// Timeout bounds the whole guest run (default 40 minutes).
	Timeout time.Duration
	// Memory and CPUs of the guest (defaults: 4096 MiB, 2).
	Memory, CPUs int
	// Transcript prints every line the guest reported (an Observer's
	// output as well as results), in order, once the guest is done,
	// instead of streaming result lines only.
	Transcript bool
}

// GuestArgs are the guest side's flags for a run (without the program).
func GuestArgs(o Options, file, kubeconfig, responder string, cidrs []string) []string {
	args := []string{"--in-vm", "--mode", o.Mode, "--file", file, "--proxy", o.Proxy,
		"--kubeconfig", kubeconfig, "--responder", responder, "--service-cidrs", strings.Join(cidrs, ",")}
	if o.Run != nil {
		args = append(args, "--run", o.Run.String())
	}
	if o.Verbose {
		args = append(args, "--verbose")
	}
	return append(args, o.GuestFlags...)
}

// RunInVM runs the scenario file in a guest and returns the summary of the
// guest's results.
func RunInVM(ctx context.Context, o VMOptions) (*Summary, error) {
	if err := vm.Available(); err != nil {
		// prepare.sh is idempotent and fills the cache on a fresh machine.
		if perr := prepareVM(o.Log); perr != nil {
			return nil, fmt.Errorf("%w (hack/vm/prepare.sh: %v)", err, perr)
		}
		if err := vm.Available(); err != nil {
			return nil, err
		}
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Timeout == 0 {
		o.Timeout = 40 * time.Minute
	}
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Exe = exe
	}
	for _, err := range nsutil.RemoveStale() {
		fmt.Fprintln(o.Log, "stale netns cleanup:", err)
	}
	share, err := nsutil.TempDir("acceptance-vm")
	if err != nil {
		return nil, err
	}
	if os.Getenv("SVCPROXY_KEEP_TMP") == "" {
		defer os.RemoveAll(share)
	}
	logf := func(format string, args ...any) {
		if o.Verbose {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}

	// Everything the guest runs must be visible to it: the host's / is,
	// except /tmp (the guest has its own), so files there go to the share.
	exe, err := visible(o.Exe, share)
	if err != nil {
		return nil, err
	}
	proxy, err := visible(o.Proxy, share)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(share, "scenarios.yaml")
	if err := copyFile(o.File, file); err != nil {
		return nil, err
	}
	responder := o.ResponderBin
	if responder == "" {
		if responder, err = buildResponder(share); err != nil {
			return nil, err
		}
	} else if responder, err = visible(responder, share); err != nil {
		return nil, err
	}

	logf("starting control plane on the host")
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: o.BinDir})
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	defer cp.Stop()
	kubeconfig := filepath.Join(share, "kubeconfig")
	if err := copyFile(cp.KubeconfigPath, kubeconfig); err != nil {
		return nil, err
	}

	o.Proxy = proxy
	args := GuestArgs(o.Options, file, kubeconfig, responder, cp.ServiceCIDRs)
	logf("booting the guest: %s %s", exe, strings.Join(args, " "))
	col := &resultCollector{out: o.Out, seen: map[string]bool{}}
	if o.Transcript {
		fmt.Fprintln(o.Out, "(running in the QEMU guest; its report follows when it is done)")
		col.out = io.Discard
	}
	var console io.Writer = col
	if o.Verbose {
		console = io.MultiWriter(col, &prefixWriter{w: o.Log, prefix: "guest| "})
	}
	mods, err := guestModules()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res, runErr := vm.Run(ctx, vm.RunOptions{
		Modules:  mods,
		Command:  append([]string{exe}, args...),
		Dir:      share,
		ShareDir: share,
		Memory:   o.Memory,
		CPUs:     o.CPUs,
		Timeout:  o.Timeout,
		Network:  vm.APINetwork,
		Forwards: []vm.Forward{vm.APIForward(cp)},
		Console:  console,
	})
	// The console may have mangled a line; the output file has them all.
	col.Write([]byte(res.Output))
	col.flush()
	if o.Transcript {
		printTranscript(o.Out, res.Output)
	}
	logf("guest ran %s (boot %s)", time.Since(start).Round(time.Second), res.Boot.Round(time.Millisecond))
	sum := col.summary()
	if runErr != nil {
		return sum, runErr
	}
	if res.ExitCode != 0 && sum.Failed == 0 {
		tail := res.Output[max(0, len(res.Output)-4000):]
		return sum, fmt.Errorf("guest exited %d without a failed flow; its output ends:\n%s\nsetup log: %s", res.ExitCode, tail, res.SetupLog)
	}
	return sum, nil
}

// guestModules is the VM's default module list without the kernel's SCTP
// stack. The host kernel has none, and the scenarios' SCTP responders
// answer INITs from raw sockets; with the stack loaded, each endpoint's
// kernel would race them with an ABORT (no SCTP socket listens there).
// Netfilter and IPVS handle SCTP without it.
func guestModules() ([]string, error) {
	p, err := vm.Locate()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(p.Repo, "hack", "vm", "modules.txt"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		for _, m := range strings.Fields(line) {
			if m != "sctp" {
				out = append(out, m)
			}
		}
	}
	return out, nil
}

// visible returns a path the guest can read: path itself, or a copy in the
// share when path is under /tmp.
func visible(path, share string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if abs != "/tmp" && !strings.HasPrefix(abs, "/tmp/") {
		return abs, nil
	}
	dst := filepath.Join(share, filepath.Base(abs))
	if err := copyFile(abs, dst); err != nil {
		return "", err
	}
	return dst, os.Chmod(dst, 0o755)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

var resultLine = regexp.MustCompile(`^(.+?): (pass|fail|skip)(: .*)?$`)

// resultCollector picks the marked result lines out of the guest's console,
// prints each once and counts them.
type resultCollector struct {
	mu      sync.Mutex
	out     io.Writer
	buf     bytes.Buffer
	seen    map[string]bool
	results []Result
}

func (c *resultCollector) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	for {
		line, err := c.buf.ReadString('\n')
		if err != nil {
			c.buf.Reset()
			c.buf.WriteString(line)
			return len(p), nil
		}
		c.line(line)
	}
}

func (c *resultCollector) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf.Len() > 0 {
		c.line(c.buf.String())
		c.buf.Reset()
	}
}

func (c *resultCollector) line(line string) {
	line = strings.TrimRight(line, "\r\n")
	i := strings.Index(line, ResultMarker)
	if i < 0 {
		return
	}
	line = line[i+len(ResultMarker):]
	m := resultLine.FindStringSubmatch(line)
	if m == nil || c.seen[line] {
		return
	}
	c.seen[line] = true
	r := Result{Status: m[2], Reason: strings.TrimPrefix(m[3], ": ")}
	r.Scenario, r.Flow, _ = strings.Cut(m[1], "/")
	c.results = append(c.results, r)
	fmt.Fprintln(c.out, line)
}

// printTranscript prints every marked line of the guest's output, in order.
func printTranscript(out io.Writer, output string) {
	for _, line := range strings.Split(output, "\n") {
		line = strings.TrimRight(line, "\r")
		if i := strings.Index(line, ResultMarker); i >= 0 {
			fmt.Fprintln(out, line[i+len(ResultMarker):])
		}
	}
}

func (c *resultCollector) summary() *Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &Summary{Results: c.results}
	for _, r := range c.results {
		switch r.Status {
		case "pass":
			s.Passed++
		case "fail":
			s.Failed++
		default:
			s.Skipped++
		}
	}
	return s
}

// prefixWriter prefixes every line (verbose guest console).
type prefixWriter struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !p.mid {
			if _, err := io.WriteString(p.w, p.prefix); err != nil {
				return 0, err
			}
		}
		if _, err := p.w.Write(bytes.ReplaceAll(line, []byte("\r"), nil)); err != nil {
			return 0, err
		}
		p.mid = !bytes.HasSuffix(line, []byte("\n"))
	}
	return len(b), nil
}

// MarkedWriter prefixes every line written to it with ResultMarker (the
// guest's report output).
type MarkedWriter struct{ W io.Writer }

func (m MarkedWriter) Write(b []byte) (int, error) {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) > 0 {
			out.WriteString(ResultMarker)
			out.Write(line)
		}
	}
	if _, err := m.W.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// prepareVM runs hack/vm/prepare.sh (root; installs QEMU and fills
// .cache/vm when missing).
func prepareVM(log io.Writer) error {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return err
	}
	if log == nil {
		log = io.Discard
	}
	cmd := exec.Command(filepath.Join(root, "hack", "vm", "prepare.sh"))
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = log, log
	return cmd.Run()
}
