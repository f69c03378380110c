package iptables

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// baseChains returns the chains that belong to no Service, with their fixed
// rules. For shared chains (KUBE-SERVICES, KUBE-NODEPORTS, ...) these rules
// come after every Service's entries.
func baseChains(opts PlanOptions) map[ChainKey][]string {
	mark := fmt.Sprintf("%#x", 1<<opts.MasqueradeBit)
	base := map[ChainKey][]string{
		{TableNAT, ChainServices}:    nodePortDispatch(opts),
		{TableNAT, ChainNodePorts}:   {},
		{TableNAT, ChainMarkMasq}:    {"-j MARK --or-mark " + mark},
		{TableNAT, ChainPostrouting}: postrouting(mark),

		{TableFilter, ChainServices}:         {},
		{TableFilter, ChainExternalServices}: {},
		{TableFilter, ChainNodePorts}:        {},
		{TableFilter, ChainProxyFirewall}:    {},
		{TableFilter, ChainForward}:          forward(mark, opts),
	}
	if LocalhostNodePorts(opts) {
		base[ChainKey{TableFilter, ChainFirewall}] = []string{
			comment("block incoming localnet connections") + " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
		}
	}
	return base
}

// LocalhostNodePorts reports whether NodePorts answer on 127.0.0.1: IPv4
// only, and only when every address (or a loopback one) carries NodePorts.
// The daemon sets route_localnet exactly when this holds.
func LocalhostNodePorts(opts PlanOptions) bool {
	if opts.Family != v1.IPv4Protocol || !opts.LocalhostNodePorts {
		return false
	}
	if opts.NodePortAddresses == nil {
		return true
	}
	for _, a := range opts.NodePortAddresses {
		if a.IsLoopback() {
			return true
		}
	}
	return false
}

// nodePortDispatch is the last rule (or rules) of nat KUBE-SERVICES: traffic
// to a node address that matched no Service IP goes to KUBE-NODEPORTS.
func nodePortDispatch(opts PlanOptions) []string {
	note := comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
	if opts.NodePortAddresses == nil {
		dst := "-m addrtype --dst-type LOCAL"
		switch {
		case opts.Family == v1.IPv6Protocol:
			dst += " ! -d ::1/128"
		case !opts.LocalhostNodePorts:
			dst += " ! -d 127.0.0.0/8"
		}
		return []string{note + " " + dst + " -j " + ChainNodePorts}
	}
	var rules []string
	for _, a := range opts.NodePortAddresses {
		if a.IsLoopback() && !LocalhostNodePorts(opts) {
			continue
		}
		rules = append(rules, note+" -d "+netip.PrefixFrom(a, a.BitLen()).String()+" -j "+ChainNodePorts)
	}
	return rules
}

func postrouting(mark string) []string {
	return []string{
		fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", mark, mark),
		"-j MARK --xor-mark " + mark,
		comment("kubernetes service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
	}
}

func forward(mark string, opts PlanOptions) []string {
	var rules []string
	if !opts.TCPBeLiberal {
		rules = append(rules, "-m conntrack --ctstate INVALID -j DROP")
	}
	return append(rules,
		comment("kubernetes forwarding rules")+fmt.Sprintf(" -m mark --mark %s/%s -j ACCEPT", mark, mark),
		comment("kubernetes forwarding conntrack rule")+" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
	)
}

// jumps returns the rules in built-in chains that lead into ours.
func jumps(opts PlanOptions) []Jump {
	out := StandardJumps()
	if LocalhostNodePorts(opts) {
		out = append(out, NewJump(TableFilter, "INPUT", "kubernetes firewall for dropping marked packets", ChainFirewall, false))
	}
	return out
}

// NewJump is a rule in a built-in chain that jumps to target, marked with
// the comment text kube-proxy uses; newOnly limits it to new connections.
func NewJump(table, chain, text, target string, newOnly bool) Jump {
	var rule []string
	if newOnly {
		rule = []string{"-m", "conntrack", "--ctstate", "NEW"}
	}
	return Jump{Table: table, Chain: chain, Rule: append(rule, "-m", "comment", "--comment", text, "-j", target)}
}

// StandardJumps is kube-proxy's layout of jumps from the built-in chains,
// shared by both modes; inputFirst go at the head of filter INPUT's
// jumps (IPVS mode's access filter and service portals).
func StandardJumps(inputFirst ...Jump) []Jump {
	out := []Jump{
		NewJump(TableNAT, "PREROUTING", "kubernetes service portals", ChainServices, false),
		NewJump(TableNAT, "OUTPUT", "kubernetes service portals", ChainServices, false),
		NewJump(TableNAT, "POSTROUTING", "kubernetes postrouting rules", ChainPostrouting, false),
	}
	out = append(out, inputFirst...)
	return append(out,
		NewJump(TableFilter, "INPUT", "kubernetes load balancer firewall", ChainProxyFirewall, true),
		NewJump(TableFilter, "INPUT", "kubernetes health check service ports", ChainNodePorts, false),
		NewJump(TableFilter, "INPUT", "kubernetes externally-visible service portals", ChainExternalServices, true),
		NewJump(TableFilter, "FORWARD", "kubernetes load balancer firewall", ChainProxyFirewall, true),
		NewJump(TableFilter, "FORWARD", "kubernetes forwarding rules", ChainForward, false),
		NewJump(TableFilter, "FORWARD", "kubernetes service portals", ChainServices, true),
		NewJump(TableFilter, "FORWARD", "kubernetes externally-visible service portals", ChainExternalServices, true),
		NewJump(TableFilter, "OUTPUT", "kubernetes load balancer firewall", ChainProxyFirewall, true),
		NewJump(TableFilter, "OUTPUT", "kubernetes service portals", ChainServices, true),
	)
}
