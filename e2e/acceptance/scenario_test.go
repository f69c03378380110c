package acceptance

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

func loadAllFields(t *testing.T) Scenario {
	t.Helper()
	list, notes, err := LoadFile("testdata/allfields.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("%d scenarios", len(list))
	}
	if len(notes) == 0 || !strings.Contains(notes[0], "some_future_key") {
		t.Errorf("unknown key not noted: %v", notes)
	}
	return list[0]
}

func TestParseEveryField(t *testing.T) {
	s := loadAllFields(t)
	if s.Name != "all-fields" || s.Category != "cat" || len(s.Tags) != 2 || s.Description != "desc" || s.SourceTest != "TestX" || s.Derived == "" {
		t.Errorf("informational fields: %+v", s)
	}
	if !s.HasMode("nftables") || s.HasMode("ipvs") {
		t.Errorf("modes %v", s.Modes)
	}
	n := s.Node
	if n.Name != "test-node" || len(n.IPs) != 2 || n.LocalDetector != "None" || n.Labels["topology.kubernetes.io/zone"] != "zone-a" {
		t.Errorf("node %+v", n)
	}
	if got := n.ClusterCIDRs(); len(got) != 2 || got[1] != "fd00:10::/64" {
		t.Errorf("clusterCIDRs %v", got)
	}
	c := s.Config
	if !*c.MasqueradeAll || *c.LocalhostNodePorts || c.NodePortAddresses[0] != "192.168.0.0/24" || c.IPFamily != "DualStack" || len(c.ServiceCIDRs) != 2 {
		t.Errorf("config %+v", c)
	}

	svc := s.Services[0].ToAPI()
	sp := svc.Spec
	if sp.Type != corev1.ServiceTypeLoadBalancer || sp.ClusterIP != "172.30.0.71" || len(sp.ClusterIPs) != 2 ||
		len(sp.IPFamilies) != 2 || *sp.IPFamilyPolicy != corev1.IPFamilyPolicyRequireDualStack {
		t.Errorf("service ips: %+v", sp)
	}
	if p := sp.Ports[0]; p.Name != "p80" || p.Port != 80 || p.TargetPort.IntValue() != 8080 || p.NodePort != 3071 {
		t.Errorf("port %+v", p)
	}
	if p := sp.Ports[1]; p.Protocol != corev1.ProtocolUDP || p.TargetPort.String() != "dns" {
		t.Errorf("named target port %+v", p)
	}
	if sp.ExternalIPs[0] != "192.168.99.11" || sp.LoadBalancerSourceRanges[0] != "203.0.113.0/25" ||
		sp.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || *sp.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyCluster ||
		sp.HealthCheckNodePort != 30000 || sp.SessionAffinity != corev1.ServiceAffinityClientIP ||
		*sp.SessionAffinityConfig.ClientIP.TimeoutSeconds != 10800 || *sp.TrafficDistribution != "PreferClose" {
		t.Errorf("service spec %+v", sp)
	}
	if svc.Annotations["service.kubernetes.io/topology-mode"] != "Auto" || svc.Labels["app"] != "x" {
		t.Errorf("meta %+v", svc.ObjectMeta)
	}
	ing := svc.Status.LoadBalancer.Ingress
	if len(ing) != 2 || ing[0].IP != "198.51.100.4" || *ing[0].IPMode != corev1.LoadBalancerIPModeProxy || ing[1].IPMode != nil {
		t.Errorf("ingress %+v", ing)
	}
	svc2 := s.Services[1].ToAPI()
	if svc2.Spec.ClusterIP != "172.30.0.72" || svc2.Status.LoadBalancer.Ingress[0].IP != "198.51.100.8" || svc2.Spec.Ports[0].Protocol != corev1.ProtocolSCTP {
		t.Errorf("svc2 %+v", svc2)
	}

	es := s.EndpointSlices[0].ToAPI()
	if es.Labels["kubernetes.io/service-name"] != "svc1" || es.AddressType != "IPv4" || *es.Ports[0].Port != 8080 || *es.Ports[0].Name != "p80" {
		t.Errorf("slice %+v", es)
	}
	e0, e1 := es.Endpoints[0], es.Endpoints[1]
	if *e0.NodeName != "test-node" || *e0.Conditions.Ready || !*e0.Conditions.Serving || !*e0.Conditions.Terminating ||
		*e0.Zone != "zone-a" || e0.Hints.ForZones[0].Name != "zone-a" {
		t.Errorf("endpoint 0 %+v", e0)
	}
	if e1.NodeName != nil || e1.Conditions.Ready != nil || e1.Conditions.Serving != nil || e1.Conditions.Terminating != nil || e1.Hints != nil {
		t.Errorf("omitted fields must stay nil: %+v", e1)
	}

	f := s.Flows[0]
	if f.SourceKind != KindPod || f.DestPort != 80 || !f.Sticky || *f.Masquerade {
		t.Errorf("flow %+v", f)
	}
	exp, masq := f.Effective("nftables")
	if exp[0] != "REJECT" || !*masq || f.ModeOverrides["nftables"].Note != "why" {
		t.Errorf("override: %v %v", exp, *masq)
	}
	exp, masq = f.Effective("iptables")
	if len(exp) != 2 || *masq {
		t.Errorf("no override: %v %v", exp, *masq)
	}
	e, err := ParseExpect(exp)
	if err != nil || e.Backends[1] != netip.MustParseAddrPort("[fd00:10:180::1]:8080") {
		t.Errorf("expect %+v %v", e, err)
	}
	if h := s.Flows[1].HTTPGet; h == nil || h.Path != "/healthz" || h.ExpectStatus != 503 {
		t.Errorf("http_get %+v", h)
	}
	if sp := s.Flows[2]; !sp.RequiresSpoofedSource || sp.SourceKind != KindSpoofed || sp.Protocol != "TCP" {
		t.Errorf("spoofed flow %+v", sp)
	}

	st := s.Steps[0]
	if st.Description == "" || st.Apply.Services[0].Name != "svc3" || st.Apply.EndpointSlices[0].AddressType != "IPv6" ||
		st.Delete.Services[0] != "ns1/svc2" || st.Delete.EndpointSlices[0] != "ns1/svc1-1" {
		t.Errorf("step %+v", st)
	}
	if st.Apply.EndpointSlices[0].Ports[0].Protocol != "" || st.Apply.EndpointSlices[0].ToAPI().Ports[0].Protocol == nil {
		t.Errorf("slice port protocol should default to TCP in the API object")
	}
	if st.Flows[0].Protocol != "UDP" {
		t.Errorf("protocol not normalized: %q", st.Flows[0].Protocol)
	}
	if got := len(s.AllFlows()); got != 4 {
		t.Errorf("AllFlows: %d", got)
	}
}

func TestParseExamplesFile(t *testing.T) {
	list, notes, err := LoadFile(testenv.SharedFile(t, "acceptance", "examples.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatal("no scenarios")
	}
	for _, n := range notes {
		t.Logf("note: %s", n)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	for name, doc := range map[string]string{
		"bad kind":       `[{name: a, node: {name: n}, flows: [{name: f, source: 10.0.0.1, source_kind: martian, dest_ip: 1.2.3.4, dest_port: 1, expect: [DROP]}]}]`,
		"bad expect":     `[{name: a, node: {name: n}, flows: [{name: f, source: 10.0.0.1, source_kind: pod, dest_ip: 1.2.3.4, dest_port: 1, expect: [MAYBE]}]}]`,
		"bad protocol":   `[{name: a, node: {name: n}, flows: [{name: f, source: 10.0.0.1, source_kind: pod, dest_ip: 1.2.3.4, dest_port: 1, protocol: ICMP, expect: [DROP]}]}]`,
		"dup scenario":   `[{name: a, node: {name: n}}, {name: a, node: {name: n}}]`,
		"dup flow":       `[{name: a, node: {name: n}, flows: [{name: f, source: 10.0.0.1, source_kind: pod, dest_ip: 1.2.3.4, dest_port: 1, expect: [DROP]}, {name: f, source: 10.0.0.1, source_kind: pod, dest_ip: 1.2.3.4, dest_port: 1, expect: [DROP]}]}]`,
		"bad delete key": `[{name: a, node: {name: n}, steps: [{delete: {services: [nons]}}]}]`,
		"no node name":   `[{name: a, node: {ips: [1.2.3.4]}}]`,
	} {
		if _, _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHintsAcceptObjectForm(t *testing.T) {
	var h Hints
	if err := yaml.Unmarshal([]byte("forZones: [{name: zone-b}, zone-c]\nforNodes: [{name: n1}]"), &h); err != nil {
		t.Fatal(err)
	}
	if h.ForZones[0] != "zone-b" || h.ForZones[1] != "zone-c" || h.ForNodes[0] != "n1" {
		t.Errorf("%+v", h)
	}
}

func TestProxyConfig(t *testing.T) {
	s := loadAllFields(t)
	b, err := ProxyConfig(&s, "iptables", "/k")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg["clusterCIDR"]; ok {
		t.Error("localDetector None must leave clusterCIDR unset")
	}
	ipt := cfg["iptables"].(map[string]any)
	if ipt["masqueradeAll"] != true || ipt["localhostNodePorts"] != false || ipt["minSyncPeriod"] != "0s" {
		t.Errorf("iptables %v", ipt)
	}
	ct := cfg["conntrack"].(map[string]any)
	if ct["maxPerCore"] != float64(0) || ct["min"] != float64(0) || ct["tcpEstablishedTimeout"] != "0s" {
		t.Errorf("conntrack must not make the proxy write host-global sysctls: %v", ct)
	}
	if cfg["hostnameOverride"] != "test-node" || cfg["mode"] != "iptables" || cfg["nodePortAddresses"].([]any)[0] != "192.168.0.0/24" ||
		cfg["clientConnection"].(map[string]any)["kubeconfig"] != "/k" || cfg["metricsBindAddress"] != "127.0.0.1:10249" {
		t.Errorf("config %v", cfg)
	}
	s.Node.LocalDetector = "ClusterCIDR"
	b, _ = ProxyConfig(&s, "ipvs", "/k")
	if !strings.Contains(string(b), "clusterCIDR: 10.0.0.0/8,fd00:10::/64") || !strings.Contains(string(b), "mode: ipvs") {
		t.Errorf("ClusterCIDR detector:\n%s", b)
	}
}

func TestOrderNodeIPs(t *testing.T) {
	ips := []string{"192.168.0.2", "2001:db8::1", "192.168.1.2"}
	if got := orderNodeIPs(ips, "IPv6"); got[0] != "2001:db8::1" || got[1] != "192.168.0.2" {
		t.Errorf("IPv6 primary: %v", got)
	}
	if got := orderNodeIPs(ips, "DualStack"); got[0] != "192.168.0.2" {
		t.Errorf("order kept: %v", got)
	}
}

func TestRangeFor(t *testing.T) {
	ip := netip.MustParseAddr("10.96.3.4")
	if got := rangeFor(ip, []string{"10.96.0.0/12"}); got.String() != "10.96.0.0/12" {
		t.Errorf("configured range: %v", got)
	}
	if got := rangeFor(ip, nil); got.String() != "10.96.0.0/16" {
		t.Errorf("fallback: %v", got)
	}
	if got := rangeFor(netip.MustParseAddr("fd00:1::5"), nil); got.String() != "fd00:1::/112" {
		t.Errorf("v6 fallback: %v", got)
	}
}
