package iptables

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

const testNode = "test-node"

// svcSpec builds a Service for tests; fields left empty keep API defaults.
type svcSpec struct {
	ns, name    string
	typ         v1.ServiceType
	clusterIPs  []string
	ports       []v1.ServicePort
	externalIPs []string
	lbIPs       []string
	ranges      []string
	etpLocal    bool
	itpLocal    bool
	hcPort      int32
	affinity    int32
	proxyLBIPs  []string // ingress IPs with ipMode Proxy
}

func (s svcSpec) object() *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: s.name},
		Spec: v1.ServiceSpec{
			Type: s.typ, ClusterIP: s.clusterIPs[0], ClusterIPs: s.clusterIPs, Ports: s.ports,
			ExternalIPs: s.externalIPs, LoadBalancerSourceRanges: s.ranges, HealthCheckNodePort: s.hcPort,
		},
	}
	if svc.Spec.Type == "" {
		svc.Spec.Type = v1.ServiceTypeClusterIP
	}
	if s.etpLocal {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}
	if s.itpLocal {
		svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
	if s.affinity > 0 {
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(s.affinity)}}
	}
	for _, ip := range s.lbIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
	}
	for _, ip := range s.proxyLBIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)})
	}
	return svc
}

func tcpPort(name string, port, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: port, NodePort: nodePort}
}

// ep is one endpoint of a test slice.
type ep struct {
	ip, node                    string
	notReady, serving, terminat bool
}

func slice(ns, svc, name string, port int32, portName string, eps ...ep) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, e := range eps {
		d := discovery.Endpoint{Addresses: []string{e.ip}}
		if netip.MustParseAddr(e.ip).Is6() {
			es.AddressType = discovery.AddressTypeIPv6
		}
		if e.node != "" {
			d.NodeName = ptr.To(e.node)
		}
		if e.notReady {
			d.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminat)}
		}
		es.Endpoints = append(es.Endpoints, d)
	}
	return es
}

// snapshot feeds objects through a real Tracker, so tests plan from exactly
// what the proxy would see.
func snapshot(t *testing.T, svcs []svcSpec, slices ...*discovery.EndpointSlice) *watch.Snapshot {
	t.Helper()
	tr := watch.NewTracker(testNode)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	for _, s := range svcs {
		tr.OnService(types.NamespacedName{Namespace: s.ns, Name: s.name}, s.object())
	}
	for _, es := range slices {
		tr.OnEndpointSlice(es, false)
	}
	return tr.Snapshot()
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
