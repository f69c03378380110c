package acceptance

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Expectation is a parsed expect list: a backend set, outcome words, or
// (tolerated) a mix of both.
type Expectation struct {
	Backends []netip.AddrPort
	Words    []string
}

// ParseExpect parses expect entries: "ip:port", "[ip6]:port" or a word.
func ParseExpect(list []string) (Expectation, error) {
	var e Expectation
	for _, x := range list {
		switch w := strings.ToUpper(strings.TrimSpace(x)); w {
		case WordReject, WordDrop, WordLocal, WordUnhandled:
			e.Words = append(e.Words, w)
			continue
		}
		ap, err := netip.ParseAddrPort(strings.TrimSpace(x))
		if err != nil {
			return e, fmt.Errorf("expect entry %q is neither ip:port nor REJECT/DROP/LOCAL/UNHANDLED", x)
		}
		e.Backends = append(e.Backends, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return e, nil
}

// String renders the expectation as "{a, b}".
func (e Expectation) String() string {
	var parts []string
	for _, b := range e.Backends {
		parts = append(parts, b.String())
	}
	parts = append(parts, e.Words...)
	return "{" + strings.Join(parts, ", ") + "}"
}

// Class is what one connection attempt came to.
type Class int

// Attempt classes.
const (
	ClassBackend Class = iota // a responder answered
	ClassLocal                // the node's own sentinel (or health server) answered
	ClassReject               // RST, ICMP unreachable, ECONNREFUSED
	ClassDrop                 // silence until the timeout
	ClassError                // anything else (malformed reply, reset after connect, ...)
)

// Attempt is the outcome of one new connection.
type Attempt struct {
	Class   Class
	Backend netip.AddrPort // the responder's own address (ClassBackend)
	Peer    netip.AddrPort // the client address the responder saw
	Local   netip.AddrPort // the client socket's own address
	// ReplyDst is, for node and localhost sources, the destination of the
	// conntrack entry's reply tuple; it differs from Local when the
	// connection was source-NATed. Invalid if no entry was found.
	ReplyDst netip.AddrPort
	Detail   string
}

// Label names the attempt's outcome for reports.
func (a Attempt) Label() string {
	switch a.Class {
	case ClassBackend:
		return a.Backend.String()
	case ClassLocal:
		return WordLocal
	case ClassReject:
		return WordReject
	case ClassDrop:
		return WordDrop
	}
	return "ERROR(" + a.Detail + ")"
}

// Check holds what a flow's attempts are judged against.
type Check struct {
	Expect     Expectation
	Masquerade *bool
	Source     netip.Addr
	SourceKind string
	Sticky     bool
}

// Verdict is the judgement of a set of attempts.
type Verdict struct {
	Pass bool
	// MoreMayHelp is set when the only fault is that not every backend of
	// the set was seen yet: more attempts may still show them.
	MoreMayHelp bool
	Reason      string
}

// Evaluate judges attempts against the check.
func (c Check) Evaluate(atts []Attempt) Verdict {
	if len(atts) == 0 {
		return Verdict{Reason: "no attempts"}
	}
	got := summarize(atts)
	want := c.Expect.String()
	for _, a := range atts {
		if !c.allowed(a) {
			return Verdict{Reason: fmt.Sprintf("got %s; expected %s", got, want)}
		}
	}
	if c.Sticky {
		first := atts[0].Label()
		for _, a := range atts[1:] {
			if a.Label() != first {
				return Verdict{Reason: fmt.Sprintf("not sticky: got %s from one client; expected a single backend of %s", got, want)}
			}
		}
	} else if len(c.Expect.Words) == 0 {
		seen := map[netip.AddrPort]bool{}
		for _, a := range atts {
			seen[a.Backend] = true
		}
		var missing []string
		for _, b := range c.Expect.Backends {
			if !seen[b] {
				missing = append(missing, b.String())
			}
		}
		if len(missing) > 0 {
			return Verdict{MoreMayHelp: true, Reason: fmt.Sprintf("not every member seen: got %s; never %s; expected %s", got, strings.Join(missing, ", "), want)}
		}
	}
	if r := c.masqueradeFault(atts); r != "" {
		return Verdict{Reason: r}
	}
	return Verdict{Pass: true}
}

// allowed reports whether one attempt's outcome is acceptable.
func (c Check) allowed(a Attempt) bool {
	if a.Class == ClassBackend && slices.Contains(c.Expect.Backends, a.Backend) {
		return true
	}
	for _, w := range c.Expect.Words {
		switch {
		case w == WordUnhandled && a.Class != ClassBackend:
			return true
		case w == WordReject && a.Class == ClassReject,
			w == WordDrop && a.Class == ClassDrop,
			w == WordLocal && a.Class == ClassLocal:
			return true
		}
	}
	return false
}

// masqueradeFault checks the source the backends saw (or, for node and
// localhost clients, the conntrack entry) against the flow's masquerade.
func (c Check) masqueradeFault(atts []Attempt) string {
	if c.Masquerade == nil {
		return ""
	}
	want := *c.Masquerade
	for _, a := range atts {
		if a.Class != ClassBackend {
			continue
		}
		if c.SourceKind == KindNode || c.SourceKind == KindLocalhost {
			if !a.ReplyDst.IsValid() {
				return fmt.Sprintf("masquerade: no conntrack entry found for %s (backend %s)", a.Local, a.Backend)
			}
			if snat := a.ReplyDst != a.Local; snat != want {
				if want {
					return fmt.Sprintf("masquerade: conntrack reply tuple goes back to %s unchanged, expected SNAT", a.Local)
				}
				return fmt.Sprintf("masquerade: conntrack reply tuple goes to %s, not the client %s, expected no SNAT", a.ReplyDst, a.Local)
			}
			continue
		}
		saw := a.Peer.Addr()
		snat := saw != c.Source
		if snat != want {
			if want {
				return fmt.Sprintf("masquerade: backend %s saw %s, expected SNAT", a.Backend, saw)
			}
			return fmt.Sprintf("masquerade: backend %s saw %s, expected the client address %s", a.Backend, saw, c.Source)
		}
	}
	return ""
}

// summarize renders attempts as "10.180.0.1:80 x7, REJECT x3", most
// frequent first.
func summarize(atts []Attempt) string {
	counts := map[string]int{}
	var order []string
	for _, a := range atts {
		l := a.Label()
		if counts[l] == 0 {
			order = append(order, l)
		}
		counts[l]++
	}
	slices.SortStableFunc(order, func(a, b string) int { return counts[b] - counts[a] })
	parts := make([]string, len(order))
	for i, l := range order {
		parts[i] = fmt.Sprintf("%s x%d", l, counts[l])
	}
	return strings.Join(parts, ", ")
}
