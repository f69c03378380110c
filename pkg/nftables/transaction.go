package nftables

import "slices"

// OpKind is one kind of change in a Transaction. The kinds are listed in
// the order a transaction applies them, so that everything a rule or an
// element refers to exists when it is written, and nothing is deleted while
// something still refers to it.
type OpKind int

const (
	// ResetTable empties a table, creating it if missing.
	ResetTable OpKind = iota
	// DropTable deletes a table that exists.
	DropTable
	// AddSet creates a set or map.
	AddSet
	// AddChain creates an empty chain.
	AddChain
	// FlushChain removes a chain's rules.
	FlushChain
	// AddRules appends a chain's rules (to a new or flushed chain).
	AddRules
	// InsertRules writes a chain's rules ahead of the ones it has, which
	// they shadow (Chain.Decides); a later transaction removes the old ones.
	InsertRules
	// DelElem removes a set or map element.
	DelElem
	// AddElem adds a set or map element.
	AddElem
	// DelChain deletes a chain (flushed earlier in the transaction).
	DelChain
	// DelSet deletes a set or map.
	DelSet
	numKinds
)

var kindNames = [...]string{"reset-table", "drop-table", "add-set", "add-chain", "flush-chain", "add-rules", "insert-rules",
	"del-elem", "add-elem", "del-chain", "del-set"}

func (k OpKind) String() string { return kindNames[k] }

// Op is one change; Table, Chain, Set or Elem says to what.
type Op struct {
	Kind  OpKind
	Table string
	Chain *Chain
	Set   *Set
	Elem  *Elem
}

// Transaction is one netlink batch: the kernel applies all of it or none.
type Transaction struct {
	Ops []Op
}

// Empty reports a transaction with nothing to do.
func (t *Transaction) Empty() bool { return len(t.Ops) == 0 }

// Count counts the ops of each kind.
func (t *Transaction) Count() map[string]int {
	out := map[string]int{}
	for _, op := range t.Ops {
		out[op.Kind.String()]++
	}
	return out
}

// table is the table an op changes.
func (op Op) table() string {
	switch {
	case op.Chain != nil:
		return op.Chain.Table
	case op.Set != nil:
		return op.Set.Table
	case op.Elem != nil:
		return op.Elem.Table
	}
	return op.Table
}

// split divides t by table, keeping the order of each table's ops.
func (t *Transaction) split() map[string]*Transaction {
	out := map[string]*Transaction{}
	for _, op := range t.Ops {
		tt := out[op.table()]
		if tt == nil {
			tt = &Transaction{}
			out[op.table()] = tt
		}
		tt.Ops = append(tt.Ops, op)
	}
	return out
}

// txBuilder collects ops by kind and orders them at the end.
type txBuilder struct {
	ops [numKinds][]Op
	// shadowing, when set, makes diff rewrite a changed chain that
	// Decides by InsertRules instead of a flush, and list it in shadowed,
	// for a later transaction to delete its old rules (see leftovers).
	shadowing bool
	shadowed  []*Chain
}

func (b *txBuilder) add(op Op) { b.ops[op.Kind] = append(b.ops[op.Kind], op) }

func (b *txBuilder) build() *Transaction {
	t := &Transaction{}
	for _, ops := range b.ops {
		t.Ops = append(t.Ops, ops...)
	}
	return t
}

// index is Objects by identity.
type index struct {
	chains map[string]*Chain
	sets   map[string]*Set
	elems  map[string]*Elem
}

func indexOf(objs ...*Objects) index {
	ix := index{chains: map[string]*Chain{}, sets: map[string]*Set{}, elems: map[string]*Elem{}}
	for _, o := range objs {
		if o == nil {
			continue
		}
		for _, c := range o.Chains {
			ix.chains[c.id()] = c
		}
		for _, s := range o.Sets {
			ix.sets[s.id()] = s
		}
		for _, e := range o.Elems {
			ix.elems[e.id()] = e
		}
	}
	return ix
}

// diff adds the ops that turn old into new (either may be nil).
func (b *txBuilder) diff(old, new *Objects) {
	o, n := indexOf(old), indexOf(new)
	for _, id := range sortedKeys(n.sets) {
		if prev, ok := o.sets[id]; !ok || prev.body() != n.sets[id].body() {
			if ok {
				b.add(Op{Kind: DelSet, Set: prev})
			}
			b.add(Op{Kind: AddSet, Set: n.sets[id]})
		}
	}
	for _, id := range sortedKeys(n.chains) {
		c := n.chains[id]
		prev, ok := o.chains[id]
		switch {
		case !ok:
			b.add(Op{Kind: AddChain, Chain: c})
		case prev.body() == c.body():
			continue
		case b.shadowing && c.Decides && prev.Decides && c.Hook == nil:
			// Both: the old rules stay for a while, so they must not go
			// to a chain this transaction may delete.
			b.add(Op{Kind: InsertRules, Chain: c})
			b.shadowed = append(b.shadowed, c)
			continue
		default:
			b.add(Op{Kind: FlushChain, Chain: c})
		}
		if len(c.Rules) > 0 {
			b.add(Op{Kind: AddRules, Chain: c})
		}
	}
	for _, id := range sortedKeys(n.elems) {
		e := n.elems[id]
		if prev, ok := o.elems[id]; !ok || prev.body() != e.body() {
			if ok {
				b.add(Op{Kind: DelElem, Elem: prev})
			}
			b.add(Op{Kind: AddElem, Elem: e})
		}
	}
	b.removed(o, n)
}

// removed adds the deletions of what old has and new lacks.
func (b *txBuilder) removed(o, n index) {
	for _, id := range sortedKeys(o.elems) {
		if _, ok := n.elems[id]; !ok {
			b.add(Op{Kind: DelElem, Elem: o.elems[id]})
		}
	}
	for _, id := range sortedKeys(o.chains) {
		if _, ok := n.chains[id]; !ok {
			// Emptied before any deletion: a removed chain may jump to
			// another removed chain, which the kernel will not delete
			// while a rule still refers to it.
			b.add(Op{Kind: FlushChain, Chain: o.chains[id]})
			b.add(Op{Kind: DelChain, Chain: o.chains[id]})
		}
	}
	for _, id := range sortedKeys(o.sets) {
		if _, ok := n.sets[id]; !ok {
			b.add(Op{Kind: DelSet, Set: o.sets[id]})
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
