package ipvs

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Applier makes the kernel hold a planned State with the fewest calls. It
// remembers what it applied (and owns): a delta sync diffs only the
// virtual servers, addresses and ipset members of the changed Services
// against that record; a full sync (start-up, after an error, after drift)
// reads the kernel once (one virtual server dump, one `ipset save`, one
// address list) and repairs everything of ours.
//
// Ownership: a virtual server is ours when its address is on kube-ipvs0
// (adopted at start-up, like kube-proxy's), or when we created it on a node
// IP for a NodePort. Anything else in the IPVS table, and anything inside
// ExcludeCIDRs, is never touched.
type Applier struct {
	k       Kernel
	family  v1.IPFamily
	exclude []netip.Prefix
	grace   time.Duration
	now     func() time.Time

	last *State
	refs *refs
	// vs holds our virtual servers as applied, draining ones included;
	// change it only through putVS and dropVS, which keep vsOnAddr.
	vs map[VSKey]*appliedVS
	// vsOnAddr counts the entries of vs on each address, so that freeing
	// an address need not walk every virtual server.
	vsOnAddr map[netip.Addr]int
	// nodeVS records the virtual servers we created off kube-ipvs0
	// (NodePorts on node IPs): ours to delete later.
	nodeVS map[VSKey]bool
	addrs  map[netip.Addr]bool
	sets   map[string]map[string]bool
	full   bool
	// reaping holds the virtual servers Reap must look at: those with
	// draining real servers or orphaned. Reap runs after every sync, and
	// walking all virtual servers there made a one-endpoint change cost
	// O(Services).
	reaping map[VSKey]bool
	// touched holds the virtual servers the last delta Apply touched; nil
	// after a full one (every virtual server).
	touched map[VSKey]bool
	// checking records set writes while a drift check reads the sets.
	checking *setsCheck
}

// appliedVS is a virtual server as we last wrote it.
type appliedVS struct {
	svc Service
	rs  map[netip.AddrPort]int
	// terminating holds the deadline of each real server that is draining
	// at weight 0.
	terminating map[netip.AddrPort]time.Time
	// orphan is set when no Service wants the virtual server any more; it
	// goes once its last real server has drained.
	orphan bool
}

// ApplierOptions configures an Applier.
type ApplierOptions struct {
	Family v1.IPFamily
	// ExcludeCIDRs are never touched (ipvs.excludeCIDRs).
	ExcludeCIDRs []netip.Prefix
	// GracePeriod bounds how long a removed TCP real server drains at
	// weight 0 before it is deleted even with connections left.
	GracePeriod time.Duration
	// Now is the clock (time.Now by default).
	Now func() time.Time
}

// DefaultGracePeriod is how long a removed TCP real server may drain.
const DefaultGracePeriod = 30 * time.Second

// NewApplier returns an Applier whose first Apply is a full one.
func NewApplier(k Kernel, opts ApplierOptions) *Applier {
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Applier{k: k, family: opts.Family, exclude: opts.ExcludeCIDRs, grace: opts.GracePeriod, now: opts.Now,
		vs: map[VSKey]*appliedVS{}, vsOnAddr: map[netip.Addr]int{}, nodeVS: map[VSKey]bool{}, addrs: map[netip.Addr]bool{}, sets: map[string]map[string]bool{}, reaping: map[VSKey]bool{}, full: true}
}

// ForceFull makes the next Apply a full one.
func (a *Applier) ForceFull() { a.full = true }

// NeedsFull reports whether the next Apply will be a full one.
func (a *Applier) NeedsFull() bool { return a.full || a.last == nil }

// Apply makes the kernel hold desired. changed names the Services
// ("namespace/name") that differ from the previous Apply's state; it is
// ignored by a full apply. On error the next Apply is a full one.
func (a *Applier) Apply(desired *State, changed []string) error {
	var err error
	if a.NeedsFull() {
		err = a.applyFull(desired)
	} else {
		err = a.applyDelta(desired, changed)
	}
	if err != nil {
		a.full = true
		return err
	}
	a.last, a.full = desired, false
	return nil
}

func (a *Applier) excluded(addr netip.Addr) bool {
	for _, p := range a.exclude {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func (a *Applier) applyDelta(desired *State, changed []string) error {
	t := newTouched()
	a.touched = t.vs
	for _, svc := range changed {
		if old := a.last.Services.Get(svc); old != nil {
			a.refs.remove(svc, old, t)
		}
		if ss := desired.Services.Get(svc); ss != nil {
			a.refs.add(svc, ss, t)
		}
	}
	if err := a.addAddrs(slices.SortedFunc(maps.Keys(t.addrs), netip.Addr.Compare)); err != nil {
		return err
	}
	p := &restorePayload{}
	for e := range t.sets {
		a.diffMember(p, e)
	}
	if err := a.restore(p); err != nil {
		return err
	}
	if err := a.syncVirtualServers(desired, slices.SortedFunc(maps.Keys(t.vs), compareKeys)); err != nil {
		return err
	}
	return a.removeAddrs(slices.SortedFunc(maps.Keys(t.addrs), netip.Addr.Compare))
}

// applyFull reads the kernel once, adopts what is ours and repairs it.
func (a *Applier) applyFull(desired *State) error {
	a.refs, a.touched = newRefs(), nil
	for _, svc := range slices.Sorted(desired.Services.Keys()) {
		a.refs.add(svc, desired.Services.Get(svc), nil)
	}
	if err := a.k.Link.EnsureDummy(); err != nil {
		return err
	}
	onDummy, err := a.k.Link.Addrs(a.family)
	if err != nil {
		return err
	}
	a.addrs = map[netip.Addr]bool{}
	for _, addr := range onDummy {
		a.addrs[addr] = true
	}
	if err := a.readSets(); err != nil {
		return err
	}
	if err := a.adopt(desired.opts.NodeIPs); err != nil {
		return err
	}

	wantAddrs := slices.SortedFunc(maps.Keys(a.refs.addrs), netip.Addr.Compare)
	if err := a.addAddrs(wantAddrs); err != nil {
		return err
	}
	p := &restorePayload{}
	a.diffAllSets(p)
	if err := a.restore(p); err != nil {
		return err
	}
	keys := map[VSKey]bool{}
	for k := range a.vs {
		keys[k] = true
	}
	for k := range a.refs.vs {
		keys[k] = true
	}
	if err := a.syncVirtualServers(desired, slices.SortedFunc(maps.Keys(keys), compareKeys)); err != nil {
		return err
	}
	return a.removeAddrs(slices.SortedFunc(maps.Keys(a.addrs), netip.Addr.Compare))
}

// adopt rebuilds the record of our virtual servers from one dump: those on
// kube-ipvs0 addresses, those we created on node IPs, NodePorts an earlier
// run left on node IPs (NodePort addresses whose port is in our
// KUBE-NODE-PORT-* ipsets), and
// those a Service wants (we own them from now on). Drain deadlines already
// running are kept. It runs after readSets.
func (a *Applier) adopt(nodeIPs []netip.Addr) error {
	services, err := a.k.IPVS.Services()
	if err != nil {
		return err
	}
	prev := a.vs
	a.vs, a.vsOnAddr, a.reaping = map[VSKey]*appliedVS{}, map[netip.Addr]int{}, map[VSKey]bool{}
	for _, s := range services {
		k := s.Key
		if (k.Addr.Is4() != (a.family == v1.IPv4Protocol)) || a.excluded(k.Addr) {
			continue
		}
		_, wanted := a.refs.vs[k]
		if !a.addrs[k.Addr] && !a.nodeVS[k] && !wanted && !(slices.Contains(nodeIPs, k.Addr) && a.leftNodePort(k)) {
			continue // someone else's
		}
		dests, err := a.k.IPVS.Destinations(k)
		if err != nil {
			return err
		}
		av := &appliedVS{svc: s, rs: map[netip.AddrPort]int{}, terminating: map[netip.AddrPort]time.Time{}}
		for _, d := range dests {
			av.rs[d.Addr] = d.Weight
		}
		if old := prev[k]; old != nil {
			for rs, dl := range old.terminating {
				if _, ok := av.rs[rs]; ok {
					av.terminating[rs] = dl
				}
			}
		}
		a.putVS(k, av)
		if len(av.terminating) > 0 {
			a.reaping[k] = true
		}
		if !a.addrs[k.Addr] {
			a.nodeVS[k] = true
		}
	}
	return nil
}

// leftNodePort reports whether k is a NodePort virtual server of ours by
// the NodePort ipsets as the kernel holds them.
func (a *Applier) leftNodePort(k VSKey) bool {
	set := func(base string) map[string]bool { return a.sets[SetName(base, a.family)] }
	switch k.Protocol {
	case v1.ProtocolTCP:
		return set(SetNodePortTCP)[portEntry(int32(k.Port))]
	case v1.ProtocolUDP:
		return set(SetNodePortUDP)[portEntry(int32(k.Port))]
	case v1.ProtocolSCTP:
		return set(SetNodePortSCTP)[ipPortEntry(k.Addr, k.Protocol, int32(k.Port))]
	}
	return false
}

func (a *Applier) readSets() error {
	defs := setDefs(a.family)
	want := map[string]bool{}
	for _, d := range defs {
		want[d.Name] = true
	}
	save, err := a.k.IPSets.Save()
	if err != nil {
		return err
	}
	kernel, err := parseSave(save, want)
	if err != nil {
		return err
	}
	a.sets = map[string]map[string]bool{}
	if a.checking != nil {
		a.checking.void = true
	}
	var mismatched []string
	for _, d := range defs {
		ks, ok := kernel[d.Name]
		switch {
		case !ok:
		case !d.matches(ks.Type, ks.Family):
			mismatched = append(mismatched, fmt.Sprintf("%s is %s %s, want %s", d.Name, ks.Type, ks.Family, d.Type))
		default:
			a.sets[d.Name] = ks.Members
		}
	}
	if len(mismatched) > 0 {
		// A set of the wrong type may be in use by someone's rules; we
		// cannot replace it safely.
		return fmt.Errorf("ipsets of another type are in the way: %v", mismatched)
	}
	return nil
}

// diffAllSets creates missing sets and adds and deletes members so that
// every set holds exactly what the refs want.
func (a *Applier) diffAllSets(p *restorePayload) {
	want := map[string]map[string]bool{}
	for _, d := range setDefs(a.family) {
		want[d.Name] = map[string]bool{}
		if _, ok := a.sets[d.Name]; !ok {
			p.creates = append(p.creates, d.createLine())
			a.sets[d.Name] = map[string]bool{}
		}
	}
	for e := range a.refs.sets {
		want[e.set][e.entry] = true
	}
	for name, members := range want {
		for m := range members {
			if !a.sets[name][m] {
				p.adds = append(p.adds, "add "+name+" "+m)
			}
		}
		for m := range a.sets[name] {
			if !members[m] {
				p.dels = append(p.dels, "del "+name+" "+m)
			}
		}
	}
}

// diffMember adds or deletes one member after a delta.
func (a *Applier) diffMember(p *restorePayload, e setEntry) {
	want := a.refs.sets[e] > 0
	have := a.sets[e.set][e.entry]
	switch {
	case want && !have:
		p.adds = append(p.adds, "add "+e.set+" "+e.entry)
	case !want && have:
		p.dels = append(p.dels, "del "+e.set+" "+e.entry)
	}
}

// restore writes a payload and records its effect.
func (a *Applier) restore(p *restorePayload) error {
	if p.empty() {
		return nil
	}
	if err := a.k.IPSets.Restore(p.bytes()); err != nil {
		if a.checking != nil {
			a.checking.void = true // the lines before the failed one landed
		}
		return err
	}
	if a.checking != nil && len(p.creates) > 0 {
		a.checking.void = true
	}
	for _, l := range p.adds {
		var op, set, m string
		fmt.Sscan(l, &op, &set, &m)
		if a.sets[set] == nil {
			a.sets[set] = map[string]bool{}
		}
		a.sets[set][m] = true
		if a.checking != nil {
			a.checking.wrote(set, m)
		}
	}
	for _, l := range p.dels {
		var op, set, m string
		fmt.Sscan(l, &op, &set, &m)
		delete(a.sets[set], m)
		if a.checking != nil {
			a.checking.wrote(set, m)
		}
	}
	return nil
}

func (a *Applier) addAddrs(addrs []netip.Addr) error {
	for _, addr := range addrs {
		if a.refs.addrs[addr] == 0 || a.addrs[addr] {
			continue
		}
		if err := a.k.Link.AddAddr(addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("adding %s to %s: %w", addr, DummyInterface, err)
		}
		a.addrs[addr] = true
	}
	return nil
}

// removeAddrs removes addresses no Service wants and no draining virtual
// server still needs.
func (a *Applier) removeAddrs(addrs []netip.Addr) error {
	for _, addr := range addrs {
		if a.refs.addrs[addr] > 0 || !a.addrs[addr] || a.excluded(addr) || a.vsOnAddr[addr] > 0 {
			continue
		}
		if err := a.k.Link.DelAddr(addr); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from %s: %w", addr, DummyInterface, err)
		}
		delete(a.addrs, addr)
	}
	return nil
}

// putVS records k as applied.
func (a *Applier) putVS(k VSKey, av *appliedVS) {
	if _, ok := a.vs[k]; !ok {
		a.vsOnAddr[k.Addr]++
	}
	a.vs[k] = av
}

// dropVS forgets k.
func (a *Applier) dropVS(k VSKey) {
	if _, ok := a.vs[k]; !ok {
		return
	}
	delete(a.vs, k)
	if a.vsOnAddr[k.Addr]--; a.vsOnAddr[k.Addr] == 0 {
		delete(a.vsOnAddr, k.Addr)
	}
}

// desiredVS returns the virtual server the owning Service wants for k.
func (a *Applier) desiredVS(desired *State, k VSKey) *VirtualServer {
	owners := a.refs.vs[k]
	if len(owners) == 0 {
		return nil
	}
	return desired.Services.Get(owners[0]).virtualServer(k)
}

func (a *Applier) syncVirtualServers(desired *State, keys []VSKey) error {
	var errs []error
	for _, k := range keys {
		if a.excluded(k.Addr) {
			continue
		}
		if err := a.syncVS(k, a.desiredVS(desired, k)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncVS makes one virtual server match want (nil: not wanted), draining
// removed TCP real servers instead of cutting their connections.
func (a *Applier) syncVS(k VSKey, want *VirtualServer) error {
	have := a.vs[k]
	if want == nil {
		if have == nil {
			return nil
		}
		have.orphan = true
		a.reaping[k] = true
		for _, rs := range slices.SortedFunc(maps.Keys(have.rs), compareAddrPorts) {
			if err := a.retire(k, have, rs); err != nil {
				return err
			}
		}
		return a.dropIfEmpty(k, have)
	}
	if have == nil {
		err := a.k.IPVS.AddService(want.Service())
		switch {
		case errors.Is(err, syscall.EEXIST):
			// Someone (an earlier run) left it: take it over.
			if have, err = a.fromKernel(k); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			have = &appliedVS{svc: want.Service(), rs: map[netip.AddrPort]int{}, terminating: map[netip.AddrPort]time.Time{}}
		}
		a.putVS(k, have)
		if !a.addrs[k.Addr] {
			a.nodeVS[k] = true
		}
	}
	have.orphan = false
	if have.svc != want.Service() {
		if err := a.k.IPVS.UpdateService(want.Service()); err != nil {
			return err
		}
		have.svc = want.Service()
	}
	for _, rs := range slices.SortedFunc(maps.Keys(want.RealServers), compareAddrPorts) {
		w := want.RealServers[rs]
		cur, ok := have.rs[rs]
		switch {
		case !ok:
			if err := a.k.IPVS.AddDestination(k, rs, w); err != nil {
				return err
			}
		case cur != w:
			if err := a.k.IPVS.UpdateDestination(k, rs, w); err != nil {
				return err
			}
		}
		have.rs[rs] = w
		delete(have.terminating, rs)
	}
	for _, rs := range slices.SortedFunc(maps.Keys(have.rs), compareAddrPorts) {
		if _, ok := want.RealServers[rs]; !ok {
			if err := a.retire(k, have, rs); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *Applier) fromKernel(k VSKey) (*appliedVS, error) {
	services, err := a.k.IPVS.Services()
	if err != nil {
		return nil, err
	}
	av := &appliedVS{rs: map[netip.AddrPort]int{}, terminating: map[netip.AddrPort]time.Time{}}
	for _, s := range services {
		if s.Key == k {
			av.svc = s
		}
	}
	dests, err := a.k.IPVS.Destinations(k)
	if err != nil {
		return nil, err
	}
	for _, d := range dests {
		av.rs[d.Addr] = d.Weight
	}
	return av, nil
}

// dropIfEmpty deletes an orphaned virtual server once nothing drains in it.
func (a *Applier) dropIfEmpty(k VSKey, have *appliedVS) error {
	if !have.orphan || len(have.rs) > 0 {
		return nil
	}
	if err := a.k.IPVS.DeleteService(k); err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	a.dropVS(k)
	delete(a.nodeVS, k)
	return nil
}

// Applied returns the virtual servers as applied (for tests and explain).
func (a *Applier) Applied() map[VSKey]*VirtualServer {
	out := map[VSKey]*VirtualServer{}
	for k, av := range a.vs {
		out[k] = &VirtualServer{Key: k, Scheduler: av.svc.Scheduler, Timeout: av.svc.Timeout, RealServers: maps.Clone(av.rs)}
	}
	return out
}

func logVS(msg string, k VSKey, rs netip.AddrPort) {
	klog.V(2).InfoS(msg, "virtualServer", k.String(), "realServer", rs.String())
}
