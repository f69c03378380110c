package explain

import (
	"fmt"

	"svcproxy.dev/svcproxy/pkg/ipvs"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// ipvsDiff adds the IPVS writes of a full sync of the whole plan to a
// family's difference: exactly what the Applier would do (ipvs.DryRun).
func ipvsDiff(fd *FamilyDiff, snap *watch.Snapshot, f Family) {
	fd.IPVS = true
	if f.IPVS.Kernel == nil {
		fd.IPVSError = orDefault(f.IPVS.KernelError, "IPVS table not read")
		return
	}
	changes, err := ipvs.DryRun(f.IPVS.Kernel, ipvsPlan(f, snap), f.IPVS.Applier)
	if err != nil {
		fd.IPVSError = "dry run of the IPVS sync failed: " + err.Error()
	}
	for _, c := range changes {
		fd.IPVSDiff = append(fd.IPVSDiff, newIPVSChange(c))
	}
}

// ipvsDiff prints the IPVS writes as shell commands, each after a comment
// that says what it does, so the block can be run as is.
func (p *printer) ipvsDiff(f FamilyDiff) {
	head := fmt.Sprintf("# %s IPVS", f.Family)
	switch {
	case f.IPVSError != "":
		p.f("%s: not checked: %s", head, f.IPVSError)
	case len(f.IPVSDiff) == 0:
		p.f("%s: no difference (virtual servers, real servers, %s, ipsets)", head, ipvs.DummyInterface)
	default:
		p.f("%s: %s the next sync would make:", head, plural(len(f.IPVSDiff), "change"))
	}
	for _, c := range f.IPVSDiff {
		p.f("#   %s", c.Description)
		p.f("%s", c.Command)
	}
}
