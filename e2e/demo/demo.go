// Package demo shows a newcomer what svcproxy did during `make demo`: the
// Services as the API server has them, what the proxy wrote into the
// kernel and how fast, which backend answered each connection and which
// client address it saw, how long a scale-down took to reach the traffic,
// and `proxy explain` on a healthy and a broken Service.
//
// It is an acceptance.Observer: the acceptance runner builds the control
// plane, the namespaces and the proxy, runs e2e/demo/demo.yaml's flows with
// real packets, and calls it at each stage. Everything it shows is also
// checked, and reported as a pass or fail line, so the demo's closing
// line counts what it showed.
package demo

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/e2e/acceptance"
)

// Observer implements acceptance.Observer for demo.yaml.
type Observer struct {
	// before is a metrics scrape at the end of the previous stage, so a
	// step's delta can be told apart from what came before.
	before metricsSample
	// applied is when the current step's objects were written.
	applied time.Time
}

// New returns the demo's observer.
func New() *Observer { return &Observer{} }

var _ acceptance.Observer = (*Observer)(nil)

// Synced shows, at stage 0, the Services and what svcproxy wrote for
// them; after a step, the delta the step cost.
func (o *Observer) Synced(ctx context.Context, sc *acceptance.Scene, stage int) {
	if stage == 0 {
		n := sc.Scenario().Node
		sc.Printf("svcproxy (%s mode) runs on node %s (%s), a network namespace of this machine, against a throwaway etcd and kube-apiserver; pods and clients are namespaces too, and every connection below is a real one.\n",
			sc.Mode(), n.Name, strings.Join(n.IPs, ", "))
		if sc.Mode() == "ipvs" {
			sc.Printf("(IPVS needs a kernel this machine lacks: the node runs in a QEMU guest without KVM, so its times are several times a real node's.)\n")
		}
		heading(sc, "The Services and their endpoints, as the API server has them")
		showObjects(ctx, sc)
		heading(sc, "What svcproxy wrote into the kernel")
		showKernel(sc, "demo", "web")
		m, err := scrape(sc)
		sc.Report("first-sync-metrics", err == nil && m.syncs > 0, errText(err))
		if err == nil {
			sc.Printf("first sync: %d sync(s), %s in total; restore payload %s; %s\n",
				m.syncs, ms(m.syncSeconds), bytesText(m.restoreBytes), rulesText(m, sc.Mode()))
		}
		o.before = m
		heading(sc, "Traffic, with real packets")
		return
	}
	m, err := scrape(sc)
	if err != nil {
		sc.Report(fmt.Sprintf("step-%d-metrics", stage), false, err.Error())
		return
	}
	d := m.minus(o.before)
	sc.Printf("the delta svcproxy wrote for it: %d sync(s) (%d full), %s; restore payload %s; %s\n",
		d.syncs, d.fullSyncs, ms(d.syncSeconds), bytesText(d.restoreBytes), rulesText(m, sc.Mode()))
	if sc.Mode() == "ipvs" {
		showVirtualServer(sc, sc.Scenario().Services[0])
	}
	sc.Report(fmt.Sprintf("step-%d-partial-sync", stage), d.syncs > 0 && d.fullSyncs == 0,
		fmt.Sprintf("%d syncs, %d full: a one-endpoint change should be written as a delta", d.syncs, d.fullSyncs))
	o.before = m
}

// StepApplied measures, for the scale-down, how long until traffic to the
// Service stops reaching the endpoint that left.
func (o *Observer) StepApplied(ctx context.Context, sc *acceptance.Scene, stage int) {
	o.applied = time.Now()
	gone := removedEndpoints(sc.Scenario(), stage)
	probe, ok := firstFlow(sc.Scenario().Flows, "pod-to-clusterip")
	heading(sc, fmt.Sprintf("A change: %s", sc.Scenario().Steps[stage-1].Description))
	if len(gone) == 0 || !ok {
		sc.Report("scale-down-converged", false, "the demo's step removes no endpoint, or has no pod-to-clusterip flow")
		return
	}
	sc.Printf("endpoint(s) removed from the EndpointSlice: %s\n", strings.Join(addrStrings(gone), ", "))
	c, err := o.untilGone(ctx, sc, probe, gone)
	if err != nil {
		sc.Report("scale-down-converged", false, err.Error())
		return
	}
	if c.reached == 0 {
		sc.Printf("traffic had stopped reaching it before the first probe, %s after the change was written; the %d connections opened from pod %s since did not reach it\n",
			ms(c.after.Seconds()), c.clean, probe.Source)
	} else {
		sc.Printf("traffic stopped reaching it %s after the change was written: %d of the connections opened one by one from pod %s reached it, the last at +%s; the %d opened after that did not\n",
			ms(c.after.Seconds()), c.reached, probe.Source, ms(c.lastHit.Seconds()), c.clean)
	}
	sc.Report("scale-down-converged", true, "")
}

// FlowChecked shows which backend answered each connection of a flow and
// the client address the backend saw.
func (o *Observer) FlowChecked(sc *acceptance.Scene, f acceptance.Flow, atts []acceptance.Attempt, status string) {
	sc.Printf("%s: %d new connections from %s %s to %s:%d/%s\n", f.Name, len(atts), f.SourceKind, f.Source, f.DestIP, f.DestPort, f.Protocol)
	for _, line := range spread(atts, f.Source) {
		sc.Printf("    %s\n", line)
	}
}

// Done runs `proxy explain` on the healthy Service and on the broken one.
func (o *Observer) Done(ctx context.Context, sc *acceptance.Scene) {
	heading(sc, "Looking inside: proxy explain")
	explain(sc, "demo/web", true)
	explain(sc, "demo/empty", false)
}

func heading(sc *acceptance.Scene, title string) {
	sc.Printf("\n== %s ==\n", title)
}

func firstFlow(flows []acceptance.Flow, name string) (acceptance.Flow, bool) {
	for _, f := range flows {
		if f.Name == name {
			return f, true
		}
	}
	return acceptance.Flow{}, false
}

// removedEndpoints lists the endpoint addresses of the scenario's slices
// that the step's version of the same slice no longer has.
func removedEndpoints(s *acceptance.Scenario, stage int) []netip.Addr {
	st := s.Steps[stage-1]
	if st.Apply == nil {
		return nil
	}
	var gone []netip.Addr
	for _, after := range st.Apply.EndpointSlices {
		for _, before := range s.EndpointSlices {
			if before.Namespace != after.Namespace || before.Name != after.Name {
				continue
			}
			kept := sliceAddrs(after)
			for _, a := range sliceAddrs(before) {
				if !slices.Contains(kept, a) {
					gone = append(gone, a)
				}
			}
		}
	}
	return gone
}

func sliceAddrs(es acceptance.EndpointSlice) []netip.Addr {
	var out []netip.Addr
	for _, ep := range es.Endpoints {
		for _, a := range ep.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

func addrStrings(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// convergence is how traffic moved off removed endpoints.
type convergence struct {
	// after is when, since the change was written, the first connection
	// that no longer reached a removed endpoint was opened.
	after time.Duration
	// lastHit is when the last connection that did reach one was opened.
	lastHit time.Duration
	// reached counts connections that reached a removed endpoint; clean
	// the ones opened after the last of those.
	reached, clean int
}

// untilGone opens the flow's connections one at a time until 30 in a row
// reach none of gone. With one endpoint in three gone, 30 misses in a row
// by chance while it is still in the rules happen once in 190,000 tries.
func (o *Observer) untilGone(ctx context.Context, sc *acceptance.Scene, f acceptance.Flow, gone []netip.Addr) (convergence, error) {
	const cleanRun = 30
	var c convergence
	deadline := o.applied.Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		opened := time.Since(o.applied)
		atts, err := sc.Attempts(f, 1)
		if err != nil {
			return c, err
		}
		if reachesAny(atts, gone) {
			c.reached++
			c.lastHit, c.clean = opened, 0
			continue
		}
		if c.clean == 0 {
			c.after = opened
		}
		if c.clean++; c.clean == cleanRun {
			return c, nil
		}
	}
	return c, fmt.Errorf("traffic still reached %v 30 s after the change", gone)
}
