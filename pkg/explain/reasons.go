package explain

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Decision says whether one kind of traffic uses an endpoint and, when it
// does not, which selection rule left it out.
type Decision struct {
	Used   bool   `json:"used"`
	Reason string `json:"reason,omitempty"`
}

// Traffic kinds a Service port serves.
const (
	Internal = "internal" // from pods and the node to the cluster IP
	External = "external" // from outside to NodePorts, external and LB IPs
)

// Usage is the outcome of endpoint selection for one kind of traffic.
type Usage struct {
	// Policy is the traffic policy in force: Cluster or Local.
	Policy string
	// Endpoints are the endpoints that traffic is spread over.
	Endpoints []*watch.Endpoint
	// Fallback is set when only serving-and-terminating endpoints are used
	// because none is ready.
	Fallback bool
	// Topology is the topology filter applied (PreferSameZone,
	// PreferSameNode) or "".
	Topology string
}

// Selected is the selection for one Service port in one IP family:
// watch.Select's result seen per kind of traffic.
type Selected struct {
	Selection watch.Selection
	Internal  Usage
	// External is nil when the port cannot be reached from outside.
	External *Usage
}

// Select runs watch.Select (the function both backends plan with) for the
// endpoints of one family and reads off which endpoints each kind of
// traffic uses.
func Select(port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo) Selected {
	sel := watch.Select(port, eps, node)
	usage := func(local bool) Usage {
		if local {
			return Usage{Policy: "Local", Endpoints: sel.Local, Fallback: sel.UsedTerminatingLocal}
		}
		return Usage{Policy: "Cluster", Endpoints: sel.Cluster, Fallback: sel.UsedTerminatingCluster, Topology: sel.TopologyMode}
	}
	out := Selected{Selection: sel, Internal: usage(port.InternalPolicyLocal)}
	if port.ExternallyAccessible() {
		u := usage(port.ExternalPolicyLocal)
		out.External = &u
	}
	return out
}

// Decide explains one endpoint's fate under u. It does not select anything
// itself: membership comes from watch.Select, and the reason for an
// exclusion is read from the endpoint's fields along the same rules
// (readiness first, then the serving-and-terminating fallback, locality
// under Local policy, and topology hints).
func Decide(ep *watch.Endpoint, u Usage, node watch.NodeInfo) Decision {
	if slices.Contains(u.Endpoints, ep) {
		return Decision{Used: true}
	}
	if u.Policy == "Local" && !ep.IsLocal {
		where := "no node (nodeName unset)"
		if ep.NodeName != "" {
			where = "node " + ep.NodeName
		}
		return Decision{Reason: fmt.Sprintf("on %s and the policy is Local", where)}
	}
	if !ep.Ready {
		switch {
		case ep.Serving && ep.Terminating:
			return Decision{Reason: "terminating, but a ready endpoint exists"}
		case ep.Terminating:
			return Decision{Reason: "terminating and not serving"}
		case !ep.Serving:
			return Decision{Reason: "not ready (and not serving)"}
		}
		return Decision{Reason: "not ready"}
	}
	switch u.Topology {
	case watch.TopologyPreferSameNode:
		return Decision{Reason: fmt.Sprintf("topology hint for node %s, not this node (%s)", listOrNone(ep.NodeHints), node.Name)}
	case watch.TopologyPreferSameZone:
		return Decision{Reason: fmt.Sprintf("topology hint for zone %s, this node is in zone %s", listOrNone(ep.ZoneHints), orDash(node.Zone))}
	}
	// watch.Select used a rule this function does not know: say so rather
	// than guess.
	return Decision{Reason: "not selected"}
}

// WrongFamily is the decision for an endpoint of an IP family the port is
// not programmed for.
func WrongFamily(ep *watch.Endpoint, why string) Decision {
	return Decision{Reason: fmt.Sprintf("wrong IP family (%s endpoint; %s)", familyName(watch.FamilyOf(ep.Addr)), why)}
}

func familyName(f v1.IPFamily) string { return string(f) }

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "(none)"
	}
	return strings.Join(l, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
