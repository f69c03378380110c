package explain

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/ipvs"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// An IPVS-mode trace has two stages. The helper iptables rules (planned)
// decide REJECT/DROP, masquerading and the eTP Local short-circuit; the
// tracer follows them once every ipset match is resolved against the
// planned ipsets for this one packet. What reaches a service address then
// meets its virtual server, which spreads connections over its real
// servers by weight.

// vsLookup returns a virtual server by key, or nil.
type vsLookup func(ipvs.VSKey) *ipvs.VirtualServer

// ipvsTrace fills one trace's outcomes for a packet.
func (b *builder) ipvsTrace(f *Family, name types.NamespacedName, pkt iptables.Packet, tr *Trace) {
	sub := serviceSnapshot(b.in.Snapshot, name)
	agg := ipvsPlan(*f, sub).Aggregate()
	rules, orig := resolveSets(planRules(*f, sub), agg, pkt)
	local := slices.Concat(b.in.Local, slices.Collect(maps.Keys(agg.Addresses)))
	first := iptables.NewTracer(rules, local).Trace(pkt)
	for i := range first {
		first[i].Path = decisiveSteps(first[i].Path, orig)
	}
	planned := func(k ipvs.VSKey) *ipvs.VirtualServer { return agg.VirtualServers[k] }
	tr.Outcomes = throughIPVS(first, pkt, planned, agg)
	if ks := f.IPVS.Kernel; ks != nil && b.ipvsDiffers(f) {
		tr.KernelOutcomes = throughIPVS(first, pkt, ks.VirtualServer, agg)
	}
}

// ipvsDiffers reports whether any port's virtual servers of the family
// differ from the plan.
func (b *builder) ipvsDiffers(f *Family) bool {
	for _, p := range b.r.Ports {
		for _, fp := range p.Families {
			if fp.Family == string(f.Family) && fp.IPVS != nil && len(fp.IPVS.Changes) > 0 {
				return true
			}
		}
	}
	return false
}

// throughIPVS turns the helper rules' outcomes into final ones: a packet
// left for a local service address, or DNATed to one (short-circuit),
// meets that address's virtual server.
func throughIPVS(first []iptables.Outcome, pkt iptables.Packet, lookup vsLookup, agg *ipvs.Aggregate) []Outcome {
	var out []Outcome
	for _, o := range outcomes(first) {
		dst, port := pkt.Dst, pkt.DstPort
		switch o.Verdict {
		case "DNAT":
			dst, port = splitAddrPort(o.Endpoint)
		case "LOCAL":
		default:
			out = append(out, o)
			continue
		}
		key := ipvs.VSKey{Protocol: protocolOf(pkt.Protocol), Addr: dst, Port: uint16(port)}
		vs := lookup(key)
		if vs == nil {
			if o.Verdict == "LOCAL" {
				o.Path = append(o.Path, "ipvs: no virtual server "+key.String()+": delivered to the node itself")
			}
			out = append(out, o)
			continue
		}
		out = append(out, realServers(o, vs, pkt, agg)...)
	}
	return out
}

// realServers spreads one outcome over a virtual server's real servers.
// rr takes every real server of weight > 0 in turn; wrr in proportion to
// weight; other schedulers depend on load or on the source, so equal
// shares are shown and the path says so.
func realServers(o Outcome, vs *ipvs.VirtualServer, pkt iptables.Packet, agg *ipvs.Aggregate) []Outcome {
	rss := slices.SortedFunc(maps.Keys(vs.RealServers), netip.AddrPort.Compare)
	live, sum := 0, 0
	for _, rs := range rss {
		if w := vs.RealServers[rs]; w > 0 {
			live++
			sum += w
		}
	}
	step := fmt.Sprintf("ipvs: virtual server %s scheduler %s, %d real servers (%d with weight > 0)", vs.Key, vs.Scheduler, len(rss), live)
	if vs.Scheduler != "rr" && vs.Scheduler != "wrr" {
		step += "; the " + vs.Scheduler + " scheduler picks by load or source: equal shares shown"
	}
	if live == 0 {
		o.Verdict, o.Endpoint, o.Masquerade = "DROP", "", false
		o.Path = append(slices.Clip(o.Path), step+": no real server takes new connections")
		return []Outcome{o}
	}
	var out []Outcome
	for _, rs := range rss {
		w := vs.RealServers[rs]
		share := 0.0
		switch {
		case w == 0:
		case vs.Scheduler == "wrr":
			share = float64(w) / float64(sum)
		default:
			share = 1 / float64(live)
		}
		// KUBE-LOOP-BACK: a pod reaching itself through the Service is
		// masqueraded in POSTROUTING.
		hairpin := agg.SetMatch(ipvs.SetName(ipvs.SetLoopBack, watch.FamilyOf(vs.Key.Addr)), "dst,dst,src", pkt.Src, rs.Addr(), pkt.Protocol, int(rs.Port()))
		out = append(out, Outcome{
			Verdict: "IPVS", Endpoint: rs.String(), VirtualServer: vs.Key.String(), Weight: &w,
			Masquerade: o.Masquerade || hairpin, Probability: o.Probability * share,
			Path: append(slices.Clip(o.Path), step),
		})
	}
	return out
}

func splitAddrPort(s string) (netip.Addr, int) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}, 0
	}
	return ap.Addr(), int(ap.Port())
}

func protocolOf(p string) v1.Protocol { return v1.Protocol(strings.ToUpper(p)) }

// setMatch finds `-m set [!] --match-set NAME DIRS`; ipvsMatch finds the
// ipvs match the node-originated source-range check uses.
var (
	setMatch  = regexp.MustCompile(`-m set (! )?--match-set (\S+) (\S+)`)
	ipvsMatch = regexp.MustCompile(`-m ipvs --vaddr (\S+) --vport (\S+) --vproto (\S+)`)
)

// resolveSets returns the ruleset with every ipset match decided for pkt:
// a rule whose set match fails is left out, a match that holds is removed
// from the rule. The ipvs match (the virtual server a node-originated
// packet went through) becomes the destination match it amounts to before
// IPVS.
//
// orig maps each resolved path step ("table chain: rule") back to the rule
// as planned. Where several rules of a chain resolve to the same text, the
// first is the one the tracer stops at, so the first is kept.
func resolveSets(rs *iptables.Ruleset, agg *ipvs.Aggregate, pkt iptables.Packet) (res *iptables.Ruleset, orig map[string]string) {
	orig = map[string]string{}
	rewrite := func(k iptables.ChainKey, rules []string) []string {
		out := []string{}
		for _, planned := range rules {
			r := planned
			keep := true
			r = setMatch.ReplaceAllStringFunc(r, func(m string) string {
				g := setMatch.FindStringSubmatch(m)
				if agg.SetMatch(g[2], g[3], pkt.Src, pkt.Dst, pkt.Protocol, pkt.DstPort) == (g[1] != "") {
					keep = false
				}
				return ""
			})
			r = ipvsMatch.ReplaceAllString(r, "-d $1 -p $3 --dport $2")
			if !keep {
				continue
			}
			r = strings.Join(strings.Fields(r), " ")
			step := k.Table + " " + k.Name + ": "
			if _, ok := orig[step+r]; !ok {
				orig[step+r] = step + planned
			}
			out = append(out, r)
		}
		return out
	}
	services := cowmap.Map[string, *iptables.ServiceRules]{}.Edit()
	// Service entries come before the base rules of a shared chain.
	for name, sr := range rs.Services.All() {
		n := &iptables.ServiceRules{Chains: map[iptables.ChainKey][]string{}, Entries: map[iptables.ChainKey][]string{}}
		for k, rules := range sr.Entries {
			n.Entries[k] = rewrite(k, rules)
		}
		for k, rules := range sr.Chains {
			n.Chains[k] = rewrite(k, rules)
		}
		services.Set(name, n)
	}
	res = &iptables.Ruleset{Family: rs.Family, Base: map[iptables.ChainKey][]string{}, Services: services.Map()}
	for k, rules := range rs.Base {
		res.Base[k] = rewrite(k, rules)
	}
	// The jumps from the built-in chains match on no set.
	res.Jumps = rs.Jumps
	return res, orig
}

// decisiveSteps keeps the rules of our chains that a packet matched (the
// jumps from the built-in chains into every one of them say nothing), in
// their planned text.
func decisiveSteps(path []string, orig map[string]string) []string {
	out := []string{}
	for _, step := range path {
		table, rest, _ := strings.Cut(step, " ")
		chain, _, _ := strings.Cut(rest, ":")
		if builtin(chain) {
			continue
		}
		if o, ok := orig[step]; ok && table != "" {
			step = o
		}
		out = append(out, step)
	}
	return out
}
