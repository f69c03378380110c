package iptables

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/e2e/testenv"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

var update = flag.Bool("update", false, "rewrite golden files")

type goldenCase struct {
	name   string
	svcs   []watchtest.Service
	slices []*discovery.EndpointSlice
	opts   func(*PlanOptions)
}

func goldenCases() []goldenCase {
	web := watchtest.Service{Namespace: "ns1", Name: "web", ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{watchtest.TCPPort("http", 80, 0)}}
	webSlice := watchtest.Slice("ns1", "web", "web-1", 8080, "http", watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.2.1", Node: "node2"})
	lb := watchtest.Service{Namespace: "ns1", Name: "lb", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"172.30.0.42"},
		Ports: []v1.ServicePort{watchtest.TCPPort("p80", 80, 3001)}, ExternalIPs: []string{"192.168.99.11"}, LBIPs: []string{"198.51.100.4"}}
	lbSlice := watchtest.Slice("ns1", "lb", "lb-1", 80, "p80", watchtest.Endpoint{IP: "10.180.0.2", Node: watchtest.Node}, watchtest.Endpoint{IP: "10.180.1.2", Node: "remote"})
	withRanges := lb
	withRanges.SourceRanges = []string{"203.0.113.0/25", "192.168.0.0/24"}
	etp := lb
	etp.ETPLocal, etp.HealthCheckNodePort = true, 30000
	itp := web
	itp.ITPLocal = true
	sticky := web
	sticky.AffinitySeconds = 10800
	udp := web
	udp.Ports = []v1.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}, {Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 53}}
	udpSlice := watchtest.Slice("ns1", "web", "web-1", 53, "dns", watchtest.Endpoint{IP: "10.180.0.1", Node: watchtest.Node})
	udpSlice.Ports = append(udpSlice.Ports, discovery.EndpointPort{Name: strPtr("sctp"), Protocol: protoPtr(v1.ProtocolSCTP), Port: int32Ptr(53)})
	terminating := watchtest.Slice("ns1", "web", "web-1", 8080, "http",
		watchtest.Endpoint{IP: "10.0.1.2", Node: watchtest.Node, NotReady: true, Serving: true, Terminating: true},
		watchtest.Endpoint{IP: "10.0.1.4", Node: "other", NotReady: true, Serving: false, Terminating: true})

	proxyMode := lb
	proxyMode.ProxyLBIPs = []string{"198.51.100.9"}
	v6 := watchtest.Service{Namespace: "ns1", Name: "web6", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"172.30.0.71", "fd00:172:30::71"},
		Ports: []v1.ServicePort{watchtest.TCPPort("p80", 80, 3071)}}
	v6Slice := watchtest.Slice("ns1", "web6", "web6-v6", 80, "p80", watchtest.Endpoint{IP: "fd00:10:180::71", Node: watchtest.Node}, watchtest.Endpoint{IP: "fd00:10:180::2:71", Node: "node2"})
	v4Slice := watchtest.Slice("ns1", "web6", "web6-v4", 80, "p80", watchtest.Endpoint{IP: "10.180.0.71", Node: watchtest.Node})

	return []goldenCase{
		{name: "loadbalancer-ipmode-proxy-left-alone", svcs: []watchtest.Service{proxyMode}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "dual-stack-ipv6-family", svcs: []watchtest.Service{v6}, slices: []*discovery.EndpointSlice{v6Slice, v4Slice}, opts: func(o *PlanOptions) {
			o.Family = v1.IPv6Protocol
			o.LocalDetector = ClusterCIDRDetector(netip.MustParsePrefix("fd00:10::/64"))
			o.NodeIP = netip.MustParseAddr("2001:db8::1")
		}},
		{name: "clusterip", svcs: []watchtest.Service{web}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "clusterip-masquerade-all", svcs: []watchtest.Service{web}, slices: []*discovery.EndpointSlice{webSlice}, opts: func(o *PlanOptions) { o.MasqueradeAll = true }},
		{name: "clusterip-no-detector", svcs: []watchtest.Service{web}, slices: []*discovery.EndpointSlice{webSlice}, opts: func(o *PlanOptions) { o.LocalDetector = nil }},
		{name: "no-endpoints-reject", svcs: []watchtest.Service{lb}},
		{name: "loadbalancer-nodeport-externalip", svcs: []watchtest.Service{lb}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "loadbalancer-source-ranges", svcs: []watchtest.Service{withRanges}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "etp-local", svcs: []watchtest.Service{etp}, slices: []*discovery.EndpointSlice{lbSlice}},
		{name: "etp-local-no-local-endpoint", svcs: []watchtest.Service{etp}, slices: []*discovery.EndpointSlice{watchtest.Slice("ns1", "lb", "lb-1", 80, "p80", watchtest.Endpoint{IP: "10.180.1.2", Node: "remote"})}},
		{name: "itp-local", svcs: []watchtest.Service{itp}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "session-affinity", svcs: []watchtest.Service{sticky}, slices: []*discovery.EndpointSlice{webSlice}},
		{name: "udp-sctp", svcs: []watchtest.Service{udp}, slices: []*discovery.EndpointSlice{udpSlice}},
		{name: "terminating-fallback", svcs: []watchtest.Service{web}, slices: []*discovery.EndpointSlice{terminating}},
		{name: "nodeport-addresses", svcs: []watchtest.Service{lb}, slices: []*discovery.EndpointSlice{lbSlice}, opts: func(o *PlanOptions) { o.NodePortAddresses = []netip.Addr{nodeIPs[0]} }},
		{name: "localhost-nodeports-off", svcs: []watchtest.Service{lb}, slices: []*discovery.EndpointSlice{lbSlice}, opts: func(o *PlanOptions) { o.LocalhostNodePorts = false }},
	}
}

// TestPlanGolden renders a full sync for each behaviour and compares it with
// testdata/<case>.golden (go test -run TestPlanGolden -update rewrites them
// after a reviewed change). Every payload is also applied to the validating
// fake, so a golden file can never hold a ruleset the kernel would refuse.
func TestPlanGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaultOpts()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			rs := Plan(snapshot(t, tc.svcs, tc.slices...), opts)
			fake := NewFake()
			var got bytes.Buffer
			for _, p := range FullPayloads(rs, nil, DefaultBatchLines) {
				if err := fake.Restore(p); err != nil {
					t.Fatalf("fake kernel refused the payload: %v\n%s", err, p)
				}
				got.Write(p)
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("plan differs from %s (- golden, + plan):\n%s", path, testenv.LineDiff(string(want), got.String()))
			}
		})
	}
}

func strPtr(s string) *string             { return &s }
func int32Ptr(i int32) *int32             { return &i }
func protoPtr(p v1.Protocol) *v1.Protocol { return &p }
