package ipvs

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/testenv"
	"svcproxy.dev/svcproxy/pkg/iptables"
)

var update = flag.Bool("update", false, "rewrite golden files")

type goldenCase struct {
	name   string
	svcs   []svcSpec
	slices []*discovery.EndpointSlice
	ipt    func(*iptables.PlanOptions)
	opts   func(*Options)
}

func goldenCases() []goldenCase {
	web := svcSpec{Namespace: "ns1", Name: "web", ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 0)}}
	webSlice := slice("ns1", "web", "web-1", 8080, "http", ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"})
	lb := svcSpec{Namespace: "ns1", Name: "lb", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"172.30.0.42"},
		Ports: []v1.ServicePort{tcpPort("p80", 80, 3001)}, ExternalIPs: []string{"198.51.100.99"}, LBIPs: []string{"198.51.100.4"}}
	lbSlice := slice("ns1", "lb", "lb-1", 80, "p80", ep{IP: "10.180.0.2", Node: testNode}, ep{IP: "10.180.1.2", Node: "remote"})
	onNode := lb
	onNode.ExternalIPs = []string{nodeIP4b.String()}
	withRanges := lb
	withRanges.SourceRanges = []string{"203.0.113.0/25", "192.168.0.0/24"}
	etp := lb
	etp.ETPLocal, etp.HealthCheckNodePort = true, 30000
	etpRanges := etp
	etpRanges.SourceRanges = withRanges.SourceRanges
	both := etp
	both.ITPLocal = true
	itp := web
	itp.ITPLocal = true
	sticky := web
	sticky.AffinitySeconds = 10800
	udp := web
	udp.Type = v1.ServiceTypeNodePort
	udp.Ports = []v1.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 3053}, {Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 53, NodePort: 3054}}
	udpSlice := slice("ns1", "web", "web-1", 53, "dns", ep{IP: "10.180.0.1", Node: testNode})
	udpSlice.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
	udpSlice.Ports = append(udpSlice.Ports, discovery.EndpointPort{Name: ptr.To("sctp"), Protocol: ptr.To(v1.ProtocolSCTP), Port: ptr.To(int32(53))})
	terminating := slice("ns1", "web", "web-1", 8080, "http",
		ep{IP: "10.0.1.2", Node: testNode, NotReady: true, Serving: true, Terminating: true},
		ep{IP: "10.0.1.4", Node: "other", NotReady: true, Serving: false, Terminating: true})
	v6 := svcSpec{Namespace: "ns1", Name: "web6", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"172.30.0.71", "fd00:172:30::71"},
		Ports: []v1.ServicePort{tcpPort("p80", 80, 3071)}}
	v6Slice := slice("ns1", "web6", "web6-v6", 80, "p80", ep{IP: "fd00:10:180::71", Node: testNode}, ep{IP: "fd00:10:180::2:71", Node: "node2"})
	v4Slice := slice("ns1", "web6", "web6-v4", 80, "p80", ep{IP: "10.180.0.71", Node: testNode})

	return []goldenCase{
		{name: "clusterip", svcs: []svcSpec{web}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "clusterip-masquerade-all", svcs: []svcSpec{web}, slices: []*discovery.EndpointSlice{webSlice}, ipt: func(o *iptables.PlanOptions) { o.MasqueradeAll = true }},
		{name: "clusterip-no-detector", svcs: []svcSpec{web}, slices: []*discovery.EndpointSlice{webSlice}, ipt: func(o *iptables.PlanOptions) { o.LocalDetector = nil }},
		{name: "no-endpoints-reject", svcs: []svcSpec{lb}},
		{name: "loadbalancer-nodeport-externalip", svcs: []svcSpec{lb}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "externalip-on-node", svcs: []svcSpec{onNode}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "loadbalancer-source-ranges", svcs: []svcSpec{withRanges}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "etp-local", svcs: []svcSpec{etp}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "etp-local-source-ranges", svcs: []svcSpec{etpRanges}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "etp-local-no-local-endpoint", svcs: []svcSpec{etp}, slices: []*discovery.EndpointSlice{slice("ns1", "lb", "lb-1", 80, "p80", ep{IP: "10.180.1.2", Node: "remote"})}},
		{name: "etp-and-itp-local", svcs: []svcSpec{both}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "itp-local", svcs: []svcSpec{itp}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "itp-local-no-local-endpoint", svcs: []svcSpec{itp}, slices: []*discovery.EndpointSlice{slice("ns1", "web", "web-1", 8080, "http", ep{IP: "10.180.2.1", Node: "node2"})}},
		{name: "session-affinity", svcs: []svcSpec{sticky}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "udp-sctp-nodeports", svcs: []svcSpec{udp}, slices: []*discovery.EndpointSlice{udpSlice}},
		{name: "terminating-fallback", svcs: []svcSpec{web}, slices: []*discovery.EndpointSlice{terminating}},
		{name: "nodeport-addresses", svcs: []svcSpec{lb}, slices: []*discovery.EndpointSlice{lbSlice},
			ipt: func(o *iptables.PlanOptions) { o.NodePortAddresses = []netip.Addr{nodeIP4} }, opts: func(o *Options) { o.NodePortAddresses = []netip.Addr{nodeIP4} }},
		{name: "scheduler-wlc", svcs: []svcSpec{web}, slices: []*discovery.EndpointSlice{webSlice}, opts: func(o *Options) { o.Scheduler = "wlc" }},
		{name: "dual-stack-ipv6-family", svcs: []svcSpec{v6}, slices: []*discovery.EndpointSlice{v6Slice, v4Slice},
			ipt: func(o *iptables.PlanOptions) {
				o.Family = v1.IPv6Protocol
				o.LocalDetector = iptables.ClusterCIDRDetector(netip.MustParsePrefix("fd00:10::/64"))
				o.NodeIP = nodeIP6
			},
			opts: func(o *Options) { o.Family, o.NodeIP = v1.IPv6Protocol, nodeIP6 }},
	}
}

// TestPlanGolden syncs each case onto the validating fake kernels and
// compares the plan and what the kernels then hold with
// testdata/<case>.golden (go test -run TestPlanGolden -update rewrites
// them after a reviewed change).
func TestPlanGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			io, o := iptOpts(), ipvsOpts()
			if tc.ipt != nil {
				tc.ipt(&io)
			}
			if tc.opts != nil {
				tc.opts(&o)
			}
			e := newEnv(t, io, o)
			res := e.sync(t, snapshot(t, tc.svcs, tc.slices...))
			agg := res.State.Aggregate()
			if got, want := e.ipvs.Dump(), vsDump(agg); got != want {
				t.Errorf("IPVS table differs from the plan:\n%s\nwant:\n%s", got, want)
			}
			got := render(t, e, agg)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("plan differs from %s (- golden, + plan):\n%s", path, testenv.LineDiff(string(want), got))
			}
		})
	}
}

func vsDump(a *Aggregate) string {
	var b strings.Builder
	for _, line := range strings.Split(a.String(), "\n") {
		if strings.Contains(line, " -> ") || (strings.Contains(line, "/") && strings.Contains(line, "  # ")) {
			v, _, _ := strings.Cut(line, "  # ")
			b.WriteString(v + "\n")
		}
	}
	return b.String()
}

// render is a case's golden text: the plan's aggregate view, the ipsets as
// `ipset save` shows them, and the helper rules as iptables-save shows them.
func render(t *testing.T, e *env, agg *Aggregate) string {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(agg.String())
	save, err := e.sets.Save()
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString("# ipset save\n")
	b.Write(save)
	for _, table := range []string{iptables.TableNAT, iptables.TableFilter} {
		s, err := e.ipt.Save(table)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "# iptables-save -t %s\n", table)
		b.Write(s)
	}
	return b.String()
}
