package iptables

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// snapshot feeds objects through a real Tracker, so tests plan from exactly
// what the proxy would see.
func snapshot(t *testing.T, svcs []watchtest.Service, slices ...*discovery.EndpointSlice) *watch.Snapshot {
	t.Helper()
	return watchtest.Tracker(svcs, slices...).Snapshot()
}

var nodeIPs = []netip.Addr{netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("192.168.1.2")}

func defaultOpts() PlanOptions {
	return PlanOptions{
		Family:             v1.IPv4Protocol,
		MasqueradeBit:      14,
		LocalDetector:      ClusterCIDRDetector(netip.MustParsePrefix("10.0.0.0/8")),
		LocalhostNodePorts: true,
		NodeIP:             nodeIPs[0],
	}
}
