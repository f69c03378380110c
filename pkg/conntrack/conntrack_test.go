package conntrack

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/watch"
)

func udpSnapshot(endpoints ...string) *watch.Snapshot {
	tr := watch.NewTracker("node")
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "dns"}, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "dns"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, ClusterIP: "172.30.0.10", ClusterIPs: []string{"172.30.0.10"},
			Ports: []v1.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 3053}}},
	})
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "dns-1", Labels: map[string]string{discovery.LabelServiceName: "dns"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("dns"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To(int32(5353))}},
	}
	for _, ip := range endpoints {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{ip}})
	}
	tr.OnEndpointSlice(es, false)
	return tr.Snapshot()
}

func TestStale(t *testing.T) {
	a := netip.MustParseAddr
	node := a("192.168.0.2")
	targets := BuildTargets(udpSnapshot("10.0.0.1"), v1.IPv4Protocol, []netip.Addr{node})
	for _, tc := range []struct {
		name      string
		proto     uint8
		dst       netip.Addr
		dport     uint16
		reply     netip.Addr
		replyPort uint16
		stale     bool
	}{
		{"flow to a live endpoint", protoUDP, a("172.30.0.10"), 53, a("10.0.0.1"), 5353, false},
		{"flow to a removed endpoint", protoUDP, a("172.30.0.10"), 53, a("10.0.0.9"), 5353, true},
		{"black-holed flow (not DNATed)", protoUDP, a("172.30.0.10"), 53, a("172.30.0.10"), 53, true},
		{"NodePort flow to a removed endpoint", protoUDP, node, 3053, a("10.0.0.9"), 5353, true},
		{"NodePort number on a foreign address", protoUDP, a("8.8.8.8"), 3053, a("8.8.8.8"), 3053, false},
		{"TCP flows to a Service without TCP ports are never touched", 6, a("172.30.0.10"), 53, a("172.30.0.10"), 53, false},
		{"other destinations are never touched", protoUDP, a("172.30.0.11"), 53, a("10.0.0.9"), 5353, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := targets.Stale(tc.proto, tc.dst, tc.dport, tc.reply, tc.replyPort); got != tc.stale {
				t.Errorf("Stale = %v, want %v", got, tc.stale)
			}
		})
	}
}

func TestStaleTCP(t *testing.T) {
	a := netip.MustParseAddr
	tr := watch.NewTracker("node")
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "web"}, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{ClusterIP: "172.30.0.20", ClusterIPs: []string{"172.30.0.20"},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}},
	})
	tr.OnEndpointSlice(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(int32(8080))}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.0.0.1"}}},
	}, false)
	targets := BuildTargets(tr.Snapshot(), v1.IPv4Protocol, nil)
	if !targets.Stale(protoTCP, a("172.30.0.20"), 80, a("172.30.0.20"), 80) {
		t.Error("a TCP attempt that was never DNATed must be cleared once the Service has endpoints")
	}
	if targets.Stale(protoTCP, a("172.30.0.20"), 80, a("10.0.0.9"), 8080) {
		t.Error("an established TCP connection to a removed endpoint must be left alone")
	}
}

// Endpoints are found by binary search, so each of several given out of
// order must be found, and a port that differs must not.
func TestStaleManyEndpoints(t *testing.T) {
	a := netip.MustParseAddr
	targets := BuildTargets(udpSnapshot("10.0.0.3", "10.0.0.1", "10.0.0.12", "10.0.0.2"), v1.IPv4Protocol, nil)
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.12"} {
		if targets.Stale(protoUDP, a("172.30.0.10"), 53, a(ip), 5353) {
			t.Errorf("flow to live endpoint %s taken as stale", ip)
		}
	}
	if !targets.Stale(protoUDP, a("172.30.0.10"), 53, a("10.0.0.2"), 5354) {
		t.Error("flow to a live address on another port must be stale")
	}
	if !targets.Stale(protoUDP, a("172.30.0.10"), 53, a("10.0.0.4"), 5353) {
		t.Error("flow to an address between live ones must be stale")
	}
}
