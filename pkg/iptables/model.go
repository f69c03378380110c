// Package iptables is svcproxy's iptables backend: a ruleset model in
// kube-proxy's chain layout, a pure planner (Snapshot -> Ruleset), a restore
// writer that turns the difference between two Rulesets into the smallest
// iptables-restore payload, a kernel interface with a real implementation
// and a validating fake, and a packet tracer over the model.
package iptables

import (
	"maps"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

// Table names.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
	TableMangle = "mangle"
)

// Chain names shared with kube-proxy, so operators' habits and a node moving
// from kube-proxy in place keep working.
const (
	ChainServices         = "KUBE-SERVICES"
	ChainExternalServices = "KUBE-EXTERNAL-SERVICES"
	ChainNodePorts        = "KUBE-NODEPORTS"
	ChainPostrouting      = "KUBE-POSTROUTING"
	ChainMarkMasq         = "KUBE-MARK-MASQ"
	ChainForward          = "KUBE-FORWARD"
	ChainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	ChainFirewall         = "KUBE-FIREWALL"
	ChainCanary           = "KUBE-PROXY-CANARY"
)

// ChainKey names one chain in one table.
type ChainKey struct {
	Table string
	Name  string
}

// ServiceRules is everything one Service owns: whole chains (KUBE-SVC-*,
// KUBE-SVL-*, KUBE-EXT-*, KUBE-FW-*, KUBE-SEP-*) and its entries in the
// shared chains (KUBE-SERVICES, KUBE-NODEPORTS, ...). A change to the Service
// rewrites only these, which keeps a one-Service change independent of the
// number of Services.
type ServiceRules struct {
	// Chains maps each owned chain to its rules (the text after "-A CHAIN ").
	Chains map[ChainKey][]string
	// Entries maps each shared chain to this Service's rules in it.
	Entries map[ChainKey][]string
	// NoLocalInternal and NoLocalExternal count the ports whose Local
	// traffic policy drops traffic for want of a local endpoint (for
	// kube-proxy's sync_proxy_rules_no_local_endpoints_total).
	NoLocalInternal, NoLocalExternal int
}

// NoLocalEndpoints sums NoLocalInternal and NoLocalExternal over every
// Service.
func (rs *Ruleset) NoLocalEndpoints() (internal, external int) {
	for _, sr := range rs.Services.All() {
		internal += sr.NoLocalInternal
		external += sr.NoLocalExternal
	}
	return internal, external
}

// Equal reports whether two ServiceRules hold the same rules.
func (s *ServiceRules) Equal(o *ServiceRules) bool {
	if s == nil || o == nil {
		return s == o
	}
	eq := func(a, b []string) bool { return slices.Equal(a, b) }
	return maps.EqualFunc(s.Chains, o.Chains, eq) && maps.EqualFunc(s.Entries, o.Entries, eq)
}

// Ruleset is the complete desired content of this proxy's chains for one IP
// family. Shared chains hold every Service's entries (in Service order)
// followed by their fixed Tail rules.
type Ruleset struct {
	Family v1.IPFamily
	// Base holds the chains that belong to no Service, with their fixed rules.
	// For a shared chain these rules come after every Service's entries.
	Base map[ChainKey][]string
	// Jumps are the rules in built-in chains that lead into ours; they are
	// kept in place with -C/-I rather than through restore.
	Jumps []Jump
	// Services maps "namespace/name" to what that Service owns.
	Services cowmap.Map[string, *ServiceRules]
	// LargeCluster is set when the rules were planned without per-endpoint
	// comments (see LargeClusterEndpoints); every endpoint rule differs
	// when it flips, so a flip calls for a full sync.
	LargeCluster bool
	// serviceRules counts the rules in Services per table. PlanServices
	// keeps it from the previous ruleset plus the changed Services, so
	// RuleCount (a metric after every sync) does not walk every Service;
	// nil in a Ruleset built otherwise.
	serviceRules map[string]int

	once sync.Once
	keys []string // sorted Service keys
	// owners maps each owned chain's name to its Service's rules. Keyed by
	// name alone, with the name strings of the rules' own maps: at 5,000
	// Services it has 55,000 entries, and a ChainKey-to-key map was 6 MB
	// at the proxy's peak (a full sync), this one about a third of that.
	// Names are unique across tables: every per-Service chain is a hash of
	// the Service port (and endpoint) under a family prefix, and all of
	// them live in nat; serviceChain still checks the table.
	owners map[string]*ServiceRules
}

// Jump is one rule in a built-in chain (INPUT, PREROUTING, ...).
type Jump struct {
	Table string
	Chain string
	Rule  []string
}

// ServiceKeys returns the Services of the ruleset in a stable order.
func (r *Ruleset) ServiceKeys() []string {
	r.index()
	return r.keys
}

// index builds the lookup tables once; a Ruleset is not changed after
// planning, so they stay valid.
func (r *Ruleset) index() {
	r.once.Do(func() {
		r.keys = slices.Sorted(r.Services.Keys())
		r.owners = map[string]*ServiceRules{}
		for _, sr := range r.Services.All() {
			for k := range sr.Chains {
				r.owners[k.Name] = sr
			}
		}
	})
}

// Chain returns the full content of one chain as the kernel would hold it:
// for a shared chain, every Service's entries (in ServiceKeys order) then
// the Base rules. The slice is the caller's to keep or change.
func (r *Ruleset) Chain(key ChainKey) ([]string, bool) {
	if rules, ok := r.serviceChain(key); ok {
		return slices.Clone(rules), true
	}
	base, found := r.Base[key]
	if !sharedChains[key] {
		return slices.Clone(base), found
	}
	var rules []string
	for _, svc := range r.keys {
		rules = append(rules, r.Services.Get(svc).Entries[key]...)
	}
	return append(rules, base...), found
}

// serviceChain returns the planned rules of a Service chain, uncopied
// (Chain copies them).
func (r *Ruleset) serviceChain(k ChainKey) ([]string, bool) {
	r.index()
	sr, ok := r.owners[k.Name]
	if !ok {
		return nil, false
	}
	rules, ok := sr.Chains[k] // the table must match too
	return rules, ok
}

// Has reports whether the ruleset defines chain k.
func (r *Ruleset) Has(k ChainKey) bool {
	if _, ok := r.serviceChain(k); ok {
		return true
	}
	_, ok := r.Base[k]
	return ok
}

// ChainKeys returns every chain the ruleset defines, sorted by table and name.
func (r *Ruleset) ChainKeys() []ChainKey {
	set := map[ChainKey]bool{}
	for k := range r.Base {
		set[k] = true
	}
	for _, sr := range r.Services.All() {
		for k := range sr.Chains {
			set[k] = true
		}
	}
	keys := slices.Collect(maps.Keys(set))
	slices.SortFunc(keys, compareKeys)
	return keys
}

// RuleCount returns the number of rules per table.
func (r *Ruleset) RuleCount() map[string]int {
	n := maps.Clone(r.serviceRules)
	if n == nil {
		n = map[string]int{}
		for _, sr := range r.Services.All() {
			sr.addRuleCounts(n, 1)
		}
	}
	for k, rs := range r.Base {
		n[k.Table] += len(rs)
	}
	return n
}

// addRuleCounts adds sign times the Service's rules per table to n.
func (sr *ServiceRules) addRuleCounts(n map[string]int, sign int) {
	for k, rs := range sr.Chains {
		n[k.Table] += sign * len(rs)
	}
	for k, rs := range sr.Entries {
		n[k.Table] += sign * len(rs)
	}
}

func compareKeys(a, b ChainKey) int {
	if a.Table != b.Table {
		return compare(a.Table, b.Table)
	}
	return compare(a.Name, b.Name)
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
