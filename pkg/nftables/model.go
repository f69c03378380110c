package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

// Hook makes a chain a base chain: the kernel calls it from a netfilter
// hook at a priority.
type Hook struct {
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority int32
}

func (h *Hook) String() string {
	if h == nil {
		return ""
	}
	return fmt.Sprintf("type %s hook %s priority %d", h.Type, hookName(h.Hook), h.Priority)
}

func hookName(h *nftables.ChainHook) string {
	switch *h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprint(*h)
}

// Chain is a chain and its rules.
type Chain struct {
	Table string
	Name  string
	Hook  *Hook
	Rules []Rule
	// Decides says every packet that enters the chain leaves it by one of
	// its rules (the last one matches whatever gets there, and ends in a
	// verdict or NAT): new rules written ahead of old ones replace them at
	// once, and the old ones can be removed later. Such a chain refers to
	// no chain but the shared ones every Service uses.
	Decides bool
}

func (c *Chain) id() string { return c.Table + "/" + c.Name }

// body is what a change of the chain compares: its hook and rules.
func (c *Chain) body() string {
	var b strings.Builder
	b.WriteString(c.Hook.String())
	for _, r := range c.Rules {
		b.WriteString("\n")
		b.WriteString(r.String())
	}
	return b.String()
}

// Set is a set of keys, a verdict map (Map), a map to endpoints
// (Targets: each value an address and port), or a timed set the rules
// fill themselves (Timeout, for session affinity).
type Set struct {
	Table   string
	Name    string
	Key     Key
	Map     bool
	Targets bool
	Timeout time.Duration
}

func (s *Set) id() string { return s.Table + "/" + s.Name }

func (s *Set) body() string {
	kind, data := "set", ""
	switch {
	case s.Map:
		kind, data = "map", " : verdict"
	case s.Targets:
		kind, data = "map", " : addr . inet_service"
	}
	var timeout string
	if s.Timeout > 0 {
		timeout = fmt.Sprintf(" timeout %s dynamic", s.Timeout)
	}
	return fmt.Sprintf("%s { %s%s%s }", kind, s.Key.fields(), data, timeout)
}

// ElemKey is the key of a set element; which fields count is the set's Key.
type ElemKey struct {
	Addr  netip.Addr
	Proto string
	Port  uint16
	// Twice is a hairpin key: Addr as source and as destination.
	Twice bool
	// Picked says Pick is part of the key: the value of numgen that
	// chooses this element among a Service port's endpoints.
	Picked bool
	Pick   uint32
}

// Elem is an element of a set, of a verdict map with its Verdict, or of
// a map to endpoints with its Target.
type Elem struct {
	Table, Set string
	Key        ElemKey
	Verdict    *Verdict
	Target     netip.AddrPort
}

func (e *Elem) id() string {
	return fmt.Sprintf("%s/%s/%s", e.Table, e.Set, e.Key)
}

func (k ElemKey) String() string {
	var parts []string
	if k.Addr.IsValid() {
		parts = append(parts, k.Addr.String())
	}
	if k.Twice {
		parts = append(parts, k.Addr.String())
	}
	if k.Proto != "" {
		parts = append(parts, k.Proto, fmt.Sprint(k.Port))
	}
	if k.Picked {
		parts = append(parts, fmt.Sprint(k.Pick))
	}
	return strings.Join(parts, " . ")
}

func (e *Elem) body() string {
	switch {
	case e.Verdict != nil:
		return e.Verdict.String()
	case e.Target.IsValid():
		return targetText(e.Target)
	}
	return ""
}

// targetText writes an endpoint as nft writes a map value of type
// addr . inet_service.
func targetText(t netip.AddrPort) string { return fmt.Sprintf("%s . %d", t.Addr(), t.Port()) }

// Objects is what one Service (or the fixed part of the layout) puts in
// the kernel.
type Objects struct {
	Chains []*Chain
	Sets   []*Set
	Elems  []*Elem
	// NoLocalInternal and NoLocalExternal count the Service's ports whose
	// Local traffic policy finds no local endpoint.
	NoLocalInternal, NoLocalExternal int
	// Hairpin are the endpoint addresses the Service DNATs to, once each:
	// the shared hairpin set holds every address some Service has.
	Hairpin []netip.Addr
}

func (o *Objects) hairpin(a netip.Addr) {
	if !slices.Contains(o.Hairpin, a) {
		o.Hairpin = append(o.Hairpin, a)
	}
}

func (o *Objects) chain(table, name string) *Chain {
	for _, c := range o.Chains {
		if c.Table == table && c.Name == name {
			return c
		}
	}
	c := &Chain{Table: table, Name: name}
	o.Chains = append(o.Chains, c)
	return c
}

func (o *Objects) rule(table, chain string, terms ...Term) {
	c := o.chain(table, chain)
	c.Rules = append(c.Rules, Rule(terms))
}

// elem adds an element once; two ports of a Service may add the same
// ClusterIP to a set.
func (o *Objects) elem(e *Elem) {
	for _, old := range o.Elems {
		if old.id() == e.id() {
			return
		}
	}
	o.Elems = append(o.Elems, e)
}

// Ruleset is the whole layout of one IP family: the fixed chains, sets
// and maps of the shared table and every shard (Base), and each Service's
// objects, by "namespace/name".
type Ruleset struct {
	Family   v1.IPFamily
	Shards   int
	Base     *Objects
	Services cowmap.Map[string, *Objects]
	// baseText is Base rendered, computed once: whether the base changed
	// decides between a full and a partial sync.
	baseText string
	// options are the PlanOptions the ruleset was planned with, rendered.
	options string
	// hairpinUses counts the Services that DNAT to each endpoint address;
	// hairpinAdded and hairpinRemoved are the addresses this plan brought
	// to or from zero (every address, when planned without a previous one).
	hairpinUses                  cowmap.Map[netip.Addr, int]
	hairpinAdded, hairpinRemoved []netip.Addr
	// totals are kept as Services are planned, so that a sync reports them
	// without a walk over every Service.
	totals totals
}

// totals are the Services' rules and Local-policy ports without local
// endpoints, summed.
type totals struct{ rules, noLocalInternal, noLocalExternal int }

func (t *totals) add(o *Objects, sign int) {
	if o == nil {
		return
	}
	for _, c := range o.Chains {
		t.rules += sign * len(c.Rules)
	}
	t.noLocalInternal += sign * o.NoLocalInternal
	t.noLocalExternal += sign * o.NoLocalExternal
}

// hairpinElem is the hairpin set's element of an endpoint address.
func hairpinElem(a netip.Addr) *Elem {
	return &Elem{Table: SharedTable, Set: setHairpin, Key: ElemKey{Addr: a, Twice: true}}
}

// BaseText renders Base (once), for telling whether two bases differ.
func (rs *Ruleset) BaseText() string {
	if rs.baseText == "" {
		rs.baseText = rs.Base.body()
	}
	return rs.baseText
}

// Tables are the names of the tables the ruleset fills.
func (rs *Ruleset) Tables() []string {
	out := []string{SharedTable}
	for i := range rs.Shards {
		out = append(out, ShardTable(i))
	}
	return out
}

// SharedTable holds what every Service shares: the filter hooks, the
// masquerade rule and the maps of Services without endpoints.
const SharedTable = "svcproxy"

// TablePrefix starts the name of every table this mode owns.
const TablePrefix = "svcproxy"

// ShardTable is the name of shard i's table.
func ShardTable(i int) string { return fmt.Sprintf("%s-%02d", TablePrefix, i) }

// Owned reports whether a table name is this mode's, or kube-proxy's
// nftables table (which Chains lists so that it can be removed).
func Owned(table string) bool {
	return table == SharedTable || strings.HasPrefix(table, TablePrefix+"-") || table == KubeProxyTable
}
