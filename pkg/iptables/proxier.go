package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// DefaultBatchLines is the largest payload a full sync writes at once:
// --noflush restore cost grows faster than the payload, and this size was
// the fastest measured (bench/README.md, "Figures behind constants").
const DefaultBatchLines = 4000

// Proxier keeps one IP family's kernel rules equal to the plan. It writes a
// full ruleset at start-up, after a failure and after drift, and deltas in
// between.
type Proxier struct {
	opts       PlanOptions
	kernel     Interface
	batchLines int
	planner    Planner

	applied *Ruleset // last ruleset written successfully; nil forces a full sync

	// mu guards applied against Verify, which runs beside Sync, and the
	// versions Verify is watching (see watchApplied).
	mu       sync.Mutex
	watching bool
	versions []*Ruleset // every ruleset applied since Verify began
	lost     bool       // applied went nil meanwhile: a full sync is due anyway
	writing  *Ruleset   // the delta being written, until it is applied
}

// NewProxier returns a Proxier for one family.
func NewProxier(kernel Interface, opts PlanOptions) *Proxier {
	return &Proxier{opts: opts, kernel: kernel, batchLines: DefaultBatchLines, planner: PlanFrom}
}

// Planner computes a Ruleset from a snapshot, reusing prev where the
// snapshot says nothing changed. PlanFrom is iptables mode's; IPVS mode
// plans its helper rules with its own and writes them through the same
// Proxier, so both modes share the delta and drift machinery.
type Planner func(prev *Ruleset, snap *watch.Snapshot, opts PlanOptions) *Ruleset

// WithPlanner makes the Proxier plan with planner instead of PlanFrom.
func (p *Proxier) WithPlanner(planner Planner) *Proxier {
	p.planner = planner
	return p
}

// SyncResult describes one successful sync.
type SyncResult struct {
	Full         bool
	PayloadBytes int
	Payloads     int
	// Written counts the rules the payloads wrote, per table.
	Written map[string]int
	Ruleset *Ruleset
}

// Sync makes the kernel match snap. On failure the previous rules stay in
// place (restore is atomic per payload) and the next Sync is a full one.
func (p *Proxier) Sync(snap *watch.Snapshot) (SyncResult, error) {
	rs := p.planner(p.applied, snap, p.opts)
	if p.applied == nil || snap.NodeChanged || p.applied.LargeCluster != rs.LargeCluster || !maps.EqualFunc(p.applied.Base, rs.Base, slices.Equal) {
		return p.full(rs)
	}
	return p.delta(rs, snap)
}

// ForceFull makes the next Sync rewrite everything.
func (p *Proxier) ForceFull() { p.setApplied(nil) }

// Applied returns the last ruleset written successfully (nil before the
// first full sync).
func (p *Proxier) Applied() *Ruleset {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}

// setApplied is the only writer of applied. Sync and ForceFull must not
// run concurrently with each other (the daemon serialises them), but
// Verify may run beside either.
func (p *Proxier) setApplied(rs *Ruleset) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied, p.writing = rs, nil
	if !p.watching {
		return
	}
	p.record(rs)
}

// record adds rs to the versions a running Verify compares against; nil
// (a full sync is due) or too many versions (a read starved for so long
// that many syncs passed) makes that Verify give up.
func (p *Proxier) record(rs *Ruleset) {
	if p.lost {
		return
	}
	if rs == nil || len(p.versions) >= maxVersions {
		p.lost, p.versions = true, nil
		return
	}
	p.versions = append(p.versions, rs)
}

// expect records rs as a version Verify may find in the kernel before it
// is written: the kernel holds it from the commit inside iptables-restore,
// before Restore returns and setApplied runs. A failed restore then sets
// applied to nil, which makes the Verify give up anyway.
func (p *Proxier) expect(rs *Ruleset) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writing = rs
	if p.watching {
		p.record(rs)
	}
}

// watchApplied starts recording every ruleset applied from now on, and
// returns a function that stops recording and returns them, the one
// applied at the start first. It returns nil when nothing is applied or
// a full sync became due meanwhile: then there is nothing to verify.
func (p *Proxier) watchApplied() func() []*Ruleset {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.applied == nil || p.watching {
		return nil
	}
	p.watching, p.lost, p.versions = true, false, []*Ruleset{p.applied}
	if p.writing != nil {
		// A delta is being written: the kernel may hold it already.
		p.versions = append(p.versions, p.writing)
	}
	return func() []*Ruleset {
		p.mu.Lock()
		defer p.mu.Unlock()
		out := p.versions
		if p.lost {
			out = nil
		}
		p.watching, p.versions = false, nil
		return out
	}
}

func (p *Proxier) full(rs *Ruleset) (SyncResult, error) {
	p.setApplied(nil)
	kernel, err := p.ourChains(rs)
	if err != nil {
		return SyncResult{}, err
	}
	res := SyncResult{Full: true, Ruleset: rs, Written: map[string]int{}}
	for payload := range FullPayloadSeq(rs, kernel, p.batchLines) {
		if err := p.kernel.Restore(payload); err != nil {
			return res, err
		}
		res.Payloads++
		res.PayloadBytes += len(payload)
		countWritten(res.Written, payload)
	}
	if err := p.ensureJumps(rs); err != nil {
		return res, err
	}
	if err := p.removeStaleBase(rs, kernel); err != nil {
		return res, err
	}
	p.setApplied(rs)
	return res, nil
}

// removeStaleBase deletes fixed chains of ours that the ruleset no longer
// has (the other mode's, or a feature turned off), with the jumps into them.
func (p *Proxier) removeStaleBase(rs *Ruleset, existing KernelChains) error {
	stale := map[string][]string{}
	for k := range existing {
		if _, ok := rs.Base[k]; !ok && isBaseChain(k.Name) {
			stale[k.Table] = append(stale[k.Table], k.Name)
		}
	}
	var errs []error
	for table, names := range stale {
		if err := RemoveChains(p.kernel, table, names); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Proxier) delta(rs *Ruleset, snap *watch.Snapshot) (SyncResult, error) {
	var changed []string
	for name := range snap.Changed {
		changed = append(changed, name.String())
	}
	slices.Sort(changed)
	res := SyncResult{Ruleset: rs, Written: map[string]int{}}
	next, stop := iter.Pull(DeltaPayloadSeq(p.applied, rs, changed, p.batchLines))
	defer stop()
	payload, ok := next()
	if !ok {
		p.setApplied(rs)
		return res, nil
	}
	following, more := next()
	if more {
		// A delta in several payloads passes through states that are
		// neither ruleset, so the drift check must not compare meanwhile,
		// as during a full sync.
		p.setApplied(nil)
	} else {
		p.expect(rs)
	}
	for ok {
		if err := p.kernel.Restore(payload); err != nil {
			// Earlier payloads may have landed: only a full sync knows
			// the kernel's state again.
			p.setApplied(nil)
			return res, &PartialError{Err: err}
		}
		res.Payloads++
		res.PayloadBytes += len(payload)
		countWritten(res.Written, payload)
		payload, ok = following, more
		if ok {
			following, more = next()
		}
	}
	p.setApplied(rs)
	return res, nil
}

// countWritten adds the rules a restore payload writes ("-A" and "-I"
// lines) to counts, per table.
func countWritten(counts map[string]int, payload []byte) {
	table := ""
	for line := range bytes.Lines(payload) {
		switch {
		case bytes.HasPrefix(line, []byte("*")):
			table = string(bytes.TrimSpace(line[1:]))
		case bytes.HasPrefix(line, []byte("-A ")), bytes.HasPrefix(line, []byte("-I ")):
			counts[table]++
		}
	}
}

// PartialError marks a failed delta restore (counted separately, as
// kube-proxy's partial-restore failure metric does).
type PartialError struct{ Err error }

func (e *PartialError) Error() string { return "partial sync: " + e.Err.Error() }
func (e *PartialError) Unwrap() error { return e.Err }

func (p *Proxier) ensureJumps(rs *Ruleset) error {
	var errs []error
	for _, j := range rs.Jumps {
		if err := p.kernel.EnsureJump(j); err != nil {
			errs = append(errs, fmt.Errorf("jump %s/%s -> %s: %w", j.Table, j.Chain, j.Rule[len(j.Rule)-1], err))
		}
	}
	return errors.Join(errs...)
}

// ourChains reads the chains this proxy owns from the kernel, comparing
// each Service chain with rs as the dump streams by: at 10,000 Services a
// table's text is tens of megabytes, which a full sync need not hold.
func (p *Proxier) ourChains(rs *Ruleset) (KernelChains, error) {
	out := KernelChains{}
	for _, table := range []string{TableNAT, TableFilter} {
		r := newChainReader(rs, table, out)
		if err := streamSave(p.kernel, table, r.line); err != nil {
			return out, err
		}
		r.done()
	}
	return out, nil
}

// baseChainNames are the fixed chains either mode (ours or kube-proxy's)
// creates; a full sync removes the ones its ruleset does not use.
var baseChainNames = map[string]bool{
	ChainServices: true, ChainExternalServices: true, ChainNodePorts: true, ChainPostrouting: true,
	ChainMarkMasq: true, ChainForward: true, ChainProxyFirewall: true, ChainFirewall: true,
	// IPVS mode
	"KUBE-NODE-PORT": true, "KUBE-LOAD-BALANCER": true, "KUBE-LOOP-BACK": true, "KUBE-IPVS-FILTER": true,
	"KUBE-IPVS-OUT-FILTER": true, "KUBE-SOURCE-RANGES-FIREWALL": true,
}

func isBaseChain(name string) bool { return baseChainNames[name] }

// Drift is a difference between the applied ruleset and the kernel.
type Drift struct {
	Reason string // canary, chain, rules, jump
	Detail string
}

// Verify compares the kernel with the applied ruleset: the canary chains,
// every owned chain's rule count, and the jumps from built-in chains. It
// returns nil when nothing is off (or nothing was applied yet).
//
// Verify may run while Sync writes (reading a large table takes seconds,
// and must not hold up syncs). A table therefore counts as intact when it
// matches any ruleset applied while it was read: each restore is atomic,
// so the kernel always holds one of them.
func (p *Proxier) Verify() (*Drift, error) {
	done := p.watchApplied()
	if done == nil {
		return nil, nil
	}
	return p.readAndCompare(done)
}

func (p *Proxier) readAndCompare(done func() []*Ruleset) (*Drift, error) {
	var versions []*Ruleset
	finished := false
	finish := func() []*Ruleset {
		if !finished {
			versions, finished = done(), true
		}
		return versions
	}
	defer finish()
	for _, table := range []string{TableMangle, TableNAT, TableFilter} {
		ok, err := p.kernel.ChainExists(table, ChainCanary)
		if err != nil {
			return nil, err
		}
		if !ok {
			return &Drift{Reason: "canary", Detail: table + " " + ChainCanary + " is gone"}, nil
		}
	}
	saved := map[string]savedTable{}
	for _, table := range []string{TableNAT, TableFilter} {
		t, err := readSaved(p.kernel, table)
		if err != nil {
			return nil, err
		}
		saved[table] = t
	}
	for _, table := range []string{TableNAT, TableFilter} {
		if d := compareVersions(finish(), table, saved[table]); d != nil {
			return d, nil
		}
	}
	return nil, nil
}

// maxVersions bounds how many rulesets a Verify keeps while it reads: a
// read slow enough to see more syncs than this (a starved machine) gives
// up until the next period rather than hold their memory.
const maxVersions = 32

// compareVersions checks table against the newest version, chain by
// chain; a chain that differs only counts as drift when no older version
// (one applied while the table was being read) explains it either.
func compareVersions(versions []*Ruleset, table string, got savedTable) *Drift {
	if len(versions) == 0 || len(versions) > maxVersions {
		return nil
	}
	newest, older := versions[len(versions)-1], versions[:len(versions)-1]
	want := chainCounts(newest, table)
	for _, name := range slices.Sorted(maps.Keys(want)) {
		n, ok := got.counts[name]
		if ok && n == want[name] {
			continue
		}
		if explainedByOlder(older, ChainKey{table, name}, n, ok) {
			continue
		}
		if !ok {
			return &Drift{Reason: "chain", Detail: table + " " + name + " is missing"}
		}
		return &Drift{Reason: "rules", Detail: fmt.Sprintf("%s %s has %d rules, want %d", table, name, n, want[name])}
	}
	for _, j := range newest.Jumps {
		if j.Table == table && !got.jumps[j.Chain+" "+j.Rule[len(j.Rule)-1]] {
			return &Drift{Reason: "jump", Detail: fmt.Sprintf("%s %s no longer jumps to %s", table, j.Chain, j.Rule[len(j.Rule)-1])}
		}
	}
	return nil
}

// chainCounts returns how many rules each chain of table holds in rs, in
// one pass and without building rs's lookup index: Verify runs on every
// ruleset applied during a read, and the index costs megabytes each at
// 10,000 Services.
func chainCounts(rs *Ruleset, table string) map[string]int {
	out := map[string]int{}
	for k, rules := range rs.Base {
		if k.Table == table {
			out[k.Name] += len(rules)
		}
	}
	for _, sr := range rs.Services.All() {
		for k, rules := range sr.Chains {
			if k.Table == table {
				out[k.Name] += len(rules)
			}
		}
		for k, rules := range sr.Entries {
			if k.Table == table {
				out[k.Name] += len(rules)
			}
		}
	}
	return out
}

// explainedByOlder reports whether some older version has chain k with n
// rules (or, when the kernel lacks it, does not have it at all).
func explainedByOlder(older []*Ruleset, k ChainKey, n int, inKernel bool) bool {
	for _, rs := range older {
		c, exists := chainCount(rs, k)
		if exists == inKernel && (!exists || c == n) {
			return true
		}
	}
	return false
}

// chainCount is one chain's rule count in rs, found without the index.
func chainCount(rs *Ruleset, k ChainKey) (int, bool) {
	base, found := rs.Base[k]
	n := len(base)
	for _, sr := range rs.Services.All() {
		if rules, ok := sr.Chains[k]; ok {
			return len(rules), true
		}
		if rules, ok := sr.Entries[k]; ok {
			n += len(rules)
			found = true
		}
	}
	return n, found
}

// Cleanup removes every rule and chain this proxy (or kube-proxy's iptables
// mode) owns in this family, including the jumps into them from built-in
// chains, and leaves everyone else's rules alone.
func Cleanup(kernel Interface) error {
	var errs []error
	for _, table := range []string{TableNAT, TableFilter, TableMangle} {
		ours, err := OwnedChains(kernel, table)
		if err == nil {
			err = RemoveChains(kernel, table, ours)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", table, err))
		}
	}
	return errors.Join(errs...)
}
