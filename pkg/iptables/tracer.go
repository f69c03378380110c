package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Packet is the first packet of a new connection, as the tracer sees it.
type Packet struct {
	Src, Dst netip.Addr
	Protocol string // tcp, udp, sctp
	DstPort  int
	// FromNode is set for traffic the node itself sends (nat OUTPUT);
	// otherwise the packet arrives from outside or from a pod (PREROUTING).
	FromNode bool
	// InIface is the interface the packet arrived on (for interface-based
	// local traffic detection).
	InIface string
}

// Outcome is one possible fate of a packet, with its probability.
type Outcome struct {
	// Verdict is DNAT, REJECT, DROP, LOCAL (delivered to the node untouched)
	// or UNHANDLED (forwarded untouched).
	Verdict string
	// Endpoint is the DNAT destination "ip:port" for a DNAT verdict.
	Endpoint    string
	Masquerade  bool
	Probability float64
	// Path lists the chains and rules the packet went through.
	Path []string
}

// Tracer follows a packet through a Ruleset, the same model the restore
// writer renders, so tests and `proxy explain` check what is programmed.
type Tracer struct {
	rs *Ruleset
	// Local are the node's own addresses (for -m addrtype LOCAL).
	Local []netip.Addr
}

// NewTracer returns a tracer over rs for a node with the given addresses.
func NewTracer(rs *Ruleset, local []netip.Addr) *Tracer {
	return &Tracer{rs: rs, Local: local}
}

type traceState struct {
	pkt    Packet
	mark   bool
	dnat   string
	done   string // terminal verdict in the current table, "" to continue
	weight float64
	path   []string
}

// Trace returns every possible outcome of pkt with its probability.
func (t *Tracer) Trace(pkt Packet) []Outcome {
	start := traceState{pkt: pkt, weight: 1}
	natHook := "PREROUTING"
	if pkt.FromNode {
		natHook = "OUTPUT"
	}
	var out []Outcome
	for _, st := range t.runBuiltin(TableNAT, natHook, start) {
		st.done = ""
		out = append(out, t.filterStage(st)...)
	}
	return merge(out)
}

func (t *Tracer) filterStage(st traceState) []Outcome {
	hooks := []string{"FORWARD"}
	switch {
	case st.pkt.FromNode && t.isLocal(st.pkt.Dst):
		hooks = []string{"OUTPUT", "INPUT"}
	case st.pkt.FromNode:
		hooks = []string{"OUTPUT"}
	case t.isLocal(st.pkt.Dst):
		hooks = []string{"INPUT"}
	}
	states := []traceState{st}
	for _, hook := range hooks {
		var next []traceState
		for _, s := range states {
			if s.done == "DROP" || s.done == "REJECT" {
				next = append(next, s)
				continue
			}
			s.done = ""
			next = append(next, t.runBuiltin(TableFilter, hook, s)...)
		}
		states = next
	}
	var out []Outcome
	for _, s := range states {
		out = append(out, t.outcome(s))
	}
	return out
}

func (t *Tracer) outcome(s traceState) Outcome {
	o := Outcome{Probability: s.weight, Path: s.path, Masquerade: s.mark}
	switch {
	case s.done == "DROP" || s.done == "REJECT":
		o.Verdict, o.Masquerade = s.done, false
	case s.dnat != "":
		o.Verdict, o.Endpoint = "DNAT", s.dnat
	case t.isLocal(s.pkt.Dst):
		o.Verdict = "LOCAL"
	default:
		o.Verdict = "UNHANDLED"
	}
	return o
}

// runBuiltin runs the ruleset's jumps from a built-in chain, in order.
func (t *Tracer) runBuiltin(table, chain string, st traceState) []traceState {
	var rules []string
	for _, j := range t.rs.Jumps {
		if j.Table == table && j.Chain == chain {
			rules = append(rules, strings.Join(j.Rule, " "))
		}
	}
	return t.runRules(table, chain, rules, 0, st)
}

func (t *Tracer) runChain(table, chain string, st traceState) []traceState {
	rules, _ := t.rs.Chain(ChainKey{table, chain})
	return t.runRules(table, chain, rules, 0, st)
}

// runRules evaluates rules[i:] and returns the resulting states: terminal
// ones (done set) and ones that fell off the end or returned.
func (t *Tracer) runRules(table, chain string, rules []string, i int, st traceState) []traceState {
	for ; i < len(rules); i++ {
		r := parseRule(rules[i])
		p := t.matchProbability(r, st)
		if p == 0 {
			continue
		}
		if p < 1 {
			miss := st
			miss.weight *= 1 - p
			st.weight *= p
			hit := t.apply(table, chain, rules, i, r, st)
			return append(hit, t.runRules(table, chain, rules, i+1, miss)...)
		}
		return t.apply(table, chain, rules, i, r, st)
	}
	return []traceState{st}
}

// apply runs a matched rule's target and then, unless it ended traversal,
// the rest of the chain.
func (t *Tracer) apply(table, chain string, rules []string, i int, r rule, st traceState) []traceState {
	st.path = append(slices.Clip(st.path), table+" "+chain+": "+rules[i])
	switch r.target {
	case "RETURN":
		return []traceState{st}
	case "ACCEPT", "DROP", "REJECT":
		st.done = r.target
		return []traceState{st}
	case "MARK":
		st.mark = true
		return t.runRules(table, chain, rules, i+1, st)
	case "DNAT":
		st.dnat = r.toDestination
		st.pkt.Dst, st.pkt.DstPort = splitHostPort(r.toDestination)
		st.done = "DNAT"
		return []traceState{st}
	case "MASQUERADE", "":
		return t.runRules(table, chain, rules, i+1, st)
	}
	var out []traceState
	for _, s := range t.runChain(table, r.target, st) {
		if s.done != "" {
			out = append(out, s)
			continue
		}
		out = append(out, t.runRules(table, chain, rules, i+1, s)...)
	}
	return out
}

func splitHostPort(s string) (netip.Addr, int) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}, 0
	}
	return ap.Addr(), int(ap.Port())
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(t.Local, a)
}

// rule is the part of a rule the tracer understands.
type rule struct {
	conds         []cond
	probability   float64 // 0 when the rule has no statistic match
	target        string
	toDestination string
}

type cond struct {
	neg   bool
	kind  string // src, dst, proto, dport, srctype, dsttype, iface, recent, ctstate
	value string
}

// parseRule reads the match and target options kube-proxy-style rules use.
func parseRule(text string) rule {
	toks := Tokenize(text)
	var r rule
	neg := false
	for i := 0; i < len(toks); i++ {
		arg := func() string {
			if i+1 < len(toks) {
				i++
				return toks[i]
			}
			return ""
		}
		switch toks[i] {
		case "!":
			neg = true
			continue
		case "-s":
			r.conds = append(r.conds, cond{neg, "src", arg()})
		case "-d":
			r.conds = append(r.conds, cond{neg, "dst", arg()})
		case "-p":
			r.conds = append(r.conds, cond{neg, "proto", arg()})
		case "-i":
			r.conds = append(r.conds, cond{neg, "iface", arg()})
		case "--dport":
			r.conds = append(r.conds, cond{neg, "dport", arg()})
		case "--src-type":
			r.conds = append(r.conds, cond{neg, "srctype", arg()})
		case "--dst-type":
			r.conds = append(r.conds, cond{neg, "dsttype", arg()})
		case "--rcheck":
			r.conds = append(r.conds, cond{neg, "recent", ""})
		case "--ctstate":
			r.conds = append(r.conds, cond{neg, "ctstate", arg()})
		case "--mark":
			r.conds = append(r.conds, cond{neg, "mark", arg()})
		case "--probability":
			r.probability, _ = strconv.ParseFloat(arg(), 64)
		case "--to-destination":
			r.toDestination = arg()
		case "-j":
			r.target = arg()
		case "--comment", "--name", "--seconds", "--mode", "-m", "--or-mark", "--xor-mark":
			arg()
		}
		neg = false
	}
	return r
}

// matchProbability returns 0 when the rule does not match, 1 when it does,
// and the statistic probability for a random-mode rule.
func (t *Tracer) matchProbability(r rule, st traceState) float64 {
	for _, c := range r.conds {
		if t.condMatches(c, st) == c.neg {
			return 0
		}
	}
	if r.probability > 0 {
		return r.probability
	}
	return 1
}

func (t *Tracer) condMatches(c cond, st traceState) bool {
	p := st.pkt
	switch c.kind {
	case "src", "dst":
		a := p.Src
		if c.kind == "dst" {
			a = p.Dst
		}
		prefix, err := netip.ParsePrefix(c.value)
		return err == nil && prefix.Contains(a)
	case "proto":
		return c.value == p.Protocol
	case "dport":
		return c.value == strconv.Itoa(p.DstPort)
	case "srctype":
		return p.FromNode
	case "dsttype":
		return t.isLocal(p.Dst)
	case "iface":
		return ifaceMatches(c.value, p.InIface)
	case "recent":
		return false // a new client has no affinity entry yet
	case "ctstate":
		states := strings.Split(c.value, ",")
		return slices.Contains(states, "NEW") || (st.dnat != "" && slices.Contains(states, "DNAT"))
	case "mark":
		return st.mark
	}
	panic(fmt.Sprintf("tracer: unknown condition %q", c.kind))
}

func ifaceMatches(pattern, iface string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(iface, prefix)
	}
	return pattern == iface
}

// merge sums the probabilities of identical outcomes.
func merge(in []Outcome) []Outcome {
	var out []Outcome
	for _, o := range in {
		i := slices.IndexFunc(out, func(x Outcome) bool {
			return x.Verdict == o.Verdict && x.Endpoint == o.Endpoint && x.Masquerade == o.Masquerade
		})
		if i < 0 {
			out = append(out, o)
			continue
		}
		out[i].Probability += o.Probability
	}
	slices.SortFunc(out, func(a, b Outcome) int { return strings.Compare(a.Verdict+a.Endpoint, b.Verdict+b.Endpoint) })
	return out
}
