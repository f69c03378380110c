package explain

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

func readyEps() []ep {
	return []ep{{ip: "10.1.0.1", node: testNode}, {ip: "10.2.0.1", node: "node-b"}}
}

// chainOf returns the KUBE-SVC chain of a test Service's port "http".
func chainOf(t *testing.T, s *v1.Service, prefix string) string {
	t.Helper()
	snap := DaemonSnapshot(testNode, nil, []*v1.Service{s}, nil)
	for _, p := range snap.Services.All() {
		svc, svl, ext, _ := iptables.PortChains(p)
		switch prefix {
		case "KUBE-SVC-":
			return svc
		case "KUBE-SVL-":
			return svl
		case "KUBE-EXT-":
			return ext
		}
	}
	t.Fatal("no port")
	return ""
}

func TestVerdicts(t *testing.T) {
	web := svc("web")
	webSlice := slice("web", "web-1", "http", 8080, readyEps()...)
	for _, tc := range []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		// edit breaks the kernel after a clean full sync.
		edit  func(t *testing.T, f *iptables.Fake)
		layer string
		want  string
	}{
		{name: "ok", svc: web, slices: []*discovery.EndpointSlice{webSlice}, want: "OK"},
		{name: "not found", svc: nil, layer: LayerService, want: "service not found"},
		{name: "other proxy", svc: svc("web", func(s *v1.Service) { s.Labels = map[string]string{watch.LabelServiceProxyName: "cilium"} }),
			layer: LayerService, want: "service is handled by another proxy (service-proxy-name=cilium)"},
		{name: "headless", svc: svc("web", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			layer: LayerService, want: "service is headless"},
		{name: "external name", svc: svc("web", func(s *v1.Service) {
			s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ServiceTypeExternalName, "example.com", "", nil
		}), layer: LayerService, want: "service is ExternalName (example.com)"},
		{name: "no slices", svc: web, layer: LayerEndpoints, want: "no EndpointSlices"},
		{name: "empty slice", svc: web, slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080)},
			layer: LayerEndpoints, want: "EndpointSlices hold no endpoints for port 'http' (80)"},
		{name: "not ready", svc: web, slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080,
			ep{ip: "10.1.0.1", node: testNode, ready: no}, ep{ip: "10.2.0.1", node: "node-b", ready: no, serving: no, terminating: yes})},
			layer: LayerEndpoints, want: "no endpoints ready"},
		{name: "targetPort name", svc: web, slices: []*discovery.EndpointSlice{slice("web", "web-1", "web", 8080, readyEps()...)},
			layer: LayerEndpoints, want: "targetPort name 'http' matches no slice port (slices have 'web'/TCP)"},
		{name: "port name numeric targetPort", svc: svc("web", func(s *v1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }),
			slices: []*discovery.EndpointSlice{slice("web", "web-1", "", 8080, readyEps()...)},
			layer:  LayerEndpoints, want: "port name 'http' matches no slice port (slices have ''/TCP)"},
		{name: "etp local", svc: svc("web", etpLocal), slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080, ep{ip: "10.2.0.1", node: "node-b"})},
			layer: LayerSelection, want: "endpoints exist but none are local and externalTrafficPolicy is Local"},
		{name: "itp local", svc: svc("web", itpLocal), slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080, ep{ip: "10.2.0.1", node: "node-b"})},
			layer: LayerSelection, want: "endpoints exist but none are local and internalTrafficPolicy is Local"},
		{name: "kernel chain flushed", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit:  func(t *testing.T, f *iptables.Fake) { f.Flush(iptables.TableNAT, chainOf(t, web, "KUBE-SVC-")) },
			layer: LayerKernel, want: "kernel rules missing for port 80"},
		{name: "kernel chain deleted", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit: func(t *testing.T, f *iptables.Fake) {
				f.DeleteChainForTest(iptables.TableNAT, chainOf(t, web, "KUBE-SVC-"))
			},
			layer: LayerKernel, want: "kernel rules missing for port 80"},
		{name: "kernel rule changed", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit: func(t *testing.T, f *iptables.Fake) {
				c := chainOf(t, web, "KUBE-SVC-")
				rules := f.Rules(iptables.TableNAT, c)
				payload := "*nat\n:" + c + " - [0:0]\n"
				for _, r := range rules {
					payload += "-A " + c + " " + strings.Replace(r, "0.5000000000", "0.2500000000", 1) + "\n"
				}
				if err := f.Restore([]byte(payload + "COMMIT\n")); err != nil {
					t.Fatal(err)
				}
			},
			layer: LayerKernel, want: "kernel rules differ for port 80"},
		{name: "kernel entry missing", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit: func(t *testing.T, f *iptables.Fake) {
				for _, r := range f.Rules(iptables.TableNAT, iptables.ChainServices) {
					if strings.Contains(r, "ns1/web:http cluster IP") {
						if err := f.Restore([]byte("*nat\n-D KUBE-SERVICES " + r + "\nCOMMIT\n")); err != nil {
							t.Fatal(err)
						}
					}
				}
			},
			layer: LayerKernel, want: "kernel rules missing for port 80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var svcs []*v1.Service
			if tc.svc != nil {
				svcs = append(svcs, tc.svc)
			}
			k := kernelOf(t, opts4(), svcs, tc.slices, func(f *iptables.Fake) {
				if tc.edit != nil {
					tc.edit(t, f)
				}
			})
			r := Build(input(t, "web", svcs, tc.slices, k))
			if !strings.HasPrefix(r.Verdict, tc.want) || r.Layer != tc.layer {
				t.Errorf("verdict %q (layer %q), want %q (layer %q)", r.Verdict, r.Layer, tc.want, tc.layer)
			}
		})
	}
}

// TestStaleService checks a port removed from the Service: its chains and
// entries stay in the kernel until the next sync and are reported.
func TestStaleService(t *testing.T) {
	two := svc("web", func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "metrics", Protocol: v1.ProtocolTCP, Port: 9090, TargetPort: intstr.FromInt32(9090)})
	})
	sl := slice("web", "web-1", "http", 8080, readyEps()...)
	sl.Ports = append(sl.Ports, discovery.EndpointPort{Name: ptrTo("metrics"), Protocol: ptrTo(v1.ProtocolTCP), Port: ptrTo(int32(9090))})
	k := kernelOf(t, opts4(), []*v1.Service{two}, []*discovery.EndpointSlice{sl}, nil)
	r := Build(input(t, "web", []*v1.Service{svc("web")}, []*discovery.EndpointSlice{sl}, k))
	if r.Verdict != "kernel holds stale rules for this service" {
		t.Fatalf("verdict %q", r.Verdict)
	}
	var chains, entries int
	for _, d := range r.Stale {
		switch d.Kind {
		case StaleChain:
			chains++
		case ExtraEntry:
			entries++
		}
	}
	// KUBE-SVC + two KUBE-SEP chains; the cluster IP entry.
	if chains != 3 || entries != 1 {
		t.Errorf("stale: %d chains, %d entries, want 3 and 1: %v", chains, entries, r.Stale)
	}
}

func TestTargetNotFound(t *testing.T) {
	tg, err := ParseTarget("1.2.3.4:99/udp")
	if err != nil {
		t.Fatal(err)
	}
	in := input(t, "none", nil, nil, nil)
	in.Query = Query{Target: &tg}
	r := Build(in)
	if r.Verdict != "no service port 1.2.3.4:99/udp" || r.Layer != LayerService {
		t.Errorf("verdict %q", r.Verdict)
	}
	for _, bad := range []string{"1.2.3.4", "1.2.3.4:0", "1.2.3.4:80/icmp", "host:80"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
	if tg, err := ParseTarget("[fd00::1]:53"); err != nil || tg.Protocol != v1.ProtocolTCP || tg.IP != netip.MustParseAddr("fd00::1") {
		t.Errorf("ParseTarget IPv6: %v %v", tg, err)
	}
}

func TestFindTarget(t *testing.T) {
	web := svc("web", nodePort, func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"192.168.99.1"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}}
	})
	other := svc("aaa", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "172.30.0.11", []string{"172.30.0.11"} })
	local := []netip.Addr{nodeIP}
	for _, tc := range []struct {
		target, svc, by string
	}{
		{"172.30.0.10:80", "web", "cluster IP"},
		{"172.30.0.11:80/tcp", "aaa", "cluster IP"},
		{"192.168.99.1:80", "web", "external IP"},
		{"198.51.100.1:80", "web", "load balancer IP"},
		{"192.168.0.2:30080", "web", "node port"},
		{"127.0.0.1:30080", "web", "node port"},
		{"172.30.0.10:80/udp", "", ""},
		{"192.168.0.3:30080", "", ""},
	} {
		tg, err := ParseTarget(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := FindTarget([]*v1.Service{web, other}, tg, local)
		got := ""
		if ok {
			got = m.Service.Name
		}
		if got != tc.svc || m.By != tc.by {
			t.Errorf("%s: found %q by %q, want %q by %q", tc.target, got, m.By, tc.svc, tc.by)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
