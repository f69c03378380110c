package explain

import (
	"bytes"
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/ipvs"
)

// ipvsFakes is an IPVS-mode node: the validating fakes after a clean full
// sync of the daemon's plan.
type ipvsFakes struct {
	k   ipvs.Kernel
	vs  *ipvs.FakeIPVS
	ln  *ipvs.FakeLink
	set *ipvs.FakeIPSets
	ipt *iptables.Fake
}

func ipvsOpts() iptables.PlanOptions {
	o := opts4()
	o.LocalhostNodePorts = false
	return o
}

// ipvsNode syncs svcs and slices into fakes as the daemon's IPVS Proxier
// would (virtual servers, kube-ipvs0, ipsets, helper rules).
func ipvsNode(t *testing.T, svcs []*v1.Service, slices []*discovery.EndpointSlice) *ipvsFakes {
	t.Helper()
	k, vs, ln, set, _ := ipvs.NewFakeKernel(nodeIP)
	f := &ipvsFakes{k: k, vs: vs, ln: ln, set: set, ipt: iptables.NewFake()}
	p := ipvs.NewProxier(k, f.ipt, ipvsOpts(), ipvs.Options{Family: v1.IPv4Protocol, NodeIP: nodeIP})
	snap := DaemonSnapshot(testNode, testNodeObj(""), svcs, slices)
	if _, err := p.Sync(snap); err != nil {
		t.Fatalf("sync: %v", err)
	}
	// The helper rules again, with the jumps as the kernel prints them
	// (quoted comments), which the fake's EnsureJump does not do.
	rs := ipvs.PlanRules(nil, snap, ipvsOpts())
	f.ipt = iptables.NewFake()
	for _, p := range iptables.FullPayloads(rs, nil, 1000) {
		must(t, f.ipt.Restore(p))
	}
	for _, j := range rs.Jumps {
		must(t, f.ipt.Restore([]byte("*"+j.Table+"\n-I "+j.Chain+" 1 "+quoteArgs(j.Rule)+"\nCOMMIT\n")))
	}
	return f
}

// ipvsInput builds the explain Input of Service name from what the fakes
// hold, as cmd/proxy reads a real node.
func ipvsInput(t *testing.T, f *ipvsFakes, name string, svcs []*v1.Service, slices []*discovery.EndpointSlice) Input {
	t.Helper()
	in := input(t, name, svcs, slices, saveFake(t, f.ipt))
	in.Mode = "ipvs"
	ks, err := ipvs.ReadKernel(f.k, v1.IPv4Protocol)
	if err != nil {
		t.Fatal(err)
	}
	fam := &in.Families[0]
	fam.Options, fam.Planner = ipvsOpts(), ipvs.PlanRules
	fam.IPVS = &IPVSFamily{
		Options: ipvs.HostPlanOptions(ks.Host, ipvs.Options{Family: v1.IPv4Protocol, NodeIP: nodeIP}),
		Applier: ipvs.ApplierOptions{Family: v1.IPv4Protocol},
		Kernel:  ks,
	}
	return in
}

var webKey = ipvs.VSKey{Protocol: v1.ProtocolTCP, Addr: netip.MustParseAddr("172.30.0.10"), Port: 80}

func TestIPVSVerdicts(t *testing.T) {
	web := svc("web")
	webSlice := slice("web", "web-1", "http", 8080, readyEps()...)
	for _, tc := range []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		edit   func(t *testing.T, f *ipvsFakes)
		layer  string
		want   string
	}{
		{name: "ok", svc: web, slices: []*discovery.EndpointSlice{webSlice}, want: VerdictOK},
		{name: "no slices", svc: web, layer: LayerEndpoints, want: "no EndpointSlices"},
		{name: "not ready", svc: web, slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080,
			ep{ip: "10.1.0.1", node: testNode, ready: no})}, layer: LayerEndpoints, want: "no endpoints ready"},
		{name: "etp local", svc: svc("web", etpLocal), slices: []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080,
			ep{ip: "10.2.0.1", node: "node-b"})}, layer: LayerSelection, want: "endpoints exist but none are local and externalTrafficPolicy is Local"},
		{name: "port name", svc: web, slices: []*discovery.EndpointSlice{slice("web", "web-1", "web", 8080, readyEps()...)},
			layer: LayerEndpoints, want: "targetPort name 'http' matches no slice port"},
		{name: "virtual server deleted", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit:  func(t *testing.T, f *ipvsFakes) { must(t, f.vs.DeleteService(webKey)) },
			layer: LayerKernel, want: "kernel virtual server missing for port 80: add virtual server TCP/172.30.0.10:80 rr"},
		{name: "real server deleted", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit: func(t *testing.T, f *ipvsFakes) {
				must(t, f.vs.DeleteDestination(webKey, netip.MustParseAddrPort("10.2.0.1:8080")))
			},
			layer: LayerKernel, want: "kernel real server missing for port 80: add real server 10.2.0.1:8080 of TCP/172.30.0.10:80 weight 1"},
		{name: "extra real server", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit: func(t *testing.T, f *ipvsFakes) {
				must(t, f.vs.AddDestination(webKey, netip.MustParseAddrPort("10.9.0.1:8080"), 1))
			},
			layer: LayerKernel, want: "kernel real servers differ for port 80: update real server 10.9.0.1:8080 of TCP/172.30.0.10:80 weight 0"},
		{name: "address deleted", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit:  func(t *testing.T, f *ipvsFakes) { must(t, f.ln.DelAddr(webKey.Addr)) },
			layer: LayerKernel, want: "service IP missing on kube-ipvs0 for port 80: add address 172.30.0.10"},
		{name: "ipset flushed", svc: web, slices: []*discovery.EndpointSlice{webSlice},
			edit:  func(t *testing.T, f *ipvsFakes) { f.set.Flush(ipvs.SetClusterIP) },
			layer: LayerKernel, want: "ipset members differ for port 80: add ipset member KUBE-CLUSTER-IP 172.30.0.10,tcp:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := ipvsNode(t, []*v1.Service{tc.svc}, tc.slices)
			if tc.edit != nil {
				tc.edit(t, f)
			}
			r := Build(ipvsInput(t, f, "web", []*v1.Service{tc.svc}, tc.slices))
			if !strings.HasPrefix(r.Verdict, tc.want) || r.Layer != tc.layer {
				var buf bytes.Buffer
				_ = r.WriteText(&buf)
				t.Errorf("verdict %q [%s], want %q [%s]\n%s", r.Verdict, r.Layer, tc.want, tc.layer, buf.String())
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A clean node: the virtual server matches, the trace goes through it to
// both real servers, and only sources outside the cluster CIDR are
// masqueraded.
func TestIPVSTrace(t *testing.T) {
	svcs := []*v1.Service{svc("web")}
	slices := []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080, readyEps()...)}
	f := ipvsNode(t, svcs, slices)
	for _, tc := range []struct {
		from string
		masq bool
	}{{"10.1.0.9", false}, {"192.168.50.1", true}, {"10.1.0.1", false}} {
		in := ipvsInput(t, f, "web", svcs, slices)
		in.Query.From = netip.MustParseAddr(tc.from)
		r := Build(in)
		if r.Verdict != VerdictOK || len(r.Traces) != 1 {
			t.Fatalf("verdict %q, %d traces", r.Verdict, len(r.Traces))
		}
		var buf bytes.Buffer
		_ = r.WriteText(&buf)
		got := map[string]Outcome{}
		for _, o := range r.Traces[0].Outcomes {
			got[o.Endpoint] = o
		}
		for _, rs := range []string{"10.1.0.1:8080", "10.2.0.1:8080"} {
			o, ok := got[rs]
			// The endpoint 10.1.0.1 reaching itself is hairpin: masqueraded.
			hairpin := strings.HasPrefix(rs, tc.from+":")
			if !ok || o.Verdict != "IPVS" || o.Weight == nil || *o.Weight != 1 || math.Abs(o.Probability-0.5) > 1e-9 ||
				o.Masquerade != (tc.masq || hairpin) || o.VirtualServer != webKey.String() {
				t.Errorf("from %s: outcome for %s: %+v\n%s", tc.from, rs, o, buf.String())
			}
		}
		if len(got) != 2 || !strings.Contains(buf.String(), "IPVS 10.1.0.1:8080") {
			t.Errorf("from %s: outcomes %+v\n%s", tc.from, r.Traces[0].Outcomes, buf.String())
		}
	}
}

// Without endpoints no virtual server exists; the helper rules reject.
func TestIPVSTraceReject(t *testing.T) {
	svcs := []*v1.Service{svc("web")}
	f := ipvsNode(t, svcs, nil)
	in := ipvsInput(t, f, "web", svcs, nil)
	in.Query.From = netip.MustParseAddr("10.1.0.9")
	r := Build(in)
	if len(r.Traces) != 1 || len(r.Traces[0].Outcomes) != 1 || r.Traces[0].Outcomes[0].Verdict != "REJECT" {
		t.Fatalf("traces %+v", r.Traces)
	}
}

func TestIPVSWeights(t *testing.T) {
	vs := &ipvs.VirtualServer{Key: webKey, Scheduler: "wrr", RealServers: map[netip.AddrPort]int{
		netip.MustParseAddrPort("10.1.0.1:80"): 2, netip.MustParseAddrPort("10.1.0.2:80"): 1, netip.MustParseAddrPort("10.1.0.3:80"): 0,
	}}
	agg := &ipvs.Aggregate{Sets: map[string]map[string]bool{}}
	pkt := iptables.Packet{Src: netip.MustParseAddr("10.9.0.1"), Dst: webKey.Addr, Protocol: "tcp", DstPort: 80}
	want := map[string]float64{"10.1.0.1:80": 2.0 / 3, "10.1.0.2:80": 1.0 / 3, "10.1.0.3:80": 0}
	for _, sched := range []string{"wrr", "rr"} {
		vs.Scheduler = sched
		for _, o := range realServers(Outcome{Probability: 1}, vs, pkt, agg) {
			w := want[o.Endpoint]
			if sched == "rr" && w > 0 {
				w = 0.5
			}
			if math.Abs(o.Probability-w) > 1e-9 {
				t.Errorf("%s: %s probability %v, want %v", sched, o.Endpoint, o.Probability, w)
			}
		}
	}
}

// proxy diff: nothing on a clean node; after a virtual server is deleted
// by hand, exactly the calls that put it back.
func TestIPVSDiff(t *testing.T) {
	svcs := []*v1.Service{svc("web", nodePort)}
	slices := []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080, readyEps()...)}
	f := ipvsNode(t, svcs, slices)
	diff := func() (*DiffReport, string) {
		in := ipvsInput(t, f, "web", svcs, slices)
		snap := DaemonSnapshot(testNode, testNodeObj(""), svcs, slices)
		d := Diff(snap, in.Families)
		var buf bytes.Buffer
		if err := d.WriteText(&buf); err != nil {
			t.Fatal(err)
		}
		return d, buf.String()
	}
	if d, text := diff(); d.Differ {
		t.Fatalf("clean node differs:\n%s", text)
	}
	must(t, f.vs.DeleteService(webKey))
	d, text := diff()
	want := []string{
		"ipvsadm -A -t 172.30.0.10:80 -s rr",
		"ipvsadm -a -t 172.30.0.10:80 -r 10.1.0.1:8080 -m -w 1",
		"ipvsadm -a -t 172.30.0.10:80 -r 10.2.0.1:8080 -m -w 1",
	}
	var got []string
	for _, c := range d.Families[0].IPVSDiff {
		got = append(got, c.Command)
	}
	if !d.Differ || strings.Join(got, "\n") != strings.Join(want, "\n") || len(d.Families[0].Services) != 0 || d.Families[0].Base != nil {
		t.Errorf("diff commands %q, want %q\n%s", got, want, text)
	}
}

// The JSON report reads back (-o json is for programs).
func TestIPVSJSONRoundTrip(t *testing.T) {
	svcs := []*v1.Service{svc("web")}
	slices := []*discovery.EndpointSlice{slice("web", "web-1", "http", 8080, readyEps()...)}
	f := ipvsNode(t, svcs, slices)
	must(t, f.vs.DeleteService(webKey))
	var buf bytes.Buffer
	must(t, Build(ipvsInput(t, f, "web", svcs, slices)).WriteJSON(&buf))
	var r Report
	must(t, json.Unmarshal(buf.Bytes(), &r))
	if ch := r.Ports[0].Families[0].IPVS.Changes; len(ch) != 3 || ch[0].VirtualServer != webKey {
		t.Errorf("changes %+v", ch)
	}
}
