package iptables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// PlanOptions is the node configuration a plan depends on.
type PlanOptions struct {
	Family        v1.IPFamily
	MasqueradeBit int
	MasqueradeAll bool
	// LocalDetector tells pod traffic from other traffic; nil when none.
	LocalDetector *LocalDetector
	// NodePortAddresses limits NodePorts to these node addresses; nil
	// means every local address (-m addrtype --dst-type LOCAL), and an
	// empty non-nil list means none of this family.
	NodePortAddresses []netip.Addr
	// LocalhostNodePorts serves NodePorts on 127.0.0.1 (IPv4 only).
	LocalhostNodePorts bool
	// NodeIP is the node's primary IP of this family: a load balancer
	// source range that contains it also admits the LB IP as a source.
	NodeIP netip.Addr
	// TCPBeLiberal skips the INVALID-state drop in KUBE-FORWARD.
	TCPBeLiberal bool
	// LargeCluster plans without per-endpoint comments even when the
	// snapshot is small: for planning one Service of a large cluster the
	// way the whole cluster was planned (proxy explain). The daemon leaves
	// it false and lets the snapshot decide.
	LargeCluster bool
}

// LargeClusterEndpoints is kube-proxy's threshold: with more endpoints
// than this in a family, the rules of Service and endpoint chains carry no
// comments. They make up most of the ruleset's bytes, and every byte is
// parsed by iptables-restore and held by the kernel.
const LargeClusterEndpoints = 1000

// IsLargeCluster reports whether snap has more than LargeClusterEndpoints
// endpoints of family across its Service ports, counted as kube-proxy does.
func IsLargeCluster(snap *watch.Snapshot, family v1.IPFamily) bool {
	n := 0
	for name := range snap.Services.All() {
		for _, ep := range snap.Endpoints.Get(name) {
			if watch.FamilyOf(ep.Addr) == family {
				n++
			}
		}
		if n > LargeClusterEndpoints {
			return true
		}
	}
	return false
}

// LocalDetector matches traffic from pods on this node, as kube-proxy's
// detect-local modes do.
type LocalDetector struct {
	IfLocal    []string
	IfNotLocal []string
}

// ClusterCIDRDetector returns a detector for the family's cluster CIDR.
func ClusterCIDRDetector(cidr netip.Prefix) *LocalDetector {
	s := cidr.Masked().String()
	return &LocalDetector{IfLocal: []string{"-s", s}, IfNotLocal: []string{"!", "-s", s}}
}

// InterfaceDetector returns a detector for a bridge interface or an
// interface name prefix (given with a trailing "+").
func InterfaceDetector(iface string) *LocalDetector {
	return &LocalDetector{IfLocal: []string{"-i", iface}, IfNotLocal: []string{"!", "-i", iface}}
}

// Plan computes the Ruleset for one IP family. It is a pure function of the
// snapshot and options: the same input always gives the same rules.
func Plan(snap *watch.Snapshot, opts PlanOptions) *Ruleset {
	return PlanFrom(nil, snap, opts)
}

// PlanFrom is Plan for a snapshot that follows the one prev was planned
// from: Services the snapshot does not mark as changed keep their rules from
// prev, so a sync plans only what changed. With a nil prev, or when the node
// changed (locality and topology of every endpoint may differ), it plans
// everything.
func PlanFrom(prev *Ruleset, snap *watch.Snapshot, opts PlanOptions) *Ruleset {
	opts.LargeCluster = opts.LargeCluster || IsLargeCluster(snap, opts.Family)
	rs := &Ruleset{Family: opts.Family, Base: baseChains(opts), Jumps: jumps(opts), LargeCluster: opts.LargeCluster}
	if prev != nil && prev.LargeCluster != rs.LargeCluster {
		prev = nil // every endpoint rule changes
	}
	PlanServices(rs, prev, snap, opts.Family, func(sr *ServiceRules, port *watch.ServicePort, eps []*watch.Endpoint) {
		planPort(sr, port, eps, snap.Node, opts)
	})
	return rs
}

// PortPlanner adds the rules of one Service port (given its endpoints of
// the ruleset's family) to the Service's rules.
type PortPlanner func(sr *ServiceRules, port *watch.ServicePort, eps []*watch.Endpoint)

// PlanServices fills rs.Services: Services the snapshot does not mark as
// changed keep their rules from prev (unless prev is nil or the node
// changed); the others are planned port by port with planPort, in a stable
// order. Both modes' planners share it, so both plan incrementally alike.
func PlanServices(rs *Ruleset, prev *Ruleset, snap *watch.Snapshot, family v1.IPFamily, planPort PortPlanner) {
	var toPlan map[types.NamespacedName][]*watch.ServicePort
	var services *cowmap.Editor[string, *ServiceRules]
	if prev != nil && !snap.NodeChanged {
		// Unchanged Services share prev's rules (and, through the
		// copy-on-write map, all but a few shards of its table).
		services = prev.Services.Edit()
		rs.serviceRules = prev.RuleCount()
		for k, rules := range prev.Base {
			rs.serviceRules[k.Table] -= len(rules)
		}
		toPlan = map[types.NamespacedName][]*watch.ServicePort{}
		ports := snap.ServicePorts()
		for name := range snap.Changed {
			if old := services.Get(name.String()); old != nil {
				old.addRuleCounts(rs.serviceRules, -1)
				services.Delete(name.String())
			}
			toPlan[name] = ports.Get(name)
		}
	} else {
		services = cowmap.Map[string, *ServiceRules]{}.Edit()
		rs.serviceRules = map[string]int{}
		toPlan = maps.Collect(snap.ServicePorts().All())
	}
	for _, name := range slices.SortedFunc(maps.Keys(toPlan), compareNamespacedNames) {
		if sr := planService(toPlan[name], snap, family, planPort); sr != nil {
			services.Set(name.String(), sr)
			sr.addRuleCounts(rs.serviceRules, 1)
		}
	}
	rs.Services = services.Map()
}

// planService plans the ports of one Service that have a ClusterIP of the
// family; nil when none has.
func planService(ports []*watch.ServicePort, snap *watch.Snapshot, family v1.IPFamily, planPort PortPlanner) *ServiceRules {
	var sr *ServiceRules
	for _, port := range ports {
		if _, ok := port.ClusterIP(family); !ok {
			continue
		}
		if sr == nil {
			sr = &ServiceRules{Chains: map[ChainKey][]string{}, Entries: map[ChainKey][]string{}}
		}
		planPort(sr, port, watch.FamilyEndpoints(snap.Endpoints.Get(port.Name), family))
	}
	return sr
}

func compareNamespacedNames(a, b types.NamespacedName) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// portPlan is one Service port's shared Decision (watch.Decide) with the
// chain names iptables mode gives it.
type portPlan struct {
	watch.Decision
	port      *watch.ServicePort
	opts      PlanOptions
	proto     string
	name      string // "ns/name:port"
	clusterIP netip.Addr

	svcChain, svlChain, extChain, fwChain string
	internalChain, externalChain          string
}

func newPortPlan(port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions) *portPlan {
	p := &portPlan{Decision: watch.Decide(port, eps, node), port: port, opts: opts, proto: protoLower(port), name: port.Name.String()}
	p.clusterIP, _ = port.ClusterIP(opts.Family)
	p.svcChain, p.svlChain = portChain(prefixSVC, port), portChain(prefixSVL, port)
	p.extChain, p.fwChain = portChain(prefixEXT, port), portChain(prefixFW, port)
	p.internalChain, p.externalChain = p.svcChain, p.svcChain
	if port.InternalPolicyLocal {
		p.internalChain = p.svlChain
	}
	if port.ExternalPolicyLocal {
		p.externalChain = p.svlChain
	}
	return p
}

func planPort(sr *ServiceRules, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions) {
	p := newPortPlan(port, eps, node, opts)
	if p.NoLocalInternal() {
		sr.NoLocalInternal++
	}
	if p.NoLocalExternal(port) {
		sr.NoLocalExternal++
	}
	b := &builder{sr: sr}
	p.clusterIPRules(b)
	p.externalIPRules(b)
	p.loadBalancerRules(b)
	p.nodePortRules(b)
	p.externalChainRules(b)
	p.firewallChainRules(b)
	if p.UsesCluster {
		p.policyChainRules(b, p.svcChain, p.Selection.Cluster)
	}
	if p.UsesLocal {
		p.policyChainRules(b, p.svlChain, p.Selection.Local)
	}
	p.endpointChainRules(b)
}

// builder appends rules to a ServiceRules.
type builder struct{ sr *ServiceRules }

func (b *builder) entry(table, chain string, parts ...string) {
	k := ChainKey{table, chain}
	b.sr.Entries[k] = append(b.sr.Entries[k], join(parts))
}

func (b *builder) rule(table, chain string, parts ...string) {
	k := ChainKey{table, chain}
	b.sr.Chains[k] = append(b.sr.Chains[k], join(parts))
}

// declare makes an owned chain exist even if it stays empty.
func (b *builder) declare(table, chain string) {
	k := ChainKey{table, chain}
	if _, ok := b.sr.Chains[k]; !ok {
		b.sr.Chains[k] = []string{}
	}
}

// join joins rule parts, skipping empty ones (an omitted comment).
func join(parts []string) string {
	out := parts[:0:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// endpointComment is the comment of a rule in a Service or endpoint chain:
// none in a large cluster, as kube-proxy does.
func (p *portPlan) endpointComment(text string) string {
	if p.opts.LargeCluster {
		return ""
	}
	return comment(text)
}

func comment(text string) string { return "-m comment --comment " + strconv.Quote(text) }

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// match returns "-m proto -p proto -d ip --dport port" for an address.
func (p *portPlan) match(ip netip.Addr, port int32) string {
	return fmt.Sprintf("-m %s -p %s -d %s --dport %d", p.proto, p.proto, hostPrefix(ip), port)
}

func (p *portPlan) clusterIPRules(b *builder) {
	args := []string{comment(p.name + " cluster IP"), p.match(p.clusterIP, p.port.Port)}
	if len(p.Internal) == 0 {
		b.entry(TableFilter, ChainServices, append(args, "-j", string(p.InternalFilter))...)
		return
	}
	b.declare(TableNAT, p.internalChain)
	switch {
	case p.opts.MasqueradeAll:
		b.rule(TableNAT, p.internalChain, append(args, "-j", ChainMarkMasq)...)
	case p.opts.LocalDetector != nil:
		b.rule(TableNAT, p.internalChain, append(append(args, p.opts.LocalDetector.IfNotLocal...), "-j", ChainMarkMasq)...)
	}
	b.entry(TableNAT, ChainServices, append(args, "-j", p.internalChain)...)
}

func (p *portPlan) externalIPRules(b *builder) {
	for _, ip := range p.port.ExternalIPs {
		if watch.FamilyOf(ip) != p.opts.Family {
			continue
		}
		args := []string{comment(p.name + " external IP"), p.match(ip, p.port.Port)}
		if p.HasEndpoints {
			b.entry(TableNAT, ChainServices, append(args, "-j", p.extChain)...)
		}
		if p.ExternalFilter != watch.FilterNone {
			b.entry(TableFilter, ChainExternalServices, append(args, "-j", string(p.ExternalFilter))...)
		}
	}
}

func (p *portPlan) loadBalancerRules(b *builder) {
	target := p.extChain
	if p.Firewall {
		target = p.fwChain
	}
	for _, ip := range p.port.LoadBalancerIPs {
		if watch.FamilyOf(ip) != p.opts.Family {
			continue
		}
		if p.HasEndpoints {
			b.entry(TableNAT, ChainServices, comment(p.name+" loadbalancer IP"), p.match(ip, p.port.Port), "-j", target)
		}
		if p.Firewall {
			b.entry(TableFilter, ChainProxyFirewall, comment(p.name+" traffic not accepted by "+p.fwChain), p.match(ip, p.port.Port), "-j", "DROP")
		}
		if p.ExternalFilter != watch.FilterNone {
			b.entry(TableFilter, ChainExternalServices, comment(p.name+" has no local endpoints"), p.match(ip, p.port.Port), "-j", string(p.ExternalFilter))
		}
	}
}

func (p *portPlan) nodePortRules(b *builder) {
	if p.port.NodePort != 0 {
		portMatch := fmt.Sprintf("-m %s -p %s --dport %d", p.proto, p.proto, p.port.NodePort)
		if p.HasEndpoints {
			b.entry(TableNAT, ChainNodePorts, comment(p.name), portMatch, "-j", p.extChain)
		}
		if p.ExternalFilter != watch.FilterNone {
			b.entry(TableFilter, ChainExternalServices, comment(p.name), "-m addrtype --dst-type LOCAL", portMatch, "-j", string(p.ExternalFilter))
		}
	}
	if hc := p.port.HealthCheckNodePort; hc != 0 {
		b.entry(TableFilter, ChainNodePorts, comment(p.name+" health check node port"), fmt.Sprintf("-m tcp -p tcp --dport %d", hc), "-j", "ACCEPT")
	}
}

// externalChainRules writes KUBE-EXT-*: under Cluster policy external
// traffic is masqueraded; under Local policy pod and host traffic is sent
// to every endpoint (as if it went out to the load balancer and back) and
// the rest keeps its source and goes to local endpoints only.
func (p *portPlan) externalChainRules(b *builder) {
	if !p.ServesExternal {
		return
	}
	b.declare(TableNAT, p.extChain)
	if !p.port.ExternalPolicyLocal {
		b.rule(TableNAT, p.extChain, comment("masquerade traffic for "+p.name+" external destinations"), "-j", ChainMarkMasq)
	} else if p.UsesCluster {
		// The cluster chain exists whenever there are cluster endpoints
		// (UsesClusterEndpoints holds for every externally reachable port).
		if d := p.opts.LocalDetector; d != nil {
			b.rule(TableNAT, p.extChain, append([]string{comment("pod traffic for " + p.name + " external destinations")}, append(d.IfLocal, "-j", p.svcChain)...)...)
		}
		b.rule(TableNAT, p.extChain, comment("masquerade LOCAL traffic for "+p.name+" external destinations"), "-m addrtype --src-type LOCAL", "-j", ChainMarkMasq)
		b.rule(TableNAT, p.extChain, comment("route LOCAL traffic for "+p.name+" external destinations"), "-m addrtype --src-type LOCAL", "-j", p.svcChain)
	}
	if len(p.External) > 0 {
		b.rule(TableNAT, p.extChain, "-j", p.externalChain)
	}
}

// firewallChainRules writes KUBE-FW-*: allowed source ranges continue to
// KUBE-EXT-*; anything else falls through undNATed and is dropped by the
// filter rule in KUBE-PROXY-FIREWALL.
func (p *portPlan) firewallChainRules(b *builder) {
	if !p.Firewall {
		return
	}
	b.declare(TableNAT, p.fwChain)
	args := comment(p.name + " loadbalancer IP")
	allowed := p.port.AllowedSources(p.opts.Family, p.opts.NodeIP)
	for _, cidr := range allowed.Ranges {
		b.rule(TableNAT, p.fwChain, args, "-s", cidr.String(), "-j", p.extChain)
	}
	if !allowed.FromLoadBalancerIPs {
		return
	}
	for _, ip := range p.port.LoadBalancerIPs {
		if watch.FamilyOf(ip) == p.opts.Family {
			b.rule(TableNAT, p.fwChain, args, "-s", hostPrefix(ip), "-j", p.extChain)
		}
	}
}

// policyChainRules writes a KUBE-SVC-* or KUBE-SVL-* chain: affinity checks
// first, then one rule per endpoint with probability 1/(n-i) so that each of
// n endpoints is equally likely.
func (p *portPlan) policyChainRules(b *builder, chain string, eps []*watch.Endpoint) {
	b.declare(TableNAT, chain)
	if t := p.port.SessionAffinityTimeout; t > 0 {
		for _, ep := range eps {
			sep := endpointChain(p.port, ep)
			b.rule(TableNAT, chain, p.endpointComment(p.name+" -> "+ep.String()), "-m recent --name", sep, "--rcheck --seconds", strconv.Itoa(int(t)), "--reap -j", sep)
		}
	}
	n := len(eps)
	for i, ep := range eps {
		parts := []string{p.endpointComment(p.name + " -> " + ep.String())}
		if i < n-1 {
			parts = append(parts, fmt.Sprintf("-m statistic --mode random --probability %0.10f", 1.0/float64(n-i)))
		}
		b.rule(TableNAT, chain, append(parts, "-j", endpointChain(p.port, ep))...)
	}
}

// endpointChainRules writes one KUBE-SEP-* per reachable endpoint: hairpin
// traffic (an endpoint reaching itself) is masqueraded, then DNAT.
func (p *portPlan) endpointChainRules(b *builder) {
	for _, ep := range p.Reachable() {
		p.endpointChain(b, ep)
	}
}

func (p *portPlan) endpointChain(b *builder, ep *watch.Endpoint) {
	sep := endpointChain(p.port, ep)
	b.rule(TableNAT, sep, p.endpointComment(p.name), "-s", hostPrefix(ep.Addr), "-j", ChainMarkMasq)
	dnat := []string{p.endpointComment(p.name)}
	if p.port.SessionAffinityTimeout > 0 {
		dnat = append(dnat, "-m recent --name", sep, "--set")
	}
	b.rule(TableNAT, sep, append(dnat, fmt.Sprintf("-m %s -p %s -j DNAT --to-destination %s", p.proto, p.proto, ep.String()))...)
}

// ClusterChains returns iptables mode's KUBE-SVC-* chain of one port (a
// random pick among the cluster-wide endpoints) and the KUBE-SEP-* chains
// it jumps to, named as iptables mode names them; nil when the port uses
// no cluster-wide endpoints. eps are the port's endpoints of opts.Family.
// IPVS mode sends short-circuited traffic there when the ClusterIP's
// virtual server holds local endpoints only.
func ClusterChains(port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions) map[ChainKey][]string {
	opts.LargeCluster = opts.LargeCluster || len(eps) > LargeClusterEndpoints
	p := newPortPlan(port, eps, node, opts)
	if !p.UsesCluster {
		return nil
	}
	b := &builder{sr: &ServiceRules{Chains: map[ChainKey][]string{}, Entries: map[ChainKey][]string{}}}
	p.policyChainRules(b, p.svcChain, p.Selection.Cluster)
	for _, ep := range p.Selection.Cluster {
		p.endpointChain(b, ep)
	}
	return b.sr.Chains
}
