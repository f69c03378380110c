// Package watch turns the API server's Services, EndpointSlices and this
// node's Node object into immutable Snapshots that the backends plan from.
//
// Data flows one way: informer events go into a Tracker, the Tracker hands out
// Snapshots, and a Runner decides when a backend syncs. Endpoint selection
// (readiness, terminating fallback, traffic policies, topology) lives here as
// pure functions so that both backends and `proxy explain` share it.
package watch

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

// ServicePortName identifies one port of one Service, as kube-proxy does:
// "namespace/name:portname" plus the protocol.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String returns "namespace/name:port" (":port" omitted for an unnamed port).
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return fmt.Sprintf("%s:%s", n.NamespacedName.String(), n.Port)
}

// ServicePort is everything a backend needs to know about one Service port.
// It is immutable once built: a change produces a new value.
type ServicePort struct {
	Name     ServicePortName
	Type     v1.ServiceType
	Protocol v1.Protocol
	Port     int32
	NodePort int32

	ClusterIPs               []netip.Addr
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr // ingress IPs in VIP mode only
	LoadBalancerSourceRanges []netip.Prefix

	ExternalPolicyLocal bool
	InternalPolicyLocal bool
	HealthCheckNodePort int32

	// SessionAffinityTimeout is the ClientIP affinity timeout in seconds, or 0
	// when the Service has no session affinity.
	SessionAffinityTimeout int32
}

// ExternallyAccessible reports whether traffic can reach the port from
// outside the cluster (NodePort, external IPs or LoadBalancer IPs).
func (p *ServicePort) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// UsesClusterEndpoints reports whether some traffic to the port may go to
// endpoints on any node: under internal policy Cluster, or whenever the port
// is externally accessible. Even with external policy Local, pod and host
// traffic to an external address is short-circuited to the cluster-wide
// endpoints (as if it went out to the load balancer and came back), exactly
// as kube-proxy's BaseServicePortInfo.UsesClusterEndpoints does.
func (p *ServicePort) UsesClusterEndpoints() bool {
	return !p.InternalPolicyLocal || p.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether some traffic to the port is restricted
// to endpoints on this node.
func (p *ServicePort) UsesLocalEndpoints() bool {
	return p.InternalPolicyLocal || (p.ExternallyAccessible() && p.ExternalPolicyLocal)
}

// ClusterIP returns the port's ClusterIP of the given family, if any.
func (p *ServicePort) ClusterIP(family v1.IPFamily) (netip.Addr, bool) {
	for _, ip := range p.ClusterIPs {
		if FamilyOf(ip) == family {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Endpoint is one backend address and port of a Service port.
//
// Field order keeps the struct at 112 bytes (the flags share the word after
// Port); the proxy holds one per endpoint of the cluster.
type Endpoint struct {
	Addr netip.Addr
	Port int32
	// IsLocal is true when the endpoint runs on this node.
	IsLocal     bool
	Ready       bool
	Serving     bool
	Terminating bool

	NodeName string
	Zone     string
	// ZoneHints and NodeHints are the topology hints of the endpoint, sorted.
	ZoneHints []string
	NodeHints []string
}

// String returns "ip:port" ("[ip]:port" for IPv6).
func (e *Endpoint) String() string {
	return netip.AddrPortFrom(e.Addr, uint16(e.Port)).String()
}

// HasZoneHint reports whether the endpoint is hinted for zone.
func (e *Endpoint) HasZoneHint(zone string) bool { return slices.Contains(e.ZoneHints, zone) }

// HasNodeHint reports whether the endpoint is hinted for node.
func (e *Endpoint) HasNodeHint(node string) bool { return slices.Contains(e.NodeHints, node) }

// NodeInfo is what the proxy needs of its own Node object.
type NodeInfo struct {
	Name   string
	Labels map[string]string
	// Zone is the topology.kubernetes.io/zone label.
	Zone string
	// Deleting is set while the Node has a deletion timestamp or is tainted
	// for removal by the cluster autoscaler.
	Deleting bool
}

// Snapshot is the desired state of every Service port on this node at one
// moment. It is never modified after the Tracker hands it out.
type Snapshot struct {
	Services  cowmap.Map[ServicePortName, *ServicePort]
	Endpoints cowmap.Map[ServicePortName, []*Endpoint]
	// Ports indexes Services by Service, each Service's ports sorted by
	// name, so a planner can re-plan the changed Services without walking
	// all of them. Snapshots built by hand may leave it empty (see
	// ServicePorts).
	Ports cowmap.Map[types.NamespacedName, []*ServicePort]
	Node  NodeInfo

	// Changed names the Services whose ports or endpoints differ from the
	// previous Snapshot. NodeChanged means every Service must be re-planned.
	Changed     map[types.NamespacedName]bool
	NodeChanged bool
	// Seq numbers a Tracker's Snapshots from 1 (0: built by hand). A
	// consumer that saw Seq-1 learns every difference from Changed; one
	// that skipped Snapshots must compare the maps.
	Seq uint64

	// TriggerTimes holds, per changed Service, the earliest change trigger
	// time of its EndpointSlices (for network programming latency).
	TriggerTimes map[types.NamespacedName]time.Time
}

// SortedNames returns the snapshot's service port names in a stable order,
// so that plans and payloads are deterministic.
func (s *Snapshot) SortedNames() []ServicePortName {
	names := make([]ServicePortName, 0, s.Services.Len())
	for n := range s.Services.Keys() {
		names = append(names, n)
	}
	slices.SortFunc(names, CompareNames)
	return names
}

// ServicePorts returns the Ports index, built from Services when the
// snapshot has none.
func (s *Snapshot) ServicePorts() cowmap.Map[types.NamespacedName, []*ServicePort] {
	if s.Ports.Len() > 0 || s.Services.Len() == 0 {
		return s.Ports
	}
	out := map[types.NamespacedName][]*ServicePort{}
	for n, p := range s.Services.All() {
		out[n.NamespacedName] = append(out[n.NamespacedName], p)
	}
	for _, ports := range out {
		sortPorts(ports)
	}
	return cowmap.From(out)
}

func sortPorts(ports []*ServicePort) {
	slices.SortFunc(ports, func(a, b *ServicePort) int { return CompareNames(a.Name, b.Name) })
}

// PortsOf returns the ports of one Service, sorted.
func (s *Snapshot) PortsOf(svc types.NamespacedName) []*ServicePort {
	if s.Ports.Len() > 0 || s.Services.Len() == 0 {
		return slices.Clone(s.Ports.Get(svc))
	}
	var out []*ServicePort
	for n, p := range s.Services.All() {
		if n.NamespacedName == svc {
			out = append(out, p)
		}
	}
	sortPorts(out)
	return out
}

// CompareNames orders service port names by namespace, name, port, protocol.
func CompareNames(a, b ServicePortName) int {
	if a.Namespace != b.Namespace {
		return cmpString(a.Namespace, b.Namespace)
	}
	if a.Name != b.Name {
		return cmpString(a.Name, b.Name)
	}
	if a.Port != b.Port {
		return cmpString(a.Port, b.Port)
	}
	return cmpString(string(a.Protocol), string(b.Protocol))
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// FamilyEndpoints returns the endpoints of one IP family: each family is
// programmed on its own (iptables vs ip6tables, one IPVS table per family).
func FamilyEndpoints(eps []*Endpoint, family v1.IPFamily) []*Endpoint {
	var out []*Endpoint
	for _, ep := range eps {
		if FamilyOf(ep.Addr) == family {
			out = append(out, ep)
		}
	}
	return out
}

// FamilyOf returns the IP family of addr.
func FamilyOf(addr netip.Addr) v1.IPFamily {
	if addr.Is4() || addr.Is4In6() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}
