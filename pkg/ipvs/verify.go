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
// when nothing was applied yet.
func (a *Applier) Verify() (*Drift, error) {
	if a.last == nil {
		return nil, nil
	}
	services, err := a.k.IPVS.Services()
	if err != nil {
		return nil, err
	}
	inKernel := map[VSKey]Service{}
	for _, s := range services {
		inKernel[s.Key] = s
	}
	for _, k := range slices.SortedFunc(maps.Keys(a.vs), compareKeys) {
		have := a.vs[k]
		s, ok := inKernel[k]
		if !ok {
			return &Drift{"ipvs", "virtual server " + k.String() + " is missing"}, nil
		}
		if s != have.svc {
			return &Drift{"ipvs", fmt.Sprintf("virtual server %s is %s/%d, want %s/%d", k, s.Scheduler, s.Timeout, have.svc.Scheduler, have.svc.Timeout)}, nil
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
