package watch

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func TestSnapshotsAreImmutable(t *testing.T) {
	tr := newTestTracker(t)
	old := tr.Snapshot()
	oldEps := endpointStrings(old, spn("ns1", "web", "http"))
	oldLen := old.Services.Len()

	tr.OnService(nn("ns2", "db"), service("ns2", "db", "172.30.0.2", tcp("sql", 5432)))
	tr.OnEndpointSlice(endpointSlice("ns1", "web", "web-1", "http", 8080, endpoint("10.0.0.7", "")), false)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: trNode, Labels: map[string]string{"a": "b"}}})
	snap := tr.Snapshot()
	wantChanged(t, snap, "ns1/web", "ns2/db")

	if old.Services.Len() != oldLen || len(old.Changed) != 0 || old.NodeChanged || len(old.TriggerTimes) != 0 {
		t.Errorf("old Snapshot modified: %d services, Changed %v", old.Services.Len(), changedNames(old))
	}
	if got := endpointStrings(old, spn("ns1", "web", "http")); !slices.Equal(got, oldEps) {
		t.Errorf("old Snapshot endpoints changed to %v", got)
	}
}

func TestSnapshotHelpers(t *testing.T) {
	tr := NewTracker(trNode)
	tr.OnService(nn("b", "x"), service("b", "x", "172.30.0.2", tcp("z", 2), tcp("a", 1)))
	tr.OnService(nn("a", "y"), service("a", "y", "172.30.0.1", tcp("", 1)))
	snap := tr.Snapshot()
	var got []string
	for _, n := range snap.SortedNames() {
		got = append(got, n.String())
	}
	if want := []string{"a/y", "b/x:a", "b/x:z"}; !slices.Equal(got, want) {
		t.Errorf("SortedNames = %v, want %v", got, want)
	}
	ports := snap.PortsOf(nn("b", "x"))
	if len(ports) != 2 || ports[0].Name.Port != "a" || ports[1].Name.Port != "z" {
		t.Errorf("PortsOf = %v", ports)
	}
	if ip, ok := ports[0].ClusterIP(v1.IPv4Protocol); !ok || ip.String() != "172.30.0.2" {
		t.Errorf("ClusterIP(IPv4) = %v, %v", ip, ok)
	}
	if _, ok := ports[0].ClusterIP(v1.IPv6Protocol); ok {
		t.Error("ClusterIP(IPv6) found on a single-stack Service")
	}
}

func TestTrackerReportsInvalidInput(t *testing.T) {
	tr := NewTracker("node")
	var reasons []string
	tr.SetReporter(func(svc *v1.Service, reason, message string) {
		reasons = append(reasons, svc.Name+"/"+reason+": "+message)
	})
	bad := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "bad"},
		Spec:       v1.ServiceSpec{ClusterIP: "172.30.0.9", Ports: []v1.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 0}}},
	}
	tr.OnService(types.NamespacedName{Namespace: "ns", Name: "bad"}, bad)
	tr.Snapshot()
	if len(reasons) != 1 || !strings.Contains(reasons[0], "bad/InvalidService") || !strings.Contains(reasons[0], "spec.ports[0].port") {
		t.Errorf("reported %q, want one InvalidService event naming spec.ports[0].port", reasons)
	}
}

func TestTransform(t *testing.T) {
	tr := transform("n1")
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{
		Name: "web", Namespace: "ns",
		Annotations:   map[string]string{lastApplied: `{"big":"copy"}`, "keep": "me"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		Labels:        map[string]string{LabelServiceProxyName: "x"},
	}}
	out, err := tr(svc)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*v1.Service)
	if got.ManagedFields != nil || got.Annotations[lastApplied] != "" || got.Annotations["keep"] != "me" || got.Labels[LabelServiceProxyName] != "x" {
		t.Fatalf("stripped object = %+v", got.ObjectMeta)
	}
	// A slice becomes a Slice with what endpoint selection reads
	// (addresses, conditions, node, zone, hints, the trigger time) and
	// what the informer keys and compares objects by.
	node, zone, host := "n1", "z1", "pod-1"
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", ResourceVersion: "42",
			Labels:          map[string]string{discovery.LabelServiceName: "web"},
			Annotations:     map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-01-01T00:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints: []discovery.Endpoint{{
			Addresses: []string{"10.0.0.1"}, NodeName: &node, Zone: &zone, Hostname: &host,
			Conditions:         discovery.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)},
			TargetRef:          &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "pod-1"},
			DeprecatedTopology: map[string]string{"k": "v"},
			Hints:              &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "z1"}}},
		}},
	}
	out, err = tr(slice)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := out.(*Slice)
	if !ok {
		t.Fatalf("slice transformed into %T", out)
	}
	key, err := cache.MetaNamespaceKeyFunc(s)
	if err != nil || key != "ns/web-1" || s.GetResourceVersion() != "42" {
		t.Errorf("informer key %q (%v), resourceVersion %q", key, err, s.GetResourceVersion())
	}
	want := &Endpoint{Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080, NodeName: "n1", Zone: "z1", IsLocal: true,
		ZoneHints: []string{"z1"}, Serving: true, Terminating: true}
	if s.Service != "web" || s.TriggerTime.IsZero() || len(s.Ports) != 1 || s.Ports[0].Name != "http" ||
		s.Ports[0].Protocol != v1.ProtocolTCP || len(s.Ports[0].Endpoints) != 1 || !reflect.DeepEqual(s.Ports[0].Endpoints[0], want) {
		t.Errorf("Slice = %+v, port %+v", s, s.Ports)
	}
	// A Slice is a runtime.Object whose copy is equal and separate.
	var obj runtime.Object = s
	cp := obj.DeepCopyObject().(*Slice)
	if !reflect.DeepEqual(cp, s) || cp.Ports[0].Endpoints[0] == s.Ports[0].Endpoints[0] {
		t.Errorf("DeepCopyObject = %+v, want an equal Slice with its own Endpoints", cp)
	}
	// client-go may pass an object through again; it must come out as is.
	if again, err := tr(s); err != nil || again != any(s) {
		t.Errorf("transforming a Slice again gave %v, %v", again, err)
	}
	// Tombstones and other non-objects pass through untouched.
	if v, err := tr("not an object"); err != nil || v != "not an object" {
		t.Fatalf("non-object: %v, %v", v, err)
	}
}

// TestSnapshotPortsIndex: the Ports index of every Snapshot matches its
// Services (a port renamed, a Service deleted, one added), and later
// Snapshots leave an earlier one's index alone.
func TestSnapshotPortsIndex(t *testing.T) {
	tr := NewTracker(trNode)
	tr.OnService(nn("b", "x"), service("b", "x", "172.30.0.2", tcp("z", 2), tcp("a", 1)))
	tr.OnService(nn("a", "y"), service("a", "y", "172.30.0.1", tcp("", 1)))
	first := tr.Snapshot()
	firstIndex := fmt.Sprint(maps.Collect(first.Ports.All()))
	check := func(snap *Snapshot) {
		t.Helper()
		rebuilt := (&Snapshot{Services: snap.Services}).ServicePorts()
		if got, want := fmt.Sprint(maps.Collect(snap.Ports.All())), fmt.Sprint(maps.Collect(rebuilt.All())); got != want {
			t.Errorf("Ports index %s, Services say %s", got, want)
		}
	}
	check(first)
	tr.OnService(nn("b", "x"), service("b", "x", "172.30.0.2", tcp("q", 2)))
	tr.OnService(nn("a", "y"), nil)
	tr.OnService(nn("c", "w"), service("c", "w", "172.30.0.3", tcp("", 3)))
	second := tr.Snapshot()
	check(second)
	if second.Ports.Len() != 2 || len(second.Ports.Get(nn("b", "x"))) != 1 {
		t.Errorf("after the changes: Ports %v", maps.Collect(second.Ports.All()))
	}
	if fmt.Sprint(maps.Collect(first.Ports.All())) != firstIndex {
		t.Errorf("the first Snapshot's index changed to %v", first.Ports)
	}
	if third := tr.Snapshot(); len(third.Changed) != 0 || fmt.Sprint(third.Ports) != fmt.Sprint(second.Ports) {
		t.Errorf("a Snapshot without changes: Changed %v, Ports %v", third.Changed, third.Ports)
	}
}

// TestSnapshotSeq: a Tracker numbers its Snapshots one by one, with or
// without changes, so a consumer can tell whether it missed one.
func TestSnapshotSeq(t *testing.T) {
	tr := newTestTracker(t)
	first := tr.Snapshot().Seq
	tr.OnService(nn("ns", "a"), service("ns", "a", "172.30.0.1", tcp("p", 80)))
	if got := tr.Snapshot().Seq; got != first+1 {
		t.Errorf("Seq after a change = %d, want %d", got, first+1)
	}
	if got := tr.Snapshot().Seq; got != first+2 {
		t.Errorf("Seq without changes = %d, want %d", got, first+2)
	}
	if first == 0 {
		t.Error("a Tracker's Snapshot has Seq 0, which means built by hand")
	}
}

// BenchmarkSnapshotAfterOneChange: the Snapshot after one endpoint change.
// Its cost must not grow with the number of Services: the published maps
// are copy-on-write, so it copies one shard of each, not every entry.
func BenchmarkSnapshotAfterOneChange(b *testing.B) {
	for _, n := range []int{200, 5000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			tr := NewTracker(trNode)
			for i := range n {
				name := fmt.Sprintf("s%d", i)
				tr.OnService(nn("bulk", name), service("bulk", name, fmt.Sprintf("172.30.%d.%d", i/250, i%250+1), tcp("", 80)))
				tr.OnEndpointSlice(endpointSlice("bulk", name, name+"-1", "", 8080, endpoint(fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), "n2")), false)
			}
			tr.Snapshot()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				tr.OnEndpointSlice(endpointSlice("bulk", "s7", "s7-1", "", 8080, endpoint(fmt.Sprintf("10.1.0.%d", i%2+1), "n2")), false)
				tr.Snapshot()
			}
		})
	}
}
