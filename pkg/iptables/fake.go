package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// builtinChains are the kernel's own chains per table.
var builtinChains = map[string][]string{
	TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	TableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// builtinTargets are targets that are not chains.
var builtinTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "DNAT": true,
	"SNAT": true, "MASQUERADE": true, "MARK": true, "LOG": true, "CONNMARK": true,
}

// Fake is an in-memory Interface that validates like the kernel: a jump to a
// chain that does not exist, deleting a rule that is not there, removing a
// chain that is still referenced or not empty, or a malformed line fails the
// whole restore and leaves the state unchanged.
type Fake struct {
	tables map[string]*fakeTable
	// Restores records every payload that was applied successfully.
	Restores [][]byte
	// FailRestore, when set, makes every Restore fail with it.
	FailRestore error
	// Saves counts table reads (Save, SaveLines).
	Saves int
}

type fakeTable struct {
	order  []string // chain creation order, for Save
	chains map[string][]string
}

// NewFake returns a Fake holding only the built-in chains.
func NewFake() *Fake {
	f := &Fake{tables: map[string]*fakeTable{}}
	for table, chains := range builtinChains {
		t := &fakeTable{chains: map[string][]string{}}
		for _, c := range chains {
			t.order = append(t.order, c)
			t.chains[c] = nil
		}
		f.tables[table] = t
	}
	return f
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(t.order), chains: make(map[string][]string, len(t.chains))}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

// Restore implements Interface.
func (f *Fake) Restore(payload []byte) error {
	if f.FailRestore != nil {
		return f.FailRestore
	}
	next := map[string]*fakeTable{}
	for k, t := range f.tables {
		next[k] = t.clone()
	}
	var cur *fakeTable
	var curName string
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if err := f.applyLine(next, &cur, &curName, line); err != nil {
			return fmt.Errorf("line %d %q: %w", n, line, err)
		}
	}
	if cur != nil {
		return fmt.Errorf("table %s: missing COMMIT", curName)
	}
	f.tables = next
	f.Restores = append(f.Restores, slices.Clone(payload))
	return nil
}

func (f *Fake) applyLine(tables map[string]*fakeTable, cur **fakeTable, curName *string, line string) error {
	switch {
	case line == "" || strings.HasPrefix(line, "#"):
		return nil
	case strings.HasPrefix(line, "*"):
		t, ok := tables[line[1:]]
		if !ok {
			return fmt.Errorf("unknown table")
		}
		*cur, *curName = t, line[1:]
		return nil
	case *cur == nil:
		return fmt.Errorf("rule outside a table")
	case line == "COMMIT":
		err := validateTargets(*cur)
		*cur = nil
		return err
	case strings.HasPrefix(line, ":"):
		return declareChain(*cur, line)
	}
	return applyRule(*cur, line)
}

func declareChain(t *fakeTable, line string) error {
	fields := strings.Fields(line[1:])
	if len(fields) != 3 {
		return fmt.Errorf("malformed chain line")
	}
	name := fields[0]
	if len(name) > 28 {
		return fmt.Errorf("chain name %q longer than 28 characters", name)
	}
	if _, ok := t.chains[name]; !ok {
		t.order = append(t.order, name)
	}
	t.chains[name] = nil
	return nil
}

func applyRule(t *fakeTable, line string) error {
	op, rest, _ := strings.Cut(line, " ")
	chain, spec, _ := strings.Cut(rest, " ")
	if err := checkQuotes(spec); err != nil {
		return err
	}
	rules, ok := t.chains[chain]
	if !ok {
		return fmt.Errorf("chain %s does not exist", chain)
	}
	switch op {
	case "-A":
		t.chains[chain] = append(rules, spec)
	case "-I":
		pos, spec2, _ := strings.Cut(spec, " ")
		i, err := strconv.Atoi(pos)
		if err != nil || i < 1 || i > len(rules)+1 {
			return fmt.Errorf("bad insert position %q", pos)
		}
		t.chains[chain] = slices.Insert(rules, i-1, spec2)
	case "-D":
		i := slices.Index(rules, spec)
		if i < 0 {
			return fmt.Errorf("rule not found in %s: %s", chain, spec)
		}
		t.chains[chain] = slices.Delete(rules, i, i+1)
	case "-X":
		return deleteChain(t, chain)
	default:
		return fmt.Errorf("unknown command %q", op)
	}
	return nil
}

func deleteChain(t *fakeTable, chain string) error {
	if len(t.chains[chain]) > 0 {
		return fmt.Errorf("chain %s is not empty", chain)
	}
	for name, rules := range t.chains {
		for _, r := range rules {
			if target(r) == chain {
				return fmt.Errorf("chain %s is referenced from %s", chain, name)
			}
		}
	}
	delete(t.chains, chain)
	t.order = slices.DeleteFunc(t.order, func(c string) bool { return c == chain })
	return nil
}

func validateTargets(t *fakeTable) error {
	for name, rules := range t.chains {
		for _, r := range rules {
			tg := target(r)
			if tg == "" {
				return fmt.Errorf("rule in %s has no target: %s", name, r)
			}
			if _, ok := t.chains[tg]; !ok && !builtinTargets[tg] {
				return fmt.Errorf("rule in %s jumps to undefined chain %s", name, tg)
			}
		}
	}
	return nil
}

func target(rule string) string {
	fields := strings.Fields(rule)
	if i := slices.Index(fields, "-j"); i >= 0 && i+1 < len(fields) {
		return fields[i+1]
	}
	return ""
}

func checkQuotes(spec string) error {
	if strings.Count(spec, `"`)%2 != 0 {
		return fmt.Errorf("unbalanced quotes")
	}
	return nil
}

// Save implements Interface.
func (f *Fake) Save(table string) ([]byte, error) {
	f.Saves++
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("unknown table %s", table)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "*%s\n", table)
	for _, c := range t.order {
		fmt.Fprintf(&buf, ":%s - [0:0]\n", c)
	}
	for _, c := range t.order {
		for _, r := range t.chains[c] {
			fmt.Fprintf(&buf, "-A %s %s\n", c, r)
		}
	}
	buf.WriteString("COMMIT\n")
	return buf.Bytes(), nil
}

// SaveLines streams Save's text through a 16-byte reader buffer, so a
// line is rewritten under the caller's feet as on the real kernel: a
// reader that keeps a line past the callback fails its tests.
func (f *Fake) SaveLines(table string, fn func(line []byte)) error {
	save, err := f.Save(table)
	if err != nil {
		return err
	}
	return eachLine(bufio.NewReaderSize(bytes.NewReader(save), 16), fn)
}

// EnsureJump implements Interface.
func (f *Fake) EnsureJump(j Jump) error {
	t := f.tables[j.Table]
	rule := strings.Join(j.Rule, " ")
	if _, ok := t.chains[target(rule)]; !ok && !builtinTargets[target(rule)] {
		return fmt.Errorf("jump to undefined chain %s", target(rule))
	}
	if !slices.Contains(t.chains[j.Chain], rule) {
		t.chains[j.Chain] = slices.Insert(t.chains[j.Chain], 0, rule)
	}
	return nil
}

// DeleteJump implements Interface.
func (f *Fake) DeleteJump(j Jump) error {
	t := f.tables[j.Table]
	rule := strings.Join(j.Rule, " ")
	t.chains[j.Chain] = slices.DeleteFunc(t.chains[j.Chain], func(r string) bool { return r == rule })
	return nil
}

// ChainExists implements Interface.
func (f *Fake) ChainExists(table, chain string) (bool, error) {
	_, ok := f.tables[table].chains[chain]
	return ok, nil
}

// Rules returns the rules of one chain (for tests).
func (f *Fake) Rules(table, chain string) []string {
	return slices.Clone(f.tables[table].chains[chain])
}

// Chains returns the chains of a table, sorted (for tests).
func (f *Fake) Chains(table string) []string { return slices.Sorted(maps.Keys(f.tables[table].chains)) }

// Flush empties a chain behind the proxy's back (for drift tests).
func (f *Fake) Flush(table, chain string) { f.tables[table].chains[chain] = nil }

// DeleteChainForTest removes a chain and every reference to it.
func (f *Fake) DeleteChainForTest(table, chain string) {
	t := f.tables[table]
	for name, rules := range t.chains {
		t.chains[name] = slices.DeleteFunc(rules, func(r string) bool { return target(r) == chain })
	}
	delete(t.chains, chain)
	t.order = slices.DeleteFunc(t.order, func(c string) bool { return c == chain })
}
