package acceptance

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Observer watches a scenario run from the inside: the runner calls it at
// fixed points, and it may look at the node, the proxy and the traffic
// through the Scene it is given. `make demo` uses one to show what svcproxy
// did; a run without one (Options.Observer nil) behaves exactly as before.
// A scenario whose setup or first sync fails reports its flows as failed
// and calls no Observer method.
type Observer interface {
	// Synced is called once the proxy has synced a stage, before that
	// stage's flows: stage 0 is the scenario's own objects, stage i the
	// i-th step.
	Synced(ctx context.Context, sc *Scene, stage int)
	// StepApplied is called as soon as step i's objects are written,
	// before the runner waits for the proxy to sync them.
	StepApplied(ctx context.Context, sc *Scene, stage int)
	// FlowChecked is called with the connections behind a flow's verdict.
	FlowChecked(sc *Scene, f Flow, atts []Attempt, status string)
	// Done is called after the last stage, with the proxy still running.
	Done(ctx context.Context, sc *Scene)
}

// Scene is what an Observer may see and do in a running scenario.
type Scene struct{ sr *scenarioRun }

// Scenario is the scenario being run.
func (sc *Scene) Scenario() *Scenario { return sc.sr.s }

// Mode is the proxy mode of the run.
func (sc *Scene) Mode() string { return sc.sr.r.opts.Mode }

// ProxyBinary is the proxy's binary: with ProxyConfig, what runs its
// subcommands (explain, diff) so that they plan as the daemon does.
func (sc *Scene) ProxyBinary() string { return sc.sr.r.opts.Proxy }

// ProxyConfig is the path of the running proxy's config file.
func (sc *Scene) ProxyConfig() string { return sc.sr.cfgPath }

// NodeCommand runs a program in the node's network namespace and returns
// its combined output.
func (sc *Scene) NodeCommand(name string, args ...string) ([]byte, error) {
	cmd := nsutil.Exec(sc.sr.topo.Node, name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+sc.sr.r.kubeconfigPath())
	return cmd.CombinedOutput()
}

// Metrics returns the proxy's Prometheus text from its metrics address in
// the node's namespace.
func (sc *Scene) Metrics() (string, error) {
	resp, err := nsutil.HTTPClient(sc.sr.topo.Node, 5*time.Second).Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Attempts opens n new connections the way flow f does and classifies each.
func (sc *Scene) Attempts(f Flow, n int) ([]Attempt, error) {
	cl, err := sc.sr.flowClient(f)
	if err != nil {
		return nil, err
	}
	dstIP, err := netip.ParseAddr(f.DestIP)
	if err != nil {
		return nil, err
	}
	return sc.sr.attempts(cl, f, netip.AddrPortFrom(dstIP.Unmap(), uint16(f.DestPort)), n)
}

// Report adds a result line "scenario/name" to the run: the observer's own
// checks count in the closing line like flows do. The reason is shown only
// for a failure.
func (sc *Scene) Report(name string, ok bool, reason string) {
	res := Result{Scenario: sc.sr.s.Name, Flow: name, Status: "pass"}
	if !ok {
		res.Status, res.Reason = "fail", reason
		sc.sr.failed = true
	}
	sc.sr.r.report(res)
}

// Printf writes observer output to the report stream.
func (sc *Scene) Printf(format string, args ...any) {
	fmt.Fprintf(sc.sr.r.opts.Out, format, args...)
}

// Kube is a client of the run's API server, to show objects as a user
// would see them.
func (sc *Scene) Kube() kubernetes.Interface { return sc.sr.api.c }
