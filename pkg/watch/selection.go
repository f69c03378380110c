package watch

import (
	v1 "k8s.io/api/core/v1"
)

// Selection is the outcome of endpoint selection for one Service port on
// this node, following kube-proxy's pkg/proxy/topology.go exactly.
type Selection struct {
	// Cluster are the endpoints for traffic under Cluster policy.
	Cluster []*Endpoint
	// Local are the endpoints for traffic under Local policy.
	Local []*Endpoint
	// All is the union of Cluster and Local: every endpoint some traffic
	// may reach (used for conntrack cleanup and chain bookkeeping).
	All []*Endpoint
	// HasAny is false when no traffic to the port can be served at all;
	// the port then rejects instead of dropping.
	HasAny bool
	// TopologyMode is the topology filter applied to Cluster ("" for none).
	TopologyMode string
	// UsedTerminatingCluster and UsedTerminatingLocal record the fallback to
	// serving-and-terminating endpoints (for explain).
	UsedTerminatingCluster, UsedTerminatingLocal bool
}

// Topology modes, as kube-proxy names them.
const (
	TopologyPreferSameZone = v1.ServiceTrafficDistributionPreferSameZone
	TopologyPreferSameNode = v1.ServiceTrafficDistributionPreferSameNode
)

// Select chooses the endpoints a Service port uses on node.
//
// Cluster traffic uses Ready endpoints (narrowed by topology hints); with no
// Ready endpoint anywhere it falls back to serving-and-terminating ones.
// Local traffic uses this node's Ready endpoints, falling back to this node's
// serving-and-terminating ones.
func Select(port *ServicePort, endpoints []*Endpoint, node NodeInfo) Selection {
	var sel Selection
	if port.UsesClusterEndpoints() {
		sel.TopologyMode = topologyMode(endpoints, node)
		sel.Cluster = filter(endpoints, func(ep *Endpoint) bool {
			return ep.Ready && availableForTopology(ep, sel.TopologyMode, node)
		})
		if len(sel.Cluster) == 0 {
			sel.Cluster = filter(endpoints, servingTerminating)
			sel.UsedTerminatingCluster = len(sel.Cluster) > 0
		}
		sel.HasAny = len(sel.Cluster) > 0
	}
	if !port.UsesLocalEndpoints() {
		sel.All = sel.Cluster
		return sel
	}

	localReady, localTerminating := false, false
	for _, ep := range endpoints {
		switch {
		case ep.Ready:
			sel.HasAny = true
			localReady = localReady || ep.IsLocal
		case servingTerminating(ep):
			sel.HasAny = true
			localTerminating = localTerminating || ep.IsLocal
		}
	}
	switch {
	case localReady:
		sel.Local = filter(endpoints, func(ep *Endpoint) bool { return ep.IsLocal && ep.Ready })
	case localTerminating:
		sel.Local = filter(endpoints, func(ep *Endpoint) bool { return ep.IsLocal && servingTerminating(ep) })
		sel.UsedTerminatingLocal = true
	}
	if !port.UsesClusterEndpoints() {
		sel.All = sel.Local
		return sel
	}
	sel.All = union(sel.Cluster, sel.Local)
	return sel
}

func servingTerminating(ep *Endpoint) bool { return ep.Serving && ep.Terminating }

// topologyMode decides whether hints narrow cluster traffic. Hints are used
// only when every Ready endpoint carries them and at least one is for this
// node (or zone); otherwise every endpoint is used, so a partial or stale
// set of hints can never black-hole traffic.
func topologyMode(endpoints []*Endpoint, node NodeInfo) string {
	allNode, anyForNode := true, false
	allZone, anyForZone := true, false
	for _, ep := range endpoints {
		if !ep.Ready {
			continue
		}
		if len(ep.NodeHints) == 0 {
			allNode = false
		} else if ep.HasNodeHint(node.Name) {
			anyForNode = true
		}
		if len(ep.ZoneHints) == 0 {
			allZone = false
		} else if ep.HasZoneHint(node.Zone) {
			anyForZone = true
		}
	}
	switch {
	case allNode && anyForNode:
		return TopologyPreferSameNode
	case allZone && anyForZone:
		return TopologyPreferSameZone
	}
	return ""
}

func availableForTopology(ep *Endpoint, mode string, node NodeInfo) bool {
	switch mode {
	case TopologyPreferSameNode:
		return ep.HasNodeHint(node.Name)
	case TopologyPreferSameZone:
		return ep.HasZoneHint(node.Zone)
	}
	return true
}

func filter(eps []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	var out []*Endpoint
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}

func union(a, b []*Endpoint) []*Endpoint {
	seen := make(map[*Endpoint]bool, len(a))
	out := append([]*Endpoint(nil), a...)
	for _, ep := range a {
		seen[ep] = true
	}
	for _, ep := range b {
		if !seen[ep] {
			out = append(out, ep)
		}
	}
	return out
}
