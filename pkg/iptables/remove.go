package iptables

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
)

// RemoveChains deletes the named chains of one table if they exist, after
// deleting every rule elsewhere that jumps to them. Rules are deleted by the
// exact text iptables-save printed, so this works for rules written by any
// version of any proxy; nothing else in the table is touched.
func RemoveChains(kernel Interface, table string, names []string) error {
	save, err := kernel.Save(table)
	if err != nil {
		return err
	}
	existing := parseSave(save).counts
	doomed := map[string]bool{}
	for _, n := range names {
		if _, ok := existing[n]; ok {
			doomed[n] = true
		}
	}
	if len(doomed) == 0 {
		return nil
	}
	p := newPayload()
	t := p.table(table)
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		chain, spec, _ := strings.Cut(line[3:], " ")
		if !doomed[chain] && doomed[target(spec)] {
			t.del = append(t.del, "-D "+chain+" "+spec)
		}
	}
	for _, n := range slices.Sorted(mapsKeys(doomed)) {
		p.declare(ChainKey{table, n})
		t.remove = append(t.remove, "-X "+n)
	}
	return kernel.Restore(p.Bytes())
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// OwnedChains lists the chains of a table that this proxy (or kube-proxy's
// iptables mode) owns.
func OwnedChains(kernel Interface, table string) ([]string, error) {
	save, err := kernel.Save(table)
	if err != nil {
		return nil, err
	}
	var out []string
	for name := range parseSave(save).counts {
		if IsServiceChain(name) || isBaseChain(name) || name == ChainCanary {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}
