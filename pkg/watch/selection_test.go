package watch

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

const (
	selNode  = "node-a"
	selZone  = "zone-a"
	selOther = "node-b"
)

// epSpec describes one endpoint of a selection case; the zero value is a
// Ready, Serving, non-terminating, remote endpoint without hints.
type epSpec struct {
	ip          string
	local       bool
	notReady    bool // Ready=false
	notServing  bool // Serving=false
	terminating bool
	zones       []string
	nodes       []string
}

func (s epSpec) endpoint() *Endpoint {
	ep := &Endpoint{
		Addr:        netip.MustParseAddr(s.ip),
		Port:        8080,
		NodeName:    selOther,
		IsLocal:     s.local,
		ZoneHints:   s.zones,
		NodeHints:   s.nodes,
		Ready:       !s.notReady,
		Serving:     !s.notServing,
		Terminating: s.terminating,
	}
	if s.local {
		ep.NodeName = selNode
	}
	return ep
}

// servingTerm is a Serving, Terminating, not Ready endpoint.
func servingTerm(ip string, local bool) epSpec {
	return epSpec{ip: ip, local: local, notReady: true, terminating: true}
}

// dead is a not Ready, not Serving, terminating endpoint: never usable.
func dead(ip string, local bool) epSpec {
	return epSpec{ip: ip, local: local, notReady: true, notServing: true, terminating: true}
}

type portKind int

const (
	clusterIPPort portKind = iota
	nodePortPort
)

func selPort(kind portKind, etpLocal, itpLocal bool) *ServicePort {
	p := &ServicePort{
		Name:                ServicePortName{Port: "http", Protocol: v1.ProtocolTCP},
		Type:                v1.ServiceTypeClusterIP,
		Protocol:            v1.ProtocolTCP,
		Port:                80,
		ClusterIPs:          []netip.Addr{netip.MustParseAddr("172.30.0.10")},
		ExternalPolicyLocal: etpLocal,
		InternalPolicyLocal: itpLocal,
	}
	if kind == nodePortPort {
		p.Type, p.NodePort = v1.ServiceTypeNodePort, 30080
	}
	return p
}

func names(eps []*Endpoint) []string {
	var out []string
	for _, ep := range eps {
		out = append(out, ep.Addr.String())
	}
	return out
}

func TestSelect(t *testing.T) {
	node := NodeInfo{Name: selNode, Zone: selZone}
	cases := []struct {
		name string
		port *ServicePort
		eps  []*Endpoint
		node *NodeInfo // default: node

		cluster, local, all []string
		hasAny              bool
		mode                string
		termCluster         bool
		termLocal           bool
	}{
		{
			name: "only ready endpoints",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1"},
				epSpec{ip: "10.0.0.2", notReady: true},                     // serving, not terminating: still starting
				servingTerm("10.0.0.3", false),                             // ready ones exist: no fallback
				epSpec{ip: "10.0.0.4", notReady: true, notServing: true},   // plain not ready
				epSpec{ip: "10.0.0.5", local: true},                        // local ready
				epSpec{ip: "10.0.0.6", local: true, notReady: true},        // local not ready
				epSpec{ip: "10.0.0.7", notReady: true, terminating: false}, // serving, not ready
			),
			cluster: []string{"10.0.0.1", "10.0.0.5"},
			all:     []string{"10.0.0.1", "10.0.0.5"},
			hasAny:  true,
		},
		{
			name:    "missing conditions mean ready and serving",
			port:    selPort(clusterIPPort, false, false),
			eps:     []*Endpoint{fromSlice(t, discovery.Endpoint{Addresses: []string{"10.0.0.1"}}), fromSlice(t, discovery.Endpoint{Addresses: []string{"10.0.0.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(false)}})},
			cluster: []string{"10.0.0.1"},
			all:     []string{"10.0.0.1"},
			hasAny:  true,
		},
		{
			name: "missing conditions on a terminating endpoint mean serving",
			port: selPort(clusterIPPort, false, false),
			eps: []*Endpoint{fromSlice(t, discovery.Endpoint{Addresses: []string{"10.0.0.1"},
				Conditions: discovery.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)}})},
			cluster:     []string{"10.0.0.1"},
			all:         []string{"10.0.0.1"},
			hasAny:      true,
			termCluster: true,
		},
		{
			name: "cluster falls back to serving terminating when nothing is ready anywhere",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				servingTerm("10.0.0.1", false),
				dead("10.0.0.2", false),
				epSpec{ip: "10.0.0.3", notReady: true, notServing: true},
				servingTerm("10.0.0.4", true),
			),
			cluster:     []string{"10.0.0.1", "10.0.0.4"},
			all:         []string{"10.0.0.1", "10.0.0.4"},
			hasAny:      true,
			termCluster: true,
		},
		{
			name:   "non-serving terminating endpoints are never used",
			port:   selPort(clusterIPPort, false, false),
			eps:    eps(dead("10.0.0.1", false), dead("10.0.0.2", true)),
			hasAny: false,
		},
		{
			name:    "eTP Local uses local ready endpoints only",
			port:    selPort(nodePortPort, true, false),
			eps:     eps(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", local: true}, servingTerm("10.0.0.3", true), epSpec{ip: "10.0.0.4", local: true, notReady: true}),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			local:   []string{"10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			name:      "eTP Local falls back to local serving terminating endpoints",
			port:      selPort(nodePortPort, true, false),
			eps:       eps(epSpec{ip: "10.0.0.1"}, servingTerm("10.0.0.2", true), dead("10.0.0.3", true), servingTerm("10.0.0.4", false)),
			cluster:   []string{"10.0.0.1"},
			local:     []string{"10.0.0.2"},
			all:       []string{"10.0.0.1", "10.0.0.2"},
			hasAny:    true,
			termLocal: true,
		},
		{
			name:    "eTP Local without local endpoints: Local empty but HasAny",
			port:    selPort(nodePortPort, true, false),
			eps:     eps(epSpec{ip: "10.0.0.1"}, dead("10.0.0.2", true)),
			cluster: []string{"10.0.0.1"},
			all:     []string{"10.0.0.1"},
			hasAny:  true,
		},
		{
			name:   "eTP Local on a port that is not externally accessible has no effect",
			port:   selPort(clusterIPPort, true, false),
			eps:    eps(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", local: true}),
			hasAny: true, cluster: []string{"10.0.0.1", "10.0.0.2"}, all: []string{"10.0.0.1", "10.0.0.2"},
		},
		{
			name:   "iTP Local uses local ready endpoints and no Cluster set",
			port:   selPort(clusterIPPort, false, true),
			eps:    eps(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", local: true}, servingTerm("10.0.0.3", true)),
			local:  []string{"10.0.0.2"},
			all:    []string{"10.0.0.2"},
			hasAny: true,
		},
		{
			name:      "iTP Local falls back to local serving terminating",
			port:      selPort(clusterIPPort, false, true),
			eps:       eps(epSpec{ip: "10.0.0.1"}, servingTerm("10.0.0.2", true)),
			local:     []string{"10.0.0.2"},
			all:       []string{"10.0.0.2"},
			hasAny:    true,
			termLocal: true,
		},
		{
			name:   "iTP Local without local endpoints: nothing reachable but HasAny",
			port:   selPort(clusterIPPort, false, true),
			eps:    eps(epSpec{ip: "10.0.0.1"}, servingTerm("10.0.0.2", false)),
			hasAny: true,
		},
		{
			name:   "iTP Local with only unusable endpoints: HasAny false",
			port:   selPort(clusterIPPort, false, true),
			eps:    eps(dead("10.0.0.1", true), epSpec{ip: "10.0.0.2", notReady: true, notServing: true}),
			hasAny: false,
		},
		{
			// kube-proxy still computes Cluster endpoints for an externally
			// accessible port: pod and host traffic to its external
			// addresses is short-circuited to them.
			name:    "both Local on a NodePort",
			port:    selPort(nodePortPort, true, true),
			eps:     eps(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", local: true}),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			local:   []string{"10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			name:   "both Local on a ClusterIP port behaves as iTP Local",
			port:   selPort(clusterIPPort, true, true),
			eps:    eps(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", local: true}),
			local:  []string{"10.0.0.2"},
			all:    []string{"10.0.0.2"},
			hasAny: true,
		},
		{
			name: "zone hints: all hinted and one for our zone narrows to our zone",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", zones: []string{selZone}},
				epSpec{ip: "10.0.0.2", zones: []string{"zone-b"}},
				epSpec{ip: "10.0.0.3", zones: []string{"zone-b", selZone}},
			),
			cluster: []string{"10.0.0.1", "10.0.0.3"},
			all:     []string{"10.0.0.1", "10.0.0.3"},
			hasAny:  true,
			mode:    TopologyPreferSameZone,
		},
		{
			name:    "zone hints: one ready endpoint without hints disables topology",
			port:    selPort(clusterIPPort, false, false),
			eps:     eps(epSpec{ip: "10.0.0.1", zones: []string{selZone}}, epSpec{ip: "10.0.0.2"}),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			name:    "zone hints: no endpoint for our zone disables topology",
			port:    selPort(clusterIPPort, false, false),
			eps:     eps(epSpec{ip: "10.0.0.1", zones: []string{"zone-b"}}, epSpec{ip: "10.0.0.2", zones: []string{"zone-c"}}),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			name:    "zone hints: node without zone label ignores hints",
			port:    selPort(clusterIPPort, false, false),
			node:    &NodeInfo{Name: selNode},
			eps:     eps(epSpec{ip: "10.0.0.1", zones: []string{selZone}}, epSpec{ip: "10.0.0.2", zones: []string{"zone-b"}}),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			name: "node hints: PreferSameNode wins over zone hints",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", nodes: []string{selOther}, zones: []string{selZone}},
				epSpec{ip: "10.0.0.2", local: true, nodes: []string{selNode}, zones: []string{selZone}},
			),
			cluster: []string{"10.0.0.2"},
			all:     []string{"10.0.0.2"},
			hasAny:  true,
			mode:    TopologyPreferSameNode,
		},
		{
			name: "node hints: none for our node falls back to zone hints",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", nodes: []string{selOther}, zones: []string{selZone}},
				epSpec{ip: "10.0.0.2", nodes: []string{"node-c"}, zones: []string{"zone-b"}},
			),
			cluster: []string{"10.0.0.1"},
			all:     []string{"10.0.0.1"},
			hasAny:  true,
			mode:    TopologyPreferSameZone,
		},
		{
			name: "node hints: one endpoint without node hint disables them",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", nodes: []string{selNode}},
				epSpec{ip: "10.0.0.2"},
			),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			// If the not-ready endpoint counted, zone hints would be on
			// (it is hinted for our zone) and the ready ones filtered out.
			name: "not-ready endpoints are ignored when computing hints (hinted for us)",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", zones: []string{"zone-b"}},
				epSpec{ip: "10.0.0.2", zones: []string{"zone-c"}},
				epSpec{ip: "10.0.0.3", notReady: true, zones: []string{selZone}, nodes: []string{selNode}},
			),
			cluster: []string{"10.0.0.1", "10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
		},
		{
			// If the unhinted not-ready endpoint counted, hints would be off.
			name: "not-ready endpoints are ignored when computing hints (unhinted)",
			port: selPort(clusterIPPort, false, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", zones: []string{selZone}},
				epSpec{ip: "10.0.0.2", zones: []string{"zone-b"}},
				servingTerm("10.0.0.3", false),
			),
			cluster: []string{"10.0.0.1"},
			all:     []string{"10.0.0.1"},
			hasAny:  true,
			mode:    TopologyPreferSameZone,
		},
		{
			name: "topology narrows Cluster but not Local (eTP Local)",
			port: selPort(nodePortPort, true, false),
			eps: eps(
				epSpec{ip: "10.0.0.1", zones: []string{selZone}},
				epSpec{ip: "10.0.0.2", local: true, zones: []string{"zone-b"}},
			),
			cluster: []string{"10.0.0.1"},
			local:   []string{"10.0.0.2"},
			all:     []string{"10.0.0.1", "10.0.0.2"},
			hasAny:  true,
			mode:    TopologyPreferSameZone,
		},
		{
			name:   "no endpoints at all",
			port:   selPort(nodePortPort, true, false),
			hasAny: false,
		},
		{
			name:   "HasAny false when nothing is usable",
			port:   selPort(nodePortPort, true, false),
			eps:    eps(dead("10.0.0.1", true), dead("10.0.0.2", false), epSpec{ip: "10.0.0.3", notReady: true, notServing: true}),
			hasAny: false,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := node
			if tc.node != nil {
				n = *tc.node
			}
			sel := Select(tc.port, tc.eps, n)
			check := func(what string, got []*Endpoint, want []string) {
				t.Helper()
				if g := names(got); !slices.Equal(g, want) {
					t.Errorf("%s = %v, want %v", what, g, want)
				}
			}
			check("Cluster", sel.Cluster, tc.cluster)
			check("Local", sel.Local, tc.local)
			check("All", sel.All, tc.all)
			if sel.HasAny != tc.hasAny {
				t.Errorf("HasAny = %v, want %v", sel.HasAny, tc.hasAny)
			}
			if sel.TopologyMode != tc.mode {
				t.Errorf("TopologyMode = %q, want %q", sel.TopologyMode, tc.mode)
			}
			if sel.UsedTerminatingCluster != tc.termCluster || sel.UsedTerminatingLocal != tc.termLocal {
				t.Errorf("UsedTerminating cluster/local = %v/%v, want %v/%v",
					sel.UsedTerminatingCluster, sel.UsedTerminatingLocal, tc.termCluster, tc.termLocal)
			}
		})
	}
}

func eps(specs ...epSpec) []*Endpoint {
	out := make([]*Endpoint, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.endpoint())
	}
	return out
}

// fromSlice converts an EndpointSlice endpoint the way the Tracker does.
func fromSlice(t *testing.T, e discovery.Endpoint) *Endpoint {
	t.Helper()
	ep, err := endpointFrom(&e, 8080, selNode)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func TestServicePortPolicies(t *testing.T) {
	cases := []struct {
		name                        string
		port                        *ServicePort
		external, cluster, useLocal bool
	}{
		{"ClusterIP", selPort(clusterIPPort, false, false), false, true, false},
		{"ClusterIP iTP Local", selPort(clusterIPPort, false, true), false, false, true},
		{"NodePort", selPort(nodePortPort, false, false), true, true, false},
		{"NodePort eTP Local", selPort(nodePortPort, true, false), true, true, true},
		{"NodePort iTP Local", selPort(nodePortPort, false, true), true, true, true},
		// Upstream: externally accessible ports always use Cluster
		// endpoints (short-circuit of pod/host traffic to external IPs).
		{"NodePort both Local", selPort(nodePortPort, true, true), true, true, true},
	}
	for _, tc := range cases {
		if got := tc.port.ExternallyAccessible(); got != tc.external {
			t.Errorf("%s: ExternallyAccessible = %v, want %v", tc.name, got, tc.external)
		}
		if got := tc.port.UsesClusterEndpoints(); got != tc.cluster {
			t.Errorf("%s: UsesClusterEndpoints = %v, want %v", tc.name, got, tc.cluster)
		}
		if got := tc.port.UsesLocalEndpoints(); got != tc.useLocal {
			t.Errorf("%s: UsesLocalEndpoints = %v, want %v", tc.name, got, tc.useLocal)
		}
	}
}
