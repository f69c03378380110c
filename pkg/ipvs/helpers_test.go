package ipvs

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

const testNode = "test-node"

// svcSpec builds a Service for tests.
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

// tracker feeds objects through a real watch.Tracker, so tests plan from
// exactly what the proxy would see.
type tracker struct{ *watch.Tracker }

func newTracker(svcs []svcSpec, slices ...*discovery.EndpointSlice) tracker {
	tr := watch.NewTracker(testNode)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	for _, s := range svcs {
		tr.OnService(types.NamespacedName{Namespace: s.ns, Name: s.name}, s.object())
	}
	for _, es := range slices {
		tr.OnEndpointSlice(es, false)
	}
	return tracker{tr}
}

func (t tracker) deleteService(ns, name string) {
	t.OnService(types.NamespacedName{Namespace: ns, Name: name}, nil)
}

func snapshot(t *testing.T, svcs []svcSpec, slices ...*discovery.EndpointSlice) *watch.Snapshot {
	t.Helper()
	return newTracker(svcs, slices...).Snapshot()
}

var (
	nodeIP4   = netip.MustParseAddr("192.168.0.2")
	nodeIP4b  = netip.MustParseAddr("192.168.1.2")
	nodeIP6   = netip.MustParseAddr("2001:db8::1")
	hostAddrs = []netip.Addr{nodeIP4, nodeIP4b, netip.MustParseAddr("127.0.0.1"), nodeIP6, netip.MustParseAddr("::1"), netip.MustParseAddr("fe80::2")}
)

func iptOpts() iptables.PlanOptions {
	return iptables.PlanOptions{
		Family:        v1.IPv4Protocol,
		MasqueradeBit: 14,
		LocalDetector: iptables.ClusterCIDRDetector(netip.MustParsePrefix("10.0.0.0/8")),
		NodeIP:        nodeIP4,
	}
}

func ipvsOpts() Options {
	return Options{Family: v1.IPv4Protocol, NodeIP: nodeIP4}
}

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time       { return c.t }
func (c *fakeClock) step(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

// env is a Proxier on fake kernels.
type env struct {
	p     *Proxier
	ipvs  *FakeIPVS
	link  *FakeLink
	sets  *FakeIPSets
	sys   *FakeSysctl
	ipt   *iptables.Fake
	clock *fakeClock
}

func newEnv(t *testing.T, ipt iptables.PlanOptions, opts Options) *env {
	t.Helper()
	k, fi, fl, fs, fc := NewFakeKernel(hostAddrs...)
	e := &env{ipvs: fi, link: fl, sets: fs, sys: fc, ipt: iptables.NewFake(), clock: newClock()}
	opts.Now = e.clock.now
	e.p = NewProxier(k, e.ipt, ipt, opts)
	return e
}

func (e *env) sync(t *testing.T, snap *watch.Snapshot) Result {
	t.Helper()
	res, err := e.p.Sync(snap)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}
