package explain

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteJSON prints the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText prints the report for a person, layer by layer, verdict first.
func (r *Report) WriteText(w io.Writer) error {
	p := &printer{w: w}
	if r.Layer != "" {
		p.f("verdict: %s  [layer: %s]", r.Verdict, r.Layer)
	} else {
		p.f("verdict: %s", r.Verdict)
	}
	p.node(r)
	for _, n := range r.Notes {
		p.f("note: %s", n)
	}
	p.service(r)
	p.slices(r)
	for _, port := range r.Ports {
		p.port(port)
	}
	if len(r.Stale) > 0 {
		p.f("")
		p.f("stale kernel rules of this service (no current port owns them):")
		for _, d := range r.Stale {
			p.f("  %s", d)
		}
	}
	for _, t := range r.Traces {
		p.trace(t)
	}
	return p.err
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func list(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ", ")
}

func (p *printer) node(r *Report) {
	n := r.Node
	var fams []string
	for _, f := range n.Families {
		s := f.Family
		if f.Backend != "" {
			s += " iptables-" + f.Backend
		}
		if f.KernelError != "" {
			s += " (kernel not read: " + f.KernelError + ")"
		}
		fams = append(fams, s)
	}
	found := ""
	if !n.Found {
		found = " (Node object not found)"
	}
	p.f("node: %s%s zone %s; addresses %s; programs %s", n.Name, found, orDash(n.Zone), list(n.Addresses), list(fams))
}

func (p *printer) service(r *Report) {
	p.f("")
	s := r.Service
	if s == nil {
		what := r.Query.Service
		if r.Query.Target != nil {
			what = r.Query.Target.String()
		}
		p.f("service %s: not found", what)
		return
	}
	p.f("service %s/%s", s.Namespace, s.Name)
	if r.Query.Target != nil && r.Query.MatchedBy != "" {
		p.f("  %s is the %s of port '%s'", r.Query.Target, r.Query.MatchedBy, deref(r.Query.MatchedPort, ""))
	}
	p.f("  type %s; cluster IPs %s; external IPs %s", s.Type, list(s.ClusterIPs), list(s.ExternalIPs))
	var lbs []string
	for _, lb := range s.LoadBalancer {
		addr := lb.IP
		if addr == "" {
			addr = lb.Hostname
		}
		lbs = append(lbs, fmt.Sprintf("%s (ipMode %s)", addr, lb.IPMode))
	}
	p.f("  load balancer %s; source ranges %s", list(lbs), list(s.LoadBalancerSourceRanges))
	affinity := s.SessionAffinity
	if s.AffinityTimeoutSeconds > 0 {
		affinity += fmt.Sprintf(" (%ds)", s.AffinityTimeoutSeconds)
	}
	p.f("  externalTrafficPolicy %s; internalTrafficPolicy %s; sessionAffinity %s; healthCheckNodePort %d",
		orDash(s.ExternalTrafficPolicy), orDash(s.InternalTrafficPolicy), affinity, s.HealthCheckNodePort)
	proxyName := "- (handled by this proxy)"
	if s.ServiceProxyName != nil {
		proxyName = *s.ServiceProxyName + " (handled by another proxy)"
	}
	extra := ""
	if s.Headless {
		extra = "; headless"
	}
	if s.ExternalName != "" {
		extra += "; externalName " + s.ExternalName
	}
	if s.TrafficDistribution != "" {
		extra += "; trafficDistribution " + s.TrafficDistribution
	}
	p.f("  service-proxy-name %s%s", proxyName, extra)
	for _, sp := range s.Ports {
		np := ""
		if sp.NodePort != 0 {
			np = fmt.Sprintf(", nodePort %d", sp.NodePort)
		}
		p.f("  port '%s' %d/%s -> targetPort %s%s", sp.Name, sp.Port, sp.Protocol, sp.TargetPort, np)
	}
}

func (p *printer) slices(r *Report) {
	if r.Service == nil {
		return
	}
	p.f("")
	if len(r.Slices) == 0 {
		p.f("EndpointSlices: none")
		return
	}
	p.f("EndpointSlices:")
	for _, s := range r.Slices {
		var ports []string
		for _, sp := range s.Ports {
			ports = append(ports, fmt.Sprintf("'%s' %s/%s", sp.Name, sp.Port, sp.Protocol))
		}
		ign := ""
		if s.Ignored != "" {
			ign = " IGNORED: " + s.Ignored
		}
		p.f("  %s (%s) ports %s%s", s.Name, s.AddressType, list(ports), ign)
		for _, e := range s.Endpoints {
			hints := ""
			if len(e.ZoneHints)+len(e.NodeHints) > 0 {
				hints = fmt.Sprintf(" hints zones=%s nodes=%s", list(e.ZoneHints), list(e.NodeHints))
			}
			p.f("    %s node=%s zone=%s ready=%s serving=%s terminating=%s%s",
				list(e.Addresses), orDash(e.Node), orDash(e.Zone), e.Ready, e.Serving, e.Terminating, hints)
		}
	}
	for _, u := range r.UnmatchedSlicePorts {
		p.f("  %s", u)
	}
}

func (p *printer) port(port PortInfo) {
	p.f("")
	status := "ok"
	if port.Problem != "" {
		status = port.Problem
	}
	p.f("port '%s' %d/%s: %s", port.Name, port.Port, port.Protocol, status)
	if len(port.Endpoints) > 0 {
		p.f("  endpoints (used by this node?):")
	}
	for _, e := range port.Endpoints {
		where := orDash(e.Node)
		if e.Local {
			where += " (local)"
		}
		line := fmt.Sprintf("    %-22s %-20s ready=%t serving=%t terminating=%t  internal: %s", e.Address, where, e.Ready, e.Serving, e.Terminating, decision(e.Internal))
		if e.External != nil {
			line += "; external: " + decision(*e.External)
		}
		p.f("%s", line)
	}
	for _, fp := range port.Families {
		p.f("  %s, cluster IP %s:", fp.Family, fp.ClusterIP)
		p.f("    internal traffic: %s", traffic(fp.Internal))
		if fp.External != nil {
			p.f("    external traffic: %s", traffic(*fp.External))
		} else {
			p.f("    external traffic: none (no node port, external or load balancer IP)")
		}
		p.f("    planned rules:")
		for _, c := range fp.Planned {
			if c.Shared {
				for _, r := range c.Rules {
					p.f("      %s %s (entry): -A %s %s", c.Table, c.Chain, c.Chain, r)
				}
				continue
			}
			p.f("      %s %s:", c.Table, c.Chain)
			for _, r := range c.Rules {
				p.f("        -A %s %s", c.Chain, r)
			}
		}
		switch k := fp.Kernel; {
		case !k.Checked:
			p.f("    kernel: not checked: %s", k.Error)
		case len(k.Differences) == 0:
			p.f("    kernel (iptables-%s): matches the plan", k.Backend)
		default:
			p.f("    kernel (iptables-%s): %s from the plan:", k.Backend, plural(len(k.Differences), "difference"))
			for _, d := range k.Differences {
				p.f("      %s", d)
			}
		}
	}
}

func decision(d Decision) string {
	if d.Used {
		return "used"
	}
	return "excluded: " + d.Reason
}

func traffic(t TrafficInfo) string {
	s := "policy " + t.Policy
	switch t.Action {
	case "REJECT":
		return s + ": REJECT (no usable endpoint)"
	case "DROP":
		return s + ": DROP (no endpoint for this policy)"
	}
	s += fmt.Sprintf(" -> %s, %s: %s", t.Chain, plural(len(t.Endpoints), "endpoint"), list(t.Endpoints))
	if t.TerminatingFallback {
		s += " (serving-and-terminating fallback: none is ready)"
	}
	if t.Topology != "" {
		s += " (topology " + t.Topology + ")"
	}
	return s
}

func (p *printer) trace(t Trace) {
	p.f("")
	p.f("trace %s (%s) -> %s (port '%s'), through the planned rules:", t.Source, t.SourceKind, t.Destination, t.Port)
	p.outcomes(t.Outcomes)
	if t.KernelOutcomes != nil {
		p.f("  through the rules the kernel holds:")
		p.outcomes(t.KernelOutcomes)
	}
}

func (p *printer) outcomes(os []Outcome) {
	for _, o := range os {
		what := o.Verdict
		if o.Endpoint != "" {
			what += " " + o.Endpoint
		}
		masq := "no"
		if o.Masquerade {
			masq = "yes"
		}
		p.f("  %-28s probability %.4f  masquerade %s", what, o.Probability, masq)
		for _, step := range o.Path {
			p.f("      %s", step)
		}
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
