package explain

import (
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
