package explain

import (
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Source kinds of a traced packet.
const (
	SourceNode  = "node"            // sent by the node itself (nat OUTPUT)
	SourceOther = "pod-or-external" // arrives from a pod or from outside (nat PREROUTING)
)

// SourceKind classifies a source: the node's own addresses and loopback are
// the node; anything else arrives from a pod or from outside.
func SourceKind(src netip.Addr, local []netip.Addr) string {
	if src.IsLoopback() || slices.Contains(local, src) {
		return SourceNode
	}
	return SourceOther
}

// dest is one destination to trace.
type dest struct {
	ip    netip.Addr
	port  int32
	proto v1.Protocol
	name  string
}

func (b *builder) trace() {
	q, in := b.in.Query, b.in
	if !q.From.IsValid() {
		return
	}
	if in.Service == nil || ServiceProblem(in.Service) != "" {
		b.note("no trace from %s: the proxy does not handle this service", q.From)
		return
	}
	fam := watch.FamilyOf(q.From)
	var f *Family
	for i := range in.Families {
		if in.Families[i].Family == fam {
			f = &in.Families[i]
		}
	}
	if f == nil {
		b.note("no trace from %s: this node does not program %s", q.From, fam)
		return
	}
	name := types.NamespacedName{Namespace: in.Service.Namespace, Name: in.Service.Name}
	var dests []dest
	if t := q.Target; t != nil {
		if watch.FamilyOf(t.IP) != fam {
			b.note("no trace from %s: the source and %s are of different IP families", q.From, t.IP)
			return
		}
		dests = append(dests, dest{t.IP, t.Port, t.Protocol, deref(q.MatchedPort, "")})
	} else {
		for _, p := range in.Snapshot.PortsOf(name) {
			if ip, ok := p.ClusterIP(fam); ok {
				dests = append(dests, dest{ip, p.Port, p.Protocol, p.Name.Port})
			}
		}
	}
	local := in.Local
	if f.NFT != nil {
		b.note("trace from %s: outcomes of the Service's decision as iptables mode's rules carry it out; nftables mode makes the same decision (paths not shown)", q.From)
	}
	planned := iptables.NewTracer(planRules(*f, serviceSnapshot(in.Snapshot, name)), local)
	var kernel *iptables.Tracer
	if f.Kernel != nil && f.IPVS == nil && b.kernelDiffers(fam) {
		kernel = iptables.NewTracer(KernelRuleset(f.Kernel, fam), local)
	}
	kind := SourceKind(q.From, local)
	for _, d := range dests {
		pkt := iptables.Packet{
			Src: q.From, Dst: d.ip, Protocol: strings.ToLower(string(d.proto)), DstPort: int(d.port),
			FromNode: kind == SourceNode, InIface: q.InIface,
		}
		tr := Trace{
			Source: q.From.String(), SourceKind: kind, Port: d.name,
			Destination: Target{IP: d.ip, Port: d.port, Protocol: d.proto}.String(),
		}
		if f.IPVS != nil {
			b.ipvsTrace(f, name, pkt, &tr)
			b.r.Traces = append(b.r.Traces, tr)
			continue
		}
		tr.Outcomes = outcomes(planned.Trace(pkt))
		if f.NFT != nil {
			// The outcomes come from the same per-port decision
			// (watch.Decide) nftables mode writes; the chain path is
			// iptables mode's, so none is shown.
			for i := range tr.Outcomes {
				tr.Outcomes[i].Path = []string{}
			}
			b.r.Traces = append(b.r.Traces, tr)
			continue
		}
		if kernel != nil {
			tr.KernelOutcomes = outcomes(kernel.Trace(pkt))
		}
		b.r.Traces = append(b.r.Traces, tr)
	}
}

func (b *builder) kernelDiffers(fam v1.IPFamily) bool {
	if len(b.r.Stale) > 0 {
		return true
	}
	for _, p := range b.r.Ports {
		for _, fp := range p.Families {
			if fp.Family == string(fam) && len(fp.Kernel.Differences) > 0 {
				return true
			}
		}
	}
	return false
}

func outcomes(in []iptables.Outcome) []Outcome {
	out := make([]Outcome, 0, len(in))
	for _, o := range in {
		path := o.Path
		if path == nil {
			path = []string{}
		}
		out = append(out, Outcome{Verdict: o.Verdict, Endpoint: o.Endpoint, Masquerade: o.Masquerade, Probability: o.Probability, Path: path})
	}
	return out
}

// KernelRuleset turns what the kernel holds into a Ruleset the tracer can
// follow: every chain of ours as a fixed chain (shared ones whole), and the
// rules of the built-in chains that lead into ours as jumps.
func KernelRuleset(k Kernel, fam v1.IPFamily) *iptables.Ruleset {
	rs := &iptables.Ruleset{Family: fam, Base: map[iptables.ChainKey][]string{}}
	for _, table := range []string{iptables.TableNAT, iptables.TableFilter} {
		t := k[table]
		if t == nil {
			continue
		}
		ours := func(name string) bool { return iptables.IsServiceChain(name) || iptables.IsBaseChain(name) }
		for _, name := range t.Chains {
			if ours(name) {
				rs.Base[iptables.ChainKey{Table: table, Name: name}] = slices.Clone(t.Rules[name])
			}
		}
		for _, name := range t.Chains {
			if ours(name) || !builtin(name) {
				continue
			}
			for _, r := range t.Rules[name] {
				if ours(ruleTarget(r)) {
					rs.Jumps = append(rs.Jumps, iptables.Jump{Table: table, Chain: name, Rule: iptables.Tokenize(r)})
				}
			}
		}
	}
	return rs
}

func builtin(chain string) bool {
	switch chain {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}
