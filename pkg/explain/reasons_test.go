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
)

// decisions builds a report and returns, per endpoint address, the
// internal and external decisions as "used" or the reason.
func decisions(t *testing.T, s *v1.Service, zone string, sl ...*discovery.EndpointSlice) (internal, external map[string]string) {
	t.Helper()
	in := input(t, s.Name, []*v1.Service{s}, sl, nil)
	in.Node = testNodeObj(zone)
	in.Snapshot = DaemonSnapshot(testNode, in.Node, []*v1.Service{s}, sl)
	r := Build(in)
	if len(r.Ports) != 1 {
		t.Fatalf("%d ports", len(r.Ports))
	}
	internal, external = map[string]string{}, map[string]string{}
	show := func(d Decision) string {
		if d.Used {
			return "used"
		}
		return d.Reason
	}
	for _, e := range r.Ports[0].Endpoints {
		internal[e.Address] = show(e.Internal)
		if e.External != nil {
			external[e.Address] = show(*e.External)
		}
	}
	return internal, external
}

func TestReasons(t *testing.T) {
	for _, tc := range []struct {
		name     string
		svc      *v1.Service
		zone     string
		eps      []ep
		internal map[string]string
		external map[string]string
	}{
		{
			name: "readiness",
			svc:  svc("web"),
			eps: []ep{
				{ip: "10.0.0.1", node: testNode},
				{ip: "10.0.0.2", node: testNode, ready: no},
				{ip: "10.0.0.3", node: testNode, ready: no, serving: no},
				{ip: "10.0.0.4", node: testNode, ready: no, serving: yes, terminating: yes},
				{ip: "10.0.0.5", node: testNode, ready: no, serving: no, terminating: yes},
			},
			internal: map[string]string{
				"10.0.0.1:80": "used",
				"10.0.0.2:80": "not ready",
				"10.0.0.3:80": "not ready (and not serving)",
				"10.0.0.4:80": "terminating, but a ready endpoint exists",
				"10.0.0.5:80": "terminating and not serving",
			},
		},
		{
			name: "terminating fallback",
			svc:  svc("web"),
			eps: []ep{
				{ip: "10.0.0.4", node: "node-b", ready: no, serving: yes, terminating: yes},
				{ip: "10.0.0.5", node: "node-b", ready: no, serving: no, terminating: yes},
			},
			internal: map[string]string{"10.0.0.4:80": "used", "10.0.0.5:80": "terminating and not serving"},
		},
		{
			name: "external policy Local",
			svc:  svc("web", etpLocal),
			eps:  []ep{{ip: "10.0.0.1", node: testNode}, {ip: "10.0.0.2", node: "node-b"}, {ip: "10.0.0.3"}},
			internal: map[string]string{
				"10.0.0.1:80": "used", "10.0.0.2:80": "used", "10.0.0.3:80": "used",
			},
			external: map[string]string{
				"10.0.0.1:80": "used",
				"10.0.0.2:80": "on node node-b and the policy is Local",
				"10.0.0.3:80": "on no node (nodeName unset) and the policy is Local",
			},
		},
		{
			name: "internal policy Local, local terminating fallback",
			svc:  svc("web", itpLocal),
			eps: []ep{
				{ip: "10.0.0.1", node: testNode, ready: no, serving: yes, terminating: yes},
				{ip: "10.0.0.2", node: "node-b"},
			},
			internal: map[string]string{"10.0.0.1:80": "used", "10.0.0.2:80": "on node node-b and the policy is Local"},
		},
		{
			name: "zone hints",
			svc:  svc("web"),
			zone: "z1",
			eps: []ep{
				{ip: "10.0.0.1", node: "node-b", zone: "z1", zoneHints: []string{"z1"}},
				{ip: "10.0.0.2", node: "node-c", zone: "z2", zoneHints: []string{"z2"}},
			},
			internal: map[string]string{"10.0.0.1:80": "used", "10.0.0.2:80": "topology hint for zone z2, this node is in zone z1"},
		},
		{
			name: "node hints",
			svc:  svc("web"),
			eps: []ep{
				{ip: "10.0.0.1", node: testNode, nodeHints: []string{testNode}},
				{ip: "10.0.0.2", node: "node-b", nodeHints: []string{"node-b"}},
			},
			internal: map[string]string{"10.0.0.1:80": "used", "10.0.0.2:80": "topology hint for node node-b, not this node (node-a)"},
		},
		{
			name:     "partial hints are ignored",
			svc:      svc("web"),
			zone:     "z1",
			eps:      []ep{{ip: "10.0.0.1", zoneHints: []string{"z2"}}, {ip: "10.0.0.2"}},
			internal: map[string]string{"10.0.0.1:80": "used", "10.0.0.2:80": "used"},
		},
		{
			name:     "wrong family",
			svc:      svc("web"),
			eps:      []ep{{ip: "fd00::1"}},
			internal: map[string]string{"[fd00::1]:80": "wrong IP family (IPv6 endpoint; the service has no IPv6 cluster IP)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			internal, external := decisions(t, tc.svc, tc.zone, slice("web", "web-1", "http", 80, tc.eps...))
			check := func(kind string, got, want map[string]string) {
				if want == nil {
					return
				}
				for a, w := range want {
					if got[a] != w {
						t.Errorf("%s %s: %q, want %q", kind, a, got[a], w)
					}
				}
				if len(got) != len(want) {
					t.Errorf("%s: %v, want %v", kind, got, want)
				}
			}
			check("internal", internal, tc.internal)
			check("external", external, tc.external)
		})
	}
}

// TestReportJSON checks the JSON field names operators' scripts use.
func TestReportJSON(t *testing.T) {
	web := svc("web", nodePort)
	sl := slice("web", "web-1", "http", 8080, ep{ip: "10.1.0.1", node: testNode}, ep{ip: "10.2.0.1", node: "node-b", ready: no})
	in := input(t, "web", []*v1.Service{web}, []*discovery.EndpointSlice{sl}, nil)
	tg, _ := ParseTarget("172.30.0.10:80/tcp")
	port := "http"
	in.Query = Query{Service: "ns1/web", Target: &tg, MatchedPort: &port, MatchedBy: "cluster IP", From: netip.MustParseAddr("10.1.0.9")}
	var buf bytes.Buffer
	if err := Build(in).WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		"verdict", "query.service", "query.target.ip", "query.target.port", "query.target.protocol",
		"query.matchedPort", "query.matchedBy", "query.from",
		"node.name", "node.found", "node.families.0.family", "node.families.0.backend",
		"service.namespace", "service.name", "service.type", "service.clusterIPs", "service.sessionAffinity",
		"service.headless", "service.ports.0.name", "service.ports.0.port", "service.ports.0.targetPort",
		"service.ports.0.nodePort", "service.ports.0.protocol",
		"slices.0.name", "slices.0.addressType", "slices.0.ports.0.name", "slices.0.endpoints.0.addresses",
		"slices.0.endpoints.0.ready", "slices.0.endpoints.0.serving", "slices.0.endpoints.0.terminating",
		"ports.0.name", "ports.0.port", "ports.0.endpoints.0.address", "ports.0.endpoints.0.local",
		"ports.0.endpoints.0.internal.used", "ports.0.endpoints.1.internal.reason", "ports.0.endpoints.0.external.used",
		"ports.0.families.0.family", "ports.0.families.0.clusterIP", "ports.0.families.0.internal.policy",
		"ports.0.families.0.internal.action", "ports.0.families.0.internal.chain", "ports.0.families.0.internal.endpoints",
		"ports.0.families.0.external.policy", "ports.0.families.0.planned.0.table", "ports.0.families.0.planned.0.chain",
		"ports.0.families.0.planned.0.shared", "ports.0.families.0.planned.0.rules", "ports.0.families.0.kernel.checked",
		"ports.0.families.0.kernel.backend",
		"traces.0.source", "traces.0.sourceKind", "traces.0.destination", "traces.0.outcomes.0.verdict",
		"traces.0.outcomes.0.endpoint", "traces.0.outcomes.0.probability", "traces.0.outcomes.0.masquerade",
		"traces.0.outcomes.0.path",
	} {
		if _, ok := lookup(doc, path); !ok {
			t.Errorf("JSON has no %s", path)
		}
	}
	if v, _ := lookup(doc, "verdict"); v != "OK" {
		t.Errorf("verdict %v", v)
	}
	if v, _ := lookup(doc, "slices.0.endpoints.0.ready"); v != "unset=true" {
		t.Errorf("nil ready shown as %v, want unset=true", v)
	}
	if v, _ := lookup(doc, "slices.0.endpoints.0.terminating"); v != "unset=false" {
		t.Errorf("nil terminating shown as %v, want unset=false", v)
	}
	if v, _ := lookup(doc, "traces.0.outcomes.0.probability"); v != 1.0 {
		t.Errorf("probability %v", v)
	}
}

func lookup(doc any, path string) (any, bool) {
	cur := doc
	for _, part := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[part]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i := 0
			for _, ch := range part {
				i = i*10 + int(ch-'0')
			}
			if i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// TestTraceProbabilities checks that a trace from a pod lists every
// endpoint with its share, from the planned rules.
func TestTraceProbabilities(t *testing.T) {
	web := svc("web")
	sl := slice("web", "web-1", "http", 8080, ep{ip: "10.1.0.1", node: testNode}, ep{ip: "10.2.0.1", node: "node-b"}, ep{ip: "10.2.0.2", node: "node-b"})
	in := input(t, "web", []*v1.Service{web}, []*discovery.EndpointSlice{sl}, nil)
	in.Query.From = netip.MustParseAddr("10.1.0.9")
	r := Build(in)
	if len(r.Traces) != 1 {
		t.Fatalf("%d traces", len(r.Traces))
	}
	tr := r.Traces[0]
	if tr.SourceKind != SourceOther || tr.Destination != "172.30.0.10:80/tcp" || tr.KernelOutcomes != nil {
		t.Errorf("trace %+v", tr)
	}
	if len(tr.Outcomes) != 3 {
		t.Fatalf("outcomes %+v", tr.Outcomes)
	}
	for _, o := range tr.Outcomes {
		if o.Verdict != "DNAT" || math.Abs(o.Probability-1.0/3) > 1e-6 || o.Masquerade {
			t.Errorf("outcome %+v", o)
		}
	}
	// From the node itself: masqueraded (not from a pod).
	in.Query.From = nodeIP
	r = Build(in)
	if tr := r.Traces[0]; tr.SourceKind != SourceNode || !tr.Outcomes[0].Masquerade {
		t.Errorf("from node: %+v", tr)
	}
}
