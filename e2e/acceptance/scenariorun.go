package acceptance

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/responder"
)

// scenarioRun is the state of one scenario: its API objects, network and
// proxy process.
type scenarioRun struct {
	r         *Runner
	s         *Scenario
	selected  map[string]bool
	dir       string
	api       *API
	topo      *Topology
	proxy     *nsutil.Proc
	proxyLog  string
	cfgPath   string
	endpoints map[netip.Addr]bool
	hcPorts   map[uint16]bool
	failed    bool
}

// runScenario sets the scenario up, checks its flows and steps, and tears
// everything down again, whatever happens.
func (r *Runner) runScenario(ctx context.Context, s *Scenario, selected map[string]bool) {
	sr := &scenarioRun{r: r, s: s, selected: selected, endpoints: map[netip.Addr]bool{}, hcPorts: map[uint16]bool{}}
	defer sr.teardown()
	start := time.Now()
	if err := sr.setup(ctx); err != nil {
		sr.failAll(s.AllFlows(), "setup: "+err.Error())
		return
	}
	r.logf("%s: set up in %s", s.Name, time.Since(start).Round(time.Millisecond))
	if err := sr.waitSync(ctx); err != nil {
		sr.failAll(s.AllFlows(), err.Error())
		return
	}
	obs, scene := r.opts.Observer, &Scene{sr: sr}
	if obs != nil {
		obs.Synced(ctx, scene, 0)
	}
	sr.runFlows(ctx, s.Flows)
	for i, st := range s.Steps {
		if err := sr.applyStep(ctx, st); err != nil {
			sr.failAll(st.Flows, fmt.Sprintf("step %d: %v", i+1, err))
			continue
		}
		if obs != nil {
			obs.StepApplied(ctx, scene, i+1)
		}
		if err := sr.waitSync(ctx); err != nil {
			sr.failAll(st.Flows, fmt.Sprintf("step %d: %v", i+1, err))
			continue
		}
		if obs != nil {
			obs.Synced(ctx, scene, i+1)
		}
		sr.runFlows(ctx, st.Flows)
	}
	if obs != nil {
		obs.Done(ctx, scene)
	}
	r.logf("%s: done in %s", s.Name, time.Since(start).Round(time.Millisecond))
}

func (sr *scenarioRun) report(f Flow, status, reason string) {
	if !sr.selected[f.Name] {
		return
	}
	if status == "fail" {
		sr.failed = true
	}
	sr.r.report(Result{sr.s.Name, f.Name, status, reason})
}

func (sr *scenarioRun) failAll(flows []Flow, reason string) {
	for _, f := range flows {
		sr.report(f, "fail", reason)
	}
}

// setup writes the API objects, builds the network with responders and
// sentinels, and starts the proxy.
func (sr *scenarioRun) setup(ctx context.Context) error {
	s, r := sr.s, sr.r
	var err error
	if sr.dir, err = os.MkdirTemp(r.dir, "scenario-"); err != nil {
		return err
	}
	if sr.api, err = r.controlPlane(ctx); err != nil {
		return err
	}
	if err := sr.writeObjects(ctx); err != nil {
		return err
	}
	var nodeIPs []netip.Addr
	for _, ip := range s.Node.IPs {
		nodeIPs = append(nodeIPs, netip.MustParseAddr(ip).Unmap())
	}
	if sr.topo, err = NewTopology(nodeIPs, r.opts.ResponderBin, sr.dir, r.logf); err != nil {
		return err
	}
	if err := sr.buildPods(); err != nil {
		return err
	}
	if err := sr.routeToNode(); err != nil {
		return err
	}
	sr.openSentinels()
	return sr.startProxy()
}

// allServices and allSlices include the objects steps apply, so the network
// can be built once for the whole scenario.
func (sr *scenarioRun) allServices() []Service {
	out := append([]Service{}, sr.s.Services...)
	for _, st := range sr.s.Steps {
		if st.Apply != nil {
			out = append(out, st.Apply.Services...)
		}
	}
	return out
}

func (sr *scenarioRun) allSlices() []EndpointSlice {
	out := append([]EndpointSlice{}, sr.s.EndpointSlices...)
	for _, st := range sr.s.Steps {
		if st.Apply != nil {
			out = append(out, st.Apply.EndpointSlices...)
		}
	}
	return out
}

func (sr *scenarioRun) writeObjects(ctx context.Context) error {
	s, api := sr.s, sr.api
	if err := api.EnsureServiceCIDRs(ctx, s.Config.ServiceCIDRs, sr.allServices()); err != nil {
		return err
	}
	if err := api.CreateNode(ctx, s.Node, s.Config.IPFamily); err != nil {
		return err
	}
	for _, svc := range s.Services {
		if err := api.ApplyService(ctx, svc); err != nil {
			return err
		}
	}
	for _, es := range s.EndpointSlices {
		if err := api.ApplySlice(ctx, es); err != nil {
			return err
		}
	}
	for _, svc := range sr.allServices() {
		if svc.HealthCheckNodePort != 0 {
			sr.hcPorts[uint16(svc.HealthCheckNodePort)] = true
		}
	}
	return nil
}

// buildPods creates a namespace and responder for every endpoint address
// (local when its nodeName is this node) and a pod for every pod source.
func (sr *scenarioRun) buildPods() error {
	local := map[netip.Addr]bool{}
	ports := map[netip.Addr]*responder.Ports{}
	var order []netip.Addr
	for _, es := range sr.allSlices() {
		for _, ep := range es.Endpoints {
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					return fmt.Errorf("endpoint address %q: %w", a, err)
				}
				addr = addr.Unmap()
				if ports[addr] == nil {
					ports[addr] = &responder.Ports{}
					local[addr] = ep.NodeName != nil && *ep.NodeName == sr.s.Node.Name
					order = append(order, addr)
				}
				addPorts(ports[addr], es.Ports)
			}
		}
	}
	for _, addr := range order {
		p, err := sr.topo.EnsurePod(addr, local[addr])
		if err != nil {
			return err
		}
		p.Ports = *ports[addr]
		sr.endpoints[addr] = true
		if err := sr.topo.StartResponder(p); err != nil {
			return err
		}
	}
	for _, f := range sr.s.AllFlows() {
		src, err := netip.ParseAddr(f.Source)
		if err != nil {
			continue
		}
		switch f.SourceKind {
		case KindPod:
			if _, err := sr.topo.EnsurePod(src.Unmap(), true); err != nil {
				return err
			}
		case KindExternal:
			if _, err := sr.topo.EnsureExternal(src.Unmap()); err != nil {
				return err
			}
		}
	}
	return nil
}

func addPorts(dst *responder.Ports, ports []SlicePort) {
	for _, p := range ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		n := uint16(*p.Port)
		var list *[]uint16
		switch strings.ToUpper(p.Protocol) {
		case "UDP":
			list = &dst.UDP
		case "SCTP":
			list = &dst.SCTP
		default:
			list = &dst.TCP
		}
		if !slices.Contains(*list, n) {
			*list = append(*list, n)
		}
	}
}

// routeToNode makes the outside send service CIDRs, external IPs, LB IPs and
// every external flow's destination to the node.
func (sr *scenarioRun) routeToNode() error {
	var prefixes []string
	cidrs := sr.s.Config.ServiceCIDRs
	if len(cidrs) == 0 {
		for _, p := range sr.api.cidrs {
			cidrs = append(cidrs, p.String())
		}
	}
	prefixes = append(prefixes, cidrs...)
	for _, svc := range sr.allServices() {
		prefixes = append(prefixes, svc.ExternalIPs...)
		prefixes = append(prefixes, svc.LoadBalancerAddrs()...)
	}
	for _, f := range sr.s.AllFlows() {
		if f.SourceKind == KindExternal {
			prefixes = append(prefixes, f.DestIP)
		}
	}
	for _, x := range prefixes {
		p, err := netip.ParsePrefix(x)
		if err != nil {
			a, err2 := netip.ParseAddr(x)
			if err2 != nil {
				return fmt.Errorf("address %q: %w", x, err)
			}
			p = hostPrefix(a.Unmap())
		}
		if err := sr.topo.RouteToNode(p); err != nil {
			return err
		}
	}
	return nil
}

// nodeLocal reports whether addr belongs to the node namespace.
func (sr *scenarioRun) nodeLocal(addr netip.Addr) bool {
	return addr.IsLoopback() || slices.Contains(sr.topo.NodeIPs, addr)
}

// openSentinels opens a LOCAL listener for every flow aimed at a node
// address: a flow that expects LOCAL needs it, and for the others it keeps a
// packet the proxy wrongly left alone from passing as REJECT (the node's
// kernel would answer a closed port with RST). Ports of the proxy's own
// servers are skipped; there the HTTP answer decides.
func (sr *scenarioRun) openSentinels() {
	seen := map[string]bool{}
	for _, f := range sr.s.AllFlows() {
		dst, _ := netip.ParseAddr(f.DestIP)
		dst = dst.Unmap()
		expect, _ := f.Effective(sr.r.opts.Mode)
		if !sr.nodeLocal(dst) {
			if slices.Contains(expect, WordLocal) {
				sr.r.logf("%s/%s: no sentinel: %s is not a node address", sr.s.Name, f.Name, dst)
			}
			continue
		}
		port := uint16(f.DestPort)
		if f.Protocol == "TCP" && (sr.hcPorts[port] || port == healthzPort || port == metricsPort) {
			continue
		}
		key := fmt.Sprintf("%s/%s", f.Protocol, netip.AddrPortFrom(dst, port))
		if seen[key] {
			continue
		}
		seen[key] = true
		if err := sr.topo.AddSentinel(f.Protocol, netip.AddrPortFrom(dst, port)); err != nil {
			sr.r.logf("%s: sentinel %s: %v", sr.s.Name, key, err)
		}
	}
	if err := sr.topo.OpenSCTPSentinels(); err != nil {
		sr.r.logf("%s: sctp sentinels: %v", sr.s.Name, err)
	}
}

func (sr *scenarioRun) startProxy() error {
	if err := sr.r.linkNetns(sr.topo.Node); err != nil {
		return err
	}
	cfg, err := ProxyConfig(sr.s, sr.r.opts.Mode, sr.r.kubeconfigPath())
	if err != nil {
		return err
	}
	sr.cfgPath = filepath.Join(sr.dir, "proxy-config.yaml")
	if err := os.WriteFile(sr.cfgPath, cfg, 0o600); err != nil {
		return err
	}
	sr.proxyLog = filepath.Join(sr.dir, "proxy.log")
	sr.proxy, err = StartProxy(sr.r.opts.Proxy, sr.topo.Node, sr.cfgPath, sr.s.Node.Name, sr.proxyLog)
	return err
}

func (sr *scenarioRun) waitSync(ctx context.Context) error {
	start := time.Now()
	if err := WaitSynced(ctx, sr.topo.Node, sr.proxy, sr.api.LastWrite, sr.r.opts.SyncTimeout); err != nil {
		return err
	}
	sr.r.logf("%s: proxy synced in %s", sr.s.Name, time.Since(start).Round(time.Millisecond))
	// Let the rules settle (conntrack flushes, a second family's restore).
	time.Sleep(200 * time.Millisecond)
	return nil
}

// applyStep writes a step's objects, then its deletions.
func (sr *scenarioRun) applyStep(ctx context.Context, st Step) error {
	if st.Apply != nil {
		for _, svc := range st.Apply.Services {
			if err := sr.api.ApplyService(ctx, svc); err != nil {
				return err
			}
		}
		for _, es := range st.Apply.EndpointSlices {
			if err := sr.api.ApplySlice(ctx, es); err != nil {
				return err
			}
		}
	}
	if st.Delete != nil {
		for _, k := range st.Delete.Services {
			if err := sr.api.DeleteService(ctx, k); err != nil {
				return err
			}
		}
		for _, k := range st.Delete.EndpointSlices {
			if err := sr.api.DeleteSlice(ctx, k); err != nil {
				return err
			}
		}
	}
	return nil
}

// runFlows checks the selected flows one after the other.
func (sr *scenarioRun) runFlows(ctx context.Context, flows []Flow) {
	for _, f := range flows {
		if !sr.selected[f.Name] || ctx.Err() != nil {
			continue
		}
		status, reason := sr.runFlow(ctx, f)
		sr.report(f, status, reason)
	}
}

// teardown stops the proxy, removes the network and the API objects, and
// prints the proxy log when verbose and something failed.
func (sr *scenarioRun) teardown() {
	if sr.proxy != nil {
		sr.proxy.Stop(5 * time.Second)
	}
	if sr.topo != nil {
		sr.r.unlinkNetns(sr.topo.Node)
		sr.topo.Close()
	}
	if sr.api != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := sr.api.Reset(ctx); err != nil {
			fmt.Fprintf(sr.r.opts.Log, "%s: %v\n", sr.s.Name, err)
		}
	}
	if sr.failed && sr.r.opts.Verbose && sr.proxyLog != "" {
		if b, err := os.ReadFile(sr.proxyLog); err == nil {
			fmt.Fprintf(sr.r.opts.Log, "----- proxy log of %s -----\n%s----- end of proxy log -----\n", sr.s.Name, b)
		}
	}
}

// flowClient resolves where a flow's connections come from.
func (sr *scenarioRun) flowClient(f Flow) (Client, error) {
	dst, _ := netip.ParseAddr(f.DestIP)
	src, _ := netip.ParseAddr(f.Source)
	src = src.Unmap()
	c := Client{HTTPPorts: map[netip.AddrPort]bool{}}
	for p := range sr.hcPorts {
		for _, ip := range sr.topo.NodeIPs {
			c.HTTPPorts[netip.AddrPortFrom(ip, p)] = true
		}
	}
	switch f.SourceKind {
	case KindPod, KindEndpoint:
		p := sr.topo.Pod(src)
		if p == nil || (f.SourceKind == KindEndpoint && !sr.endpoints[src]) {
			return c, fmt.Errorf("source %s is not an endpoint of the scenario", src)
		}
		if f.SourceKind == KindPod && !p.Local {
			return c, fmt.Errorf("pod source %s is a remote endpoint, not a pod on this node", src)
		}
		c.Netns, c.Bind = p.Netns, src
	case KindNode:
		c.Netns, c.Bind = sr.topo.Node, src
	case KindLocalhost:
		c.Netns, c.Bind = sr.topo.Node, src
		if !src.IsValid() {
			c.Bind = netip.MustParseAddr("127.0.0.1")
			if dst.Is6() {
				c.Bind = netip.IPv6Loopback()
			}
		}
	case KindExternal:
		ns, ok := sr.topo.externals[src]
		if !ok {
			return c, fmt.Errorf("no external client %s", src)
		}
		c.Netns, c.Bind = ns, src
	default:
		return c, fmt.Errorf("source_kind %s not supported", f.SourceKind)
	}
	return c, nil
}

// runFlow checks one flow and returns its status and reason.
func (sr *scenarioRun) runFlow(ctx context.Context, f Flow) (string, string) {
	if f.SourceKind == KindSpoofed || f.RequiresSpoofedSource {
		return "skip", "needs a spoofed source address, which this runner does not forge"
	}
	expect, masq := f.Effective(sr.r.opts.Mode)
	exp, err := ParseExpect(expect)
	if err != nil {
		return "fail", err.Error()
	}
	cl, err := sr.flowClient(f)
	if err != nil {
		return "fail", err.Error()
	}
	dstIP, _ := netip.ParseAddr(f.DestIP)
	dst := netip.AddrPortFrom(dstIP.Unmap(), uint16(f.DestPort))
	if f.HTTPGet != nil {
		return sr.runHTTP(ctx, f, cl, dst)
	}
	check := Check{Expect: exp, Masquerade: masq, Source: cl.Bind, SourceKind: f.SourceKind, Sticky: f.Sticky}
	size := len(exp.Backends) + len(exp.Words)
	n := max(10, 10*size)
	limit := n
	if len(exp.Backends) > 0 && len(exp.Words) == 0 && !f.Sticky {
		limit = max(40, 10*len(exp.Backends)+20)
	}
	atts, err := sr.attempts(cl, f, dst, n)
	if err != nil {
		return "fail", err.Error()
	}
	v := check.Evaluate(atts)
	for !v.Pass && v.MoreMayHelp && len(atts) < limit {
		more, err := sr.attempts(cl, f, dst, min(10, limit-len(atts)))
		if err != nil {
			return "fail", err.Error()
		}
		atts = append(atts, more...)
		v = check.Evaluate(atts)
	}
	status, reason := "fail", v.Reason
	if v.Pass {
		status, reason = "pass", ""
	}
	if obs := sr.r.opts.Observer; obs != nil {
		obs.FlowChecked(&Scene{sr: sr}, f, atts, status)
	}
	return status, reason
}

// attempts makes n new connections: one after the other for sticky flows
// (affinity is per client and needs the first to settle), otherwise
// concurrently so that DROP timeouts overlap. For node and localhost
// clients each attempt's conntrack entry is read to judge SNAT.
func (sr *scenarioRun) attempts(cl Client, f Flow, dst netip.AddrPort, n int) ([]Attempt, error) {
	timeout := sr.r.opts.AttemptTimeout
	atts := make([]Attempt, n)
	if f.Sticky {
		for i := range atts {
			atts[i] = cl.Attempt(f.Protocol, dst, timeout)
		}
	} else {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 10)
		for i := range atts {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				atts[i] = cl.Attempt(f.Protocol, dst, timeout)
				<-sem
			}()
		}
		wg.Wait()
	}
	if f.SourceKind == KindNode || f.SourceKind == KindLocalhost {
		if err := sr.annotateSNAT(f.Protocol, dst, atts); err != nil {
			return atts, fmt.Errorf("conntrack: %w", err)
		}
	}
	return atts, nil
}

func (sr *scenarioRun) annotateSNAT(protocol string, dst netip.AddrPort, atts []Attempt) error {
	ct, err := OpenConntrack(sr.topo.Node)
	if err != nil {
		return err
	}
	defer ct.Close()
	for i := range atts {
		if atts[i].Class != ClassBackend {
			continue
		}
		reply, ok, err := ct.SNAT(protocol, atts[i].Local, dst)
		if err != nil {
			return err
		}
		if ok {
			atts[i].ReplyDst = reply
		}
	}
	return nil
}

// runHTTP checks an http_get flow: a few GETs must all return the expected
// status (and headers and JSON fields, when the flow names them).
func (sr *scenarioRun) runHTTP(ctx context.Context, f Flow, cl Client, dst netip.AddrPort) (string, string) {
	for i := 0; i < 3; i++ {
		resp, err := cl.HTTPGet(ctx, dst, f.HTTPGet.Path, sr.r.opts.AttemptTimeout)
		if err != nil {
			a := errAttempt(err)
			return "fail", fmt.Sprintf("http_get %s%s: %s (%s)", dst, f.HTTPGet.Path, a.Label(), shortErr(err))
		}
		if why := f.HTTPGet.Check(resp); why != "" {
			return "fail", fmt.Sprintf("http_get %s%s: %s", dst, f.HTTPGet.Path, why)
		}
	}
	return "pass", ""
}
