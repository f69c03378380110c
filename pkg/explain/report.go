// Package explain is `proxy explain` and `proxy diff`: it walks one Service
// through the layers an operator debugs (the Service, its EndpointSlices,
// which endpoints this node uses and why, what should be programmed next to
// what the kernel holds, and where a packet goes) and reports the first
// layer that is wrong.
//
// It has no model of its own: endpoint selection is watch.Select, the rules
// are iptables.Plan's with the daemon's options, and packets are followed
// by iptables.Tracer. The package is pure; cmd/proxy reads the API and the
// kernel and hands everything in as an Input.
package explain

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Build walks the layers and writes the report.
func Build(in Input) *Report {
	b := &builder{in: in, r: &Report{Query: in.Query, Slices: []SliceInfo{}, Ports: []PortInfo{}}}
	b.node()
	b.slices()
	b.service()
	b.finish()
	return b.r
}

type builder struct {
	in  Input
	r   *Report
	att map[v1.IPFamily]*Attribution
	// ipvsDry caches the IPVS dry run per family.
	ipvsDry map[v1.IPFamily]dryRun
}

func (b *builder) fail(layer, problem string) {
	if b.r.Verdict == "" {
		b.r.Verdict, b.r.Layer = problem, layer
	}
}

func (b *builder) note(format string, args ...any) {
	b.r.Notes = append(b.r.Notes, fmt.Sprintf(format, args...))
}

func (b *builder) node() {
	in := b.in
	n := NodeReport{Name: in.NodeName, Found: in.Node != nil, Families: []FamilyInfo{}}
	if in.Node != nil {
		n.Zone = in.Node.Labels[v1.LabelTopologyZone]
		for _, a := range in.Node.Status.Addresses {
			n.Addresses = append(n.Addresses, fmt.Sprintf("%s=%s", a.Type, a.Address))
		}
	} else {
		b.note("Node %q not found: planned without its addresses and pod CIDRs, as the proxy does when it cannot read it", in.NodeName)
	}
	for _, a := range in.Local {
		n.Local = append(n.Local, a.String())
	}
	for _, f := range in.Families {
		fi := FamilyInfo{Family: string(f.Family), Backend: f.Backend, KernelError: f.KernelError}
		if f.IPVS != nil {
			fi.IPVS, fi.IPVSError = true, f.IPVS.KernelError
		}
		n.Families = append(n.Families, fi)
	}
	b.r.Node = n
}

// sliceIgnored says why the daemon never sees a slice: its informers select
// away slices labelled for another proxy or as headless, and the tracker
// skips FQDN slices.
func sliceIgnored(es *discovery.EndpointSlice) string {
	if v, ok := es.Labels[watch.LabelServiceProxyName]; ok {
		return fmt.Sprintf("labelled %s=%s: left to that proxy", watch.LabelServiceProxyName, v)
	}
	if _, ok := es.Labels[watch.LabelHeadless]; ok {
		return "labelled " + watch.LabelHeadless + ": headless"
	}
	if es.AddressType == discovery.AddressTypeFQDN {
		return "FQDN address type: not proxied"
	}
	return ""
}

func (b *builder) slices() {
	sorted := slices.Clone(b.in.Slices)
	slices.SortFunc(sorted, func(x, y *discovery.EndpointSlice) int { return strings.Compare(x.Name, y.Name) })
	for _, es := range sorted {
		si := SliceInfo{Name: es.Name, AddressType: string(es.AddressType), Ports: []SlicePort{}, Endpoints: []SliceEndpoint{}, Ignored: sliceIgnored(es)}
		for _, p := range es.Ports {
			sp := SlicePort{Name: deref(p.Name, ""), Port: "unset", Protocol: string(deref(p.Protocol, v1.ProtocolTCP))}
			if p.Port != nil {
				sp.Port = strconv.Itoa(int(*p.Port))
			}
			si.Ports = append(si.Ports, sp)
		}
		for _, e := range es.Endpoints {
			se := SliceEndpoint{
				Addresses:   e.Addresses,
				Ready:       condition(e.Conditions.Ready, true),
				Serving:     condition(e.Conditions.Serving, true),
				Terminating: condition(e.Conditions.Terminating, false),
				Node:        deref(e.NodeName, ""),
				Zone:        deref(e.Zone, ""),
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					se.ZoneHints = append(se.ZoneHints, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					se.NodeHints = append(se.NodeHints, n.Name)
				}
			}
			si.Endpoints = append(si.Endpoints, se)
		}
		b.r.Slices = append(b.r.Slices, si)
	}
}

func condition(p *bool, unset bool) string {
	if p == nil {
		return "unset=" + strconv.FormatBool(unset)
	}
	return strconv.FormatBool(*p)
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// ServiceProblem returns why the proxy does not program a Service at all,
// or "" when it should.
func ServiceProblem(svc *v1.Service) string {
	if v, ok := svc.Labels[watch.LabelServiceProxyName]; ok {
		return fmt.Sprintf("service is handled by another proxy (service-proxy-name=%s)", v)
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return fmt.Sprintf("service is ExternalName (%s): DNS only, nothing to proxy", svc.Spec.ExternalName)
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		return "service is headless (clusterIP None): DNS only, nothing to proxy"
	}
	if svc.Spec.ClusterIP == "" {
		return "service has no cluster IP"
	}
	if len(svc.Spec.Ports) == 0 {
		return "service has no ports"
	}
	return ""
}

func svcReport(svc *v1.Service) *SvcReport {
	s := &SvcReport{
		Namespace:                svc.Namespace,
		Name:                     svc.Name,
		Type:                     string(svc.Spec.Type),
		ClusterIPs:               svc.Spec.ClusterIPs,
		ExternalIPs:              svc.Spec.ExternalIPs,
		LoadBalancerSourceRanges: svc.Spec.LoadBalancerSourceRanges,
		Ports:                    []SpecPort{},
		ExternalTrafficPolicy:    string(svc.Spec.ExternalTrafficPolicy),
		HealthCheckNodePort:      svc.Spec.HealthCheckNodePort,
		SessionAffinity:          string(svc.Spec.SessionAffinity),
		Headless:                 svc.Spec.ClusterIP == v1.ClusterIPNone,
		ExternalName:             svc.Spec.ExternalName,
	}
	if s.Type == "" {
		s.Type = string(v1.ServiceTypeClusterIP)
	}
	if s.SessionAffinity == "" {
		s.SessionAffinity = string(v1.ServiceAffinityNone)
	}
	if len(s.ClusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		s.ClusterIPs = []string{svc.Spec.ClusterIP}
	}
	if p := svc.Spec.InternalTrafficPolicy; p != nil {
		s.InternalTrafficPolicy = string(*p)
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		s.AffinityTimeoutSeconds = *c.ClientIP.TimeoutSeconds
	}
	if v, ok := svc.Labels[watch.LabelServiceProxyName]; ok {
		s.ServiceProxyName = &v
	}
	if svc.Spec.TrafficDistribution != nil {
		s.TrafficDistribution = *svc.Spec.TrafficDistribution
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		mode := "unset=VIP"
		if ing.IPMode != nil {
			mode = string(*ing.IPMode)
		}
		s.LoadBalancer = append(s.LoadBalancer, LBInfo{IP: ing.IP, Hostname: ing.Hostname, IPMode: mode})
	}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, specPort(p))
	}
	return s
}

func specPort(p v1.ServicePort) SpecPort {
	proto := p.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	return SpecPort{Name: p.Name, Protocol: string(proto), Port: p.Port, TargetPort: p.TargetPort.String(), NodePort: p.NodePort}
}

// selectedPort reports whether the query restricts the report to one port
// and whether p is it.
func (b *builder) selectedPort(p v1.ServicePort) bool {
	q := b.in.Query
	return q.MatchedPort == nil || (*q.MatchedPort == p.Name && (q.Target == nil || q.Target.Protocol == p.Protocol))
}

func (b *builder) service() {
	in := b.in
	if in.Service == nil {
		if in.Query.Target != nil && in.Query.Service == "" {
			b.fail(LayerService, "no service port "+in.Query.Target.String())
		} else {
			b.fail(LayerService, "service not found")
		}
		return
	}
	svc := in.Service
	b.r.Service = svcReport(svc)
	if p := ServiceProblem(svc); p != "" {
		b.fail(LayerService, p)
		for _, sp := range svc.Spec.Ports {
			if b.selectedPort(sp) {
				b.r.Ports = append(b.r.Ports, PortInfo{SpecPort: specPort(sp), Endpoints: []EndpointInfo{}, Families: []FamilyPort{}})
			}
		}
		return
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	snapPorts := in.Snapshot.PortsOf(name)
	if len(snapPorts) == 0 {
		b.fail(LayerService, "service is invalid and the proxy skips it (its log names the field)")
	}
	b.attribute(name, snapPorts)
	for _, sp := range svc.Spec.Ports {
		if b.selectedPort(sp) {
			b.r.Ports = append(b.r.Ports, b.port(name, sp, snapPorts))
		}
	}
	// The verdict is the earliest layer any port fails in.
	for _, layer := range []string{LayerEndpoints, LayerSelection, LayerKernel} {
		for _, pi := range b.r.Ports {
			if pi.Layer == layer {
				b.fail(layer, pi.Problem)
			}
		}
	}
	b.unmatched(name, snapPorts)
	b.stale(name, svc)
	b.ipvsStale(name)
	if len(b.r.Stale) > 0 && b.in.Query.MatchedPort == nil {
		b.fail(LayerKernel, "kernel holds stale rules for this service")
	}
}

// attribute places the kernel's chains of every family, with the chains
// the plan gives each port of the Service.
func (b *builder) attribute(name types.NamespacedName, ports []*watch.ServicePort) {
	b.att = map[v1.IPFamily]*Attribution{}
	for _, f := range b.in.Families {
		if f.Kernel == nil {
			continue
		}
		owners := map[iptables.ChainKey]Owner{}
		for _, p := range ports {
			plannedOwners(owners, planPort(f, b.in.Snapshot, p.Name), Owner{Service: name.String(), Port: p.Name.Port})
		}
		b.att[f.Family] = Attribute(f.Kernel, owners)
	}
}

func (b *builder) port(name types.NamespacedName, sp v1.ServicePort, snapPorts []*watch.ServicePort) PortInfo {
	pi := PortInfo{SpecPort: specPort(sp), Endpoints: []EndpointInfo{}, Families: []FamilyPort{}}
	var port *watch.ServicePort
	for _, p := range snapPorts {
		if p.Name.Port == sp.Name && p.Protocol == v1.Protocol(pi.Protocol) {
			port = p
		}
	}
	if port == nil {
		return pi
	}
	eps := b.in.Snapshot.Endpoints.Get(port.Name)
	if len(eps) == 0 {
		pi.Problem, pi.Layer = b.noEndpoints(sp, pi.Protocol), LayerEndpoints
	}
	fams := b.portFamilies(port)
	perFamily := map[v1.IPFamily]Selected{}
	for _, f := range fams {
		ip, _ := port.ClusterIP(f.Family)
		famEps := watch.FamilyEndpoints(eps, f.Family)
		s := Select(port, famEps, b.in.Snapshot.Node)
		perFamily[f.Family] = s
		fp := FamilyPort{Family: string(f.Family), ClusterIP: ip.String(), Planned: []ChainRules{}}
		svcChain, svlChain, _, _ := iptables.PortChains(port)
		fp.Internal = trafficInfo(s.Internal, s.Selection.HasAny, svcChain, svlChain)
		if s.External != nil {
			t := trafficInfo(*s.External, s.Selection.HasAny, svcChain, svlChain)
			fp.External = &t
		}
		b.kernelState(&fp, f, name, sp.Name, port)
		pi.Families = append(pi.Families, fp)

		suffix := ""
		if len(fams) > 1 {
			suffix = " (" + string(f.Family) + ")"
		}
		if pi.Problem != "" {
			continue
		}
		switch {
		case len(famEps) == 0:
			pi.Problem, pi.Layer = fmt.Sprintf("no %s endpoints", f.Family), LayerEndpoints
		case !s.Selection.HasAny:
			pi.Problem, pi.Layer = "no endpoints ready"+suffix, LayerEndpoints
		case s.External != nil && port.ExternalPolicyLocal && len(s.External.Endpoints) == 0:
			pi.Problem, pi.Layer = "endpoints exist but none are local and externalTrafficPolicy is Local"+suffix, LayerSelection
		case port.InternalPolicyLocal && len(s.Internal.Endpoints) == 0:
			pi.Problem, pi.Layer = "endpoints exist but none are local and internalTrafficPolicy is Local"+suffix, LayerSelection
		}
	}
	if pi.Problem == "" {
		pi.Problem = kernelProblem(pi.Families, sp.Port)
		if pi.Problem != "" {
			pi.Layer = LayerKernel
		}
	}
	for _, ep := range eps {
		pi.Endpoints = append(pi.Endpoints, b.endpoint(ep, port, perFamily))
	}
	return pi
}

// kernelProblem names the first kernel difference of a port: in IPVS mode
// its virtual servers first, then the (helper) iptables rules.
func kernelProblem(fams []FamilyPort, port int32) string {
	for _, fp := range fams {
		suffix := ""
		if len(fams) > 1 {
			suffix = " (" + fp.Family + ")"
		}
		if p := ipvsProblem(fp.IPVS, port, suffix); p != "" {
			return p
		}
		if fp.NFTables != nil {
			if p := nftProblem(fp.NFTables, port, suffix); p != "" {
				return p
			}
			continue
		}
		helper := ""
		if fp.IPVS != nil {
			helper = "helper "
		}
		switch {
		case fp.Kernel.Error != "":
			return fmt.Sprintf("kernel %srules not checked for port %d%s: %s", helper, port, suffix, fp.Kernel.Error)
		case len(fp.Kernel.Differences) == 0:
		case onlyMissing(fp.Kernel.Differences):
			return fmt.Sprintf("kernel %srules missing for port %d%s", helper, port, suffix)
		default:
			return fmt.Sprintf("kernel %srules differ for port %d%s", helper, port, suffix)
		}
	}
	return ""
}

// noEndpoints explains a port without endpoints: no slice carries a port
// of its name (and protocol), or the slices that do are empty.
func (b *builder) noEndpoints(sp v1.ServicePort, proto string) string {
	var ignored []string
	for _, es := range b.in.Slices {
		if why := sliceIgnored(es); why != "" {
			ignored = append(ignored, es.Name+": "+why)
		}
	}
	switch {
	case len(b.in.Slices) == 0:
		return "no EndpointSlices"
	case len(ignored) == len(b.in.Slices):
		return "EndpointSlices are ignored by the proxy (" + strings.Join(ignored, "; ") + ")"
	}
	var names []string
	for _, es := range b.in.Slices {
		if sliceIgnored(es) != "" {
			continue
		}
		for _, p := range es.Ports {
			n, pr := deref(p.Name, ""), string(deref(p.Protocol, v1.ProtocolTCP))
			if n == sp.Name && pr == proto {
				return fmt.Sprintf("EndpointSlices hold no endpoints for port %s", portLabel(sp))
			}
			names = append(names, fmt.Sprintf("'%s'/%s", n, pr))
		}
	}
	have := "slices have no ports"
	if len(names) > 0 {
		slices.Sort(names)
		have = "slices have " + strings.Join(slices.Compact(names), ", ")
	}
	tp := sp.TargetPort
	switch {
	case tp.StrVal != "" && tp.StrVal == sp.Name:
		return fmt.Sprintf("targetPort name '%s' matches no slice port (%s)", tp.StrVal, have)
	case tp.StrVal != "":
		return fmt.Sprintf("port name '%s' (targetPort '%s') matches no slice port (%s)", sp.Name, tp.StrVal, have)
	}
	return fmt.Sprintf("port name '%s' matches no slice port (%s)", sp.Name, have)
}

func portLabel(sp v1.ServicePort) string {
	if sp.Name != "" {
		return fmt.Sprintf("'%s' (%d)", sp.Name, sp.Port)
	}
	return strconv.Itoa(int(sp.Port))
}

// portFamilies returns the families the port is programmed in: those it has
// a cluster IP of and the node programs.
func (b *builder) portFamilies(port *watch.ServicePort) []Family {
	var out []Family
	for _, f := range b.in.Families {
		if _, ok := port.ClusterIP(f.Family); ok {
			out = append(out, f)
		}
	}
	return out
}

func trafficInfo(u Usage, hasAny bool, svcChain, svlChain string) TrafficInfo {
	t := TrafficInfo{Policy: u.Policy, Action: "balance", Endpoints: []string{}, TerminatingFallback: u.Fallback, Topology: u.Topology}
	for _, ep := range u.Endpoints {
		t.Endpoints = append(t.Endpoints, ep.String())
	}
	switch {
	case !hasAny:
		t.Action = "REJECT"
	case len(u.Endpoints) == 0:
		t.Action = "DROP"
	case u.Policy == "Local":
		t.Chain = svlChain
	default:
		t.Chain = svcChain
	}
	return t
}

func (b *builder) endpoint(ep *watch.Endpoint, port *watch.ServicePort, perFamily map[v1.IPFamily]Selected) EndpointInfo {
	fam := watch.FamilyOf(ep.Addr)
	ei := EndpointInfo{
		Address: ep.String(), Family: string(fam), Node: ep.NodeName, Zone: ep.Zone, Local: ep.IsLocal,
		Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating,
	}
	s, ok := perFamily[fam]
	if !ok {
		why := fmt.Sprintf("the service has no %s cluster IP", fam)
		if _, has := port.ClusterIP(fam); has {
			why = fmt.Sprintf("this node does not program %s", fam)
		}
		ei.Internal = WrongFamily(ep, why)
		if port.ExternallyAccessible() {
			d := ei.Internal
			ei.External = &d
		}
		return ei
	}
	node := b.in.Snapshot.Node
	ei.Internal = Decide(ep, s.Internal, node)
	if s.External != nil {
		d := Decide(ep, *s.External, node)
		ei.External = &d
	}
	return ei
}

func (b *builder) kernelCheck(f Family, planned *iptables.ServiceRules, o Owner) KernelCheck {
	kc := KernelCheck{Backend: f.Backend}
	switch {
	case b.in.Mode != "" && b.in.Mode != "iptables" && b.in.Mode != "ipvs":
		kc.Error = fmt.Sprintf("kernel check is implemented for iptables mode only (mode %s)", b.in.Mode)
		return kc
	case f.Kernel == nil:
		kc.Error = f.KernelError
		if kc.Error == "" {
			kc.Error = "kernel not read"
		}
		return kc
	}
	kc.Checked = true
	kc.Differences = ComparePort(planned, f.Kernel, b.att[f.Family], o)
	return kc
}

// unmatched lists slice ports whose endpoints no Service port takes.
func (b *builder) unmatched(name types.NamespacedName, ports []*watch.ServicePort) {
	if len(ports) == 0 {
		return
	}
	for spn, eps := range b.in.Snapshot.Endpoints.All() {
		if spn.NamespacedName != name {
			continue
		}
		if _, ok := b.in.Snapshot.Services.Lookup(spn); ok {
			continue
		}
		b.r.UnmatchedSlicePorts = append(b.r.UnmatchedSlicePorts,
			fmt.Sprintf("slice port '%s'/%s (%d endpoints) matches no service port", spn.Port, spn.Protocol, len(eps)))
	}
	slices.Sort(b.r.UnmatchedSlicePorts)
}

// stale lists kernel chains and entries of the Service that belong to no
// current port (a port that was removed or renamed).
func (b *builder) stale(name types.NamespacedName, svc *v1.Service) {
	current := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		current[p.Name] = true
	}
	key := name.String()
	for _, f := range b.in.Families {
		a := b.att[f.Family]
		if a == nil {
			continue
		}
		for _, k := range a.ChainsOf(key, nil) {
			if !current[a.Chains[k].Port] {
				rules, _ := f.Kernel.Rules(k.Table, k.Name)
				b.r.Stale = append(b.r.Stale, Difference{Kind: StaleChain, Table: k.Table, Chain: k.Name, Detail: fmt.Sprintf("%s, port '%s', %d rules", f.Family, a.Chains[k].Port, len(rules))})
			}
		}
		for _, k := range iptables.SharedChains() {
			for _, e := range a.Entries[k] {
				if e.Owner.Service == key && !current[e.Owner.Port] {
					b.r.Stale = append(b.r.Stale, Difference{Kind: ExtraEntry, Table: k.Table, Chain: k.Name, Rule: e.Rule, Detail: string(f.Family)})
				}
			}
		}
	}
}

func (b *builder) finish() {
	if b.r.Verdict == "" {
		b.r.Verdict = VerdictOK
	}
	b.trace()
}

// kernelState fills what the mode plans for a port in one family and how
// the kernel differs: iptables rules (IPVS mode's helper rules, with its
// virtual servers), or nftables mode's objects. In IPVS and nftables mode
// traffic does not go through iptables chains, so none is named.
func (b *builder) kernelState(fp *FamilyPort, f Family, name types.NamespacedName, portName string, port *watch.ServicePort) {
	if f.NFT != nil {
		fp.NFTables = b.nftCheck(f, name, port)
		fp.Kernel = KernelCheck{Checked: fp.NFTables.Checked, Error: fp.NFTables.Error}
	} else {
		planned := planPort(f, b.in.Snapshot, port.Name)
		fp.Planned = chainRules(planned)
		fp.Kernel = b.kernelCheck(f, planned, Owner{Service: name.String(), Port: portName})
	}
	if f.IPVS != nil {
		fp.IPVS = b.ipvsCheck(f, name, port)
	}
	if f.IPVS != nil || f.NFT != nil {
		fp.Internal.Chain = ""
		if fp.External != nil {
			fp.External.Chain = ""
		}
	}
}
