// Package watchtest builds Services and EndpointSlices for the planners'
// tests and feeds them through a real watch.Tracker, so each mode's tests
// plan from exactly what the proxy would see. Both modes share it; a test
// object described once means the modes are tested against the same input.
package watchtest

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Node is the name of the node the tests' Tracker runs on.
const Node = "test-node"

// Service describes a Service; fields left empty keep the API defaults.
type Service struct {
	Namespace, Name     string
	Type                v1.ServiceType
	ClusterIPs          []string // the first is also spec.clusterIP
	Ports               []v1.ServicePort
	ExternalIPs         []string
	LBIPs               []string // status ingress IPs (ipMode VIP)
	ProxyLBIPs          []string // status ingress IPs with ipMode Proxy
	SourceRanges        []string // spec.loadBalancerSourceRanges
	ETPLocal, ITPLocal  bool     // traffic policies Local
	HealthCheckNodePort int32
	AffinitySeconds     int32 // ClientIP session affinity when positive
}

// Object is the Service as the API server would store it.
func (s Service) Object() *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name},
		Spec: v1.ServiceSpec{
			Type: s.Type, ClusterIP: s.ClusterIPs[0], ClusterIPs: s.ClusterIPs, Ports: s.Ports,
			ExternalIPs: s.ExternalIPs, LoadBalancerSourceRanges: s.SourceRanges, HealthCheckNodePort: s.HealthCheckNodePort,
		},
	}
	if svc.Spec.Type == "" {
		svc.Spec.Type = v1.ServiceTypeClusterIP
	}
	if s.ETPLocal {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}
	if s.ITPLocal {
		svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
	if s.AffinitySeconds > 0 {
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(s.AffinitySeconds)}}
	}
	for _, ip := range s.LBIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
	}
	for _, ip := range s.ProxyLBIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)})
	}
	return svc
}

// TCPPort is a named TCP Service port; nodePort 0 means none.
func TCPPort(name string, port, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: port, NodePort: nodePort}
}

// Endpoint is one endpoint of a test slice. It is ready unless NotReady is
// set; then Serving and Terminating are its other conditions.
type Endpoint struct {
	IP, Node                       string
	NotReady, Serving, Terminating bool
}

// Slice is an EndpointSlice of Service ns/svc with one TCP port. Its
// address type follows the first IPv6 endpoint.
func Slice(ns, svc, name string, port int32, portName string, eps ...Endpoint) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, e := range eps {
		d := discovery.Endpoint{Addresses: []string{e.IP}}
		if netip.MustParseAddr(e.IP).Is6() {
			es.AddressType = discovery.AddressTypeIPv6
		}
		if e.Node != "" {
			d.NodeName = ptr.To(e.Node)
		}
		if e.NotReady {
			d.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(e.Serving), Terminating: ptr.To(e.Terminating)}
		}
		es.Endpoints = append(es.Endpoints, d)
	}
	return es
}

// Tracker is a real watch.Tracker on Node that has seen the Node object,
// svcs and slices.
func Tracker(svcs []Service, slices ...*discovery.EndpointSlice) *watch.Tracker {
	tr := watch.NewTracker(Node)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: Node}})
	for _, s := range svcs {
		tr.OnService(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, s.Object())
	}
	for _, es := range slices {
		tr.OnEndpointSlice(es, false)
	}
	return tr
}
