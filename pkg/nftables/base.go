package nftables

import (
	"fmt"

	"github.com/google/nftables"
)

// Chain, set and map names of the layout (kube-proxy's nftables names).
const (
	chainServices      = "services"
	chainMarkMasq      = "mark-for-masquerade"
	chainMasquerading  = "masquerading"
	chainReject        = "reject-chain"
	chainSvcEndpoints  = "service-endpoints-check"
	chainNodeEndpoints = "nodeport-endpoints-check"
	chainFirewallCheck = "firewall-check"
	chainClusterIPs    = "cluster-ips-check"

	mapServiceIPs         = "service-ips"
	mapServiceNodePorts   = "service-nodeports"
	mapNoEndpointServices = "no-endpoint-services"
	mapNoEndpointNodePort = "no-endpoint-nodeports"
	mapFirewallIPs        = "firewall-ips"
	setClusterIPs         = "cluster-ips"
	setNodePortIPs        = "nodeport-ips"
	setHairpin            = "hairpin"
	mapEndpointPicks      = "endpoint-picks"
)

// maxPicks is the most endpoints a Service port may have and still be
// served by its shard's pick chains (pickChain) rather than a chain of
// its own. Each shard has one pick chain per count up to it, so this
// bounds the chains that exist whatever the cluster holds.
const maxPicks = 16

// pickChain names the chain that DNATs to one of n endpoints.
func pickChain(n int) string { return fmt.Sprintf("pick-%d", n) }

func hook(t nftables.ChainType, h *nftables.ChainHook, prio int32) *Hook {
	return &Hook{Type: t, Hook: h, Priority: prio}
}

// baseObjects is the fixed part of the layout: the shared table, and every
// shard's hooks, dispatch maps and masquerade mark.
func baseObjects(opts PlanOptions) *Objects {
	o := &Objects{}
	f := familyOf(opts.Family)
	sharedBase(o, f, opts)
	for i := range opts.Shards {
		shardBase(o, f, ShardTable(i), opts)
	}
	return o
}

// sharedBase fills the shared table. Its filter chains see every packet
// (not only a connection's first), so they live once here rather than in
// every shard; they consult maps that Services fill.
func sharedBase(o *Objects, f *family, opts PlanOptions) {
	t := SharedTable
	newConn := func(chain string) Rule { return Rule{NewConnection{}, Jump(chain)} }
	base := func(name string, h *Hook, rules ...Rule) {
		o.Chains = append(o.Chains, &Chain{Table: t, Name: name, Hook: h, Rules: rules})
	}
	base("filter-prerouting", hook(nftables.ChainTypeFilter, nftables.ChainHookPrerouting, -110), newConn(chainFirewallCheck))
	base("filter-input", hook(nftables.ChainTypeFilter, nftables.ChainHookInput, -110), newConn(chainNodeEndpoints), newConn(chainSvcEndpoints))
	base("filter-forward", hook(nftables.ChainTypeFilter, nftables.ChainHookForward, -110), newConn(chainSvcEndpoints), newConn(chainClusterIPs))
	base("filter-output", hook(nftables.ChainTypeFilter, nftables.ChainHookOutput, -110), newConn(chainSvcEndpoints), newConn(chainFirewallCheck))
	base("filter-output-post-dnat", hook(nftables.ChainTypeFilter, nftables.ChainHookOutput, -90), newConn(chainClusterIPs))
	bit := uint32(1) << opts.MasqueradeBit
	// An endpoint that reached itself through a Service is masqueraded, so
	// that its answer comes back through the node. Endpoint chains did this
	// per endpoint; one set for all keeps the chain count, which every
	// commit walks, to one chain per Service port.
	base("nat-postrouting", hook(nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100),
		Rule{DestNATed{}, InSet{fam: f, Key: KeyHairpin, Set: setHairpin}, SetMark{Bit: bit}},
		Rule{Jump(chainMasquerading)})
	base(chainMasquerading, nil, Rule{MarkClear(bit), Return}, Rule{SetMark{Bit: bit, Toggle: true}}, Rule{Masquerade{}})
	base(chainSvcEndpoints, nil, Rule{VMap{fam: f, Key: KeyDestPort, Map: mapNoEndpointServices}})
	var nodePorts []Rule
	if m := nodePortMatch(f, opts); m != nil {
		nodePorts = append(nodePorts, append(m, VMap{fam: f, Key: KeyProtoPort, Map: mapNoEndpointNodePort}))
	}
	base(chainNodeEndpoints, nil, nodePorts...)
	base(chainFirewallCheck, nil, Rule{VMap{fam: f, Key: KeyDestPort, Map: mapFirewallIPs}})
	clusterIPs := []Rule{{InSet{fam: f, Key: KeyDaddr, Set: setClusterIPs}, Reject{}}}
	for _, cidr := range opts.ServiceCIDRs {
		clusterIPs = append(clusterIPs, Rule{Addr{Prefix: cidr}, Drop})
	}
	base(chainClusterIPs, nil, clusterIPs...)
	base(chainReject, nil, Rule{Reject{}})
	o.Sets = append(o.Sets,
		&Set{Table: t, Name: mapNoEndpointServices, Key: KeyDestPort, Map: true},
		&Set{Table: t, Name: mapNoEndpointNodePort, Key: KeyProtoPort, Map: true},
		&Set{Table: t, Name: mapFirewallIPs, Key: KeyDestPort, Map: true},
		&Set{Table: t, Name: setClusterIPs, Key: KeyDaddr},
		&Set{Table: t, Name: setHairpin, Key: KeyHairpin})
	nodePortIPs(o, t, opts)
}

// shardBase fills one shard: its own nat hooks (the kernel revalidates a
// table's chains on a commit that adds a jump, so each shard is small to
// revalidate), the Service dispatch maps, and the masquerade mark.
func shardBase(o *Objects, f *family, t string, opts PlanOptions) {
	dispatch := []Rule{{VMap{fam: f, Key: KeyDestPort, Map: mapServiceIPs}}}
	if m := nodePortMatch(f, opts); m != nil {
		dispatch = append(dispatch, append(m, VMap{fam: f, Key: KeyProtoPort, Map: mapServiceNodePorts}))
	}
	bit := uint32(1) << opts.MasqueradeBit
	o.Chains = append(o.Chains,
		&Chain{Table: t, Name: "nat-prerouting", Hook: hook(nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100), Rules: []Rule{{Jump(chainServices)}}},
		&Chain{Table: t, Name: "nat-output", Hook: hook(nftables.ChainTypeNAT, nftables.ChainHookOutput, -100), Rules: []Rule{{Jump(chainServices)}}},
		&Chain{Table: t, Name: chainServices, Rules: dispatch},
		&Chain{Table: t, Name: chainMarkMasq, Rules: []Rule{{SetMark{Bit: bit}}}})
	o.Sets = append(o.Sets,
		&Set{Table: t, Name: mapServiceIPs, Key: KeyDestPort, Map: true},
		&Set{Table: t, Name: mapServiceNodePorts, Key: KeyProtoPort, Map: true},
		&Set{Table: t, Name: mapEndpointPicks, Key: KeyPick, Targets: true})
	for n := 1; n <= maxPicks; n++ {
		o.Chains = append(o.Chains, &Chain{Table: t, Name: pickChain(n), Rules: pickRules(f, opts, n)})
	}
	nodePortIPs(o, t, opts)
}

// pickRules are a pick chain's rules: the masquerade mark that a Service
// chain gives ClusterIP traffic (only ClusterIPs dispatch here), then the
// draw among n endpoints and the DNAT to it.
func pickRules(f *family, opts PlanOptions, n int) []Rule {
	var rules []Rule
	switch {
	case opts.MasqueradeAll:
		rules = append(rules, Rule{Jump(chainMarkMasq)})
	case opts.LocalDetector != nil:
		rules = append(rules, Rule{opts.LocalDetector.match(false), Jump(chainMarkMasq)})
	}
	return append(rules, Rule{DNATPick{fam: f, Map: mapEndpointPicks, N: uint32(n)}})
}

// nodePortMatch matches the addresses NodePorts are served on: the
// configured ones, or every local address but loopback; nil when none of
// this family is configured.
func nodePortMatch(f *family, opts PlanOptions) Rule {
	switch {
	case opts.NodePortAddresses == nil:
		return Rule{LocalAddr{}, Addr{Not: true, Prefix: f.loopback}}
	case len(opts.NodePortAddresses) == 0:
		return nil
	}
	return Rule{InSet{fam: f, Key: KeyDaddr, Set: setNodePortIPs}}
}

func nodePortIPs(o *Objects, table string, opts PlanOptions) {
	if len(opts.NodePortAddresses) == 0 {
		return
	}
	o.Sets = append(o.Sets, &Set{Table: table, Name: setNodePortIPs, Key: KeyDaddr})
	for _, a := range opts.NodePortAddresses {
		o.elem(&Elem{Table: table, Set: setNodePortIPs, Key: ElemKey{Addr: a}})
	}
}
