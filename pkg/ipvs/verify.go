package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Drift is a difference between what the applier wrote and the kernel.
type Drift struct {
	Reason string // ipvs, realserver, address, ipset
	Detail string
}

// Verify compares a fresh read of the kernel (one virtual server dump, the
// real servers of our virtual servers, kube-ipvs0's addresses, one `ipset
// save`) with what was applied. It returns nil when nothing is off, or
// when nothing was applied yet. The Proxier runs its steps one at a time
// under its lock (see Proxier.verifyIPVS), so that reading thousands of
// real server lists never holds up a sync for long.
func (a *Applier) Verify() (*Drift, error) {
	d, keys, err := a.verifyServices()
	if err != nil || d != nil {
		return d, err
	}
	for _, k := range keys {
		if d, err := a.verifyRealServers(k); err != nil || d != nil {
			return d, err
		}
	}
	return a.verifyAddrsAndSets()
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

// verifyAddrsAndSets checks kube-ipvs0's addresses and the ipsets.
func (a *Applier) verifyAddrsAndSets() (*Drift, error) {
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
	defs := setDefs(a.family)
	want := map[string]bool{}
	for _, d := range defs {
		want[d.Name] = true
	}
	save, err := a.k.IPSets.Save()
	if err != nil {
		return nil, err
	}
	kernel, err := parseSave(save, want)
	if err != nil {
		return nil, err
	}
	for _, d := range defs {
		ks, ok := kernel[d.Name]
		if !ok {
			return &Drift{"ipset", "ipset " + d.Name + " is missing"}, nil
		}
		if !maps.Equal(ks.Members, a.sets[d.Name]) && !(len(ks.Members) == 0 && len(a.sets[d.Name]) == 0) {
			return &Drift{"ipset", fmt.Sprintf("ipset %s has %d members, want %d", d.Name, len(ks.Members), len(a.sets[d.Name]))}, nil
		}
	}
	return nil, nil
}
