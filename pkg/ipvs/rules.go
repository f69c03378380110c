package ipvs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// IPVS-mode fixed chains (kube-proxy's names). Everything else lives in the
// chains both modes share.
const (
	chainLoadBalancer       = "KUBE-LOAD-BALANCER"
	chainSourceRangesFW     = "KUBE-SOURCE-RANGES-FIREWALL"
	chainIPVSFilter         = "KUBE-IPVS-FILTER"
	chainMarkMasq           = iptables.ChainMarkMasq
	chainServices           = iptables.ChainServices
	chainNodePorts          = iptables.ChainNodePorts
	chainExternalServices   = iptables.ChainExternalServices
	chainProxyFirewall      = iptables.ChainProxyFirewall
	chainPostrouting        = iptables.ChainPostrouting
	chainForward            = iptables.ChainForward
	tableNAT, tableFilter   = iptables.TableNAT, iptables.TableFilter
	commentNodePortsLast    = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
	commentLoopBack         = "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
	commentMasqueradeSNAT   = "kubernetes service traffic requiring SNAT"
	commentClusterIPMasq    = "Kubernetes service cluster ip + port for masquerade purpose"
	commentExternalIPMasq   = "Kubernetes service external ip + port for masquerade purpose"
	commentLoadBalancer     = "Kubernetes service lb portal"
	commentSourceRangesFW   = "Kubernetes service load balancer ip + port with source range"
	commentNotService       = "reject new connections to service IPs on ports that are no Service"
	commentServiceNoMasq    = "already handled service IP"
	commentForwardMarked    = "kubernetes forwarding rules"
	commentForwardConntrack = "kubernetes forwarding conntrack rule"
)

// PlanRules is IPVS mode's iptables.Planner: the helper rules that give
// IPVS-forwarded packets the same fate as in iptables mode. It runs through
// the shared iptables.Proxier, so deltas, batching, drift checks and stale
// chain removal work as in iptables mode.
//
// Fixed rules match on the ipsets the IPVS planner fills (masquerading,
// hairpin, NodePorts, source ranges, unknown ports on service IPs). Per
// Service it writes only what sets cannot express, in the shared chains and
// in KUBE-EXT-*/KUBE-FW-* chains of its own:
//   - filter REJECT (no endpoints) and DROP (a Local policy without local
//     endpoints) for each entry point, as iptables mode decides them; they
//     run in INPUT, before IPVS's LOCAL_IN hook, and no virtual server
//     exists then, so no packet reaches a local listener instead;
//   - under externalTrafficPolicy Local, pod and host traffic to an
//     external address (short-circuit) is DNATed to the ClusterIP, whose
//     virtual server holds every endpoint, while outside traffic reaches the
//     external virtual server, which holds the local endpoints only.
func PlanRules(prev *iptables.Ruleset, snap *watch.Snapshot, opts iptables.PlanOptions) *iptables.Ruleset {
	rs := &iptables.Ruleset{Family: opts.Family, Base: baseChains(opts), Jumps: jumps()}
	iptables.PlanServices(rs, prev, snap, opts.Family, func(sr *iptables.ServiceRules, port *watch.ServicePort, eps []*watch.Endpoint) {
		planPortRules(sr, port, eps, snap.Node, opts)
	})
	return rs
}

type ruleBuilder struct{ sr *iptables.ServiceRules }

func (b *ruleBuilder) entry(table, chain string, parts ...string) {
	k := iptables.ChainKey{Table: table, Name: chain}
	b.sr.Entries[k] = append(b.sr.Entries[k], strings.Join(parts, " "))
}

func (b *ruleBuilder) rule(table, chain string, parts ...string) {
	k := iptables.ChainKey{Table: table, Name: chain}
	b.sr.Chains[k] = append(b.sr.Chains[k], strings.Join(parts, " "))
}

func (b *ruleBuilder) declare(table, chain string) {
	k := iptables.ChainKey{Table: table, Name: chain}
	if _, ok := b.sr.Chains[k]; !ok {
		b.sr.Chains[k] = []string{}
	}
}

func comment(text string) string { return "-m comment --comment " + strconv.Quote(text) }

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

func planPortRules(sr *iptables.ServiceRules, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts iptables.PlanOptions) {
	b := &ruleBuilder{sr: sr}
	fam := opts.Family
	d := watch.Decide(port, eps, node)
	name := port.Name.String()
	proto := protoName(port.Protocol)
	match := func(ip netip.Addr, p int32) string {
		return fmt.Sprintf("-m %s -p %s -d %s --dport %d", proto, proto, hostPrefix(ip), p)
	}
	clusterIP, _ := port.ClusterIP(fam)
	_, _, extChain, fwChain := iptables.PortChains(port)
	shortCircuit := port.ExternalPolicyLocal && d.ServesExternal && d.UsesCluster

	if d.InternalFilter != watch.FilterNone {
		b.entry(tableFilter, chainServices, comment(name+" cluster IP"), match(clusterIP, port.Port), "-j", string(d.InternalFilter))
	}
	for _, ip := range port.ExternalIPs {
		if watch.FamilyOf(ip) != fam {
			continue
		}
		if shortCircuit {
			b.entry(tableNAT, chainServices, comment(name+" external IP"), match(ip, port.Port), "-j", extChain)
		}
		if d.ExternalFilter != watch.FilterNone {
			b.entry(tableFilter, chainExternalServices, comment(name+" external IP"), match(ip, port.Port), "-j", string(d.ExternalFilter))
		}
	}
	for _, ip := range port.LoadBalancerIPs {
		if watch.FamilyOf(ip) != fam {
			continue
		}
		if shortCircuit {
			target := extChain
			if d.Firewall {
				target = fwChain
			}
			b.entry(tableNAT, chainServices, comment(name+" loadbalancer IP"), match(ip, port.Port), "-j", target)
		}
		if d.ExternalFilter != watch.FilterNone {
			b.entry(tableFilter, chainExternalServices, comment(name+" has no local endpoints"), match(ip, port.Port), "-j", string(d.ExternalFilter))
		}
		if d.Firewall {
			// The node's own connections meet IPVS (LOCAL_OUT) before
			// filter OUTPUT; they are checked after IPVS has picked a
			// real server, by the virtual server they went through.
			b.entry(tableFilter, chainProxyFirewall, comment(name+" source ranges for node-originated traffic"),
				"-m ipvs --vaddr", hostPrefix(ip), "--vport", strconv.Itoa(int(port.Port)), "--vproto", proto, "-j", fwChain)
		}
	}
	if d.Firewall {
		nodeSourceRanges(b, port, fwChain, opts)
	}
	if np := port.NodePort; np != 0 {
		portMatch := fmt.Sprintf("-m %s -p %s --dport %d", proto, proto, np)
		if shortCircuit {
			b.entry(tableNAT, chainNodePorts, comment(name), portMatch, "-j", extChain)
		}
		if d.ExternalFilter != watch.FilterNone {
			b.entry(tableFilter, chainExternalServices, comment(name), "-m addrtype --dst-type LOCAL", "!", "-d", loopback(fam), portMatch, "-j", string(d.ExternalFilter))
		}
	}
	if hc := port.HealthCheckNodePort; hc != 0 {
		b.entry(tableFilter, chainNodePorts, comment(name+" health check node port"), fmt.Sprintf("-m tcp -p tcp --dport %d", hc), "-j", "ACCEPT")
	}
	if shortCircuit {
		shortCircuitChains(b, port, eps, node, opts, d.Firewall)
	}
}

// shortCircuitChains writes KUBE-EXT-* (and KUBE-FW-* with source ranges)
// of an eTP Local port: pod and host traffic to an external address goes
// to every endpoint, as if it had gone out to the load balancer and come
// back; host traffic is masqueraded so that replies return. Anything else
// returns and reaches the external virtual server.
func shortCircuitChains(b *ruleBuilder, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts iptables.PlanOptions, firewall bool) {
	fam, name := opts.Family, port.Name.String()
	clusterIP, _ := port.ClusterIP(fam)
	_, _, extChain, fwChain := iptables.PortChains(port)
	target := shortCircuitTarget(b, port, eps, node, opts, clusterIP)
	b.declare(tableNAT, extChain)
	if det := opts.LocalDetector; det != nil {
		b.rule(tableNAT, extChain, append(append([]string{comment("pod traffic for " + name + " external destinations")}, det.IfLocal...), target...)...)
	}
	b.rule(tableNAT, extChain, comment("masquerade LOCAL traffic for "+name+" external destinations"), "-m addrtype --src-type LOCAL", "-j", chainMarkMasq)
	b.rule(tableNAT, extChain, append([]string{comment("route LOCAL traffic for " + name + " external destinations"), "-m addrtype --src-type LOCAL"}, target...)...)

	// KUBE-FW-*: allowed source ranges continue to KUBE-EXT-*; the rest
	// falls through and is dropped by KUBE-SOURCE-RANGES-FIREWALL.
	if !firewall {
		return
	}
	b.declare(tableNAT, fwChain)
	allowed := port.AllowedSources(fam, opts.NodeIP)
	for _, cidr := range allowed.Ranges {
		b.rule(tableNAT, fwChain, comment(name+" loadbalancer IP"), "-s", cidr.String(), "-j", extChain)
	}
	if allowed.FromLoadBalancerIPs {
		for _, ip := range port.LoadBalancerIPs {
			if watch.FamilyOf(ip) == fam {
				b.rule(tableNAT, fwChain, comment(name+" loadbalancer IP"), "-s", hostPrefix(ip), "-j", extChain)
			}
		}
	}
}

// nodeSourceRanges writes filter KUBE-FW-*, which drops node-originated
// connections to a LoadBalancer IP from outside its source ranges after
// IPVS forwarded them (filter OUTPUT sees them again then). Traffic from
// elsewhere is checked before IPVS by the ipset rules of
// KUBE-SOURCE-RANGES-FIREWALL.
func nodeSourceRanges(b *ruleBuilder, port *watch.ServicePort, fwChain string, opts iptables.PlanOptions) {
	fam := opts.Family
	b.declare(tableFilter, fwChain)
	allowed := port.AllowedSources(fam, opts.NodeIP)
	for _, cidr := range allowed.Ranges {
		b.rule(tableFilter, fwChain, "-s", cidr.Masked().String(), "-j", "RETURN")
	}
	if allowed.FromLoadBalancerIPs {
		for _, ip := range port.LoadBalancerIPs {
			if watch.FamilyOf(ip) == fam {
				b.rule(tableFilter, fwChain, "-s", hostPrefix(ip), "-j", "RETURN")
			}
		}
	}
	b.rule(tableFilter, fwChain, comment(port.Name.String()+" traffic not accepted by "+fwChain), "-j", "DROP")
}

// shortCircuitTarget returns the rule tail that sends short-circuited
// traffic to every cluster endpoint: a DNAT to the ClusterIP, whose virtual
// server holds them under internalTrafficPolicy Cluster. Under
// internalTrafficPolicy Local the ClusterIP's virtual server has local
// endpoints only, so the traffic goes through iptables mode's own
// KUBE-SVC-* chain (and its KUBE-SEP-* chains) instead.
func shortCircuitTarget(b *ruleBuilder, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts iptables.PlanOptions, clusterIP netip.Addr) []string {
	proto := protoName(port.Protocol)
	if !port.InternalPolicyLocal {
		return []string{"-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", netip.AddrPortFrom(clusterIP, uint16(port.Port)).String()}
	}
	svcChain, _, _, _ := iptables.PortChains(port)
	for k, rules := range iptables.ClusterChains(port, eps, node, opts) {
		b.sr.Chains[k] = rules
	}
	return []string{"-j", svcChain}
}

func loopback(fam v1.IPFamily) string {
	if fam == v1.IPv6Protocol {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

func matchSet(base string, fam v1.IPFamily, dirs string) string {
	return "-m set --match-set " + SetName(base, fam) + " " + dirs
}

// baseChains returns IPVS mode's fixed chains. For the shared chains these
// are the tail rules after every Service's entries.
func baseChains(opts iptables.PlanOptions) map[iptables.ChainKey][]string {
	fam := opts.Family
	mark := fmt.Sprintf("%#x", 1<<opts.MasqueradeBit)
	set := func(base, dirs string) string { return matchSet(base, fam, dirs) }
	key := func(table, name string) iptables.ChainKey { return iptables.ChainKey{Table: table, Name: name} }

	// nat KUBE-NODEPORTS tail: NodePorts under Cluster policy are
	// masqueraded, under Local policy they keep the client's address.
	var nodePorts []string
	for _, p := range []struct{ proto, all, local, dirs string }{
		{"tcp", SetNodePortTCP, SetNodePortLocalTCP, "dst"},
		{"udp", SetNodePortUDP, SetNodePortLocalUDP, "dst"},
		{"sctp", SetNodePortSCTP, SetNodePortLocalSCTP, "dst,dst"},
	} {
		nodePorts = append(nodePorts,
			"-p "+p.proto+" "+set(p.local, p.dirs)+" -j RETURN",
			"-p "+p.proto+" "+set(p.all, p.dirs)+" -j "+chainMarkMasq)
	}

	var forward []string
	if !opts.TCPBeLiberal {
		forward = append(forward, "-m conntrack --ctstate INVALID -j DROP")
	}
	forward = append(forward,
		comment(commentForwardMarked)+fmt.Sprintf(" -m mark --mark %s/%s -j ACCEPT", mark, mark),
		comment(commentForwardConntrack)+" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

	return map[iptables.ChainKey][]string{
		key(tableNAT, chainServices):     natServicesTail(opts),
		key(tableNAT, chainNodePorts):    nodePorts,
		key(tableNAT, chainLoadBalancer): {set(SetLoadBalancerLocal, "dst,dst") + " -j RETURN", "-j " + chainMarkMasq},
		key(tableNAT, chainMarkMasq):     {"-j MARK --or-mark " + mark},
		key(tableNAT, chainPostrouting): {
			comment(commentLoopBack) + " " + set(SetLoopBack, "dst,dst,src") + " -j MASQUERADE",
			fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", mark, mark),
			"-j MARK --xor-mark " + mark,
			comment(commentMasqueradeSNAT) + " -j MASQUERADE --random-fully",
		},

		key(tableFilter, chainServices):         {},
		key(tableFilter, chainExternalServices): {},
		key(tableFilter, chainNodePorts):        {},
		key(tableFilter, chainProxyFirewall):    {comment(commentSourceRangesFW) + " " + set(SetLoadBalancerFW, "dst,dst") + " -j " + chainSourceRangesFW},
		key(tableFilter, chainSourceRangesFW): {
			set(SetLBSourceCIDR, "dst,dst,src") + " -j RETURN",
			set(SetLBSourceIP, "dst,dst,src") + " -j RETURN",
			"-j DROP",
		},
		key(tableFilter, chainIPVSFilter): {
			set(SetLoadBalancer, "dst,dst") + " -j RETURN",
			set(SetClusterIP, "dst,dst") + " -j RETURN",
			set(SetExternalIP, "dst,dst") + " -j RETURN",
			set(SetExternalIPLocal, "dst,dst") + " -j RETURN",
			set(SetHealthCheckNodePort, "dst") + " -j RETURN",
			comment(commentNotService) + " -m conntrack --ctstate NEW " + set(SetIPVSIPs, "dst") + " -j REJECT",
		},
		key(tableFilter, chainForward): forward,
	}
}

// natServicesTail is nat KUBE-SERVICES' fixed tail: masquerade by
// destination set, then hand traffic to node addresses (not kube-ipvs0's,
// not loopback) to KUBE-NODEPORTS, last.
func natServicesTail(opts iptables.PlanOptions) []string {
	fam := opts.Family
	set := func(base, dirs string) string { return matchSet(base, fam, dirs) }
	services := []string{comment(commentLoadBalancer) + " " + set(SetLoadBalancer, "dst,dst") + " -j " + chainLoadBalancer}
	switch {
	case opts.MasqueradeAll:
		services = append(services, comment(commentClusterIPMasq)+" "+set(SetClusterIP, "dst,dst")+" -j "+chainMarkMasq)
	case opts.LocalDetector != nil:
		services = append(services, strings.Join(opts.LocalDetector.IfNotLocal, " ")+" "+comment(commentClusterIPMasq)+" "+set(SetClusterIP, "dst,dst")+" -j "+chainMarkMasq)
	}
	services = append(services, comment(commentExternalIPMasq)+" "+set(SetExternalIP, "dst,dst")+" -j "+chainMarkMasq)
	for _, s := range []string{SetClusterIP, SetExternalIP, SetExternalIPLocal, SetLoadBalancer} {
		services = append(services, comment(commentServiceNoMasq)+" "+set(s, "dst,dst")+" -j RETURN")
	}
	notIPVS := "-m set ! --match-set " + SetName(SetIPVSIPs, fam) + " dst"
	if opts.NodePortAddresses == nil {
		return append(services, comment(commentNodePortsLast)+" -m addrtype --dst-type LOCAL ! -d "+loopback(fam)+" "+notIPVS+" -j "+chainNodePorts)
	}
	for _, a := range opts.NodePortAddresses {
		if !a.IsLoopback() {
			services = append(services, comment(commentNodePortsLast)+" -d "+hostPrefix(a)+" -j "+chainNodePorts)
		}
	}
	return services
}

// jumps returns the rules in built-in chains that lead into ours. Service
// IPs live on kube-ipvs0, so filter INPUT (which runs before IPVS) also
// checks KUBE-SERVICES and the unknown-port filter.
func jumps() []iptables.Jump {
	return iptables.StandardJumps(
		iptables.NewJump(tableFilter, "INPUT", "kubernetes ipvs access filter", chainIPVSFilter, true),
		iptables.NewJump(tableFilter, "INPUT", "kubernetes service portals", chainServices, true),
	)
}
