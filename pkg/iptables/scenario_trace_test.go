package iptables

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/pkg/watch"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestTraceScenarios plans every iptables scenario of the acceptance
// examples (or of $SVCPROXY_SCENARIOS) and follows each flow through the
// planned rules with the packet tracer: the same verdicts the acceptance
// runner checks with real packets, checked here in milliseconds.
func TestTraceScenarios(t *testing.T) {
	path := os.Getenv("SVCPROXY_SCENARIOS")
	if path == "" {
		path = testenv.SharedFile(t, "acceptance", "examples.yaml")
	}
	scenarios, _, err := acceptance.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scenarios {
		if !sc.HasMode("iptables") {
			continue
		}
		t.Run(sc.Name, func(t *testing.T) { traceScenario(t, sc) })
	}
}

func traceScenario(t *testing.T, sc acceptance.Scenario) {
	tr := watch.NewTracker(sc.Node.Name)
	tr.OnNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: sc.Node.Name, Labels: sc.Node.Labels}})
	apply := func(objs acceptance.Objects) {
		for _, s := range objs.Services {
			tr.OnService(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, s.ToAPI())
		}
		for _, es := range objs.EndpointSlices {
			tr.OnEndpointSlice(es.ToAPI(), false)
		}
	}
	apply(acceptance.Objects{Services: sc.Services, EndpointSlices: sc.EndpointSlices})
	var prev map[v1.IPFamily]*Ruleset
	check := func(flows []acceptance.Flow) {
		snap := tr.Snapshot()
		cur := map[v1.IPFamily]*Ruleset{}
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			var p *Ruleset
			if prev != nil {
				p = prev[fam]
			}
			cur[fam] = PlanFrom(p, snap, scenarioOptions(sc, fam))
		}
		prev = cur
		for _, f := range flows {
			t.Run(f.Name, func(t *testing.T) { traceFlow(t, sc, f, cur) })
		}
	}
	check(sc.Flows)
	for _, step := range sc.Steps {
		if step.Apply != nil {
			apply(*step.Apply)
		}
		if step.Delete != nil {
			for _, key := range step.Delete.Services {
				ns, name, _ := acceptance.SplitKey(key)
				tr.OnService(types.NamespacedName{Namespace: ns, Name: name}, nil)
			}
			for _, key := range step.Delete.EndpointSlices {
				ns, name, _ := acceptance.SplitKey(key)
				for _, es := range sc.EndpointSlices {
					if es.Namespace == ns && es.Name == name {
						tr.OnEndpointSlice(es.ToAPI(), true)
					}
				}
			}
		}
		check(step.Flows)
	}
}

func scenarioOptions(sc acceptance.Scenario, fam v1.IPFamily) PlanOptions {
	opts := PlanOptions{Family: fam, MasqueradeBit: 14, LocalhostNodePorts: true}
	if sc.Config.MasqueradeAll != nil {
		opts.MasqueradeAll = *sc.Config.MasqueradeAll
	}
	if sc.Config.LocalhostNodePorts != nil {
		opts.LocalhostNodePorts = *sc.Config.LocalhostNodePorts
	}
	if sc.Node.LocalDetector != "None" {
		for _, c := range sc.Node.ClusterCIDRs() {
			if p, err := netip.ParsePrefix(c); err == nil && watch.FamilyOf(p.Addr()) == fam {
				opts.LocalDetector = ClusterCIDRDetector(p)
			}
		}
	}
	for _, ip := range sc.Node.IPs {
		if a := netip.MustParseAddr(ip); watch.FamilyOf(a) == fam && !opts.NodeIP.IsValid() {
			opts.NodeIP = a
		}
	}
	if len(sc.Config.NodePortAddresses) > 0 {
		opts.NodePortAddresses = []netip.Addr{}
		for _, c := range sc.Config.NodePortAddresses {
			prefix := netip.MustParsePrefix(c)
			for _, ip := range sc.Node.IPs {
				if a := netip.MustParseAddr(ip); prefix.Contains(a) && watch.FamilyOf(a) == fam {
					opts.NodePortAddresses = append(opts.NodePortAddresses, a)
				}
			}
		}
	}
	return opts
}

func traceFlow(t *testing.T, sc acceptance.Scenario, f acceptance.Flow, rulesets map[v1.IPFamily]*Ruleset) {
	if f.SourceKind == "spoofed" {
		t.Skip("spoofed source")
	}
	dst := netip.MustParseAddr(f.DestIP)
	src := netip.MustParseAddr(f.Source)
	var local []netip.Addr
	for _, ip := range sc.Node.IPs {
		local = append(local, netip.MustParseAddr(ip))
	}
	pkt := Packet{Src: src, Dst: dst, Protocol: strings.ToLower(f.Protocol), DstPort: f.DestPort,
		FromNode: f.SourceKind == "node" || f.SourceKind == "localhost"}
	outcomes := NewTracer(rulesets[watch.FamilyOf(dst)], local).Trace(pkt)

	expect, masq := f.Effective("iptables")
	if msg := judge(outcomes, expect, masq); msg != "" {
		t.Errorf("%s\noutcomes: %s", msg, describe(outcomes))
	}
}

// judge applies FORMAT.md's expectation rules to traced outcomes.
func judge(outcomes []Outcome, expect []string, masq *bool) string {
	words := map[string]bool{"REJECT": true, "DROP": true, "LOCAL": true, "UNHANDLED": true}
	if words[expect[0]] {
		for _, o := range outcomes {
			v := o.Verdict
			if v == "DNAT" {
				return "expected " + strings.Join(expect, "|") + " but traffic is DNATed to " + o.Endpoint
			}
			if !slices.Contains(expect, v) && !slices.Contains(expect, "UNHANDLED") {
				return "expected " + strings.Join(expect, "|") + ", got " + v
			}
		}
		return ""
	}
	seen := map[string]bool{}
	for _, o := range outcomes {
		if o.Verdict != "DNAT" || !slices.Contains(expect, o.Endpoint) {
			return "outcome " + o.Verdict + " " + o.Endpoint + " not in expected set"
		}
		if masq != nil && o.Masquerade != *masq {
			return "masquerade mismatch for " + o.Endpoint
		}
		seen[o.Endpoint] = true
	}
	for _, e := range expect {
		if !seen[e] {
			return "backend " + e + " is never chosen"
		}
	}
	return ""
}

func describe(outcomes []Outcome) string {
	var parts []string
	for _, o := range outcomes {
		parts = append(parts, strings.TrimSpace(o.Verdict+" "+o.Endpoint)+map[bool]string{true: " (masq)", false: ""}[o.Masquerade]+"\n  "+strings.Join(o.Path, "\n  "))
	}
	return strings.Join(parts, "\n")
}
