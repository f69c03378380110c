package nftables

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// portPlan is one Service port's shared Decision (watch.Decide) with the
// names nftables mode gives its chains.
type portPlan struct {
	watch.Decision
	port      *watch.ServicePort
	opts      PlanOptions
	fam       *family
	shard     string
	proto     string
	suffix    string // "ns/name/proto/portname", readable in chain names
	clusterIP netip.Addr

	svcChain, svlChain, extChain, fwChain string
	internalChain, externalChain          string
}

func newPortPlan(port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions) *portPlan {
	p := &portPlan{Decision: watch.Decide(port, eps, node), port: port, opts: opts, fam: familyOf(opts.Family),
		proto: strings.ToLower(string(port.Protocol))}
	p.clusterIP, _ = port.ClusterIP(opts.Family)
	p.suffix = fmt.Sprintf("%s/%s/%s/%s", port.Name.Namespace, port.Name.Name, p.proto, port.Name.Port)
	h := chainHash(port.Name.String() + p.proto)
	p.svcChain, p.svlChain = "service-"+h+"-"+p.suffix, "local-"+h+"-"+p.suffix
	p.extChain, p.fwChain = "external-"+h+"-"+p.suffix, "firewall-"+h+"-"+p.suffix
	p.internalChain, p.externalChain = p.svcChain, p.svcChain
	if port.InternalPolicyLocal {
		p.internalChain = p.svlChain
	}
	if port.ExternalPolicyLocal {
		p.externalChain = p.svlChain
	}
	return p
}

func (p *portPlan) plan(o *Objects) {
	if p.NoLocalInternal() {
		o.NoLocalInternal++
	}
	if p.NoLocalExternal(p.port) {
		o.NoLocalExternal++
	}
	p.clusterIPElems(o)
	p.externalIPElems(o)
	p.loadBalancerElems(o)
	p.nodePortElems(o)
	p.externalChainRules(o)
	p.firewallChainRules(o)
	if p.UsesCluster && !p.picked() {
		p.policyChainRules(o, p.svcChain, p.Selection.Cluster)
	}
	if p.UsesLocal && !p.picked() {
		p.policyChainRules(o, p.svlChain, p.Selection.Local)
	}
	for _, ep := range p.Reachable() {
		o.hairpin(ep.Addr)
		if p.port.SessionAffinityTimeout > 0 {
			p.endpointChainRules(o, ep)
		}
	}
}

// filterVerdict is what the shared table does with traffic no endpoint
// serves.
func filterVerdict(f watch.Filter) *Verdict {
	v := Drop
	if f == watch.FilterReject {
		v = Goto(chainReject)
	}
	return &v
}

func (p *portPlan) key(ip netip.Addr, port int32) ElemKey {
	return ElemKey{Addr: ip, Proto: p.proto, Port: uint16(port)}
}

func (p *portPlan) dispatch(o *Objects, key ElemKey, chain string) {
	v := Goto(chain)
	o.elem(&Elem{Table: p.shard, Set: mapServiceIPs, Key: key, Verdict: &v})
}

func (p *portPlan) noEndpoints(o *Objects, key ElemKey, f watch.Filter) {
	o.elem(&Elem{Table: SharedTable, Set: mapNoEndpointServices, Key: key, Verdict: filterVerdict(f)})
}

func (p *portPlan) clusterIPElems(o *Objects) {
	key := p.key(p.clusterIP, p.port.Port)
	o.elem(&Elem{Table: SharedTable, Set: setClusterIPs, Key: ElemKey{Addr: p.clusterIP}})
	if len(p.Internal) == 0 {
		p.noEndpoints(o, key, p.InternalFilter)
		return
	}
	if p.picked() {
		p.pickElems(o, key)
		return
	}
	o.chain(p.shard, p.internalChain)
	toService := Rule{Addr{Prefix: netip.PrefixFrom(p.clusterIP, p.clusterIP.BitLen())}, Proto(p.proto), DestPort(p.port.Port)}
	switch {
	case p.opts.MasqueradeAll:
		o.rule(p.shard, p.internalChain, append(toService, Jump(chainMarkMasq))...)
	case p.opts.LocalDetector != nil:
		o.rule(p.shard, p.internalChain, append(toService, p.opts.LocalDetector.match(false), Jump(chainMarkMasq))...)
	}
	p.dispatch(o, key, p.internalChain)
}

// picked says the port's shard serves it without a chain of its own: its
// ClusterIP is the only way in (no NodePort, external or load balancer
// IP), it has no session affinity, and it has between 1 and maxPicks
// endpoints for that traffic.
func (p *portPlan) picked() bool {
	return p.port.NodePort == 0 && len(p.port.ExternalIPs) == 0 && len(p.port.LoadBalancerIPs) == 0 &&
		p.port.SessionAffinityTimeout == 0 && len(p.Internal) > 0 && len(p.Internal) <= maxPicks
}

// pickElems sends the ClusterIP to the shard's pick chain for its
// endpoint count, and maps each number that chain may draw to one
// endpoint.
func (p *portPlan) pickElems(o *Objects, key ElemKey) {
	p.dispatch(o, key, pickChain(len(p.Internal)))
	for i, ep := range p.Internal {
		k := key
		k.Picked, k.Pick = true, uint32(i)
		o.elem(&Elem{Table: p.shard, Set: mapEndpointPicks, Key: k, Target: netip.AddrPortFrom(ep.Addr, uint16(ep.Port))})
	}
}

func (p *portPlan) externalIPElems(o *Objects) {
	for _, ip := range p.port.ExternalIPs {
		if watch.FamilyOf(ip) != p.opts.Family {
			continue
		}
		if p.HasEndpoints {
			p.dispatch(o, p.key(ip, p.port.Port), p.extChain)
		}
		if p.ExternalFilter != watch.FilterNone {
			p.noEndpoints(o, p.key(ip, p.port.Port), p.ExternalFilter)
		}
	}
}

func (p *portPlan) loadBalancerElems(o *Objects) {
	for _, ip := range p.port.LoadBalancerIPs {
		if watch.FamilyOf(ip) != p.opts.Family {
			continue
		}
		key := p.key(ip, p.port.Port)
		if p.HasEndpoints {
			p.dispatch(o, key, p.extChain)
		}
		if p.Firewall {
			v := Goto(p.fwChain)
			o.elem(&Elem{Table: SharedTable, Set: mapFirewallIPs, Key: key, Verdict: &v})
		}
		if p.ExternalFilter != watch.FilterNone {
			p.noEndpoints(o, key, p.ExternalFilter)
		}
	}
}

func (p *portPlan) nodePortElems(o *Objects) {
	if p.port.NodePort == 0 || nodePortMatch(p.fam, p.opts) == nil {
		return
	}
	key := ElemKey{Proto: p.proto, Port: uint16(p.port.NodePort)}
	if p.HasEndpoints {
		v := Goto(p.extChain)
		o.elem(&Elem{Table: p.shard, Set: mapServiceNodePorts, Key: key, Verdict: &v})
	}
	if p.ExternalFilter != watch.FilterNone {
		o.elem(&Elem{Table: SharedTable, Set: mapNoEndpointNodePort, Key: key, Verdict: filterVerdict(p.ExternalFilter)})
	}
}

// externalChainRules writes the external chain: under Cluster policy
// external traffic is masqueraded; under Local policy pod and host traffic
// goes to every endpoint (as if it went out to the load balancer and back)
// and the rest keeps its source and goes to local endpoints only.
func (p *portPlan) externalChainRules(o *Objects) {
	if !p.ServesExternal {
		return
	}
	o.chain(p.shard, p.extChain)
	if !p.port.ExternalPolicyLocal {
		o.rule(p.shard, p.extChain, Jump(chainMarkMasq))
	} else if p.UsesCluster {
		if d := p.opts.LocalDetector; d != nil {
			o.rule(p.shard, p.extChain, d.match(true), Goto(p.svcChain))
		}
		o.rule(p.shard, p.extChain, LocalAddr{Source: true}, Jump(chainMarkMasq))
		o.rule(p.shard, p.extChain, LocalAddr{Source: true}, Goto(p.svcChain))
	}
	if len(p.External) > 0 {
		o.rule(p.shard, p.extChain, Goto(p.externalChain))
	}
}

// firewallChainRules writes the shared table's firewall chain of a load
// balancer with source ranges: allowed sources return (and go on to the
// nat hooks), anything else is dropped before DNAT.
func (p *portPlan) firewallChainRules(o *Objects) {
	if !p.Firewall {
		return
	}
	o.chain(SharedTable, p.fwChain)
	allowed := p.port.AllowedSources(p.opts.Family, p.opts.NodeIP)
	for _, cidr := range allowed.Ranges {
		o.rule(SharedTable, p.fwChain, Addr{Source: true, Prefix: cidr}, Return)
	}
	if allowed.FromLoadBalancerIPs {
		for _, ip := range p.port.LoadBalancerIPs {
			if watch.FamilyOf(ip) == p.opts.Family {
				o.rule(SharedTable, p.fwChain, Addr{Source: true, Prefix: netip.PrefixFrom(ip, ip.BitLen())}, Return)
			}
		}
	}
	o.rule(SharedTable, p.fwChain, Drop)
}

// policyChainRules writes a service or local chain: a pick of one
// endpoint, each of n equally likely (rule i matches one packet in n-i of
// those that reach it), and DNAT to it in the same rule. Under session
// affinity a client's remembered endpoint comes first, and each endpoint
// has a chain that remembers its clients.
func (p *portPlan) policyChainRules(o *Objects, chain string, eps []*watch.Endpoint) {
	affinity := p.port.SessionAffinityTimeout > 0
	// Only the maps keyed on this port's protocol send packets here, and
	// the last pick has no condition but that protocol. Under affinity the
	// old rules go to endpoint chains a change may delete, which the
	// kernel refuses while a rule still refers to them.
	o.chain(p.shard, chain).Decides = len(eps) > 0 && !affinity
	if affinity {
		for _, ep := range eps {
			o.rule(p.shard, chain, InSet{fam: p.fam, Key: KeySaddr, Set: p.affinitySet(ep)}, Goto(p.endpointChain(ep)))
		}
	}
	n := len(eps)
	for i, ep := range eps {
		var pick Rule
		if i < n-1 {
			pick = Rule{Random(n - i)}
		}
		if affinity {
			o.rule(p.shard, chain, append(pick, Goto(p.endpointChain(ep)))...)
		} else {
			o.rule(p.shard, chain, append(pick, p.dnat(ep)...)...)
		}
	}
}

func (p *portPlan) dnat(ep *watch.Endpoint) Rule {
	return Rule{Proto(p.proto), DNAT(netip.AddrPortFrom(ep.Addr, uint16(ep.Port)))}
}

// endpointChainRules writes the chain of an endpoint under session
// affinity: remember the client, then DNAT.
func (p *portPlan) endpointChainRules(o *Objects, ep *watch.Endpoint) {
	t := time.Duration(p.port.SessionAffinityTimeout) * time.Second
	set := p.affinitySet(ep)
	o.Sets = append(o.Sets, &Set{Table: p.shard, Name: set, Key: KeySaddr, Timeout: t})
	o.rule(p.shard, p.endpointChain(ep), UpdateSource{fam: p.fam, Set: set, Timeout: t})
	o.rule(p.shard, p.endpointChain(ep), p.dnat(ep)...)
}

func (p *portPlan) endpointChain(ep *watch.Endpoint) string {
	return fmt.Sprintf("endpoint-%s-%s__%s/%d", chainHash(p.port.Name.String()+p.proto+ep.String()), p.suffix, ep.Addr, ep.Port)
}

// affinitySet names the set of clients stuck to an endpoint; the timeout
// is part of the name, as a set's timeout cannot change in place.
func (p *portPlan) affinitySet(ep *watch.Endpoint) string {
	return fmt.Sprintf("affinity-%s-%ds", chainHash(p.port.Name.String()+p.proto+ep.String()), p.port.SessionAffinityTimeout)
}
