package explain

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
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
	ipvsMode := slices.ContainsFunc(r.Node.Families, func(f FamilyInfo) bool { return f.IPVS })
	for _, t := range r.Traces {
		p.trace(t, ipvsMode)
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
		switch {
		case f.IPVS && f.IPVSError != "":
			s += " ipvs (IPVS table not read: " + f.IPVSError + "), helper rules iptables-" + f.Backend
		case f.IPVS:
			s += " ipvs, helper rules iptables-" + f.Backend
		case f.Backend != "":
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
		p.ipvs(fp.IPVS)
		if fp.NFTables != nil {
			p.nftables(fp.NFTables)
			continue
		}
		helper := ""
		if fp.IPVS != nil {
			helper = "helper rules "
		}
		if len(fp.Planned) == 0 {
			p.f("    planned %srules: none for this port", strings.TrimSuffix(helper, "rules "))
		} else {
			p.f("    planned %srules:", strings.TrimSuffix(helper, "rules "))
		}
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
			p.f("    kernel %s(iptables-%s): matches the plan", helper, k.Backend)
		default:
			p.f("    kernel %s(iptables-%s): %s from the plan:", helper, k.Backend, plural(len(k.Differences), "difference"))
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
	if t.Chain != "" {
		s += " -> " + t.Chain
	}
	s += fmt.Sprintf(", %s: %s", plural(len(t.Endpoints), "endpoint"), list(t.Endpoints))
	if t.TerminatingFallback {
		s += " (serving-and-terminating fallback: none is ready)"
	}
	if t.Topology != "" {
		s += " (topology " + t.Topology + ")"
	}
	return s
}

func (p *printer) trace(t Trace, ipvsMode bool) {
	p.f("")
	through, kernel := "the planned rules", "the rules the kernel holds"
	if ipvsMode {
		through, kernel = "the planned helper rules and virtual servers", "the planned helper rules and the virtual servers the kernel holds"
	}
	p.f("trace %s (%s) -> %s (port '%s'), through %s:", t.Source, t.SourceKind, t.Destination, t.Port, through)
	p.outcomes(t.Outcomes)
	if t.KernelOutcomes != nil {
		p.f("  through %s:", kernel)
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
		if o.Weight != nil {
			p.f("  %-28s weight %-3d probability %.4f  masquerade %s", what, *o.Weight, o.Probability, masq)
		} else {
			p.f("  %-28s probability %.4f  masquerade %s", what, o.Probability, masq)
		}
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

// ipvs prints a port's virtual servers next to the kernel's and the
// writes the next sync would make.
func (p *printer) ipvs(c *IPVSCheck) {
	if c == nil {
		return
	}
	p.f("    kube-ipvs0 addresses: %s", list(c.Addresses))
	if len(c.Planned) == 0 {
		p.f("    virtual servers: none planned")
	}
	for _, v := range c.Planned {
		p.f("    virtual server %s", vsLine(v))
		i := slices.IndexFunc(c.Kernel, func(k VirtualServerInfo) bool { return k.Key == v.Key })
		switch {
		case !c.Checked:
		case i < 0:
			p.f("      kernel: missing")
		default:
			p.f("      kernel: %s", vsLine(c.Kernel[i]))
		}
	}
	switch {
	case !c.Checked:
		p.f("    IPVS kernel state: not checked: %s", c.Error)
	case len(c.Changes) == 0:
		p.f("    IPVS kernel state: matches the plan")
	default:
		p.f("    IPVS kernel state: %s the next sync would make:", plural(len(c.Changes), "change"))
		for _, ch := range c.Changes {
			p.f("      %-60s # %s", ch.Description, ch.Command)
		}
	}
}

func vsLine(v VirtualServerInfo) string {
	s := v.Key + " " + v.Scheduler
	if v.Persistent > 0 {
		s += fmt.Sprintf(" persistent %ds", v.Persistent)
	}
	if len(v.RealServers) == 0 {
		return s + ", no real servers"
	}
	var rs []string
	for _, r := range v.RealServers {
		x := fmt.Sprintf("%s weight %d", r.Address, r.Weight)
		if r.ActiveConn+r.InactiveConn > 0 {
			x += fmt.Sprintf(" (conns %d active, %d inactive)", r.ActiveConn, r.InactiveConn)
		}
		rs = append(rs, x)
	}
	return s + " -> " + strings.Join(rs, ", ")
}
