package explain

import (
	"bufio"
	"bytes"
	"strings"
)

// Table is one table of iptables-save output: its chains in the order they
// were declared and each chain's rules (the text after "-A CHAIN ").
type Table struct {
	Name   string
	Chains []string
	Rules  map[string][]string
}

// Has reports whether the table declares chain.
func (t *Table) Has(chain string) bool {
	if t == nil {
		return false
	}
	_, ok := t.Rules[chain]
	return ok
}

// Kernel is what iptables-save printed for one IP family, per table. A
// table that was not read is absent.
type Kernel map[string]*Table

// ParseSave reads iptables-save output. Several tables (and a table
// repeated, as in a concatenation of restore payloads) are merged; a later
// ":CHAIN" line for a chain that exists empties it, as restore --noflush does.
func ParseSave(data []byte) Kernel {
	k := Kernel{}
	var cur *Table
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			cur = k[name]
			if cur == nil {
				cur = &Table{Name: name, Rules: map[string][]string{}}
				k[name] = cur
			}
		case line == "COMMIT":
			cur = nil
		case cur == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur.Rules[name]; !ok {
				cur.Chains = append(cur.Chains, name)
			}
			cur.Rules[name] = []string{}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			if _, ok := cur.Rules[chain]; !ok {
				cur.Chains = append(cur.Chains, chain)
			}
			cur.Rules[chain] = append(cur.Rules[chain], rule)
		}
	}
	return k
}

// Merge adds the tables of o (read separately, e.g. one save per table).
func (k Kernel) Merge(o Kernel) {
	for name, t := range o {
		k[name] = t
	}
}

// Rules returns one chain's rules and whether the chain exists.
func (k Kernel) Rules(table, chain string) ([]string, bool) {
	t := k[table]
	if t == nil {
		return nil, false
	}
	r, ok := t.Rules[chain]
	return r, ok
}
