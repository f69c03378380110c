package watch

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

const trNode = "node-a"

// TestMain keeps the expected warnings about invalid objects out of the
// test output.
func TestMain(m *testing.M) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("logtostderr", "false")
	_ = fs.Set("alsologtostderr", "false")
	_ = fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
	os.Exit(m.Run())
}

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

func tcp(name string, port int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: port}
}

// service returns a valid ClusterIP Service.
func service(ns, name, clusterIP string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      ports,
		},
	}
}

// endpoint returns a Ready slice endpoint on node (none if node is "").
func endpoint(ip, node string) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	return e
}

// endpointSlice returns a slice of svc with one port.
func endpointSlice(ns, svc, name, portName string, port int32, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	at := discovery.AddressTypeIPv4
	if len(eps) > 0 && strings.Contains(eps[0].Addresses[0], ":") {
		at = discovery.AddressTypeIPv6
	}
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
		Endpoints:   eps,
	}
}

func spn(ns, name, port string) ServicePortName {
	return ServicePortName{NamespacedName: nn(ns, name), Port: port, Protocol: v1.ProtocolTCP}
}

// endpointStrings renders a port's endpoints as "ip:port" (with "@local"
// for local ones).
func endpointStrings(snap *Snapshot, name ServicePortName) []string {
	var out []string
	for _, ep := range snap.Endpoints.Get(name) {
		s := ep.String()
		if ep.IsLocal {
			s += "@local"
		}
		out = append(out, s)
	}
	return out
}

func changedNames(snap *Snapshot) []string {
	var out []string
	for n := range snap.Changed {
		out = append(out, n.String())
	}
	slices.Sort(out)
	return out
}

func wantChanged(t *testing.T, snap *Snapshot, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := changedNames(snap); !slices.Equal(got, want) {
		t.Errorf("Changed = %v, want %v", got, want)
	}
}

func wantEndpoints(t *testing.T, snap *Snapshot, name ServicePortName, want ...string) {
	t.Helper()
	if got := endpointStrings(snap, name); !slices.Equal(got, want) {
		t.Errorf("endpoints of %s = %v, want %v", name, got, want)
	}
}

// newTestTracker returns a Tracker with web (ns1) and its slice, past its
// first Snapshot.
func newTestTracker(t *testing.T) *Tracker {
	t.Helper()
	tr := NewTracker(trNode)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: trNode}})
	tr.OnService(nn("ns1", "web"), service("ns1", "web", "172.30.0.1", tcp("http", 80)))
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode), endpoint("10.0.0.2", "node-b")), false)
	snap := tr.Snapshot()
	if !snap.NodeChanged {
		t.Error("first Snapshot must have NodeChanged")
	}
	wantChanged(t, snap, "ns1/web")
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")
	return tr
}

func TestTrackerFirstSnapshot(t *testing.T) {
	tr := newTestTracker(t)
	snap := tr.Snapshot()
	if snap.NodeChanged || len(snap.Changed) != 0 {
		t.Errorf("second Snapshot without events: NodeChanged=%v Changed=%v", snap.NodeChanged, changedNames(snap))
	}
	p := snap.Services.Get(spn("ns1", "web", "http"))
	if p == nil || p.Port != 80 || p.ClusterIPs[0] != netip.MustParseAddr("172.30.0.1") {
		t.Fatalf("web:http = %+v", p)
	}
	// State carries over to a Snapshot without changes.
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")
}

func TestTrackerNoChange(t *testing.T) {
	cases := []struct {
		name   string
		events func(tr *Tracker)
	}{
		{"service added then deleted", func(tr *Tracker) {
			tr.OnService(nn("ns1", "db"), service("ns1", "db", "172.30.0.2", tcp("sql", 5432)))
			tr.OnService(nn("ns1", "db"), nil)
		}},
		{"slice added then deleted", func(tr *Tracker) {
			es := endpointSlice("ns1", "web", "web-2", "http", 8080, endpoint("10.0.0.9", ""))
			tr.OnEndpointSlice(es, false)
			tr.OnEndpointSlice(es, true)
		}},
		{"service and slice added then deleted", func(tr *Tracker) {
			es := endpointSlice("ns1", "db", "db-1", "sql", 5432, endpoint("10.0.0.9", ""))
			tr.OnService(nn("ns1", "db"), service("ns1", "db", "172.30.0.2", tcp("sql", 5432)))
			tr.OnEndpointSlice(es, false)
			tr.OnEndpointSlice(es, true)
			tr.OnService(nn("ns1", "db"), nil)
		}},
		{"identical service update", func(tr *Tracker) {
			svc := service("ns1", "web", "172.30.0.1", tcp("http", 80))
			svc.ResourceVersion = "42" // metadata only
			tr.OnService(nn("ns1", "web"), svc)
		}},
		{"identical slice update", func(tr *Tracker) {
			tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode), endpoint("10.0.0.2", "node-b")), false)
		}},
		{"endpoints reordered inside the slice", func(tr *Tracker) {
			tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.2", "node-b"), endpoint("10.0.0.1", trNode)), false)
		}},
		{"endpoint moved to another slice", func(tr *Tracker) {
			tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-2", "http", 8080, endpoint("10.0.0.2", "node-b")), false)
			tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode)), false)
		}},
		{"identical node update", func(tr *Tracker) {
			tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: trNode, ResourceVersion: "7"}})
		}},
		{"slice without service-name label", func(tr *Tracker) {
			es := endpointSlice("ns1", "web", "stray", "http", 8080, endpoint("10.0.0.7", ""))
			es.Labels = nil
			tr.OnEndpointSlice(es, false)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTracker(t)
			tc.events(tr)
			snap := tr.Snapshot()
			wantChanged(t, snap)
			if snap.NodeChanged {
				t.Error("NodeChanged set")
			}
			if snap.Services.Len() != 1 {
				t.Errorf("Services = %v, want only web:http", slices.Collect(snap.Services.Keys()))
			}
			wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")
		})
	}
}

func TestTrackerChanges(t *testing.T) {
	tr := newTestTracker(t)
	tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5432)))
	snap := tr.Snapshot()
	wantChanged(t, snap, "ns2/db")
	if _, ok := snap.Endpoints.Lookup(spn("ns2", "db", "sql")); ok {
		t.Error("db has endpoints before any slice")
	}

	// An endpoint change marks only its Service.
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode), endpoint("10.0.0.3", "node-b")), false)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.3:8080")

	// A condition change is a change.
	notReady := endpoint("10.0.0.3", "node-b")
	notReady.Conditions.Ready = ptr.To(false)
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode), notReady), false)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	if eps := snap.Endpoints.Get(spn("ns1", "web", "http")); len(eps) != 2 || eps[1].Ready {
		t.Errorf("endpoints after readiness change: %v", endpointStrings(snap, spn("ns1", "web", "http")))
	}

	// A port change is a change.
	tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5433)))
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns2/db")
	if p := snap.Services.Get(spn("ns2", "db", "sql")); p == nil || p.Port != 5433 {
		t.Errorf("db:sql = %+v, want port 5433", p)
	}

	// Deleting the slice empties the endpoints but keeps the Service.
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080), true)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	if _, ok := snap.Services.Lookup(spn("ns1", "web", "http")); !ok {
		t.Error("web:http gone after its slice was deleted")
	}
	wantEndpoints(t, snap, spn("ns1", "web", "http"))

	// Deleting the Service removes its ports.
	tr.OnService(nn("ns2", "db"), nil)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns2/db")
	if _, ok := snap.Services.Lookup(spn("ns2", "db", "sql")); ok {
		t.Error("db:sql still present after delete")
	}
}

func TestTrackerIgnoresServices(t *testing.T) {
	proxied := service("ns1", "other", "172.30.0.5", tcp("http", 80))
	proxied.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
	headless := service("ns1", "headless", v1.ClusterIPNone, tcp("http", 80))
	noIP := service("ns1", "noip", "", tcp("http", 80))
	noIP.Spec.ClusterIPs = nil
	external := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "ext"},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.com", Ports: []v1.ServicePort{tcp("http", 80)}},
	}
	tr := newTestTracker(t)
	for _, svc := range []*v1.Service{proxied, headless, noIP, external} {
		tr.OnService(nn(svc.Namespace, svc.Name), svc)
		tr.OnEndpointSlice(endpointSlice("ns1", svc.Name, svc.Name+"-1", "http", 8080, endpoint("10.0.1.1", trNode)), false)
	}
	snap := tr.Snapshot()
	wantChanged(t, snap)
	if snap.Services.Len() != 1 || snap.Endpoints.Len() != 1 {
		t.Errorf("Services %v / Endpoints %d, want only web", slices.Collect(snap.Services.Keys()), snap.Endpoints.Len())
	}

	// A handled Service that gets the label is taken away.
	web := service("ns1", "web", "172.30.0.1", tcp("http", 80))
	web.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
	tr.OnService(nn("ns1", "web"), web)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	if snap.Services.Len() != 0 || snap.Endpoints.Len() != 0 {
		t.Errorf("web still present after being labelled for another proxy: %v", snap.Services)
	}
}

func TestTrackerMergesSlices(t *testing.T) {
	tr := NewTracker(trNode)
	svc := service("ns1", "web", "172.30.0.1", tcp("http", 80), tcp("metrics", 9090))
	tr.OnService(nn("ns1", "web"), svc)
	a := endpointSlice("ns1", "web", "web-a", "http", 8080, endpoint("10.0.0.3", "node-b"), endpoint("10.0.0.1", "node-b"))
	b := endpointSlice("ns1", "web", "web-b", "http", 8080, endpoint("10.0.0.2", "node-b"),
		endpoint("10.0.0.1", trNode), // duplicate of web-a's, but local
		endpoint("10.0.0.3", ""))     // plain duplicate
	c := endpointSlice("ns1", "web", "web-c", "metrics", 9090, endpoint("10.0.0.1", trNode))
	// Same address, other port: not a duplicate.
	d := endpointSlice("ns1", "web", "web-d", "http", 8081, endpoint("10.0.0.1", "node-b"))
	for _, es := range []*discovery.EndpointSlice{d, c, b, a} {
		tr.OnEndpointSlice(es, false)
	}
	snap := tr.Snapshot()
	// Sorted by "ip:port" string, as kube-proxy sorts them.
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.1:8081", "10.0.0.2:8080", "10.0.0.3:8080")
	wantEndpoints(t, snap, spn("ns1", "web", "metrics"), "10.0.0.1:9090@local")

	// The same content arriving in the other order gives the same result.
	tr2 := NewTracker(trNode)
	tr2.OnService(nn("ns1", "web"), svc)
	for _, es := range []*discovery.EndpointSlice{a, b, c, d} {
		tr2.OnEndpointSlice(es, false)
	}
	snap2 := tr2.Snapshot()
	for _, name := range []ServicePortName{spn("ns1", "web", "http"), spn("ns1", "web", "metrics")} {
		if a, b := endpointStrings(snap, name), endpointStrings(snap2, name); !slices.Equal(a, b) {
			t.Errorf("%s depends on event order: %v vs %v", name, a, b)
		}
	}

	// Removing one slice keeps the others.
	tr.OnEndpointSlice(b, true)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080", "10.0.0.1:8081", "10.0.0.3:8080")
}

func TestTrackerInvalidService(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*v1.Service)
	}{
		{"bad clusterIP", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "172.30.0.300", []string{"172.30.0.300"} }},
		{"bad second clusterIP", func(s *v1.Service) { s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00::zz") }},
		{"clusterIP with zone", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "fe80::1%eth0", []string{"fe80::1%eth0"} }},
		{"port 0", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 }},
		{"port 65536", func(s *v1.Service) { s.Spec.Ports[0].Port = 65536 }},
		{"negative nodePort", func(s *v1.Service) { s.Spec.Ports[0].NodePort = -1 }},
		{"duplicate port", func(s *v1.Service) { s.Spec.Ports = append(s.Spec.Ports, tcp("other", s.Spec.Ports[0].Port)) }},
		{"duplicate port name", func(s *v1.Service) { s.Spec.Ports = append(s.Spec.Ports, tcp(s.Spec.Ports[0].Name, 81)) }},
		{"unsupported protocol", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTracker(t)
			tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5432)))
			first := tr.Snapshot()
			goodWeb := first.Services.Get(spn("ns1", "web", "http"))

			// web turns invalid while db changes and a new invalid
			// Service appears: only db's change comes through.
			bad := service("ns1", "web", "172.30.0.1", tcp("http", 80))
			tc.mutate(bad)
			tr.OnService(nn("ns1", "web"), bad)
			newBad := service("ns3", "new", "172.30.0.3", tcp("http", 80))
			tc.mutate(newBad)
			tr.OnService(nn("ns3", "new"), newBad)
			tr.OnEndpointSlice(endpointSlice("ns3", "new", "new-1", "http", 8080, endpoint("10.0.3.1", "")), false)
			tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5433)))
			tr.OnEndpointSlice(endpointSlice("ns2", "db", "db-1", "sql", 5432, endpoint("10.0.2.1", "")), false)
			snap := tr.Snapshot()
			wantChanged(t, snap, "ns2/db")
			if got := snap.Services.Get(spn("ns1", "web", "http")); got != goodWeb {
				t.Errorf("web:http = %+v, want its last good state %+v", got, goodWeb)
			}
			wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")
			if p := snap.Services.Get(spn("ns2", "db", "sql")); p == nil || p.Port != 5433 {
				t.Errorf("db:sql = %+v, want port 5433", p)
			}
			wantEndpoints(t, snap, spn("ns2", "db", "sql"), "10.0.2.1:5432")
			for name := range snap.Services.All() {
				if name.Namespace == "ns3" {
					t.Errorf("invalid new Service programmed: %s", name)
				}
			}

			// An endpoint change of the still-invalid web does not
			// reprogram it either.
			tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.5", "")), false)
			snap = tr.Snapshot()
			wantChanged(t, snap)
			wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")

			// Fixing it applies the current Service and slices.
			tr.OnService(nn("ns1", "web"), service("ns1", "web", "172.30.0.1", tcp("http", 8000)))
			snap = tr.Snapshot()
			wantChanged(t, snap, "ns1/web")
			if p := snap.Services.Get(spn("ns1", "web", "http")); p == nil || p.Port != 8000 {
				t.Errorf("web:http after fix = %+v, want port 8000", p)
			}
			wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.5:8080")

			// Deleting an invalid Service takes it away.
			tr.OnService(nn("ns1", "web"), bad)
			tr.Snapshot()
			tr.OnService(nn("ns1", "web"), nil)
			snap = tr.Snapshot()
			wantChanged(t, snap, "ns1/web")
			if _, ok := snap.Services.Lookup(spn("ns1", "web", "http")); ok {
				t.Error("web:http still present after deleting the invalid Service")
			}
		})
	}
}

func TestTrackerInvalidEndpoints(t *testing.T) {
	tr := newTestTracker(t)
	es := endpointSlice("ns1", "web", "web-1", "http", 8080,
		endpoint("10.0.0.1", trNode),
		endpoint("not-an-ip", ""),
		endpoint("10.0.0.300", ""),
		endpoint("fe80::1%eth0", ""),
		discovery.Endpoint{}, // no addresses
		endpoint("10.0.0.2", "node-b"),
	)
	// A port without number or out of range is skipped; the good one stays.
	es.Ports = append(es.Ports,
		discovery.EndpointPort{Name: ptr.To("nonum"), Protocol: ptr.To(v1.ProtocolTCP)},
		discovery.EndpointPort{Name: ptr.To("zero"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](0)},
		discovery.EndpointPort{Name: ptr.To("huge"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](70000)},
	)
	tr.OnEndpointSlice(es, false)
	snap := tr.Snapshot()
	wantChanged(t, snap) // the valid part is what web already had
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080")
	if snap.Endpoints.Len() != 1 {
		t.Errorf("endpoints for %d ports, want 1", snap.Endpoints.Len())
	}
}

func TestTrackerKeepsIPv6AndSkipsFQDN(t *testing.T) {
	tr := newTestTracker(t)
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-v6", "http", 8080, endpoint("fd00:10::1", trNode), endpoint("::ffff:10.0.0.9", "")), false)
	fqdn := endpointSlice("ns1", "web", "web-fqdn", "http", 8080, endpoint("example.com", ""))
	fqdn.AddressType = discovery.AddressTypeFQDN
	tr.OnEndpointSlice(fqdn, false)
	snap := tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	// The IPv4 Service keeps the IPv6 endpoint; the planner filters by
	// family. A mapped address is stored unmapped.
	wantEndpoints(t, snap, spn("ns1", "web", "http"), "10.0.0.1:8080@local", "10.0.0.2:8080", "10.0.0.9:8080", "[fd00:10::1]:8080@local")
}

func TestTrackerNode(t *testing.T) {
	tr := newTestTracker(t)
	tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5432)))
	tr.Snapshot()

	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: trNode, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	tr.OnNode(node)
	snap := tr.Snapshot()
	if !snap.NodeChanged {
		t.Error("label change: NodeChanged not set")
	}
	wantChanged(t, snap, "ns1/web", "ns2/db")
	if snap.Node.Name != trNode || snap.Node.Zone != "zone-a" || snap.Node.Deleting {
		t.Errorf("Node = %+v", snap.Node)
	}
	if tr.Node() != node {
		t.Error("Node() does not return the last Node")
	}

	// Same labels again: nothing.
	tr.OnNode(node.DeepCopy())
	snap = tr.Snapshot()
	if snap.NodeChanged || len(snap.Changed) != 0 {
		t.Errorf("identical Node: NodeChanged=%v Changed=%v", snap.NodeChanged, changedNames(snap))
	}

	// Any label change counts, as does being marked for deletion.
	other := node.DeepCopy()
	other.Labels["example.com/role"] = "edge"
	tr.OnNode(other)
	if snap = tr.Snapshot(); !snap.NodeChanged || len(snap.Changed) != 2 {
		t.Errorf("other label: NodeChanged=%v Changed=%v", snap.NodeChanged, changedNames(snap))
	}
	tainted := other.DeepCopy()
	tainted.Spec.Taints = []v1.Taint{{Key: "ToBeDeletedByClusterAutoscaler", Effect: v1.TaintEffectNoSchedule}}
	tr.OnNode(tainted)
	if snap = tr.Snapshot(); !snap.NodeChanged || !snap.Node.Deleting {
		t.Errorf("tainted: NodeChanged=%v Deleting=%v", snap.NodeChanged, snap.Node.Deleting)
	}
	tr.OnNode(other)
	if snap = tr.Snapshot(); !snap.NodeChanged || snap.Node.Deleting {
		t.Errorf("untainted: NodeChanged=%v Deleting=%v", snap.NodeChanged, snap.Node.Deleting)
	}
	deleting := other.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	tr.OnNode(deleting)
	if snap = tr.Snapshot(); !snap.NodeChanged || !snap.Node.Deleting {
		t.Errorf("deleted: NodeChanged=%v Deleting=%v", snap.NodeChanged, snap.Node.Deleting)
	}
	// The Node going away is a change too; the name stays.
	tr.OnNode(nil)
	if snap = tr.Snapshot(); !snap.NodeChanged || snap.Node.Name != trNode || snap.Node.Labels != nil {
		t.Errorf("Node removed: NodeChanged=%v Node=%+v", snap.NodeChanged, snap.Node)
	}
}

func TestTrackerLocality(t *testing.T) {
	es := endpointSlice("ns1", "web", "web-1", "http", 8080,
		endpoint("10.0.0.1", trNode), endpoint("10.0.0.2", "node-b"), endpoint("10.0.0.3", ""))
	for _, tc := range []struct {
		node string
		want []string
	}{
		{trNode, []string{"10.0.0.1:8080@local", "10.0.0.2:8080", "10.0.0.3:8080"}},
		{"node-b", []string{"10.0.0.1:8080", "10.0.0.2:8080@local", "10.0.0.3:8080"}},
		// A tracker without a node name has no local endpoints, even
		// for endpoints without nodeName.
		{"", []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}},
	} {
		tr := NewTracker(tc.node)
		tr.OnService(nn("ns1", "web"), service("ns1", "web", "172.30.0.1", tcp("http", 80)))
		tr.OnEndpointSlice(es, false)
		snap := tr.Snapshot()
		if got := endpointStrings(snap, spn("ns1", "web", "http")); !slices.Equal(got, tc.want) {
			t.Errorf("node %q: endpoints %v, want %v", tc.node, got, tc.want)
		}
		for _, ep := range snap.Endpoints.Get(spn("ns1", "web", "http")) {
			if ep.Addr.String() == "10.0.0.1" && ep.NodeName != trNode {
				t.Errorf("NodeName = %q", ep.NodeName)
			}
		}
	}
}

func TestTrackerPending(t *testing.T) {
	tr := newTestTracker(t)
	if s, e := tr.Pending(); s != 0 || e != 0 {
		t.Fatalf("Pending after Snapshot = %d, %d", s, e)
	}
	tr.OnService(nn("ns1", "a"), service("ns1", "a", "172.30.0.5", tcp("http", 80)))
	tr.OnService(nn("ns1", "a"), nil)
	for i := range 3 {
		tr.OnEndpointSlice(endpointSlice("ns1", "a", fmt.Sprintf("a-%d", i), "http", 80, endpoint("10.0.0.1", "")), false)
	}
	stray := endpointSlice("ns1", "a", "stray", "http", 80)
	stray.Labels = nil
	tr.OnEndpointSlice(stray, false) // not counted: belongs to no Service
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: trNode}})
	if s, e := tr.Pending(); s != 2 || e != 3 {
		t.Errorf("Pending = %d, %d; want 2, 3", s, e)
	}
	tr.Snapshot()
	if s, e := tr.Pending(); s != 0 || e != 0 {
		t.Errorf("Pending after Snapshot = %d, %d", s, e)
	}
}

func TestTrackerTriggerTimes(t *testing.T) {
	tr := newTestTracker(t)
	tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5432)))
	tr.OnEndpointSlice(endpointSlice("ns2", "db", "db-1", "sql", 5432, endpoint("10.0.2.1", "")), false)
	tr.Snapshot()

	withTrigger := func(es *discovery.EndpointSlice, at time.Time) *discovery.EndpointSlice {
		es.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: at.Format(time.RFC3339Nano)}
		return es
	}
	t1 := time.Now().Add(time.Millisecond)
	t2 := t1.Add(time.Second)
	// Two changes of web: the earliest trigger counts.
	tr.OnEndpointSlice(withTrigger(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.1", trNode)), t2), false)
	tr.OnEndpointSlice(withTrigger(endpointSlice("ns1", "web", "web-2", "http", 8080, endpoint("10.0.0.8", "")), t1), false)
	// db is re-sent unchanged: no change, no latency.
	tr.OnEndpointSlice(withTrigger(endpointSlice("ns2", "db", "db-1", "sql", 5432, endpoint("10.0.2.1", "")), t1), false)
	snap := tr.Snapshot()
	wantChanged(t, snap, "ns1/web")
	if len(snap.TriggerTimes) != 1 || !snap.TriggerTimes[nn("ns1", "web")].Equal(t1) {
		t.Errorf("TriggerTimes = %v, want web at %v only", snap.TriggerTimes, t1)
	}

	// A trigger time from before the Tracker existed (the initial list)
	// is no measure of this proxy's latency.
	tr.OnEndpointSlice(withTrigger(endpointSlice("ns2", "db", "db-1", "sql", 5432, endpoint("10.0.2.2", "")), time.Now().Add(-time.Hour)), false)
	snap = tr.Snapshot()
	wantChanged(t, snap, "ns2/db")
	if len(snap.TriggerTimes) != 0 {
		t.Errorf("TriggerTimes = %v, want none", snap.TriggerTimes)
	}
}
