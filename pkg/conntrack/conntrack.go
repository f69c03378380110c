// Package conntrack removes conntrack entries that would keep UDP and SCTP
// traffic going to endpoints that no longer serve a Service, or keep it
// black-holed after a Service gains its first endpoint.
//
// It is a reconciler, not an event handler: after each successful sync it
// compares every UDP/SCTP entry aimed at a Service address with the
// endpoints the Snapshot says are in use, so a missed event or a restart
// never leaves a stale entry behind (kube-proxy #122740 wiped every UDP
// entry on restart; this deletes only the wrong ones).
package conntrack

import (
	"net/netip"
	"reflect"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// Targets is, per Service destination, the endpoints a flow may be DNATed to.
// Keys and endpoints are plain values, not strings: at 5,000 Services a
// string per destination and per endpoint was most of a round's time and
// 7 MB of garbage.
type Targets struct {
	// vips maps a Service address, port and protocol to its endpoints.
	vips map[dest]claim
	// nodePorts maps a NodePort (zero address) to its endpoints; only
	// flows to a local address match.
	nodePorts map[dest]claim
	local     map[netip.Addr]bool
}

// dest is one Service destination: address (zero for a NodePort), port
// and IP protocol number.
type dest struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

// claim is the Service port a destination belongs to and its endpoints.
type claim struct {
	owner watch.ServicePortName
	to    allowed
}

// allowed is the endpoints a destination's flows may go to, sorted. For
// TCP only whether there are any matters (see Stale), so it keeps no list.
type allowed struct {
	any bool
	eps []netip.AddrPort
}

func (a allowed) has(ep netip.AddrPort) bool {
	_, found := slices.BinarySearchFunc(a.eps, ep, netip.AddrPort.Compare)
	return found
}

// BuildTargets lists the Service destinations of snap for one family.
func BuildTargets(snap *watch.Snapshot, family v1.IPFamily, local []netip.Addr) *Targets {
	return NewBuilder(family).Build(snap, local)
}

// Builder keeps one family's Targets from round to round and updates only
// the Service ports whose port or endpoints changed since its last round.
// After the Snapshot just before (by Seq) those are the Snapshot's Changed;
// after a gap (the reconciler skips Snapshots while busy) it compares each
// port with what it saw: the Tracker's Snapshots share the *ServicePort
// and endpoint slice of every Service that did not change, so the same
// pointers mean the same content. Either way a round after one change
// selects one Service's endpoints instead of every Service's.
//
// Two Services may claim the same destination (the API allows one external
// IP and port in two Services); the one updated last holds it, as map
// order decided before, and if it goes, the other's flows are left alone
// until that Service changes. A Builder is not safe for concurrent use.
type Builder struct {
	family    v1.IPFamily
	node      watch.NodeInfo
	targets   *Targets
	seen      map[watch.ServicePortName]seenPort
	byService map[types.NamespacedName][]watch.ServicePortName // the keys of seen
	seq       uint64                                           // of the last Snapshot built; 0: none or built by hand
	local     []netip.Addr                                     // the targets' local addresses, as given

	// gone holds the ports forgotten this round, so that add can tell
	// what changed; mayBeStale is the answer for the round (MayBeStale).
	gone       map[watch.ServicePortName]seenPort
	mayBeStale bool
}

// seenPort is what one Service port's destinations were built from.
type seenPort struct {
	port  *watch.ServicePort
	eps   []*watch.Endpoint
	dests []dest // in vips; a NodePort is in nodePorts
	proto uint8
	any   bool // whether it had endpoints in use
}

// NewBuilder returns a Builder for family whose first round builds every
// Service port's destinations.
func NewBuilder(family v1.IPFamily) *Builder {
	b := &Builder{family: family}
	b.reset()
	return b
}

func (b *Builder) reset() {
	b.targets = &Targets{vips: map[dest]claim{}, nodePorts: map[dest]claim{}}
	b.seen = map[watch.ServicePortName]seenPort{}
	b.byService = map[types.NamespacedName][]watch.ServicePortName{}
	b.gone = map[watch.ServicePortName]seenPort{}
	b.seq = 0
	b.local = nil
}

// Build returns the Service destinations of snap; local are the node's
// addresses (NodePort destinations). The Targets are valid until the next
// Build.
func (b *Builder) Build(snap *watch.Snapshot, local []netip.Addr) *Targets {
	if !reflect.DeepEqual(snap.Node, b.node) {
		// Locality and topology, and so every selection, depend on it.
		b.node = snap.Node
		b.reset()
	}
	clear(b.gone)
	b.mayBeStale = b.seq == 0
	if b.targets.local == nil || !slices.Equal(local, b.local) {
		// UDP NodePort flows to an address that just became local.
		b.mayBeStale = true
		b.local = slices.Clone(local)
		b.targets.local = map[netip.Addr]bool{}
		for _, a := range local {
			b.targets.local[a] = true
		}
	}
	if b.seq != 0 && snap.Seq == b.seq+1 {
		for svc := range snap.Changed {
			for _, name := range slices.Clone(b.byService[svc]) {
				b.forget(name)
			}
			for _, port := range snap.ServicePorts().Get(svc) {
				b.add(port.Name, port, snap)
			}
		}
	} else {
		b.compareAll(snap)
	}
	b.seq = snap.Seq
	return b.targets
}

// MayBeStale reports whether the last Build changed anything that can make
// a conntrack entry stale: a UDP or SCTP port's endpoints, a TCP port that
// gained its first endpoint (flows it rejected or dropped before), the
// node's addresses, the Node, or everything (the first Build). A round
// after which it is false has nothing new to delete, as long as nothing
// outside the proxy changed the rules; the Cleaner still reads the table
// now and then for that case.
func (b *Builder) MayBeStale() bool { return b.mayBeStale }

// compareAll updates every Service port that is not the one last seen.
func (b *Builder) compareAll(snap *watch.Snapshot) {
	for name := range b.seen {
		if snap.Services.Get(name) == nil {
			b.forget(name)
		}
	}
	for name, port := range snap.Services.All() {
		eps := snap.Endpoints.Get(name)
		if s, ok := b.seen[name]; ok && s.port == port && sameSlice(s.eps, eps) {
			continue
		}
		b.forget(name)
		b.add(name, port, snap)
	}
}

// add claims port's destinations with its endpoints in use.
func (b *Builder) add(name watch.ServicePortName, port *watch.ServicePort, snap *watch.Snapshot) {
	proto := protoNumber(port.Protocol)
	s := seenPort{port: port, eps: snap.Endpoints.Get(name), proto: proto}
	defer func() {
		b.seen[name] = s
		b.mayBeStale = b.mayBeStale || makesStale(b.gone[name], s)
	}()
	b.byService[name.NamespacedName] = append(b.byService[name.NamespacedName], name)
	if proto == 0 {
		return
	}
	c := claim{owner: name, to: allowedEndpoints(port, snap, name, b.family, proto)}
	s.any = c.to.any
	for _, ips := range [...][]netip.Addr{port.ClusterIPs, port.ExternalIPs, port.LoadBalancerIPs} {
		for _, ip := range ips {
			if watch.FamilyOf(ip) == b.family {
				d := dest{ip, uint16(port.Port), proto}
				b.targets.vips[d] = c
				s.dests = append(s.dests, d)
			}
		}
	}
	if port.NodePort != 0 {
		b.targets.nodePorts[dest{netip.Addr{}, uint16(port.NodePort), proto}] = c
	}
}

// forget drops the destinations name still holds.
func (b *Builder) forget(name watch.ServicePortName) {
	s, ok := b.seen[name]
	if !ok {
		return
	}
	delete(b.seen, name)
	b.gone[name] = s
	svc := name.NamespacedName
	if b.byService[svc] = slices.DeleteFunc(b.byService[svc], func(n watch.ServicePortName) bool { return n == name }); len(b.byService[svc]) == 0 {
		delete(b.byService, svc)
	}
	for _, d := range s.dests {
		if b.targets.vips[d].owner == name {
			delete(b.targets.vips, d)
		}
	}
	if np := s.port.NodePort; np != 0 {
		d := dest{netip.Addr{}, uint16(np), protoNumber(s.port.Protocol)}
		if b.targets.nodePorts[d].owner == name {
			delete(b.targets.nodePorts, d)
		}
	}
}

// makesStale reports whether a port built as now, where it was built as
// before (zero if it is new), can leave conntrack entries stale: a UDP or
// SCTP port may have lost endpoints; a TCP port's entries go stale only
// when a destination gains its first endpoint (see Targets.Stale): the
// port had none, or serves an address or port it did not serve before.
func makesStale(before, now seenPort) bool {
	switch now.proto {
	case protoUDP, protoSCTP:
		return true
	case protoTCP:
		served := before.proto == protoTCP && before.any && sameDests(before, now)
		return now.any && !served
	}
	return false
}

// sameDests reports whether two builds of a port have the same
// destinations.
func sameDests(a, b seenPort) bool {
	if a.port == nil || b.port == nil {
		return a.port == b.port
	}
	return a.port.NodePort == b.port.NodePort && slices.Equal(a.dests, b.dests)
}

// sameSlice reports whether a and b are the same slice (not merely equal).
func sameSlice(a, b []*watch.Endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// allowedEndpoints returns the endpoints of family that port's traffic
// may go to; the list is kept for UDP and SCTP only.
func allowedEndpoints(port *watch.ServicePort, snap *watch.Snapshot, name watch.ServicePortName, family v1.IPFamily, proto uint8) allowed {
	var to allowed
	for _, ep := range watch.Select(port, snap.Endpoints.Get(name), snap.Node).All {
		if watch.FamilyOf(ep.Addr) != family {
			continue
		}
		to.any = true
		if proto == protoTCP {
			break
		}
		to.eps = append(to.eps, netip.AddrPortFrom(ep.Addr.Unmap(), uint16(ep.Port)))
	}
	slices.SortFunc(to.eps, netip.AddrPort.Compare)
	return to
}

func protoNumber(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolTCP:
		return protoTCP
	case v1.ProtocolUDP:
		return protoUDP
	case v1.ProtocolSCTP:
		return protoSCTP
	}
	return 0
}

// Stale reports whether a flow (original destination, reply source) goes to
// a Service destination but not to one of its endpoints in use.
//
// UDP and SCTP have no connection teardown, so any such entry would pin
// traffic to a dead or wrong endpoint. For TCP only entries that were never
// DNATed are stale: attempts made while the Service had no rules (no
// endpoints yet, or rules flushed by someone else) that would otherwise keep
// a reused source port black-holed for the SYN timeout. Established TCP
// connections to a removed endpoint are left to finish or fail on their own.
func (t *Targets) Stale(proto uint8, origDst netip.Addr, origPort uint16, replySrc netip.Addr, replyPort uint16) bool {
	origDst, replySrc = origDst.Unmap(), replySrc.Unmap()
	c, ok := t.vips[dest{origDst, origPort, proto}]
	if proto == protoTCP {
		notDNATed := replySrc == origDst && replyPort == origPort
		return ok && notDNATed && c.to.any
	}
	if proto != protoUDP && proto != protoSCTP {
		return false
	}
	if !ok && t.local[origDst] {
		c, ok = t.nodePorts[dest{netip.Addr{}, origPort, proto}]
	}
	if !ok {
		return false
	}
	return !c.to.has(netip.AddrPortFrom(replySrc, replyPort))
}
