package explain

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

const testNode = "node-a"

var nodeIP = netip.MustParseAddr("192.168.0.2")

func testNodeObj(zone string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, Labels: map[string]string{}}}
	if zone != "" {
		n.Labels[v1.LabelTopologyZone] = zone
	}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nodeIP.String()}}
	return n
}

func opts4() iptables.PlanOptions {
	return iptables.PlanOptions{
		Family:             v1.IPv4Protocol,
		MasqueradeBit:      14,
		LocalDetector:      iptables.ClusterCIDRDetector(netip.MustParsePrefix("10.0.0.0/8")),
		LocalhostNodePorts: true,
		NodeIP:             nodeIP,
	}
}

func opts6() iptables.PlanOptions {
	return iptables.PlanOptions{
		Family:        v1.IPv6Protocol,
		MasqueradeBit: 14,
		LocalDetector: iptables.ClusterCIDRDetector(netip.MustParsePrefix("fd00:10::/64")),
	}
}

// svc builds a ClusterIP Service with one TCP port "http" 80 -> targetPort
// "http"; mutate adjusts it.
func svc(name string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: name},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: "172.30.0.10", ClusterIPs: []string{"172.30.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func nodePort(s *v1.Service) {
	s.Spec.Type = v1.ServiceTypeNodePort
	s.Spec.Ports[0].NodePort = 30080
}

func etpLocal(s *v1.Service) {
	nodePort(s)
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
}

func itpLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

// ep is one endpoint of a test slice; nil conditions stay nil.
type ep struct {
	ip, node, zone              string
	ready, serving, terminating *bool
	zoneHints, nodeHints        []string
}

func slice(svcName, name, portName string, port int32, eps ...ep) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns1", Name: name, Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, e := range eps {
		d := discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		}
		if netip.MustParseAddr(e.ip).Is6() {
			es.AddressType = discovery.AddressTypeIPv6
		}
		if e.node != "" {
			d.NodeName = ptr.To(e.node)
		}
		if e.zone != "" {
			d.Zone = ptr.To(e.zone)
		}
		if len(e.zoneHints)+len(e.nodeHints) > 0 {
			d.Hints = &discovery.EndpointHints{}
			for _, z := range e.zoneHints {
				d.Hints.ForZones = append(d.Hints.ForZones, discovery.ForZone{Name: z})
			}
			for _, n := range e.nodeHints {
				d.Hints.ForNodes = append(d.Hints.ForNodes, discovery.ForNode{Name: n})
			}
		}
		es.Endpoints = append(es.Endpoints, d)
	}
	return es
}

var (
	yes = ptr.To(true)
	no  = ptr.To(false)
)

// kernelOf applies a full sync of the daemon's plan of these objects to
// the validating fake kernel, then lets edit change it behind the proxy's
// back, and returns what iptables-save would print.
func kernelOf(t *testing.T, opts iptables.PlanOptions, svcs []*v1.Service, slices []*discovery.EndpointSlice, edit func(*iptables.Fake)) Kernel {
	t.Helper()
	snap := DaemonSnapshot(testNode, testNodeObj(""), svcs, slices)
	rs := iptables.Plan(snap, opts)
	fake := iptables.NewFake()
	for _, p := range iptables.FullPayloads(rs, nil, 1000) {
		if err := fake.Restore(p); err != nil {
			t.Fatalf("fake refused the plan: %v", err)
		}
	}
	for _, j := range rs.Jumps {
		if err := fake.EnsureJump(j); err != nil {
			t.Fatal(err)
		}
	}
	if edit != nil {
		edit(fake)
	}
	return saveFake(t, fake)
}

func saveFake(t *testing.T, fake *iptables.Fake) Kernel {
	t.Helper()
	k := Kernel{}
	for _, table := range []string{iptables.TableNAT, iptables.TableFilter, iptables.TableMangle} {
		b, err := fake.Save(table)
		if err != nil {
			t.Fatal(err)
		}
		k.Merge(ParseSave(b))
	}
	return k
}

// input builds an explain Input for Service name among svcs; with a nil
// kernel the kernel is the plan of the same objects, applied cleanly.
func input(t *testing.T, name string, svcs []*v1.Service, slices []*discovery.EndpointSlice, k Kernel) Input {
	t.Helper()
	if k == nil {
		k = kernelOf(t, opts4(), svcs, slices, nil)
	}
	in := Input{
		Query:    Query{Service: "ns1/" + name},
		NodeName: testNode,
		Node:     testNodeObj(""),
		Families: []Family{{Family: v1.IPv4Protocol, Options: opts4(), Backend: "nft", Kernel: k}},
		Local:    []netip.Addr{nodeIP},
		Mode:     "iptables",
	}
	for _, s := range svcs {
		if s.Name == name {
			in.Service = s
		}
	}
	for _, es := range slices {
		if es.Labels[discovery.LabelServiceName] == name {
			in.Slices = append(in.Slices, es)
		}
	}
	var own []*v1.Service
	if in.Service != nil {
		own = []*v1.Service{in.Service}
	}
	in.Snapshot = DaemonSnapshot(testNode, in.Node, own, in.Slices)
	return in
}
