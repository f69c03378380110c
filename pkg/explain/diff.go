package explain

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// DiffReport is the kernel writes that would bring the kernel to the plan.
// Field names are stable: `proxy diff -o json` prints this struct.
type DiffReport struct {
	Differ   bool         `json:"differ"`
	Families []FamilyDiff `json:"families"`
}

// FamilyDiff is one IP family's difference.
type FamilyDiff struct {
	Family   string        `json:"family"`
	Backend  string        `json:"backend,omitempty"`
	Error    string        `json:"error,omitempty"`
	Base     *PayloadDiff  `json:"base,omitempty"`
	Services []ServiceDiff `json:"services"`
	// Orphans are per-Service chains no Service can be found for.
	Orphans *PayloadDiff `json:"orphans,omitempty"`
	// IPVS mode: the virtual server, real server, kube-ipvs0 and ipset
	// writes the next sync would make, in order (the rest of the family
	// is the helper rules' difference), or why they are unknown.
	IPVS      bool         `json:"ipvs,omitempty"`
	IPVSError string       `json:"ipvsError,omitempty"`
	IPVSDiff  []IPVSChange `json:"ipvsChanges,omitempty"`
	// nftables mode: what the tables lack or hold otherwise (the next
	// sync rewrites what differs).
	NFTables   bool     `json:"nftables,omitempty"`
	NFTChanges []string `json:"nftablesDifferences,omitempty"`
}

// PayloadDiff is a restore payload and what it does.
type PayloadDiff struct {
	RewriteChains []string `json:"rewriteChains,omitempty"` // "table CHAIN"
	RemoveChains  []string `json:"removeChains,omitempty"`
	AddRules      []string `json:"addRules,omitempty"` // "table CHAIN rule"
	DeleteRules   []string `json:"deleteRules,omitempty"`
	// Payload is iptables-restore --noflush input.
	Payload string `json:"payload"`
}

// ServiceDiff is one Service's difference.
type ServiceDiff struct {
	Service string `json:"service"`
	PayloadDiff
}

// Diff computes, per family, the restore payloads that make the kernel
// hold the plan: per Service, iptables.DeltaPayload from the kernel's
// rules of that Service (rebuilt as a Ruleset, with every kernel rule that
// means the same as the planned one taken in the planner's spelling) to the
// planned ones; then the fixed chains, canaries and jumps.
func Diff(snap *watch.Snapshot, families []Family) *DiffReport {
	d := &DiffReport{Families: []FamilyDiff{}}
	for _, f := range families {
		fd := FamilyDiff{Family: string(f.Family), Backend: f.Backend, Services: []ServiceDiff{}}
		if f.NFT != nil {
			nftDiff(&fd, snap, f)
			d.Differ = d.Differ || fd.Error != "" || len(fd.NFTChanges) > 0
			d.Families = append(d.Families, fd)
			continue
		}
		if f.Kernel == nil {
			fd.Error = f.KernelError
			if fd.Error == "" {
				fd.Error = "kernel not read"
			}
			d.Differ = true
			d.Families = append(d.Families, fd)
			continue
		}
		plan := planRules(f, snap)
		owners := map[iptables.ChainKey]Owner{}
		for key, sr := range plan.Services.All() {
			plannedOwners(owners, sr, Owner{Service: key})
		}
		att := Attribute(f.Kernel, owners)
		kernel := kernelServices(f.Kernel, att, plan)
		if base := baseDiff(f.Kernel, plan); base != nil {
			fd.Base = base
		}
		keys := slices.Concat(plan.ServiceKeys(), att.Services())
		slices.Sort(keys)
		for _, svc := range slices.Compact(keys) {
			if payload := iptables.DeltaPayload(kernel, plan, []string{svc}); payload != nil {
				fd.Services = append(fd.Services, ServiceDiff{Service: svc, PayloadDiff: describe(payload)})
			}
		}
		fd.Orphans = orphans(f.Kernel, att)
		if f.IPVS != nil {
			ipvsDiff(&fd, snap, f)
		}
		if fd.Base != nil || fd.Orphans != nil || len(fd.Services) > 0 || len(fd.IPVSDiff) > 0 || fd.IPVSError != "" {
			d.Differ = true
		}
		d.Families = append(d.Families, fd)
	}
	return d
}

// kernelServices rebuilds what each Service owns in the kernel as a
// Ruleset. A chain whose rules all mean what the planned ones do, and an
// entry that means what a planned entry does, take the planned text, so
// that DeltaPayload's textual comparison sees only real differences; the
// rest keep the kernel's text, which iptables-restore accepts back (-D).
func kernelServices(k Kernel, att *Attribution, plan *iptables.Ruleset) *iptables.Ruleset {
	services := cowmap.Map[string, *iptables.ServiceRules]{}.Edit()
	for _, svc := range att.Services() {
		want := plan.Services.Get(svc)
		if want == nil {
			want = &iptables.ServiceRules{}
		}
		have := &iptables.ServiceRules{Chains: map[iptables.ChainKey][]string{}, Entries: map[iptables.ChainKey][]string{}}
		for _, key := range att.ChainsOf(svc, nil) {
			rules, _ := k.Rules(key.Table, key.Name)
			if planned, ok := want.Chains[key]; ok && slices.EqualFunc(planned, rules, RulesEqual) {
				rules = planned
			}
			have.Chains[key] = slices.Clone(rules)
		}
		for _, key := range iptables.SharedChains() {
			got := att.EntriesOf(key, svc, nil)
			if len(got) == 0 {
				continue
			}
			used := make([]bool, len(want.Entries[key]))
			for _, r := range got {
				for i, w := range want.Entries[key] {
					if !used[i] && RulesEqual(w, r) {
						used[i], r = true, w
						break
					}
				}
				have.Entries[key] = append(have.Entries[key], r)
			}
		}
		services.Set(svc, have)
	}
	return &iptables.Ruleset{Family: plan.Family, Base: map[iptables.ChainKey][]string{}, Services: services.Map()}
}

// baseDiff checks what belongs to no Service: the fixed chains, the tail
// rules of the shared chains, the canaries and the jumps from the built-in
// chains. It returns nil when all is in place.
func baseDiff(k Kernel, plan *iptables.Ruleset) *PayloadDiff {
	tables := map[string]*tableLines{}
	t := func(name string) *tableLines {
		if tables[name] == nil {
			tables[name] = &tableLines{}
		}
		return tables[name]
	}
	for _, key := range slices.SortedFunc(maps.Keys(plan.Base), compareKeys) {
		want := plan.Base[key]
		got, ok := k.Rules(key.Table, key.Name)
		if !iptables.IsSharedChain(key) {
			if !ok || !slices.EqualFunc(want, got, RulesEqual) {
				t(key.Table).decl = append(t(key.Table).decl, ":"+key.Name+" - [0:0]")
				for _, r := range want {
					t(key.Table).add = append(t(key.Table).add, "-A "+key.Name+" "+r)
				}
			}
			continue
		}
		if !ok {
			t(key.Table).decl = append(t(key.Table).decl, ":"+key.Name+" - [0:0]")
		}
		var tail []string
		for _, r := range got {
			if !commentOwner(r).Known() && !ownedTarget(r) {
				tail = append(tail, r)
			}
		}
		missing, extra := multisetDiff(want, tail)
		for _, r := range extra {
			t(key.Table).del = append(t(key.Table).del, "-D "+key.Name+" "+r)
		}
		for _, r := range missing {
			t(key.Table).add = append(t(key.Table).add, "-A "+key.Name+" "+r)
		}
	}
	for _, table := range []string{iptables.TableFilter, iptables.TableMangle, iptables.TableNAT} {
		if kt := k[table]; kt != nil && !kt.Has(iptables.ChainCanary) {
			t(table).decl = append(t(table).decl, ":"+iptables.ChainCanary+" - [0:0]")
		}
	}
	for _, j := range plan.Jumps {
		rule := quoteArgs(j.Rule)
		got, _ := k.Rules(j.Table, j.Chain)
		if !slices.ContainsFunc(got, func(r string) bool { return RulesEqual(r, rule) }) {
			t(j.Table).ins = append(t(j.Table).ins, "-I "+j.Chain+" 1 "+rule)
		}
	}
	var buf bytes.Buffer
	for _, name := range []string{iptables.TableFilter, iptables.TableMangle, iptables.TableNAT} {
		tl := tables[name]
		if tl == nil || tl.empty() {
			continue
		}
		buf.WriteString("*" + name + "\n")
		for _, group := range [][]string{tl.decl, tl.del, tl.add, tl.ins} {
			for _, l := range group {
				buf.WriteString(l + "\n")
			}
		}
		buf.WriteString("COMMIT\n")
	}
	if buf.Len() == 0 {
		return nil
	}
	d := describe(buf.Bytes())
	return &d
}

// ownedTarget reports whether a rule jumps to a per-Service chain (an entry
// whose comment was lost still belongs to a Service, not to the tail).
func ownedTarget(r string) bool { return iptables.IsServiceChain(ruleTarget(r)) }

type tableLines struct{ decl, del, add, ins []string }

func (t *tableLines) empty() bool { return len(t.decl)+len(t.del)+len(t.add)+len(t.ins) == 0 }

// orphans removes per-Service chains nothing places with a Service: a full
// sync removes them too.
func orphans(k Kernel, att *Attribution) *PayloadDiff {
	byTable := map[string][]string{}
	for key, o := range att.Chains {
		if !o.Known() {
			byTable[key.Table] = append(byTable[key.Table], key.Name)
		}
	}
	if len(byTable) == 0 {
		return nil
	}
	var buf bytes.Buffer
	for _, table := range []string{iptables.TableFilter, iptables.TableNAT} {
		names := byTable[table]
		if len(names) == 0 {
			continue
		}
		slices.Sort(names)
		buf.WriteString("*" + table + "\n")
		for _, n := range names {
			buf.WriteString(":" + n + " - [0:0]\n")
		}
		for _, n := range names {
			buf.WriteString("-X " + n + "\n")
		}
		buf.WriteString("COMMIT\n")
	}
	d := describe(buf.Bytes())
	return &d
}

// describe summarises a restore payload.
func describe(payload []byte) PayloadDiff {
	d := PayloadDiff{Payload: string(payload)}
	table := ""
	declared := map[string]bool{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			declared[table+" "+name] = true
			order = append(order, table+" "+name)
		case strings.HasPrefix(line, "-X "):
			key := table + " " + strings.TrimPrefix(line, "-X ")
			d.RemoveChains = append(d.RemoveChains, key)
			delete(declared, key)
		case strings.HasPrefix(line, "-I "):
			chain, rest, _ := strings.Cut(line[3:], " ")
			_, rule, _ := strings.Cut(rest, " ")
			d.AddRules = append(d.AddRules, table+" "+chain+" "+rule)
		case strings.HasPrefix(line, "-D "):
			d.DeleteRules = append(d.DeleteRules, table+" "+line[3:])
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			if !declared[table+" "+chain] {
				d.AddRules = append(d.AddRules, table+" "+line[3:])
			}
		}
	}
	for _, k := range order {
		if declared[k] {
			d.RewriteChains = append(d.RewriteChains, k)
		}
	}
	return d
}

// WriteText prints the payloads, each introduced by comment lines, so the
// output of one family can be fed to iptables-restore --noflush as is.
func (d *DiffReport) WriteText(w io.Writer) error {
	p := &printer{w: w}
	for _, f := range d.Families {
		head := fmt.Sprintf("# %s (iptables-%s)", f.Family, f.Backend)
		if f.Error != "" {
			p.f("%s: kernel not read: %s", head, f.Error)
			continue
		}
		if f.NFTables {
			p.nftDiff(f)
			continue
		}
		if f.IPVS {
			head = fmt.Sprintf("# %s (ipvs, helper rules iptables-%s)", f.Family, f.Backend)
			p.ipvsDiff(f)
		}
		n := len(f.Services)
		if f.Base == nil && f.Orphans == nil && n == 0 {
			p.f("%s: no difference%s", head, cond(f.IPVS, " in the helper rules"))
			continue
		}
		verb := " differ"
		if n == 1 {
			verb = " differs"
		}
		p.f("%s: %s%s%s%s%s", head, cond(f.IPVS, "helper rules of "), plural(n, "service"), verb, cond(f.Base != nil, "; fixed chains differ"), cond(f.Orphans != nil, "; orphan chains"))
		if f.Base != nil {
			p.payload("# fixed chains, canaries and jumps", *f.Base)
		}
		for _, s := range f.Services {
			p.payload("# service "+s.Service, s.PayloadDiff)
		}
		if f.Orphans != nil {
			p.payload("# chains of no known service", *f.Orphans)
		}
	}
	return p.err
}

func (p *printer) payload(head string, d PayloadDiff) {
	p.f("%s", head)
	for _, c := range d.RewriteChains {
		p.f("#   rewrite chain %s", c)
	}
	for _, c := range d.RemoveChains {
		p.f("#   remove chain %s", c)
	}
	for _, r := range d.DeleteRules {
		p.f("#   delete %s", r)
	}
	for _, r := range d.AddRules {
		p.f("#   add %s", r)
	}
	if p.err == nil {
		_, p.err = io.WriteString(p.w, d.Payload)
	}
}

func cond(b bool, s string) string {
	if b {
		return s
	}
	return ""
}
