package explain

import (
	"slices"
	"strconv"
	"strings"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

// Normalize is iptables.Normalize: the canonical form in which a planned
// rule and the same rule read back from iptables-save compare equal.
func Normalize(rule string) string { return iptables.Normalize(rule) }

// RulesEqual is iptables.RulesEqual.
func RulesEqual(a, b string) bool { return iptables.RulesEqual(a, b) }

// quoteArgs joins rule arguments as iptables-restore reads them, quoting
// the ones with spaces.
func quoteArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// ruleTarget returns a rule's -j target.
func ruleTarget(rule string) string {
	toks := iptables.Tokenize(rule)
	for i, t := range toks {
		if (t == "-j" || t == "--jump") && i+1 < len(toks) {
			return toks[i+1]
		}
	}
	return ""
}

// ruleComment returns a rule's comment, without quotes.
func ruleComment(rule string) string {
	toks := iptables.Tokenize(rule)
	for i, t := range toks {
		if t == "--comment" && i+1 < len(toks) {
			return toks[i+1]
		}
	}
	return ""
}

// chainRules lists a port's planned rules: its entries in the shared
// chains, then its own chains in the order a packet meets them.
func chainRules(sr *iptables.ServiceRules) []ChainRules {
	out := []ChainRules{}
	if sr == nil {
		return out
	}
	for _, k := range iptables.SharedChains() {
		if rules := sr.Entries[k]; len(rules) > 0 {
			out = append(out, ChainRules{Table: k.Table, Chain: k.Name, Shared: true, Rules: rules})
		}
	}
	keys := make([]iptables.ChainKey, 0, len(sr.Chains))
	for k := range sr.Chains {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b iptables.ChainKey) int {
		if d := chainOrder(a) - chainOrder(b); d != 0 {
			return d
		}
		return compareKeys(a, b)
	})
	for _, k := range keys {
		out = append(out, ChainRules{Table: k.Table, Chain: k.Name, Rules: append([]string{}, sr.Chains[k]...)})
	}
	return out
}

// chainOrder ranks a port's chains in the order a packet meets them.
func chainOrder(k iptables.ChainKey) int {
	for i, p := range []string{"KUBE-FW-", "KUBE-EXT-", "KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-"} {
		if strings.HasPrefix(k.Name, p) {
			return i
		}
	}
	return 5
}
