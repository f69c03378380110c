package explain

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Kinds of difference between the plan and the kernel.
const (
	MissingChain = "missing-chain" // a planned chain is not in the kernel
	StaleChain   = "stale-chain"   // a chain of the Service the plan no longer has
	MissingRule  = "missing-rule"  // a planned rule is not in its chain
	ExtraRule    = "extra-rule"    // the chain holds a rule the plan does not
	RuleOrder    = "rule-order"    // same rules, different order
	MissingEntry = "missing-entry" // a planned shared-chain entry is not there
	ExtraEntry   = "extra-entry"   // a shared-chain entry the plan does not have
)

// Difference is one way the kernel differs from the plan.
type Difference struct {
	Kind  string `json:"kind"`
	Table string `json:"table"`
	Chain string `json:"chain"`
	// Rule is the rule concerned: as planned for a missing one, as the
	// kernel prints it for an extra one.
	Rule string `json:"rule,omitempty"`
	// Detail is a short explanation (rule counts, order).
	Detail string `json:"detail,omitempty"`
}

// String renders the difference on one line.
func (d Difference) String() string {
	s := fmt.Sprintf("%s %s %s", d.Kind, d.Table, d.Chain)
	if d.Detail != "" {
		s += " (" + d.Detail + ")"
	}
	if d.Rule != "" {
		s += ": " + d.Rule
	}
	return s
}

// onlyMissing reports whether every difference is something absent (as
// after a flush or a deleted rule) rather than something changed.
func onlyMissing(ds []Difference) bool {
	for _, d := range ds {
		switch d.Kind {
		case MissingChain, MissingRule, MissingEntry:
		default:
			return false
		}
	}
	return len(ds) > 0
}

// PlanPort plans one Service port on its own, with the daemon's options.
// Ports are planned independently (chain names carry the port), so this
// is exactly that port's share of the full plan. It returns nil when the
// port has no cluster IP of the family.
func PlanPort(snap *watch.Snapshot, name watch.ServicePortName, opts iptables.PlanOptions) *iptables.ServiceRules {
	return planPort(Family{Options: opts}, snap, name)
}

// PlanService plans every port of one Service (plus the fixed chains), as
// the daemon would.
func PlanService(snap *watch.Snapshot, svc types.NamespacedName, opts iptables.PlanOptions) *iptables.Ruleset {
	return planRules(Family{Options: opts}, serviceSnapshot(snap, svc))
}

// planRules plans the iptables rules of a snapshot with the family's
// planner: iptables mode's, or IPVS mode's helper rules.
func planRules(f Family, snap *watch.Snapshot) *iptables.Ruleset {
	if f.Planner != nil {
		return f.Planner(nil, snap, f.Options)
	}
	return iptables.Plan(snap, f.Options)
}

func planPort(f Family, snap *watch.Snapshot, name watch.ServicePortName) *iptables.ServiceRules {
	sub := portSnapshot(snap, name)
	if sub == nil {
		return nil
	}
	return planRules(f, sub).Services.Get(name.NamespacedName.String())
}

// portSnapshot is the snapshot of one Service port alone (nil when the
// snapshot lacks it).
func portSnapshot(snap *watch.Snapshot, name watch.ServicePortName) *watch.Snapshot {
	port, ok := snap.Services.Lookup(name)
	if !ok {
		return nil
	}
	return &watch.Snapshot{
		Services:  cowmap.From(map[watch.ServicePortName]*watch.ServicePort{name: port}),
		Endpoints: cowmap.From(map[watch.ServicePortName][]*watch.Endpoint{name: snap.Endpoints.Get(name)}),
		Node:      snap.Node,
	}
}

// serviceSnapshot is the snapshot of every port of one Service.
func serviceSnapshot(snap *watch.Snapshot, svc types.NamespacedName) *watch.Snapshot {
	services, endpoints := map[watch.ServicePortName]*watch.ServicePort{}, map[watch.ServicePortName][]*watch.Endpoint{}
	for _, p := range snap.PortsOf(svc) {
		services[p.Name] = p
		endpoints[p.Name] = snap.Endpoints.Get(p.Name)
	}
	return &watch.Snapshot{Services: cowmap.From(services), Endpoints: cowmap.From(endpoints), Node: snap.Node}
}

// plannedOwners maps every chain of a planned port to its owner.
func plannedOwners(into map[iptables.ChainKey]Owner, sr *iptables.ServiceRules, o Owner) {
	if sr == nil {
		return
	}
	for k := range sr.Chains {
		into[k] = o
	}
}

// ComparePort lists how the kernel differs from one port's planned rules:
// its own chains rule by rule (in order), chains of the port the plan does
// not have, and its entries in the shared chains (as a multiset: entries of
// different ports match disjoint traffic, so their order is free).
func ComparePort(want *iptables.ServiceRules, k Kernel, a *Attribution, o Owner) []Difference {
	if want == nil {
		want = &iptables.ServiceRules{}
	}
	var out []Difference
	for _, key := range slices.SortedFunc(maps.Keys(want.Chains), compareKeys) {
		got, ok := k.Rules(key.Table, key.Name)
		if !ok {
			out = append(out, Difference{Kind: MissingChain, Table: key.Table, Chain: key.Name,
				Detail: fmt.Sprintf("%d rules planned", len(want.Chains[key]))})
			continue
		}
		out = append(out, compareRules(key, want.Chains[key], got)...)
	}
	port := o.Port
	for _, key := range a.ChainsOf(o.Service, &port) {
		if _, ok := want.Chains[key]; ok {
			continue
		}
		rules, _ := k.Rules(key.Table, key.Name)
		out = append(out, Difference{Kind: StaleChain, Table: key.Table, Chain: key.Name, Detail: fmt.Sprintf("%d rules", len(rules))})
	}
	for _, key := range iptables.SharedChains() {
		missing, extra := multisetDiff(want.Entries[key], a.EntriesOf(key, o.Service, &port))
		for _, r := range missing {
			out = append(out, Difference{Kind: MissingEntry, Table: key.Table, Chain: key.Name, Rule: r})
		}
		for _, r := range extra {
			out = append(out, Difference{Kind: ExtraEntry, Table: key.Table, Chain: key.Name, Rule: r})
		}
	}
	return out
}

// compareRules compares one chain's planned rules with the kernel's.
func compareRules(key iptables.ChainKey, want, got []string) []Difference {
	if slices.EqualFunc(want, got, RulesEqual) {
		return nil
	}
	missing, extra := multisetDiff(want, got)
	var out []Difference
	for _, r := range missing {
		out = append(out, Difference{Kind: MissingRule, Table: key.Table, Chain: key.Name, Rule: r,
			Detail: fmt.Sprintf("kernel has %d of %d rules", len(got), len(want))})
	}
	for _, r := range extra {
		out = append(out, Difference{Kind: ExtraRule, Table: key.Table, Chain: key.Name, Rule: r})
	}
	if len(out) == 0 {
		out = append(out, Difference{Kind: RuleOrder, Table: key.Table, Chain: key.Name, Detail: "the kernel holds the planned rules in another order"})
	}
	return out
}

// multisetDiff returns the rules of want not in got and of got not in
// want, comparing normalised forms and counting duplicates.
func multisetDiff(want, got []string) (missing, extra []string) {
	have := map[string]int{}
	for _, r := range got {
		have[Normalize(r)]++
	}
	wanted := map[string]int{}
	for _, r := range want {
		n := Normalize(r)
		wanted[n]++
		if have[n] > 0 {
			have[n]--
		} else {
			missing = append(missing, r)
		}
	}
	for _, r := range got {
		n := Normalize(r)
		if wanted[n] > 0 {
			wanted[n]--
		} else {
			extra = append(extra, r)
		}
	}
	return missing, extra
}
