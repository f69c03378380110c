package ipvs

import (
	"maps"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// DefaultScheduler is the IPVS scheduler when the config names none.
const DefaultScheduler = "rr"

// PlanOptions is the node configuration an IPVS plan depends on.
type PlanOptions struct {
	Family    v1.IPFamily
	Scheduler string
	// NodeIPs are the addresses NodePort virtual servers listen on: the
	// node's addresses of this family allowed by nodePortAddresses, never
	// a loopback address (IPVS mode serves no NodePort on 127.0.0.1).
	NodeIPs []netip.Addr
	// HostAddrs are the addresses on the node's interfaces other than
	// kube-ipvs0. An external IP among them is not added to kube-ipvs0.
	HostAddrs []netip.Addr
	// NodeIP is the node's primary IP of this family: a load balancer
	// source range that contains it also admits the LB IP as a source.
	NodeIP netip.Addr
}

func (o PlanOptions) equal(p PlanOptions) bool {
	return o.Family == p.Family && o.Scheduler == p.Scheduler && o.NodeIP == p.NodeIP &&
		slices.Equal(o.NodeIPs, p.NodeIPs) && slices.Equal(o.HostAddrs, p.HostAddrs)
}

// Plan computes the IPVS state for one family. It is a pure function of the
// snapshot and the options.
func Plan(snap *watch.Snapshot, opts PlanOptions) *State { return PlanFrom(nil, snap, opts) }

// PlanFrom is Plan for a snapshot that follows the one prev was planned
// from: Services the snapshot does not mark as changed keep their state from
// prev. With a nil prev, a node change or different options it plans
// everything.
func PlanFrom(prev *State, snap *watch.Snapshot, opts PlanOptions) *State {
	if opts.Scheduler == "" {
		opts.Scheduler = DefaultScheduler
	}
	st := &State{Family: opts.Family, opts: opts}
	hostAddrs := map[netip.Addr]bool{}
	for _, a := range opts.HostAddrs {
		hostAddrs[a] = true
	}
	var toPlan map[types.NamespacedName][]*watch.ServicePort
	var services *cowmap.Editor[string, *ServiceState]
	if prev != nil && !snap.NodeChanged && prev.opts.equal(opts) {
		// Unchanged Services share prev's state (and, through the
		// copy-on-write map, all but a few shards of its table).
		services = prev.Services.Edit()
		toPlan = map[types.NamespacedName][]*watch.ServicePort{}
		ports := snap.ServicePorts()
		for name := range snap.Changed {
			services.Delete(name.String())
			toPlan[name] = ports.Get(name)
		}
	} else {
		services = cowmap.Map[string, *ServiceState]{}.Edit()
		toPlan = maps.Collect(snap.ServicePorts().All())
	}
	for name, ports := range toPlan {
		b := newStateBuilder()
		planned := false
		for _, port := range ports {
			if _, ok := port.ClusterIP(opts.Family); !ok {
				continue
			}
			planPort(b, port, watch.FamilyEndpoints(snap.Endpoints.Get(port.Name), opts.Family), snap.Node, opts, hostAddrs)
			planned = true
		}
		if planned {
			services.Set(name.String(), b.build())
		}
	}
	st.Services = services.Map()
	return st
}

// externalEndpoints are the real servers of external addresses (external
// IPs, load balancer IPs, NodePorts): none when the port serves no
// external traffic.
func externalEndpoints(d watch.Decision) []*watch.Endpoint {
	if !d.ServesExternal {
		return nil
	}
	return d.External
}

// stateBuilder accumulates one Service's state over its ports.
type stateBuilder struct {
	vs    map[VSKey]*VirtualServer
	addrs map[netip.Addr]bool
	sets  map[string]map[string]bool
}

func newStateBuilder() *stateBuilder {
	return &stateBuilder{vs: map[VSKey]*VirtualServer{}, addrs: map[netip.Addr]bool{}, sets: map[string]map[string]bool{}}
}

func (b *stateBuilder) entry(set, e string) {
	if b.sets[set] == nil {
		b.sets[set] = map[string]bool{}
	}
	b.sets[set][e] = true
}

// virtualServer adds a virtual server; the first port claiming a key keeps
// it (two ports of one Service cannot share a key in a valid Service, but an
// external IP may repeat a LoadBalancer IP).
func (b *stateBuilder) virtualServer(k VSKey, sched string, timeout uint32, eps []*watch.Endpoint) {
	if len(eps) == 0 || b.vs[k] != nil {
		return
	}
	v := &VirtualServer{Key: k, Scheduler: sched, Timeout: timeout, RealServers: map[netip.AddrPort]int{}}
	for _, ep := range eps {
		v.RealServers[netip.AddrPortFrom(ep.Addr, uint16(ep.Port))] = 1
	}
	b.vs[k] = v
}

func (b *stateBuilder) build() *ServiceState {
	ss := &ServiceState{Sets: map[string][]string{}}
	ss.VirtualServers = slices.SortedFunc(maps.Values(b.vs), func(x, y *VirtualServer) int { return compareKeys(x.Key, y.Key) })
	ss.Addresses = slices.SortedFunc(maps.Keys(b.addrs), netip.Addr.Compare)
	for name, entries := range b.sets {
		ss.Sets[name] = slices.Sorted(maps.Keys(entries))
	}
	return ss
}

func planPort(b *stateBuilder, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions, hostAddrs map[netip.Addr]bool) {
	fam := opts.Family
	set := func(base string) string { return SetName(base, fam) }
	d := watch.Decide(port, eps, node)
	internal, external := d.Internal, externalEndpoints(d)
	clusterIP, _ := port.ClusterIP(fam)
	proto := port.Protocol
	vport := uint16(port.Port)
	timeout := uint32(max(port.SessionAffinityTimeout, 0))

	onDummy := func(ip netip.Addr) {
		b.addrs[ip] = true
		b.entry(set(SetIPVSIPs), ip.String())
	}

	// ClusterIP.
	onDummy(clusterIP)
	b.entry(set(SetClusterIP), ipPortEntry(clusterIP, proto, port.Port))
	b.virtualServer(VSKey{proto, clusterIP, vport}, opts.Scheduler, timeout, internal)

	// External IPs: on kube-ipvs0 unless the node already has them.
	extSet := set(SetExternalIP)
	if port.ExternalPolicyLocal {
		extSet = set(SetExternalIPLocal)
	}
	for _, ip := range port.ExternalIPs {
		if watch.FamilyOf(ip) != fam {
			continue
		}
		if !hostAddrs[ip] {
			onDummy(ip)
		}
		b.entry(extSet, ipPortEntry(ip, proto, port.Port))
		b.virtualServer(VSKey{proto, ip, vport}, opts.Scheduler, timeout, external)
	}

	// LoadBalancer IPs (VIP mode only; the watch leaves out ipMode Proxy).
	for _, ip := range port.LoadBalancerIPs {
		if watch.FamilyOf(ip) != fam {
			continue
		}
		if !hostAddrs[ip] {
			onDummy(ip)
		}
		e := ipPortEntry(ip, proto, port.Port)
		b.entry(set(SetLoadBalancer), e)
		if port.ExternalPolicyLocal {
			b.entry(set(SetLoadBalancerLocal), e)
		}
		if d.Firewall {
			firewallSets(b, port, ip, opts)
		}
		b.virtualServer(VSKey{proto, ip, vport}, opts.Scheduler, timeout, external)
	}

	// NodePorts on every allowed node IP.
	if np := port.NodePort; np != 0 {
		nodePortSets(b, port, fam, opts.NodeIPs)
		for _, ip := range opts.NodeIPs {
			b.virtualServer(VSKey{proto, ip, uint16(np)}, opts.Scheduler, timeout, external)
		}
	}
	if hc := port.HealthCheckNodePort; hc != 0 {
		b.entry(set(SetHealthCheckNodePort), portEntry(hc))
	}

	// Hairpin: a local endpoint reaching itself through the Service is
	// masqueraded in KUBE-POSTROUTING.
	seen := map[*watch.Endpoint]bool{}
	for _, ep := range slices.Concat(internal, external) {
		if ep.IsLocal && !seen[ep] {
			seen[ep] = true
			b.entry(set(SetLoopBack), ipPortIPEntry(ep.Addr, proto, ep.Port, ep.Addr))
		}
	}
}

// firewallSets lists a load balancer IP in KUBE-LOAD-BALANCER-FW with the
// sources its ranges admit.
func firewallSets(b *stateBuilder, port *watch.ServicePort, ip netip.Addr, opts PlanOptions) {
	set := func(base string) string { return SetName(base, opts.Family) }
	b.entry(set(SetLoadBalancerFW), ipPortEntry(ip, port.Protocol, port.Port))
	allowed := port.AllowedSources(opts.Family, opts.NodeIP)
	for _, cidr := range allowed.Ranges {
		b.entry(set(SetLBSourceCIDR), ipPortNetEntry(ip, port.Protocol, port.Port, cidr))
	}
	if allowed.FromLoadBalancerIPs {
		b.entry(set(SetLBSourceIP), ipPortIPEntry(ip, port.Protocol, port.Port, ip))
	}
}

func nodePortSets(b *stateBuilder, port *watch.ServicePort, fam v1.IPFamily, nodeIPs []netip.Addr) {
	set := func(base string) string { return SetName(base, fam) }
	local := port.ExternalPolicyLocal
	switch port.Protocol {
	case v1.ProtocolTCP, v1.ProtocolUDP:
		all, loc := set(SetNodePortTCP), set(SetNodePortLocalTCP)
		if port.Protocol == v1.ProtocolUDP {
			all, loc = set(SetNodePortUDP), set(SetNodePortLocalUDP)
		}
		b.entry(all, portEntry(port.NodePort))
		if local {
			b.entry(loc, portEntry(port.NodePort))
		}
	case v1.ProtocolSCTP:
		for _, ip := range nodeIPs {
			e := ipPortEntry(ip, port.Protocol, port.NodePort)
			b.entry(set(SetNodePortSCTP), e)
			if local {
				b.entry(set(SetNodePortLocalSCTP), e)
			}
		}
	}
}
