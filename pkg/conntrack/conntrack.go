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

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// Targets is, per Service destination, the endpoints a flow may be DNATed to.
// Keys and endpoints are plain values, not strings: the reconciler builds a
// Targets for every Service after each sync, and at 5,000 Services a string
// per destination and per endpoint was most of its time and 7 MB of garbage.
type Targets struct {
	// vips maps a Service address, port and protocol to its endpoints.
	vips map[dest]allowed
	// nodePorts maps a NodePort (zero address) to its endpoints; only
	// flows to a local address match.
	nodePorts map[dest]allowed
	local     map[netip.Addr]bool
}

// dest is one Service destination: address (zero for a NodePort), port
// and IP protocol number.
type dest struct {
	addr  netip.Addr
	port  uint16
	proto uint8
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

// Builder builds one family's Targets round after round. Endpoint
// selection, most of a round's work, runs again only for the Service ports
// whose port or endpoints changed since the Builder's last round: the
// Tracker's Snapshots share the *ServicePort and endpoint slice of every
// Service that did not change, so the same pointers mean the same content.
// A Builder is not safe for concurrent use.
type Builder struct {
	family v1.IPFamily
	node   watch.NodeInfo
	seen   map[watch.ServicePortName]selected
}

// selected is one Service port's allowed endpoints and what they were
// selected from.
type selected struct {
	port *watch.ServicePort
	eps  []*watch.Endpoint
	to   allowed
}

// NewBuilder returns a Builder for family whose first round selects the
// endpoints of every Service port.
func NewBuilder(family v1.IPFamily) *Builder {
	return &Builder{family: family, seen: map[watch.ServicePortName]selected{}}
}

// Build lists the Service destinations of snap; local are the node's
// addresses (NodePort destinations).
func (b *Builder) Build(snap *watch.Snapshot, local []netip.Addr) *Targets {
	if !reflect.DeepEqual(snap.Node, b.node) {
		// Locality and topology, and so every selection, depend on it.
		b.node, b.seen = snap.Node, map[watch.ServicePortName]selected{}
	}
	t := &Targets{vips: make(map[dest]allowed, len(snap.Services)), nodePorts: map[dest]allowed{}, local: map[netip.Addr]bool{}}
	for _, a := range local {
		t.local[a] = true
	}
	for name := range b.seen {
		if snap.Services[name] == nil {
			delete(b.seen, name)
		}
	}
	for name, port := range snap.Services {
		proto := protoNumber(port.Protocol)
		if proto == 0 {
			continue
		}
		s := b.selection(name, port, snap, proto)
		for _, ips := range [...][]netip.Addr{port.ClusterIPs, port.ExternalIPs, port.LoadBalancerIPs} {
			for _, ip := range ips {
				if watch.FamilyOf(ip) == b.family {
					t.vips[dest{ip, uint16(port.Port), proto}] = s.to
				}
			}
		}
		if port.NodePort != 0 {
			t.nodePorts[dest{netip.Addr{}, uint16(port.NodePort), proto}] = s.to
		}
	}
	return t
}

// selection returns the port's allowed endpoints, selecting them again
// only when the port or its endpoints are not those of the last round.
func (b *Builder) selection(name watch.ServicePortName, port *watch.ServicePort, snap *watch.Snapshot, proto uint8) selected {
	eps := snap.Endpoints[name]
	if s, ok := b.seen[name]; ok && s.port == port && sameSlice(s.eps, eps) {
		return s
	}
	s := selected{port: port, eps: eps, to: allowedEndpoints(port, snap, name, b.family, proto)}
	b.seen[name] = s
	return s
}

// sameSlice reports whether a and b are the same slice (not merely equal).
func sameSlice(a, b []*watch.Endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// allowedEndpoints returns the endpoints of family that port's traffic
// may go to; the list is kept for UDP and SCTP only.
func allowedEndpoints(port *watch.ServicePort, snap *watch.Snapshot, name watch.ServicePortName, family v1.IPFamily, proto uint8) allowed {
	var to allowed
	for _, ep := range watch.Select(port, snap.Endpoints[name], snap.Node).All {
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
	to, ok := t.vips[dest{origDst, origPort, proto}]
	if proto == protoTCP {
		notDNATed := replySrc == origDst && replyPort == origPort
		return ok && notDNATed && to.any
	}
	if proto != protoUDP && proto != protoSCTP {
		return false
	}
	if !ok && t.local[origDst] {
		to, ok = t.nodePorts[dest{netip.Addr{}, origPort, proto}]
	}
	if !ok {
		return false
	}
	return !to.has(netip.AddrPortFrom(replySrc, replyPort))
}
