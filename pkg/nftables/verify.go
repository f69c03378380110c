package nftables

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/types"
)

type watchName = types.NamespacedName

// expectedChains lists the chains rs puts in each table.
func expectedChains(rs *Ruleset) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, t := range rs.Tables() {
		out[t] = map[string]bool{}
	}
	add := func(o *Objects) {
		for _, c := range o.Chains {
			if out[c.Table] == nil {
				out[c.Table] = map[string]bool{}
			}
			out[c.Table][c.Name] = true
		}
	}
	add(rs.Base)
	for _, o := range rs.Services.All() {
		add(o)
	}
	return out
}

// compareChains names the first difference between the chains expected
// and those present.
func compareChains(want map[string]map[string]bool, present map[string][]string) (reason, detail string, err error) {
	for _, t := range slices.Sorted(maps.Keys(want)) {
		have, ok := present[t]
		if !ok {
			return "table-missing", fmt.Sprintf("table %s is missing", t), nil
		}
		seen := map[string]bool{}
		for _, c := range have {
			seen[c] = true
			if !want[t][c] {
				return "chain-unexpected", fmt.Sprintf("chain %s in table %s was not written by this proxy", c, t), nil
			}
		}
		for _, c := range slices.Sorted(maps.Keys(want[t])) {
			if !seen[c] {
				return "chain-missing", fmt.Sprintf("chain %s is missing from table %s", c, t), nil
			}
		}
	}
	for _, t := range slices.Sorted(maps.Keys(present)) {
		if _, ok := want[t]; !ok {
			return "table-unexpected", fmt.Sprintf("table %s is not in the current layout", t), nil
		}
	}
	return "", "", nil
}
