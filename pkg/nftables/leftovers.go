package nftables

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/metrics"
)

// leftovers are what partial syncs left in the kernel for a second
// transaction to delete: the old rules of chains that got new ones
// written ahead (InsertRules), and hairpin elements of addresses no
// Service uses any more. Neither decides a packet's fate: the new rules
// come first and end in a verdict, and a hairpin element matches only
// traffic from an address to itself. The split was made when every
// deletion seemed to cost a sync 7 to 16 ms; that wait came from closing
// the netlink socket after the transaction (see socket), which the Kernel
// no longer does. With the socket kept open, the split saves the sync
// little (BenchmarkShards, one endpoint replaced, 64 tables: 0.36 ms with
// it and 0.43 ms without at 1,000 Services; 1.44 and 1.52 ms at 20,000).
type leftovers struct {
	// chains are the shadowed chains' ids, each with its Service.
	chains  map[string]string
	hairpin map[netip.Addr]bool
}

func (l *leftovers) empty() bool { return len(l.chains) == 0 && len(l.hairpin) == 0 }

// shadowed records chains of Service name that hold old rules behind new.
func (l *leftovers) shadowed(name string, chains []*Chain) {
	if len(chains) > 0 && l.chains == nil {
		l.chains = map[string]string{}
	}
	for _, c := range chains {
		l.chains[c.id()] = name
	}
}

// unusedHairpin records hairpin addresses whose elements are to go.
func (l *leftovers) unusedHairpin(addrs []netip.Addr) {
	if len(addrs) > 0 && l.hairpin == nil {
		l.hairpin = map[netip.Addr]bool{}
	}
	for _, a := range addrs {
		l.hairpin[a] = true
	}
}

// keepHairpin reports whether a's element is still in the kernel, waiting
// for its deletion, which it cancels: a Service uses a again.
func (l *leftovers) keepHairpin(a netip.Addr) bool {
	if !l.hairpin[a] {
		return false
	}
	delete(l.hairpin, a)
	return true
}

// transaction rewrites each shadowed chain with its rules in rs (the last
// ruleset written, which later syncs may have changed again) and deletes
// the unused hairpin elements. A chain rs no longer has was deleted with
// its Service.
func (l *leftovers) transaction(rs *Ruleset) *Transaction {
	b := &txBuilder{}
	for _, id := range sortedKeys(l.chains) {
		objs := rs.Services.Get(l.chains[id])
		if objs == nil {
			continue
		}
		i := slices.IndexFunc(objs.Chains, func(c *Chain) bool { return c.id() == id })
		if i < 0 {
			continue
		}
		b.add(Op{Kind: FlushChain, Chain: objs.Chains[i]})
		b.add(Op{Kind: AddRules, Chain: objs.Chains[i]})
	}
	for _, a := range slices.SortedFunc(maps.Keys(l.hairpin), netip.Addr.Compare) {
		b.add(Op{Kind: DelElem, Elem: hairpinElem(a)})
	}
	return b.build()
}

// removeLeftovers deletes what the syncs since the last call left. If the
// kernel refuses, the next sync rewrites everything.
func (p *Provider) removeLeftovers() {
	p.writing.Lock()
	defer p.writing.Unlock()
	rs := p.Applied()
	if rs == nil || p.later.empty() {
		return
	}
	tx := p.later.transaction(rs)
	p.later = leftovers{}
	start := time.Now()
	err := p.kernel.Apply(tx)
	fam := string(p.opts.Family)
	metrics.SyncKernelCallsTotal.WithLabelValues("nftables_deferred_transaction", fam).Inc()
	if err != nil {
		klog.ErrorS(err, "Deleting rules and elements partial syncs left unused; the next sync rewrites the tables that differ from the plan", "family", fam)
		p.setApplied(nil)
		return
	}
	metrics.SyncDeferredDeletionsDuration.WithLabelValues(fam).Observe(metrics.SinceInSeconds(start))
}
