package watch

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// Filter is what the proxy does with a packet to a Service address that no
// endpoint serves here.
type Filter string

const (
	// FilterNone: the packet is forwarded to an endpoint.
	FilterNone Filter = ""
	// FilterReject: the Service has no usable endpoint anywhere; the
	// client gets an ICMP unreachable (kube-proxy's REJECT).
	FilterReject Filter = "REJECT"
	// FilterDrop: endpoints exist, but a Local traffic policy finds none
	// on this node; the packet is dropped.
	FilterDrop Filter = "DROP"
)

// Decision is the fate of one Service port's traffic on this node, decided
// once from the Snapshot and read by every mode's planner, so that every
// mode gives each packet the same fate: which endpoints internal traffic
// (to the ClusterIP) and external traffic (to external IPs, load balancer
// IPs and NodePorts) use, what happens when they have none, and which
// extra paths exist.
type Decision struct {
	Selection Selection
	// Internal and External are the endpoints internal and external
	// traffic go to: the Cluster or Local selection by the port's traffic
	// policies; both nil when the port has no usable endpoint at all.
	Internal, External []*Endpoint
	// HasEndpoints is Selection.HasAny: some traffic can be served.
	HasEndpoints bool
	// InternalFilter and ExternalFilter say what happens to traffic whose
	// endpoint list is empty.
	InternalFilter, ExternalFilter Filter
	// UsesCluster and UsesLocal: the Cluster and Local selections are
	// used by some traffic (each gets its own chain in iptables mode).
	// Under externalTrafficPolicy Local, UsesCluster also means pod and
	// host traffic to external addresses goes to every endpoint.
	UsesCluster, UsesLocal bool
	// ServesExternal: external addresses (external IPs, load balancer IPs,
	// NodePorts) are served.
	ServesExternal bool
	// Firewall: load balancer source ranges restrict external traffic.
	Firewall bool
}

// Decide makes the Decision for one Service port, following kube-proxy's
// syncProxyRules.
func Decide(port *ServicePort, eps []*Endpoint, node NodeInfo) Decision {
	d := Decision{Selection: Select(port, eps, node)}
	d.HasEndpoints = d.Selection.HasAny
	if d.HasEndpoints {
		d.Internal, d.External = policyEndpoints(d.Selection, port.InternalPolicyLocal), policyEndpoints(d.Selection, port.ExternalPolicyLocal)
	}
	switch {
	case !d.HasEndpoints:
		d.InternalFilter, d.ExternalFilter = FilterReject, FilterReject
	default:
		if len(d.Internal) == 0 {
			d.InternalFilter = FilterDrop
		}
		if len(d.External) == 0 {
			d.ExternalFilter = FilterDrop
		}
	}
	d.UsesCluster = len(d.Selection.Cluster) > 0 && port.UsesClusterEndpoints()
	d.UsesLocal = len(d.Selection.Local) > 0 && port.UsesLocalEndpoints()
	d.ServesExternal = d.HasEndpoints && port.ExternallyAccessible()
	d.Firewall = d.HasEndpoints && len(port.LoadBalancerSourceRanges) > 0
	return d
}

// Reachable returns the endpoints some traffic of the port goes to: the
// Cluster selection if used, then the Local one if used, each endpoint
// once. Each mode writes its per-endpoint state (iptables' KUBE-SEP-*
// chains, nftables' DNATs and hairpin addresses) for these.
func (d Decision) Reachable() []*Endpoint {
	var eps []*Endpoint
	seen := map[*Endpoint]bool{}
	add := func(list []*Endpoint) {
		for _, ep := range list {
			if !seen[ep] {
				seen[ep] = true
				eps = append(eps, ep)
			}
		}
	}
	if d.UsesCluster {
		add(d.Selection.Cluster)
	}
	if d.UsesLocal {
		add(d.Selection.Local)
	}
	return eps
}

func policyEndpoints(sel Selection, local bool) []*Endpoint {
	if local {
		return sel.Local
	}
	return sel.Cluster
}

// NoLocalInternal reports a port whose internalTrafficPolicy Local finds
// no endpoint on this node (kube-proxy's no-local-endpoints metric).
func (d Decision) NoLocalInternal() bool { return d.InternalFilter == FilterDrop }

// NoLocalExternal is NoLocalInternal for external traffic of an
// externally reachable port.
func (d Decision) NoLocalExternal(port *ServicePort) bool {
	return d.ExternalFilter == FilterDrop && port.ExternallyAccessible()
}

// SourceRanges is what a port's loadBalancerSourceRanges admit in one IP
// family.
type SourceRanges struct {
	// Ranges are the source ranges of the family.
	Ranges []netip.Prefix
	// FromLoadBalancerIPs: a range contains the node's IP, so a
	// connection the node makes to its own load balancer IP, which
	// arrives with that IP as its source, is admitted too (as in
	// kube-proxy).
	FromLoadBalancerIPs bool
}

// AllowedSources returns what the port's source ranges admit in family on
// a node whose primary IP of that family is nodeIP.
func (p *ServicePort) AllowedSources(family v1.IPFamily, nodeIP netip.Addr) SourceRanges {
	var s SourceRanges
	for _, cidr := range p.LoadBalancerSourceRanges {
		if FamilyOf(cidr.Addr()) != family {
			continue
		}
		s.Ranges = append(s.Ranges, cidr)
		if nodeIP.IsValid() && cidr.Contains(nodeIP) {
			s.FromLoadBalancerIPs = true
		}
	}
	return s
}
