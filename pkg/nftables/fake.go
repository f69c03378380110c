package nftables

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Fake is an Interface that keeps tables in memory and refuses what the
// kernel refuses: a rule or element that refers to a chain or set the
// table lacks, a map element in a plain set (or the reverse), adding what
// exists, deleting what does not or what is still referred to. A refused
// transaction changes nothing, as in the kernel.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	// Applied counts the transactions applied.
	Applied int
	// LastOps is the op count of the last transaction applied.
	LastOps int
}

type fakeTable struct {
	chains map[string]*Chain
	sets   map[string]*fakeSet
}

type fakeSet struct {
	spec  *Set
	elems map[ElemKey]*Elem
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{tables: map[string]*fakeTable{}} }

// Apply applies tx, or nothing if any of it is refused.
func (f *Fake) Apply(tx *Transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := cloneTables(f.tables)
	for i, op := range tx.Ops {
		if err := applyOp(next, op); err != nil {
			return fmt.Errorf("op %d (%s): %w", i, op.Kind, err)
		}
	}
	f.tables = next
	f.Applied++
	f.LastOps = len(tx.Ops)
	return nil
}

// Chains lists the tables and their chains.
func (f *Fake) Chains() (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for name, t := range f.tables {
		out[name] = slices.Sorted(maps.Keys(t.chains))
	}
	return out, nil
}

// Read reads tables back as Kernel.Read does.
func (f *Fake) Read(tables []string) (map[string]*Contents, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*Contents{}
	if tables == nil {
		tables = slices.Collect(maps.Keys(f.tables))
	}
	for _, name := range tables {
		t := f.tables[name]
		if t == nil {
			continue
		}
		c := newContents()
		for cn, ch := range t.chains {
			c.Hooks[cn], c.Stamps[cn], c.Rules[cn] = ch.Hook.String(), stamps(ch.Rules), len(ch.Rules)
		}
		for sn, s := range t.sets {
			c.Sets[sn] = s.spec.shape()
			if _, ok := setKeys[sn]; !ok {
				continue
			}
			for _, e := range s.elems {
				c.Elems[e.id()] = e.body()
			}
		}
		out[name] = c
	}
	return out, nil
}

// Dump renders every table, sorted, as text: the state two fakes can be
// compared by.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, tn := range slices.Sorted(maps.Keys(f.tables)) {
		t := f.tables[tn]
		fmt.Fprintf(&b, "table %s\n", tn)
		for _, cn := range slices.Sorted(maps.Keys(t.chains)) {
			fmt.Fprintf(&b, "  chain %s %s\n", cn, t.chains[cn].Hook)
			for _, r := range t.chains[cn].Rules {
				fmt.Fprintf(&b, "    %s\n", r)
			}
		}
		for _, sn := range slices.Sorted(maps.Keys(t.sets)) {
			s := t.sets[sn]
			fmt.Fprintf(&b, "  set %s %s\n", sn, s.spec.body())
			var elems []string
			for _, e := range s.elems {
				elems = append(elems, fmt.Sprintf("    %s : %s", e.Key, e.body()))
			}
			slices.Sort(elems)
			for _, e := range elems {
				b.WriteString(e + "\n")
			}
		}
	}
	return b.String()
}

func cloneTables(in map[string]*fakeTable) map[string]*fakeTable {
	out := make(map[string]*fakeTable, len(in))
	for name, t := range in {
		c := &fakeTable{chains: maps.Clone(t.chains), sets: map[string]*fakeSet{}}
		for sn, s := range t.sets {
			c.sets[sn] = &fakeSet{spec: s.spec, elems: maps.Clone(s.elems)}
		}
		out[name] = c
	}
	return out
}

func applyOp(tables map[string]*fakeTable, op Op) error {
	if op.Kind == ResetTable {
		tables[op.Table] = &fakeTable{chains: map[string]*Chain{}, sets: map[string]*fakeSet{}}
		return nil
	}
	name := op.table()
	t, ok := tables[name]
	if !ok {
		return fmt.Errorf("no table %q", name)
	}
	if op.Kind == DropTable {
		delete(tables, name)
		return nil
	}
	return t.apply(op)
}

func (t *fakeTable) apply(op Op) error {
	switch op.Kind {
	case AddSet:
		if t.sets[op.Set.Name] != nil {
			return fmt.Errorf("set %s exists", op.Set.Name)
		}
		t.sets[op.Set.Name] = &fakeSet{spec: op.Set, elems: map[ElemKey]*Elem{}}
	case AddChain:
		if t.chains[op.Chain.Name] != nil {
			return fmt.Errorf("chain %s exists", op.Chain.Name)
		}
		t.chains[op.Chain.Name] = &Chain{Table: op.Chain.Table, Name: op.Chain.Name, Hook: op.Chain.Hook}
	case FlushChain:
		c, err := t.chain(op.Chain.Name)
		if err != nil {
			return err
		}
		t.chains[c.Name] = &Chain{Table: c.Table, Name: c.Name, Hook: c.Hook}
	case AddRules:
		return t.addRules(op.Chain, false)
	case InsertRules:
		return t.addRules(op.Chain, true)
	case AddElem, DelElem:
		return t.elem(op.Kind, op.Elem)
	case DelChain:
		return t.delChain(op.Chain.Name)
	case DelSet:
		return t.delSet(op.Set.Name)
	}
	return nil
}

func (t *fakeTable) chain(name string) (*Chain, error) {
	c := t.chains[name]
	if c == nil {
		return nil, fmt.Errorf("no chain %q", name)
	}
	return c, nil
}

func (t *fakeTable) addRules(in *Chain, ahead bool) error {
	c, err := t.chain(in.Name)
	if err != nil {
		return err
	}
	for _, r := range in.Rules {
		if err := t.checkRule(r); err != nil {
			return fmt.Errorf("chain %s: rule %q: %w", in.Name, r, err)
		}
	}
	rules := append(slices.Clip(c.Rules), in.Rules...)
	if ahead {
		rules = append(slices.Clip(in.Rules), c.Rules...)
	}
	t.chains[in.Name] = &Chain{Table: c.Table, Name: c.Name, Hook: c.Hook, Rules: rules}
	return nil
}

func (t *fakeTable) checkRule(r Rule) error {
	for i, term := range r {
		last := i == len(r)-1
		switch x := term.(type) {
		case Verdict:
			if !last {
				return fmt.Errorf("verdict %q is not last", x)
			}
			if x.Chain != "" && t.chains[x.Chain] == nil {
				return fmt.Errorf("jump to undefined chain %q", x.Chain)
			}
		case VMap:
			if !last {
				return fmt.Errorf("vmap is not last")
			}
			if err := t.checkSet(x.Map, x.Key, true); err != nil {
				return err
			}
		case InSet:
			if err := t.checkSet(x.Set, x.Key, false); err != nil {
				return err
			}
		case UpdateSource:
			s := t.sets[x.Set]
			if s == nil || s.spec.Timeout == 0 {
				return fmt.Errorf("update of %q, which is not a timed set", x.Set)
			}
		case DNATPick:
			if s := t.sets[x.Map]; s == nil || !s.spec.Targets || s.spec.Key != KeyPick {
				return fmt.Errorf("dnat from %q, which is not a map of picks to endpoints", x.Map)
			}
			if x.N == 0 {
				return fmt.Errorf("numgen modulus 0")
			}
		}
	}
	return nil
}

func (t *fakeTable) checkSet(name string, key Key, isMap bool) error {
	s := t.sets[name]
	switch {
	case s == nil:
		return fmt.Errorf("no set %q", name)
	case s.spec.Map != isMap:
		return fmt.Errorf("set %q: map is %v, the rule needs %v", name, s.spec.Map, isMap)
	case s.spec.Key != key && !(s.spec.Key == KeySaddr && key == KeySaddr):
		return fmt.Errorf("set %q is keyed by %d, the rule looks up %d", name, s.spec.Key, key)
	}
	return nil
}

func (t *fakeTable) elem(kind OpKind, e *Elem) error {
	s := t.sets[e.Set]
	if s == nil {
		return fmt.Errorf("no set %q", e.Set)
	}
	if kind == DelElem {
		if s.elems[e.Key] == nil {
			return fmt.Errorf("set %s has no element %s", e.Set, e.Key)
		}
		delete(s.elems, e.Key)
		return nil
	}
	if err := checkKey(s.spec.Key, e.Key); err != nil {
		return fmt.Errorf("set %s: %w", e.Set, err)
	}
	switch {
	case s.elems[e.Key] != nil:
		return fmt.Errorf("set %s has element %s", e.Set, e.Key)
	case s.spec.Map != (e.Verdict != nil):
		return fmt.Errorf("set %s: element %s with verdict %v in a map=%v", e.Set, e.Key, e.Verdict, s.spec.Map)
	case s.spec.Targets != e.Target.IsValid():
		return fmt.Errorf("set %s: element %s with endpoint %v in a map of endpoints=%v", e.Set, e.Key, e.Target, s.spec.Targets)
	case e.Verdict != nil && e.Verdict.Chain != "" && t.chains[e.Verdict.Chain] == nil:
		return fmt.Errorf("set %s: element %s goes to undefined chain %q", e.Set, e.Key, e.Verdict.Chain)
	}
	s.elems[e.Key] = e
	return nil
}

func checkKey(k Key, e ElemKey) error {
	hasAddr, hasPort := e.Addr.IsValid(), e.Proto != ""
	ok := map[Key]bool{KeyDestPort: hasAddr && hasPort && !e.Twice, KeyProtoPort: !hasAddr && hasPort,
		KeyDaddr: hasAddr && !hasPort && !e.Twice, KeySaddr: hasAddr && !hasPort && !e.Twice,
		KeyHairpin: hasAddr && !hasPort && e.Twice, KeyPick: hasAddr && hasPort && !e.Twice}[k]
	ok = ok && e.Picked == (k == KeyPick)
	if !ok {
		return fmt.Errorf("key %s does not fit the set's key %d", e, k)
	}
	return nil
}

func (t *fakeTable) delChain(name string) error {
	c, err := t.chain(name)
	if err != nil {
		return err
	}
	if len(c.Rules) > 0 {
		return fmt.Errorf("chain %s still has %d rules", name, len(c.Rules))
	}
	if ref := t.referrer(func(v Verdict) bool { return v.Chain == name }, ""); ref != "" {
		return fmt.Errorf("chain %s is in use by %s", name, ref)
	}
	delete(t.chains, name)
	return nil
}

func (t *fakeTable) delSet(name string) error {
	if t.sets[name] == nil {
		return fmt.Errorf("no set %q", name)
	}
	if ref := t.referrer(func(Verdict) bool { return false }, name); ref != "" {
		return fmt.Errorf("set %s is in use by %s", name, ref)
	}
	delete(t.sets, name)
	return nil
}

// referrer names a rule or element that goes to a chain matching verdict
// or uses set; "" when none does.
func (t *fakeTable) referrer(verdict func(Verdict) bool, set string) string {
	for _, c := range t.chains {
		for _, r := range c.Rules {
			for _, term := range r {
				if usesSet(term, set) || (isVerdict(term) && verdict(term.(Verdict))) {
					return fmt.Sprintf("a rule of chain %s", c.Name)
				}
			}
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if e.Verdict != nil && verdict(*e.Verdict) {
				return fmt.Sprintf("element %s of %s", e.Key, s.spec.Name)
			}
		}
	}
	return ""
}

func isVerdict(t Term) bool { _, ok := t.(Verdict); return ok }

func usesSet(t Term, set string) bool {
	if set == "" {
		return false
	}
	switch x := t.(type) {
	case VMap:
		return x.Map == set
	case InSet:
		return x.Set == set
	case UpdateSource:
		return x.Set == set
	case DNATPick:
		return x.Map == set
	}
	return false
}
