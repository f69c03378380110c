package explain

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/nftables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// NFTablesFamily is set in nftables mode: the family's plan options and a
// reader of the kernel's tables.
type NFTablesFamily struct {
	Options nftables.PlanOptions
	// Read returns what a table holds; nil when the kernel is not read.
	Read func(table string) (*nftables.Contents, error)
}

// NFTablesCheck is one port's nftables objects: its shard, what the
// planner puts in the kernel for it, and how the kernel differs.
type NFTablesCheck struct {
	Shard       string   `json:"shard"`
	Planned     []string `json:"planned"`
	Checked     bool     `json:"checked"`
	Differences []string `json:"differences"`
	Error       string   `json:"error,omitempty"`
}

func (b *builder) nftCheck(f Family, name types.NamespacedName, port *watch.ServicePort) *NFTablesCheck {
	opts := f.NFT.Options
	objs := nftables.PortObjects(name, port, b.in.Snapshot.Endpoints.Get(port.Name), b.in.Snapshot.Node, opts)
	c := &NFTablesCheck{Shard: nftables.Shard(name, opts), Planned: objs.Lines(), Differences: []string{}}
	if f.NFT.Read == nil {
		c.Error = orDefault(f.KernelError, "nftables tables not read")
		return c
	}
	tables := map[string]*nftables.Contents{}
	for _, t := range []string{c.Shard, nftables.SharedTable} {
		contents, err := f.NFT.Read(t)
		if err != nil {
			c.Error = err.Error()
			return c
		}
		tables[t] = contents
	}
	c.Checked = true
	c.Differences = append(c.Differences, nftables.Differences(objs, tables)...)
	return c
}

// nftProblem names a port's nftables difference, "" when none.
func nftProblem(c *NFTablesCheck, port int32, suffix string) string {
	switch {
	case c == nil:
		return ""
	case !c.Checked:
		return fmt.Sprintf("kernel nftables objects not checked for port %d%s: %s", port, suffix, c.Error)
	case len(c.Differences) > 0:
		return fmt.Sprintf("kernel nftables objects differ for port %d%s: %s", port, suffix, c.Differences[0])
	}
	return ""
}

func (p *printer) nftables(c *NFTablesCheck) {
	if c == nil {
		return
	}
	p.f("    nftables shard: %s", c.Shard)
	p.f("    planned objects:")
	for _, l := range c.Planned {
		p.f("      %s", l)
	}
	switch {
	case !c.Checked:
		p.f("    kernel: not checked: %s", c.Error)
	case len(c.Differences) == 0:
		p.f("    kernel (nftables over netlink): matches the plan")
	default:
		p.f("    kernel (nftables over netlink): %s from the plan:", plural(len(c.Differences), "difference"))
		for _, d := range c.Differences {
			p.f("      %s", d)
		}
	}
}

// nftDiff fills a family's difference in nftables mode: per Service and
// for the fixed objects, what the kernel's tables lack or hold otherwise,
// and chains no plan has.
func nftDiff(fd *FamilyDiff, snap *watch.Snapshot, f Family) {
	fd.NFTables, fd.NFTChanges = true, []string{}
	if f.NFT.Read == nil {
		fd.Error = orDefault(f.KernelError, "nftables tables not read")
		return
	}
	rs := nftables.Plan(snap, f.NFT.Options)
	tables := map[string]*nftables.Contents{}
	for _, t := range rs.Tables() {
		c, err := f.NFT.Read(t)
		if err != nil {
			fd.NFTChanges = append(fd.NFTChanges, fmt.Sprintf("table %s: %v", t, err))
			continue
		}
		tables[t] = c
	}
	planned := map[string]bool{}
	add := func(owner string, objs *nftables.Objects) {
		for _, c := range objs.Chains {
			planned[c.Table+"/"+c.Name] = true
		}
		for _, d := range nftables.Differences(objs, tables) {
			fd.NFTChanges = append(fd.NFTChanges, owner+": "+d)
		}
	}
	add("fixed objects", rs.Base)
	for _, key := range slices.Sorted(rs.Services.Keys()) {
		add("service "+key, rs.Services.Get(key))
	}
	for _, t := range slices.Sorted(maps.Keys(tables)) {
		for _, c := range slices.Sorted(maps.Keys(tables[t].Rules)) {
			if !planned[t+"/"+c] {
				fd.NFTChanges = append(fd.NFTChanges, fmt.Sprintf("chain %s in table %s is not planned", c, t))
			}
		}
	}
}

func (p *printer) nftDiff(f FamilyDiff) {
	head := fmt.Sprintf("# %s (nftables)", f.Family)
	if len(f.NFTChanges) == 0 {
		p.f("%s: no difference", head)
		return
	}
	p.f("%s: %s", head, plural(len(f.NFTChanges), "difference"))
	for _, c := range f.NFTChanges {
		p.f("#   %s", c)
	}
}
