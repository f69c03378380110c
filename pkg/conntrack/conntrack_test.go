package conntrack

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
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

// TestBuilderFollowsChanges: a Builder that has seen earlier Snapshots
// gives, after endpoint changes, a deleted and a new Service, a Node
// change and a Snapshot it skipped, the same Targets as a fresh one.
func TestBuilderFollowsChanges(t *testing.T) {
	udp := func(name string, port int32) watchtest.Service {
		return watchtest.Service{Namespace: "ns", Name: name, ClusterIPs: []string{"172.30.0." + fmt.Sprint(port-5000)},
			Ports: []v1.ServicePort{{Name: "p", Protocol: v1.ProtocolUDP, Port: port}}}
	}
	udpSlice := func(name string, ips ...string) *discovery.EndpointSlice {
		var eps []watchtest.Endpoint
		for _, ip := range ips {
			eps = append(eps, watchtest.Endpoint{IP: ip, Node: "elsewhere"})
		}
		es := watchtest.Slice("ns", name, name+"-1", 53, "p", eps...)
		es.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
		return es
	}
	tr := watchtest.Tracker([]watchtest.Service{udp("a", 5001), udp("b", 5002), udp("c", 5003)},
		udpSlice("a", "10.0.0.1"), udpSlice("b", "10.0.0.2"), udpSlice("c", "10.0.0.3"))
	b := NewBuilder(v1.IPv4Protocol)
	b.Build(tr.Snapshot(), nil)

	tr.OnEndpointSlice(udpSlice("a", "10.0.0.1", "10.0.0.11"), false)
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "b"}, nil)
	d := udp("d", 5004)
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "d"}, d.Object())
	tr.OnEndpointSlice(udpSlice("d", "10.0.0.4"), false)
	sameTargets(t, "after endpoint and Service changes", b, tr.Snapshot())

	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: watchtest.Node, Labels: map[string]string{v1.LabelTopologyZone: "z1"}}})
	sameTargets(t, "after a Node change", b, tr.Snapshot())
	sameTargets(t, "without changes", b, tr.Snapshot())

	// A Snapshot the Builder never sees: the next one's Changed does not
	// cover the gap, so it must compare every port.
	tr.OnEndpointSlice(udpSlice("c", "10.0.0.3", "10.0.0.33"), false)
	tr.Snapshot()
	tr.OnEndpointSlice(udpSlice("a", "10.0.0.1"), false)
	sameTargets(t, "after a skipped Snapshot", b, tr.Snapshot())
}

func sameTargets(t *testing.T, when string, b *Builder, snap *watch.Snapshot) {
	t.Helper()
	got, want := b.Build(snap, nil), BuildTargets(snap, v1.IPv4Protocol, nil)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: the Builder's targets differ from a fresh build\n got %+v\nwant %+v", when, got, want)
	}
}

// TestMayBeStale: after each kind of change, whether the Builder says the
// round can have made an entry stale (so that the table must be read).
// Both paths are checked: the Snapshot just after the last one built
// (Changed) and one after a skipped Snapshot (every port compared).
func TestMayBeStale(t *testing.T) {
	svc := func(name string, proto v1.Protocol) watchtest.Service {
		return watchtest.Service{Namespace: "ns", Name: name, ClusterIPs: []string{"172.30.1." + fmt.Sprint(len(name))},
			Ports: []v1.ServicePort{{Name: "p", Protocol: proto, Port: 80}}}
	}
	slice := func(name string, proto v1.Protocol, ips ...string) *discovery.EndpointSlice {
		var eps []watchtest.Endpoint
		for _, ip := range ips {
			eps = append(eps, watchtest.Endpoint{IP: ip})
		}
		es := watchtest.Slice("ns", name, name+"-1", 8080, "p", eps...)
		es.Ports[0].Protocol = ptr.To(proto)
		return es
	}
	local := []netip.Addr{netip.MustParseAddr("10.99.0.1")}
	for _, skip := range []bool{false, true} {
		tr := watchtest.Tracker([]watchtest.Service{svc("t", v1.ProtocolTCP), svc("none", v1.ProtocolTCP), svc("udp", v1.ProtocolUDP)},
			slice("t", v1.ProtocolTCP, "10.0.0.1"), slice("udp", v1.ProtocolUDP, "10.0.0.2"))
		b := NewBuilder(v1.IPv4Protocol)
		check := func(what string, want bool) {
			t.Helper()
			if skip {
				tr.Snapshot() // never shown to the Builder
			}
			if b.Build(tr.Snapshot(), local); b.MayBeStale() != want {
				t.Errorf("skipped Snapshot %v: after %s MayBeStale() = %v, want %v", skip, what, !want, want)
			}
		}
		check("the first build", true)
		check("nothing", false)
		tr.OnEndpointSlice(slice("t", v1.ProtocolTCP, "10.0.0.1", "10.0.0.3"), false)
		check("a TCP endpoint added beside another", false)
		tr.OnEndpointSlice(slice("t", v1.ProtocolTCP, "10.0.0.3"), false)
		check("a TCP endpoint removed, one left", false)
		moved := svc("t", v1.ProtocolTCP)
		moved.Ports[0].Port = 81
		tr.OnService(types.NamespacedName{Namespace: "ns", Name: "t"}, moved.Object())
		check("a TCP Service's port changed", true)
		tr.OnService(types.NamespacedName{Namespace: "ns", Name: "t"}, nil)
		check("a TCP Service deleted", false)
		tr.OnEndpointSlice(slice("none", v1.ProtocolTCP, "10.0.0.4"), false)
		check("a TCP Service's first endpoint", true)
		n := svc("newtcp", v1.ProtocolTCP)
		tr.OnService(types.NamespacedName{Namespace: "ns", Name: "newtcp"}, n.Object())
		check("a new TCP Service without endpoints", false)
		tr.OnEndpointSlice(slice("udp", v1.ProtocolUDP, "10.0.0.5"), false)
		check("a UDP endpoint replaced", true)
		local = append(local, netip.MustParseAddr("10.99.0.2"))
		check("a new node address", true)
		tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: watchtest.Node, Labels: map[string]string{v1.LabelTopologyZone: "z" + fmt.Sprint(skip)}}})
		check("a Node change", true)
	}
}
