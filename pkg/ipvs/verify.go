package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
)

// Drift is a difference between what the applier wrote and the kernel.
type Drift struct {
	Reason string // ipvs, realserver, address, ipset
	Detail string
}

// verifyServices checks that each of our virtual servers exists as
// applied, and returns their keys for verifyRealServers.
func (a *Applier) verifyServices() (*Drift, []VSKey, error) {
	if a.last == nil {
		return nil, nil, nil
	}
	services, err := a.k.IPVS.Services()
	if err != nil {
		return nil, nil, err
	}
	inKernel := map[VSKey]Service{}
	for _, s := range services {
		inKernel[s.Key] = s
	}
	keys := slices.SortedFunc(maps.Keys(a.vs), compareKeys)
	for _, k := range keys {
		have := a.vs[k]
		s, ok := inKernel[k]
		if !ok {
			return &Drift{"ipvs", "virtual server " + k.String() + " is missing"}, nil, nil
		}
		if s != have.svc {
			return &Drift{"ipvs", fmt.Sprintf("virtual server %s is %s/%d, want %s/%d", k, s.Scheduler, s.Timeout, have.svc.Scheduler, have.svc.Timeout)}, nil, nil
		}
	}
	return nil, keys, nil
}

// verifyRealServers compares one virtual server's real servers with what
// was applied; a virtual server that is no longer ours (a sync ran since
// verifyServices) is skipped.
func (a *Applier) verifyRealServers(k VSKey) (*Drift, error) {
	have := a.vs[k]
	if a.last == nil || have == nil {
		return nil, nil
	}
	dests, err := a.k.IPVS.Destinations(k)
	if err != nil {
		return nil, err
	}
	got := map[netip.AddrPort]int{}
	for _, d := range dests {
		got[d.Addr] = d.Weight
	}
	if !maps.Equal(got, have.rs) {
		return &Drift{"realserver", fmt.Sprintf("virtual server %s has real servers %v, want %v", k, got, have.rs)}, nil
	}
	return nil, nil
}

// verifyAddrs checks that kube-ipvs0 has every address we added.
func (a *Applier) verifyAddrs() (*Drift, error) {
	if a.last == nil {
		return nil, nil
	}
	addrs, err := a.k.Link.Addrs(a.family)
	if err != nil {
		return &Drift{"address", err.Error()}, nil
	}
	got := map[netip.Addr]bool{}
	for _, addr := range addrs {
		got[addr] = true
	}
	for _, addr := range slices.SortedFunc(maps.Keys(a.addrs), netip.Addr.Compare) {
		if !got[addr] {
			return &Drift{"address", addr.String() + " is missing on " + DummyInterface}, nil
		}
	}
	return nil, nil
}

// setsCheck records the ipset members the applier writes while a drift
// check reads the sets without the lock: `ipset save` is a child process,
// which took over a second in the emulated guest at 1,000 Services, and a
// sync of the family waited for it while it ran under the lock. A member
// written during the read may be in the read or not, so it is left out of
// the comparison; a set written whole (a full sync) voids the check.
type setsCheck struct {
	written map[string]map[string]bool
	void    bool
}

func (c *setsCheck) wrote(set, member string) {
	if c.written[set] == nil {
		c.written[set] = map[string]bool{}
	}
	c.written[set][member] = true
}

// beginSetsCheck starts recording set writes; it reports false when there
// is nothing to check yet.
func (a *Applier) beginSetsCheck() bool {
	if a.last == nil {
		return false
	}
	a.checking = &setsCheck{written: map[string]map[string]bool{}}
	return true
}

// saveSets runs `ipset save` and parses our sets of family.
func saveSets(sets IPSets, family v1.IPFamily) (map[string]*kernelSet, error) {
	want := map[string]bool{}
	for _, d := range setDefs(family) {
		want[d.Name] = true
	}
	save, err := sets.Save()
	if err != nil {
		return nil, err
	}
	return parseSave(save, want)
}

// endSetsCheck compares kernel, our sets as read since beginSetsCheck, with
// what was applied, leaving out the members written meanwhile; nil kernel
// (the read failed) only ends the check.
func (a *Applier) endSetsCheck(kernel map[string]*kernelSet) *Drift {
	c := a.checking
	a.checking = nil
	if c == nil || c.void || kernel == nil || a.last == nil {
		return nil
	}
	for _, d := range setDefs(a.family) {
		ks, ok := kernel[d.Name]
		if !ok {
			return &Drift{"ipset", "ipset " + d.Name + " is missing"}
		}
		if maps.Equal(ks.Members, a.sets[d.Name]) {
			continue
		}
		if m, extra, ok := firstDifference(ks.Members, a.sets[d.Name], c.written[d.Name]); ok {
			what := "is missing"
			if extra {
				what = "should not be there"
			}
			return &Drift{"ipset", fmt.Sprintf("ipset %s: member %s %s (%d members, want %d)", d.Name, m, what, len(ks.Members), len(a.sets[d.Name]))}
		}
	}
	return nil
}

// firstDifference returns the first member (in order) that is in exactly
// one of got and want and not in skip, and whether it is the kernel's
// extra one.
func firstDifference(got, want, skip map[string]bool) (member string, extra, found bool) {
	for _, m := range slices.Sorted(maps.Keys(want)) {
		if !got[m] && !skip[m] {
			return m, false, true
		}
	}
	for _, m := range slices.Sorted(maps.Keys(got)) {
		if !want[m] && !skip[m] {
			return m, true, true
		}
	}
	return "", false, false
}
