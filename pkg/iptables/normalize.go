package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Normalize returns a canonical form of one rule (the text after
// "-A CHAIN "), so that a rule as the planner writes it and the same rule
// as iptables-save prints it back compare equal. It works on tokens: the
// match modules form a set, the match options a multiset of (negation,
// flag, value) pairs, and the target with its options comes last. Values
// are rewritten the way the kernel stores them:
//
//   - addresses get their prefix length (-d 1.2.3.4 is -d 1.2.3.4/32);
//   - -j MARK --or-mark/--xor-mark/--and-mark/--set-mark become
//     --set-xmark value/mask, and a --mark mask of 0xffffffff is dropped;
//   - statistic probabilities compare as the kernel's 31-bit fixed point
//     (the planner prints 10 decimals, iptables-save 11);
//   - comments lose their quotes; conntrack state lists are sorted;
//   - defaults iptables-save spells out are dropped (REJECT
//     --reject-with icmp[6]-port-unreachable, recent --mask all-ones and
//     --rsource), and so is "-m tcp|udp|sctp" next to the same -p.
func Normalize(rule string) string {
	toks := Tokenize(rule)
	var modules, opts, targetOpts []string
	target := ""
	proto := ""
	neg := false
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		if tok == "!" {
			neg = true
			continue
		}
		flag := canonicalFlag(tok)
		val := ""
		hasVal := strings.HasPrefix(flag, "-") && !valueless[flag] && i+1 < len(toks)
		if hasVal {
			i++
			val = toks[i]
		}
		switch {
		case flag == "-m":
			modules = append(modules, strings.ToLower(val))
		case flag == "-j":
			target = val
		case target != "":
			if o := targetOption(target, flag, val); o != "" {
				targetOpts = append(targetOpts, o)
			}
		default:
			if flag == "-p" {
				proto = canonicalProto(val)
			}
			if o := matchOption(flag, val); o != "" {
				if neg {
					o = "! " + o
				}
				opts = append(opts, o)
			}
		}
		neg = false
	}
	modules = slices.DeleteFunc(modules, func(m string) bool { return m == proto })
	slices.Sort(modules)
	modules = slices.Compact(modules)
	slices.Sort(opts)
	slices.Sort(targetOpts)
	var b strings.Builder
	for _, m := range modules {
		b.WriteString("-m " + m + " ")
	}
	for _, o := range opts {
		b.WriteString(o + " ")
	}
	b.WriteString("-j " + target)
	for _, o := range targetOpts {
		b.WriteString(" " + o)
	}
	return b.String()
}

// RulesEqual reports whether two rules mean the same to the kernel.
func RulesEqual(a, b string) bool { return Normalize(a) == Normalize(b) }

// valueless are the options that take no argument.
var valueless = map[string]bool{
	"--rcheck": true, "--set": true, "--update": true, "--remove": true, "--reap": true,
	"--rsource": true, "--rdest": true, "--random-fully": true, "--random": true, "--persistent": true,
}

var longFlags = map[string]string{
	"--source": "-s", "--destination": "-d", "--protocol": "-p", "--in-interface": "-i",
	"--out-interface": "-o", "--jump": "-j", "--match": "-m", "--src": "-s", "--dst": "-d",
	"--destination-port": "--dport", "--source-port": "--sport",
}

func canonicalFlag(f string) string {
	if c, ok := longFlags[f]; ok {
		return c
	}
	return f
}

func canonicalProto(p string) string {
	switch strings.ToLower(p) {
	case "6", "tcp":
		return "tcp"
	case "17", "udp":
		return "udp"
	case "132", "sctp":
		return "sctp"
	}
	return strings.ToLower(p)
}

func matchOption(flag, val string) string {
	switch flag {
	case "-s", "-d":
		return flag + " " + canonicalPrefix(val)
	case "-p":
		return "-p " + canonicalProto(val)
	case "--probability":
		return "--probability " + fixedPoint(val)
	case "--ctstate", "--state":
		states := strings.Split(val, ",")
		slices.Sort(states)
		return "--ctstate " + strings.Join(states, ",")
	case "--mark":
		return "--mark " + canonicalMark(val)
	case "--mask":
		if a, err := netip.ParseAddr(val); err == nil && allOnes(a) {
			return ""
		}
	case "--rsource":
		return ""
	}
	if val == "" {
		return flag
	}
	return flag + " " + val
}

func targetOption(target, flag, val string) string {
	switch {
	case target == "MARK":
		return markTarget(flag, val)
	case target == "REJECT" && flag == "--reject-with":
		if val == "icmp-port-unreachable" || val == "icmp6-port-unreachable" {
			return ""
		}
	case flag == "--to-destination":
		if ap, err := netip.ParseAddrPort(val); err == nil {
			return flag + " " + netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		}
		if a, err := netip.ParseAddr(val); err == nil {
			return flag + " " + a.Unmap().String()
		}
	}
	if val == "" {
		return flag
	}
	return flag + " " + val
}

// markTarget turns every MARK option into the --set-xmark value/mask the
// kernel stores: new = (old & ^mask) ^ value.
func markTarget(flag, val string) string {
	v, m, hasMask := splitMark(val)
	var value, mask uint64
	switch flag {
	case "--set-xmark":
		value, mask = v, 0xffffffff
		if hasMask {
			mask = m
		}
	case "--set-mark":
		value, mask = v, 0xffffffff
		if hasMask {
			mask = m | v
		}
	case "--or-mark":
		value, mask = v, v
	case "--and-mark":
		value, mask = 0, ^v&0xffffffff
	case "--xor-mark":
		value, mask = v, 0
	default:
		return flag + " " + val
	}
	return fmt.Sprintf("--set-xmark %#x/%#x", value, mask)
}

func canonicalMark(val string) string {
	v, m, hasMask := splitMark(val)
	if !hasMask || m == 0xffffffff {
		return fmt.Sprintf("%#x", v)
	}
	return fmt.Sprintf("%#x/%#x", v, m)
}

func splitMark(val string) (v, m uint64, hasMask bool) {
	vs, ms, hasMask := strings.Cut(val, "/")
	v, _ = strconv.ParseUint(vs, 0, 32)
	if hasMask {
		m, _ = strconv.ParseUint(ms, 0, 32)
	}
	return v, m, hasMask
}

// fixedPoint renders a probability as the kernel keeps it:
// round(p * 2^31) (xt_statistic), so 0.5000000000 and 0.50000000000 agree.
func fixedPoint(val string) string {
	p, err := strconv.ParseFloat(val, 64)
	if err != nil {
		return val
	}
	return strconv.FormatInt(int64(math.Round(p*0x80000000)), 10)
}

func canonicalPrefix(val string) string {
	if p, err := netip.ParsePrefix(val); err == nil {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())).Masked().String()
	}
	if a, err := netip.ParseAddr(val); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	// iptables-save may print a dotted netmask (1.2.3.0/255.255.255.0).
	if addr, mask, ok := strings.Cut(val, "/"); ok {
		a, err1 := netip.ParseAddr(addr)
		m, err2 := netip.ParseAddr(mask)
		if err1 == nil && err2 == nil {
			bits := 0
			for _, b := range m.AsSlice() {
				bits += popcount(b)
			}
			return netip.PrefixFrom(a.Unmap(), bits).Masked().String()
		}
	}
	return val
}

func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

func popcount(b byte) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}

func allOnes(a netip.Addr) bool {
	for _, b := range a.AsSlice() {
		if b != 0xff {
			return false
		}
	}
	return true
}

// Tokenize splits a rule on spaces, keeping double-quoted strings (with
// backslash escapes, as iptables-save writes them) as one token.
func Tokenize(s string) []string {
	var toks []string
	var cur strings.Builder
	quoted, escaped, inTok := false, false, false
	for _, c := range s {
		switch {
		case escaped:
			cur.WriteRune(c)
			escaped = false
		case c == '\\' && quoted:
			escaped = true
		case c == '"':
			quoted = !quoted
			inTok = true
		case (c == ' ' || c == '\t') && !quoted:
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(c)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	return toks
}
