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
	"fmt"
	"net"
	"net/netip"
	"strconv"

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
type Targets struct {
	// vips maps "ip|port|proto" to the allowed "ip:port" replies.
	vips map[string]map[string]bool
	// nodePorts maps "port|proto" to the allowed replies; only flows to a
	// local address match.
	nodePorts map[string]map[string]bool
	local     map[netip.Addr]bool
}

// BuildTargets lists the Service destinations of snap for one family.
func BuildTargets(snap *watch.Snapshot, family v1.IPFamily, local []netip.Addr) *Targets {
	t := &Targets{vips: map[string]map[string]bool{}, nodePorts: map[string]map[string]bool{}, local: map[netip.Addr]bool{}}
	for _, a := range local {
		t.local[a] = true
	}
	for name, port := range snap.Services {
		proto := protoNumber(port.Protocol)
		if proto == 0 {
			continue
		}
		allowed := map[string]bool{}
		for _, ep := range watch.Select(port, snap.Endpoints[name], snap.Node).All {
			if watch.FamilyOf(ep.Addr) == family {
				allowed[ep.String()] = true
			}
		}
		for _, ip := range serviceIPs(port) {
			if watch.FamilyOf(ip) == family {
				t.vips[vipKey(ip, uint16(port.Port), proto)] = allowed
			}
		}
		if port.NodePort != 0 {
			t.nodePorts[portKey(uint16(port.NodePort), proto)] = allowed
		}
	}
	return t
}

func serviceIPs(p *watch.ServicePort) []netip.Addr {
	out := append([]netip.Addr{}, p.ClusterIPs...)
	out = append(out, p.ExternalIPs...)
	return append(out, p.LoadBalancerIPs...)
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

func vipKey(ip netip.Addr, port uint16, proto uint8) string {
	return fmt.Sprintf("%s|%d|%d", ip, port, proto)
}

func portKey(port uint16, proto uint8) string { return fmt.Sprintf("%d|%d", port, proto) }

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
	allowed, ok := t.vips[vipKey(origDst, origPort, proto)]
	if proto == protoTCP {
		notDNATed := replySrc == origDst && replyPort == origPort
		return ok && notDNATed && len(allowed) > 0
	}
	if proto != protoUDP && proto != protoSCTP {
		return false
	}
	if !ok && t.local[origDst] {
		allowed, ok = t.nodePorts[portKey(origPort, proto)]
	}
	if !ok {
		return false
	}
	return !allowed[net.JoinHostPort(replySrc.String(), strconv.Itoa(int(replyPort)))]
}
