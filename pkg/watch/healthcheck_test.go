package watch

import (
	"net/netip"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

func TestHealthChecksOf(t *testing.T) {
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	plain := types.NamespacedName{Namespace: "ns", Name: "plain"}
	draining := types.NamespacedName{Namespace: "ns", Name: "draining"}
	v4only := types.NamespacedName{Namespace: "ns", Name: "v4only"}
	port := func(svc types.NamespacedName, name string, hc int32) (ServicePortName, *ServicePort) {
		p := selPort(nodePortPort, true, false)
		p.Name = ServicePortName{NamespacedName: svc, Port: name, Protocol: p.Protocol}
		p.HealthCheckNodePort = hc
		return p.Name, p
	}
	eps := func(specs ...epSpec) []*Endpoint {
		var out []*Endpoint
		for _, s := range specs {
			out = append(out, s.endpoint())
		}
		return out
	}
	services, endpoints := map[ServicePortName]*ServicePort{}, map[ServicePortName][]*Endpoint{}
	add := func(svc types.NamespacedName, name string, hc int32, specs ...epSpec) {
		n, p := port(svc, name, hc)
		if svc.Name == "web" {
			p.ClusterIPs = append(p.ClusterIPs, netip.MustParseAddr("fd00:172:30::10"))
		}
		services[n] = p
		endpoints[n] = eps(specs...)
	}
	// web: the same two local pods behind two ports count once each; a
	// remote, a not-ready and a terminating pod do not count; one IPv6 pod.
	add(web, "http", 30001,
		epSpec{ip: "10.0.0.1", local: true}, epSpec{ip: "10.0.0.2", local: true},
		epSpec{ip: "10.9.0.1"}, epSpec{ip: "10.0.0.3", local: true, notReady: true, notServing: true},
		servingTerm("10.0.0.4", true), epSpec{ip: "fd00::1", local: true})
	add(web, "https", 30001, epSpec{ip: "10.0.0.1", local: true}, epSpec{ip: "10.0.0.2", local: true})
	// draining: only terminating (still serving) local endpoints.
	add(draining, "http", 30002, servingTerm("10.0.1.1", true), servingTerm("10.0.1.2", true))
	// v4only: an IPv6 endpoint of a Service without an IPv6 cluster IP
	// does not count (kube-proxy's IPv6 proxier never sees the Service).
	add(v4only, "http", 30003, epSpec{ip: "10.0.3.1", local: true}, epSpec{ip: "fd00::3", local: true})
	// plain: no health-check port, so not served at all.
	add(plain, "http", 0, epSpec{ip: "10.0.2.1", local: true})

	snap := &Snapshot{Services: cowmap.From(services), Endpoints: cowmap.From(endpoints)}
	hc := HealthChecksOf(snap)
	if got := hc.LocalReady[v4only]; got != (FamilyCount{IPv4: 1}) {
		t.Errorf("v4only: %+v, want 1 IPv4 and no IPv6", got)
	}
	if len(hc.Ports) != 3 || hc.Ports[web] != 30001 || hc.Ports[draining] != 30002 {
		t.Errorf("ports %v", hc.Ports)
	}
	if got := hc.LocalReady[web]; got != (FamilyCount{IPv4: 2, IPv6: 1}) {
		t.Errorf("web: %+v, want 2 IPv4 and 1 IPv6 (distinct local ready addresses)", got)
	}
	if got, ok := hc.LocalReady[draining]; ok {
		t.Errorf("draining: %+v, want no entry: terminating endpoints are not ready", got)
	}
	if _, ok := hc.LocalReady[plain]; ok {
		t.Error("plain has no health-check port but was counted")
	}
}
