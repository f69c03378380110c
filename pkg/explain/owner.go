package explain

import (
	"regexp"
	"slices"
	"strings"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

// Owner names the Service port a kernel chain or shared-chain entry belongs
// to. Service is "namespace/name"; Port is the port's name ("" for an
// unnamed port). The zero Owner means "nobody's" (a fixed rule, or one this
// proxy cannot place).
type Owner struct {
	Service string
	Port    string
}

// Known reports whether the owner was found.
func (o Owner) Known() bool { return o.Service != "" }

// serviceWord matches the "namespace/name[:port]" word every per-Service
// rule comment carries (a Service name is a DNS-1035 label, so it starts
// with a letter; a CIDR never matches).
var serviceWord = regexp.MustCompile(`^([a-z0-9][-a-z0-9]*)/([a-z][-a-z0-9]*)(?::(\S*))?$`)

// commentOwner reads the owner from a rule's comment.
func commentOwner(rule string) Owner {
	for _, w := range strings.Fields(ruleComment(rule)) {
		if m := serviceWord.FindStringSubmatch(w); m != nil {
			return Owner{Service: m[1] + "/" + m[2], Port: m[3]}
		}
	}
	return Owner{}
}

// OwnedRule is one rule of a shared chain with its owner.
type OwnedRule struct {
	Rule  string
	Owner Owner
}

// Attribution places every per-Service chain and every shared-chain entry
// the kernel holds with the Service port it belongs to.
type Attribution struct {
	// Chains maps each per-Service chain (KUBE-SVC-*, KUBE-SEP-*, ...) found
	// in the kernel to its owner; unplaceable chains have the zero Owner.
	Chains map[iptables.ChainKey]Owner
	// Entries holds the rules of each shared chain in kernel order.
	Entries map[iptables.ChainKey][]OwnedRule
}

// Attribute places the kernel's chains. A chain the plan names belongs to
// the planned owner; any other per-Service chain to the Service its rule
// comments name, else to the owner of a rule that jumps to it (so an empty
// or comment-less chain still has an owner when something leads to it).
// A shared-chain entry belongs to the Service its comment names, else to
// the owner of the chain it jumps to.
func Attribute(k Kernel, planned map[iptables.ChainKey]Owner) *Attribution {
	a := &Attribution{Chains: map[iptables.ChainKey]Owner{}, Entries: map[iptables.ChainKey][]OwnedRule{}}
	tables := []string{iptables.TableNAT, iptables.TableFilter}
	for _, table := range tables {
		t := k[table]
		if t == nil {
			continue
		}
		for _, name := range t.Chains {
			if !iptables.IsServiceChain(name) {
				continue
			}
			key := iptables.ChainKey{Table: table, Name: name}
			if o, ok := planned[key]; ok {
				a.Chains[key] = o
				continue
			}
			o := Owner{}
			for _, r := range t.Rules[name] {
				if o = commentOwner(r); o.Known() {
					break
				}
			}
			a.Chains[key] = o
		}
	}
	// Jumps from placed rules place the chains they lead to.
	for changed := true; changed; {
		changed = false
		for _, table := range tables {
			t := k[table]
			if t == nil {
				continue
			}
			for _, name := range t.Chains {
				from := iptables.ChainKey{Table: table, Name: name}
				shared := iptables.IsSharedChain(from)
				owner, isSvc := a.Chains[from]
				if !shared && (!isSvc || !owner.Known()) {
					continue
				}
				for _, r := range t.Rules[name] {
					o := owner
					if shared {
						o = commentOwner(r)
					}
					to := iptables.ChainKey{Table: table, Name: ruleTarget(r)}
					if cur, ok := a.Chains[to]; ok && !cur.Known() && o.Known() {
						a.Chains[to] = o
						changed = true
					}
				}
			}
		}
	}
	for _, key := range iptables.SharedChains() {
		rules, ok := k.Rules(key.Table, key.Name)
		if !ok {
			continue
		}
		for _, r := range rules {
			o := commentOwner(r)
			if !o.Known() {
				o = a.Chains[iptables.ChainKey{Table: key.Table, Name: ruleTarget(r)}]
			}
			a.Entries[key] = append(a.Entries[key], OwnedRule{Rule: r, Owner: o})
		}
	}
	return a
}

// ChainsOf returns the kernel chains of one Service (any port when port is
// nil), sorted.
func (a *Attribution) ChainsOf(service string, port *string) []iptables.ChainKey {
	var out []iptables.ChainKey
	for k, o := range a.Chains {
		if o.Service == service && (port == nil || o.Port == *port) {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, compareKeys)
	return out
}

// EntriesOf returns one Service port's entries in a shared chain (any port
// when port is nil).
func (a *Attribution) EntriesOf(key iptables.ChainKey, service string, port *string) []string {
	var out []string
	for _, e := range a.Entries[key] {
		if e.Owner.Service == service && (port == nil || e.Owner.Port == *port) {
			out = append(out, e.Rule)
		}
	}
	return out
}

// Services returns every Service that owns something in the kernel, sorted.
func (a *Attribution) Services() []string {
	set := map[string]bool{}
	for _, o := range a.Chains {
		if o.Known() {
			set[o.Service] = true
		}
	}
	for _, es := range a.Entries {
		for _, e := range es {
			if e.Owner.Known() {
				set[e.Owner.Service] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func compareKeys(a, b iptables.ChainKey) int {
	if c := strings.Compare(a.Table, b.Table); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}
