package nftables

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/proxy"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Provider is nftables mode for one IP family as the sync loop sees it
// (proxy.Provider). It alone decides between a full and a partial sync: a
// full sync rewrites every table this mode owns that the kernel does not
// hold as planned; a partial one writes only the changed Services' chains and elements, in
// the shards that hold them, and leaves the deletions that change no
// packet's fate (rules it shadowed, unused hairpin elements) to a second
// transaction right after (see leftovers).
type Provider struct {
	kernel Interface
	opts   PlanOptions

	// writing serializes the kernel writes (Sync, removeLeftovers) and
	// guards later.
	writing sync.Mutex
	later   leftovers
	// runLater starts removeLeftovers: on a goroutine, so that the sync
	// (and the next change) does not wait for it; tests run it by hand.
	runLater func(func())
	running  sync.WaitGroup

	mu      sync.Mutex // guards applied and gen, read by Verify
	applied *Ruleset   // last ruleset written; nil: the next sync is full
	gen     uint64     // counts writes, so Verify can tell it raced one
}

// NewProvider returns the Provider of opts.Family on kernel.
func NewProvider(kernel Interface, opts PlanOptions) *Provider {
	if opts.Shards <= 0 {
		opts.Shards = DefaultShards
	}
	p := &Provider{kernel: kernel, opts: opts}
	p.runLater = func(f func()) {
		p.running.Add(1)
		go func() {
			defer p.running.Done()
			f()
		}()
	}
	return p
}

// Settle waits for the removal of what earlier syncs left (after Sync
// has returned).
func (p *Provider) Settle() { p.running.Wait() }

// Family is the IP family the provider programs.
func (p *Provider) Family() v1.IPFamily { return p.opts.Family }

// Kernel is the family's netlink interface.
func (p *Provider) Kernel() Interface { return p.kernel }

// Applied is the last ruleset written (nil before the first sync).
func (p *Provider) Applied() *Ruleset {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}

// ForceFull makes the next Sync a full one.
func (p *Provider) ForceFull() { p.setApplied(nil) }

func (p *Provider) setApplied(rs *Ruleset) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied = rs
	p.gen++
}

// Sync makes the kernel match snap.
func (p *Provider) Sync(snap *watch.Snapshot) (proxy.Result, error) {
	p.writing.Lock()
	defer p.writing.Unlock()
	prev := p.Applied()
	if prev != nil && snap.NodeChanged {
		prev = nil
	}
	rs := PlanFrom(prev, snap, p.opts)
	full := prev == nil || prev.BaseText() != rs.BaseText()
	var txs []*Transaction
	if full {
		var err error
		if txs, err = p.fullTransactions(rs); err != nil {
			p.failed()
			return proxy.Result{}, err
		}
		p.later = leftovers{}
	} else {
		txs = splitLarge(p.partialTransaction(prev, rs, snap.Changed))
	}
	for _, tx := range txs {
		if tx.Empty() {
			continue
		}
		if err := p.kernel.Apply(tx); err != nil {
			p.failed()
			return proxy.Result{}, err
		}
	}
	p.setApplied(rs)
	if !p.later.empty() {
		p.runLater(p.removeLeftovers)
	}
	return p.result(rs, txs, full), nil
}

// failed makes the next sync a full one, which rewrites whatever the
// kernel holds.
func (p *Provider) failed() {
	p.setApplied(nil)
	p.later = leftovers{}
}

// fullTransactions rewrites every table of rs that the kernel does not
// hold exactly as planned (read back first: a restart with the rules in
// place, or a repair of one shard, rewrites only what differs), whole
// tables per transaction and as many per transaction as fit in maxOps
// (the shared table first), and then drops the tables this mode owns that
// rs does not (a smaller shard count than before). Tables refer to none
// of each other's chains or sets, so each one is consistent on its own;
// one transaction for all of them would not fit the kernel's batch limits
// at 20,000 Services (ENOBUFS on the acknowledgements of ~700,000
// messages), and one per table costs a commit per shard in a small
// cluster.
func (p *Provider) fullTransactions(rs *Ruleset) ([]*Transaction, error) {
	held, err := p.kernel.Read(nil)
	if err != nil {
		return nil, fmt.Errorf("reading nftables tables back: %w", err)
	}
	tables := rs.Tables()
	byTable := fullBuild(rs).split()
	out, kept := []*Transaction{{}}, 0
	for _, t := range tables {
		if tableMatches(byTable[t].Ops, held[t]) {
			kept++
			continue
		}
		last := out[len(out)-1]
		if len(last.Ops) > 0 && len(last.Ops)+len(byTable[t].Ops) > maxOps {
			last = &Transaction{}
			out = append(out, last)
		}
		last.Ops = append(last.Ops, byTable[t].Ops...)
	}
	if kept > 0 {
		klog.V(2).InfoS("Kept nftables tables that hold the plan", "family", p.opts.Family, "kept", kept, "tables", len(tables))
	}
	drop := &txBuilder{}
	for _, t := range slices.Sorted(maps.Keys(held)) {
		if !slices.Contains(tables, t) {
			drop.add(Op{Kind: DropTable, Table: t})
		}
	}
	return append(out, drop.build()), nil
}

// fullBuild is every write of rs into empty tables.
func fullBuild(rs *Ruleset) *Transaction {
	b := &txBuilder{}
	for _, t := range rs.Tables() {
		b.add(Op{Kind: ResetTable, Table: t})
	}
	b.diff(nil, rs.Base)
	for _, objs := range rs.Services.All() {
		b.diff(nil, objs)
	}
	for a := range rs.hairpinUses.Keys() {
		b.add(Op{Kind: AddElem, Elem: hairpinElem(a)})
	}
	return b.build()
}

// maxOps bounds a transaction that splitLarge leaves whole: far below the
// batch sizes that overflow the kernel's acknowledgements, far above what
// a sync of a few changed Services writes.
const maxOps = 50000

// splitLarge divides a transaction larger than maxOps by table (a burst
// of thousands of new Services), which keeps each table consistent.
func splitLarge(tx *Transaction) []*Transaction {
	if len(tx.Ops) <= maxOps {
		return []*Transaction{tx}
	}
	byTable := tx.split()
	out := make([]*Transaction, 0, len(byTable))
	for _, t := range slices.Sorted(maps.Keys(byTable)) {
		out = append(out, byTable[t])
	}
	return out
}

// partialTransaction writes what differs between prev and rs for the
// changed Services, except the deletions it adds to p.later.
func (p *Provider) partialTransaction(prev, rs *Ruleset, changed map[watchName]bool) *Transaction {
	b := &txBuilder{shadowing: true}
	for name := range changed {
		b.diff(prev.Services.Get(name.String()), rs.Services.Get(name.String()))
		p.later.shadowed(name.String(), b.shadowed)
		b.shadowed = nil
	}
	for _, a := range rs.hairpinAdded {
		if !p.later.keepHairpin(a) {
			b.add(Op{Kind: AddElem, Elem: hairpinElem(a)})
		}
	}
	p.later.unusedHairpin(rs.hairpinRemoved)
	return b.build()
}

func (p *Provider) result(rs *Ruleset, txs []*Transaction, full bool) proxy.Result {
	res := proxy.Result{Full: full, Written: map[string]int{}, KernelCalls: map[string]int{}}
	for _, tx := range txs {
		if !tx.Empty() {
			res.KernelCalls["nftables_transaction"]++
		}
		for _, op := range tx.Ops {
			if op.Kind == AddRules || op.Kind == InsertRules {
				res.Written["nftables"] += len(op.Chain.Rules)
			}
		}
	}
	res.NoLocalInternal, res.NoLocalExternal = rs.totals.noLocalInternal, rs.totals.noLocalExternal
	res.Rules = map[string]int{"nftables": rs.totals.rules}
	return res
}

// Verify compares this mode's tables and chains in the kernel with the
// last ruleset written: a missing table or chain, or one too many, is
// drift. A write that lands while the kernel is read makes it report
// nothing this time.
func (p *Provider) Verify() (reason, detail string, err error) {
	p.mu.Lock()
	rs, gen := p.applied, p.gen
	p.mu.Unlock()
	if rs == nil {
		return "", "", nil
	}
	present, err := p.kernel.Chains()
	if err != nil {
		return "", "", err
	}
	p.mu.Lock()
	raced := p.gen != gen
	p.mu.Unlock()
	if raced {
		return "", "", nil
	}
	return compareChains(expectedChains(rs), present)
}
