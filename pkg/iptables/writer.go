package iptables

import (
	"bytes"
	"iter"
	"maps"
	"slices"
)

// sharedChains hold entries of many Services plus fixed tail rules. They are
// rewritten whole only by a full sync; a delta edits single entries in them.
var sharedChains = map[ChainKey]bool{
	{TableNAT, ChainServices}:            true,
	{TableNAT, ChainNodePorts}:           true,
	{TableFilter, ChainServices}:         true,
	{TableFilter, ChainExternalServices}: true,
	{TableFilter, ChainNodePorts}:        true,
	{TableFilter, ChainProxyFirewall}:    true,
}

// payload collects the lines of one iptables-restore input, per table, in
// the order restore needs: chain declarations, deletions of entries,
// owned-chain rules, inserted entries, then chain removals.
type payload struct {
	tables map[string]*tableLines
}

type tableLines struct {
	decl, del, ins, remove []string
	// add holds the rules of rewritten chains unjoined: a full sync writes
	// every rule once, and joining each into its own "-A CHAIN rule"
	// string first would double the garbage of the largest write.
	add []chainRule
}

type chainRule struct{ chain, rule string }

func newPayload() *payload { return &payload{tables: map[string]*tableLines{}} }

func (p *payload) table(name string) *tableLines {
	t := p.tables[name]
	if t == nil {
		t = &tableLines{}
		p.tables[name] = t
	}
	return t
}

// declare flushes (or creates) a chain: under --noflush a ":CHAIN" line
// empties an existing chain, which is how a chain is rewritten atomically.
func (p *payload) declare(k ChainKey) {
	p.table(k.Table).decl = append(p.table(k.Table).decl, ":"+k.Name+" - [0:0]")
}

func (p *payload) appendRules(k ChainKey, rules []string) {
	t := p.table(k.Table)
	for _, r := range rules {
		t.add = append(t.add, chainRule{k.Name, r})
	}
}

func (p *payload) empty() bool { return p.lines() == 0 }

// lines counts the payload's lines, leaving out the table headers.
func (p *payload) lines() int {
	n := 0
	for _, t := range p.tables {
		n += len(t.decl) + len(t.del) + len(t.add) + len(t.ins) + len(t.remove)
	}
	return n
}

// Bytes renders the payload; tables in a fixed order, each with COMMIT.
func (p *payload) Bytes() []byte {
	var buf bytes.Buffer
	buf.Grow(p.size())
	for _, name := range slices.Sorted(maps.Keys(p.tables)) {
		t := p.tables[name]
		buf.WriteString("*" + name + "\n")
		writeLines(&buf, t.decl, t.del)
		for _, a := range t.add {
			buf.WriteString("-A ")
			buf.WriteString(a.chain)
			buf.WriteByte(' ')
			buf.WriteString(a.rule)
			buf.WriteByte('\n')
		}
		writeLines(&buf, t.ins, t.remove)
		buf.WriteString("COMMIT\n")
	}
	return buf.Bytes()
}

func writeLines(buf *bytes.Buffer, groups ...[]string) {
	for _, group := range groups {
		for _, l := range group {
			buf.WriteString(l)
			buf.WriteByte('\n')
		}
	}
}

// size is the length of Bytes' output, so it is written into one
// allocation.
func (p *payload) size() int {
	n := 0
	for name, t := range p.tables {
		n += len(name) + len("*\nCOMMIT\n")
		for _, group := range [][]string{t.decl, t.del, t.ins, t.remove} {
			for _, l := range group {
				n += len(l) + 1
			}
		}
		for _, a := range t.add {
			n += len("-A  \n") + len(a.chain) + len(a.rule)
		}
	}
	return n
}

// FullPayloads returns the restore payloads that make the kernel hold
// exactly rs, given the proxy-owned chains that exist now. The work is split
// so that no payload exceeds about batchLines lines: --noflush restore time
// grows faster than the payload (see DefaultBatchLines), so many small
// payloads beat one large one. Existing Service chains are rewritten in place (each
// payload is atomic) before the shared chains switch over, so a restart
// with rules in place never leaves a Service unreachable.
func FullPayloads(rs *Ruleset, existing map[ChainKey]bool, batchLines int) [][]byte {
	kernel := KernelChains{}
	for k, ok := range existing {
		if ok {
			kernel[k] = 0
		}
	}
	return slices.Collect(FullPayloadSeq(rs, kernel, batchLines))
}

// FullPayloadSeq yields FullPayloads' payloads one at a time, each built
// only when the previous one has been written: at 5,000 Services the whole
// set is 17 MB, which a sync need not hold at once.
//
// Service chains that the kernel already holds as planned (in place) are
// not written.
func FullPayloadSeq(rs *Ruleset, existing KernelChains, batchLines int) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		if !yield(prelude(rs, existing).Bytes()) {
			return
		}
		batch, lines := newPayload(), 0
		for _, svc := range rs.ServiceKeys() {
			sr := rs.Services.Get(svc)
			for _, k := range sortedKeys(sr.Chains) {
				if existing.InPlace(k) {
					continue
				}
				batch.declare(k)
				batch.appendRules(k, sr.Chains[k])
				lines += 1 + len(sr.Chains[k])
			}
			if lines >= batchLines {
				if !yield(batch.Bytes()) {
					return
				}
				batch, lines = newPayload(), 0
			}
		}
		if !batch.empty() && !yield(batch.Bytes()) {
			return
		}
		yield(switchover(rs, existing).Bytes())
	}
}

// prelude writes the fixed chains and creates missing shared chains (empty),
// so that Service chains can refer to them.
func prelude(rs *Ruleset, existing KernelChains) *payload {
	p := newPayload()
	for _, k := range sortedKeys(rs.Base) {
		if sharedChains[k] {
			if _, ok := existing[k]; !ok {
				p.declare(k)
			}
			continue
		}
		p.declare(k)
		p.appendRules(k, rs.Base[k])
	}
	for _, table := range []string{TableFilter, TableNAT, TableMangle} {
		p.declare(ChainKey{table, ChainCanary})
	}
	return p
}

// switchover rewrites the shared chains whole and removes our chains that
// the ruleset no longer has.
func switchover(rs *Ruleset, existing KernelChains) *payload {
	p := newPayload()
	for _, k := range sortedKeys(rs.Base) {
		if sharedChains[k] {
			rules, _ := rs.Chain(k)
			p.declare(k)
			p.appendRules(k, rules)
		}
	}
	var stale []ChainKey
	for k := range existing {
		if IsServiceChain(k.Name) && !rs.Has(k) {
			stale = append(stale, k)
		}
	}
	slices.SortFunc(stale, compareKeys)
	for _, k := range stale {
		p.declare(k)
		p.table(k.Table).remove = append(p.table(k.Table).remove, "-X "+k.Name)
	}
	return p
}

// DeltaPayload returns the payload that turns old into new for the given
// Services only: rewritten owned chains, deleted and inserted shared-chain
// entries, and removed chains. Nothing else is written, so its size depends
// on the change, not on the number of Services. It returns nil when nothing
// differs.
func DeltaPayload(old, new *Ruleset, services []string) []byte {
	p := newPayload()
	for _, svc := range services {
		deltaService(p, old.Services.Get(svc), new.Services.Get(svc))
	}
	if p.empty() {
		return nil
	}
	return p.Bytes()
}

// DeltaPayloadSeq yields DeltaPayload's lines for the given Services in
// payloads of about batchLines lines, each whole Services: a delta can be
// large too (thousands of Services changed at once, e.g. the first sync
// after a long API outage), and --noflush restore time grows faster than
// the payload (see DefaultBatchLines).
func DeltaPayloadSeq(old, new *Ruleset, services []string, batchLines int) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		p := newPayload()
		for _, svc := range services {
			deltaService(p, old.Services.Get(svc), new.Services.Get(svc))
			if p.lines() >= batchLines {
				if !yield(p.Bytes()) {
					return
				}
				p = newPayload()
			}
		}
		if !p.empty() {
			yield(p.Bytes())
		}
	}
}

func deltaService(p *payload, old, new *ServiceRules) {
	if old == nil {
		old = &ServiceRules{}
	}
	if new == nil {
		new = &ServiceRules{}
	}
	for _, k := range sortedKeys(new.Chains) {
		if prev, ok := old.Chains[k]; !ok || !slices.Equal(prev, new.Chains[k]) {
			p.declare(k)
			p.appendRules(k, new.Chains[k])
		}
	}
	for _, k := range sortedKeys(old.Chains) {
		if _, ok := new.Chains[k]; !ok {
			p.declare(k)
			p.table(k.Table).remove = append(p.table(k.Table).remove, "-X "+k.Name)
		}
	}
	entryKeys := slices.Concat(sortedKeys(old.Entries), sortedKeys(new.Entries))
	slices.SortFunc(entryKeys, compareKeys)
	for _, k := range slices.Compact(entryKeys) {
		deltaEntries(p, k, old.Entries[k], new.Entries[k])
	}
}

// deltaEntries deletes entries that went away and inserts new ones at the
// head of the shared chain, ahead of its fixed tail rules (the NodePort
// dispatch in KUBE-SERVICES must stay last). Entries of different Services
// match disjoint traffic, so their relative order does not matter.
func deltaEntries(p *payload, k ChainKey, old, new []string) {
	t := p.table(k.Table)
	oldSet := map[string]bool{}
	for _, r := range old {
		oldSet[r] = true
	}
	newSet := map[string]bool{}
	for _, r := range new {
		newSet[r] = true
		if !oldSet[r] {
			t.ins = append(t.ins, "-I "+k.Name+" 1 "+r)
		}
	}
	for _, r := range old {
		if !newSet[r] {
			t.del = append(t.del, "-D "+k.Name+" "+r)
		}
	}
}

func sortedKeys[V any](m map[ChainKey]V) []ChainKey {
	return slices.SortedFunc(maps.Keys(m), compareKeys)
}
