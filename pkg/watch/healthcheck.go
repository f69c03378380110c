package watch

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// FamilyCount is a count kept per IP family.
type FamilyCount struct {
	IPv4, IPv6 int
}

// Of returns the count of one family (IPv4 for an unknown one).
func (c FamilyCount) Of(family v1.IPFamily) int {
	if family == v1.IPv6Protocol {
		return c.IPv6
	}
	return c.IPv4
}

// HealthChecks is what the health-check NodePorts of a Snapshot serve.
type HealthChecks struct {
	// Ports maps each Service with a healthCheckNodePort to that port.
	Ports map[types.NamespacedName]uint16
	// LocalReady counts, per Service of Ports and per IP family, the
	// distinct addresses of this node's Ready endpoints. A Service missing
	// here has none.
	LocalReady map[types.NamespacedName]FamilyCount
}

// HealthChecksOf works out the health-check NodePorts of snap, counting as
// kube-proxy's EndpointsMap.LocalReadyEndpoints does:
//
//   - only Ready endpoints count. A node whose local endpoints are all
//     terminating still sends the traffic that reaches it to them (endpoint
//     selection falls back to serving-and-terminating ones), but its health
//     check fails so that load balancers drain it while the pods shut down;
//   - endpoints are counted by address across all of the Service's ports,
//     so a pod serving ports 80 and 443 counts once;
//   - each family is counted on its own, and only the Service's families,
//     as kube-proxy runs one proxier and one health server per family.
func HealthChecksOf(snap *Snapshot) HealthChecks {
	hc := HealthChecks{
		Ports:      map[types.NamespacedName]uint16{},
		LocalReady: map[types.NamespacedName]FamilyCount{},
	}
	seen := map[types.NamespacedName]map[netip.Addr]bool{}
	for name, port := range snap.Services.All() {
		if port.HealthCheckNodePort == 0 {
			continue
		}
		svc := name.NamespacedName
		hc.Ports[svc] = uint16(port.HealthCheckNodePort)
		for _, ep := range snap.Endpoints.Get(name) {
			if !ep.IsLocal || !ep.Ready || seen[svc][ep.Addr] {
				continue
			}
			if _, ok := port.ClusterIP(FamilyOf(ep.Addr)); !ok {
				continue // a family the Service does not have
			}
			if seen[svc] == nil {
				seen[svc] = map[netip.Addr]bool{}
			}
			seen[svc][ep.Addr] = true
			count := hc.LocalReady[svc]
			if FamilyOf(ep.Addr) == v1.IPv6Protocol {
				count.IPv6++
			} else {
				count.IPv4++
			}
			hc.LocalReady[svc] = count
		}
	}
	return hc
}
