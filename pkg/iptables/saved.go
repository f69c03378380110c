package iptables

import "bytes"

// This file reads iptables-save output: for the drift check (rule counts
// and jumps) and for a full sync (which of our chains exist, and which
// already hold what is planned). Both run over the whole nat table (16 MB
// of text at 5,000 Services), so they stream it line by line where the
// kernel can and keep none of it: only chain names are copied (and, for a
// full sync, each rule for the moment of its comparison).

// lineSaver is implemented by kernels that can stream a table's dump
// (Kernel does; the fakes hand over the whole text).
type lineSaver interface {
	SaveLines(table string, fn func(line []byte)) error
}

// streamSave calls fn for each line of one table's dump, without its
// newline; the line is valid only during the call.
func streamSave(kernel Interface, table string, fn func(line []byte)) error {
	if ls, ok := kernel.(lineSaver); ok {
		return ls.SaveLines(table, fn)
	}
	save, err := kernel.Save(table)
	if err != nil {
		return err
	}
	eachSavedLine(save, fn)
	return nil
}

func eachSavedLine(save []byte, fn func(line []byte)) {
	for len(save) > 0 {
		var line []byte
		line, save, _ = bytes.Cut(save, []byte{'\n'})
		fn(line)
	}
}

// savedLine splits a dump line: a chain declaration gives its name, a rule
// its chain and the text after "-A CHAIN ".
func savedLine(line []byte) (decl, chain, rule []byte) {
	switch {
	case len(line) > 1 && line[0] == ':':
		decl, _, _ = bytes.Cut(line[1:], []byte{' '})
	case bytes.HasPrefix(line, []byte("-A ")):
		chain, rule, _ = bytes.Cut(line[3:], []byte{' '})
	}
	return decl, chain, rule
}

// savedTable is what Verify needs from iptables-save output.
type savedTable struct {
	counts map[string]int  // chain -> number of rules
	jumps  map[string]bool // "BUILTIN TARGET" for jumps from built-in chains
}

// readSaved reads what Verify needs from one table.
func readSaved(kernel Interface, table string) (savedTable, error) {
	p := newSaveParser()
	err := streamSave(kernel, table, p.line)
	return p.done(), err
}

// parseSave reads iptables-save output as a whole.
func parseSave(save []byte) savedTable {
	p := newSaveParser()
	eachSavedLine(save, p.line)
	return p.done()
}

// saveParser builds a savedTable line by line. Chain names are copied
// once per chain, and only jumps out of built-in chains are kept, the only
// ones Verify looks up.
type saveParser struct {
	t savedTable
	// iptables-save lists a chain's rules together: the parser counts each
	// run and adds it once (a map assignment with a []byte key copies the
	// key). run is a copy, since a streamed line is reused.
	run []byte
	n   int
}

func newSaveParser() *saveParser {
	return &saveParser{t: savedTable{counts: map[string]int{}, jumps: map[string]bool{}}}
}

func (p *saveParser) line(line []byte) {
	decl, chain, rule := savedLine(line)
	if decl != nil {
		if _, ok := p.t.counts[string(decl)]; !ok {
			p.t.counts[string(decl)] = 0
		}
		return
	}
	if chain == nil {
		return
	}
	if !bytes.Equal(chain, p.run) {
		p.flush()
		p.run = append(p.run[:0], chain...)
	}
	p.n++
	if !bytes.HasPrefix(chain, []byte("KUBE-")) {
		if target, ok := jumpTarget(rule); ok {
			p.t.jumps[string(chain)+" "+string(target)] = true
		}
	}
}

func (p *saveParser) flush() {
	if p.n > 0 {
		p.t.counts[string(p.run)] += p.n
	}
	p.n = 0
}

func (p *saveParser) done() savedTable {
	p.flush()
	return p.t
}

// jumpTarget returns the chain a rule's -j option names.
func jumpTarget(rule []byte) ([]byte, bool) {
	fields := bytes.Fields(rule)
	for i, f := range fields {
		if string(f) == "-j" && i+1 < len(fields) {
			return fields[i+1], true
		}
	}
	return nil, false
}

// KernelChains is what a full sync reads of the chains this proxy owns:
// every key is one of ours that the kernel has (KUBE-FIREWALL only when
// kubelet does not own it, see kubeletOwns), and its state says whether a
// Service chain already holds what the ruleset plans. One map, with each
// name stored once: at 5,000 Services a restart's dump declares 55,000
// chains, and two maps with a name string each were 11 MB at the proxy's
// peak.
type KernelChains map[ChainKey]ChainState

// ChainState is what the dump showed of one chain.
type ChainState uint8

const (
	// ChainInPlace marks a Service chain that holds exactly the planned
	// rules; a full sync does not rewrite it.
	ChainInPlace ChainState = 1 << iota
	chainRan                // its rules went by in the dump
	chainDiffers            // they differ from the plan, or came in two runs
)

// InPlace reports whether chain k is in the kernel as planned.
func (kc KernelChains) InPlace(k ChainKey) bool { return kc[k]&ChainInPlace != 0 }

// chainReader fills a KernelChains from one table's dump. A Service chain
// is in place when the kernel holds exactly the planned rules, in order,
// compared in normalised form; a full sync leaves those alone, so after a
// restart it rewrites only what differs (4 s instead of 22 at 5,000
// Services). Rules are compared as they stream by, never stored.
type chainReader struct {
	rs    *Ruleset
	table string
	out   KernelChains
	// kubelet is set when kubelet's canary chain is declared: kubelet then
	// owns KUBE-FIREWALL (see kubeletOwns).
	kubelet bool

	run      []byte // the chain whose rules are streaming by (a copy)
	planned  bool   // run is a planned Service chain
	want     []string
	matched  int // how many of want matched so far
	mismatch bool
}

func newChainReader(rs *Ruleset, table string, out KernelChains) *chainReader {
	rs.index()
	return &chainReader{rs: rs, table: table, out: out}
}

func (r *chainReader) line(line []byte) {
	decl, chain, rule := savedLine(line)
	switch {
	case decl != nil:
		r.declare(decl)
	case chain != nil:
		if !bytes.Equal(chain, r.run) {
			r.flush()
			r.start(chain)
		}
		r.compare(rule)
	}
}

func (r *chainReader) declare(name []byte) {
	if string(name) == ChainKubeletCanary {
		r.kubelet = true
	}
	if IsServiceChain(string(name)) || isBaseChain(string(name)) {
		r.out[ChainKey{r.table, string(name)}] = 0
	}
}

// start begins a run of chain's rules.
func (r *chainReader) start(chain []byte) {
	r.run = append(r.run[:0], chain...)
	r.want, r.planned = r.rs.serviceChain(ChainKey{r.table, string(chain)})
	r.matched, r.mismatch = 0, false
}

func (r *chainReader) compare(rule []byte) {
	if !r.planned || r.mismatch {
		return
	}
	if r.matched < len(r.want) && RulesEqual(string(rule), r.want[r.matched]) {
		r.matched++
		return
	}
	r.mismatch = true
}

// flush ends a run, marking a declared planned chain as having run, and
// as differing unless its rules matched the plan. A chain listed in two
// runs (iptables-save does not do that) is never taken as in place.
func (r *chainReader) flush() {
	if !r.planned {
		return
	}
	k := ChainKey{r.table, string(r.run)}
	st, declared := r.out[k]
	if !declared {
		return
	}
	if st&chainRan != 0 || r.mismatch || r.matched != len(r.want) {
		st |= chainDiffers
	}
	r.out[k] = st | chainRan
	r.planned = false
}

func (r *chainReader) done() {
	r.flush()
	if r.kubelet { // see kubeletOwns
		delete(r.out, ChainKey{r.table, ChainFirewall})
	}
	for k, st := range r.out {
		if k.Table != r.table {
			continue
		}
		want, planned := r.rs.serviceChain(k)
		// A declared chain without rules is in place when none are planned.
		ran := st&chainRan != 0
		if planned && st&chainDiffers == 0 && (ran || len(want) == 0) {
			r.out[k] = st | ChainInPlace
		}
	}
}
