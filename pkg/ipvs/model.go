package ipvs

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

// VSKey identifies one IPVS virtual server: protocol, address and port.
type VSKey struct {
	Protocol v1.Protocol
	Addr     netip.Addr
	Port     uint16
}

// String renders "TCP/172.30.0.41:80" ("TCP/[fd00::1]:80" for IPv6).
func (k VSKey) String() string {
	return string(k.Protocol) + "/" + netip.AddrPortFrom(k.Addr, k.Port).String()
}

func compareKeys(a, b VSKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return cmp.Compare(a.Port, b.Port)
	}
	return strings.Compare(string(a.Protocol), string(b.Protocol))
}

// VirtualServer is one virtual server with the real servers it should
// hold. Real servers map "ip:port" to a weight.
type VirtualServer struct {
	Key       VSKey
	Scheduler string
	// Timeout is the persistence (ClientIP session affinity) timeout in
	// seconds; 0 means the virtual server is not persistent.
	Timeout     uint32
	RealServers map[netip.AddrPort]int
}

// Service is a virtual server as the kernel reports it (no real servers).
type Service struct {
	Key       VSKey
	Scheduler string
	Timeout   uint32
}

// Service returns the virtual server's own attributes.
func (v *VirtualServer) Service() Service {
	return Service{Key: v.Key, Scheduler: v.Scheduler, Timeout: v.Timeout}
}

// String renders the virtual server and its real servers on one line, in
// a stable order (for golden files and logs).
func (v *VirtualServer) String() string {
	var b strings.Builder
	b.WriteString(v.Key.String() + " " + v.Scheduler)
	if v.Timeout > 0 {
		fmt.Fprintf(&b, " persistent %d", v.Timeout)
	}
	for _, rs := range slices.SortedFunc(maps.Keys(v.RealServers), compareAddrPorts) {
		fmt.Fprintf(&b, " -> %s w%d", rs, v.RealServers[rs])
	}
	return b.String()
}

func compareAddrPorts(a, b netip.AddrPort) int { return a.Compare(b) }

// Destination is a real server as the kernel reports it.
type Destination struct {
	Addr         netip.AddrPort
	Weight       int
	ActiveConn   int
	InactiveConn int
}

// ServiceState is everything one Service needs in IPVS mode, for one IP
// family: its virtual servers, the addresses kube-ipvs0 must hold for it,
// and its members of the ipsets the helper iptables rules match on.
// A change to the Service replaces its ServiceState whole; the applier then
// touches only what differs, so a one-endpoint change costs one real
// server call.
type ServiceState struct {
	VirtualServers []*VirtualServer    // sorted by key, unique keys
	Addresses      []netip.Addr        // sorted, unique
	Sets           map[string][]string // ipset name -> entries, sorted, unique
}

// virtualServer returns the Service's virtual server for k, or nil.
func (s *ServiceState) virtualServer(k VSKey) *VirtualServer {
	i, ok := slices.BinarySearchFunc(s.VirtualServers, k, func(v *VirtualServer, k VSKey) int { return compareKeys(v.Key, k) })
	if !ok {
		return nil
	}
	return s.VirtualServers[i]
}

// State is the desired IPVS-mode kernel state of one IP family, per Service
// ("namespace/name"). It is never modified after planning.
type State struct {
	Family   v1.IPFamily
	Services cowmap.Map[string, *ServiceState]
	opts     PlanOptions
}

// Aggregate is the whole-node view of a State: what kube-ipvs0, the IPVS
// table and the ipsets hold in the end. When two Services claim the same
// virtual server (an external IP reused on the same port), the first in
// "namespace/name" order owns it, as the first matching rule would in
// iptables mode.
type Aggregate struct {
	VirtualServers map[VSKey]*VirtualServer
	Owners         map[VSKey]string
	Addresses      map[netip.Addr]bool
	Sets           map[string]map[string]bool
}

// Aggregate builds the whole-node view. It costs O(size of the state): the
// applier uses it for full syncs and maintains the same view incrementally
// otherwise.
func (s *State) Aggregate() *Aggregate {
	r := newRefs()
	for _, key := range slices.Sorted(s.Services.Keys()) {
		r.add(key, s.Services.Get(key), nil)
	}
	a := &Aggregate{VirtualServers: map[VSKey]*VirtualServer{}, Owners: map[VSKey]string{}, Addresses: map[netip.Addr]bool{}, Sets: map[string]map[string]bool{}}
	for k, owners := range r.vs {
		a.Owners[k] = owners[0]
		a.VirtualServers[k] = s.Services.Get(owners[0]).virtualServer(k)
	}
	for addr := range r.addrs {
		a.Addresses[addr] = true
	}
	for _, def := range setDefs(s.Family) {
		a.Sets[def.Name] = map[string]bool{}
	}
	for e := range r.sets {
		a.Sets[e.set][e.entry] = true
	}
	return a
}

// String renders the aggregate view in a stable order.
func (a *Aggregate) String() string {
	var b strings.Builder
	b.WriteString("# kube-ipvs0\n")
	for _, addr := range slices.SortedFunc(maps.Keys(a.Addresses), netip.Addr.Compare) {
		b.WriteString(addr.String() + "\n")
	}
	b.WriteString("# virtual servers\n")
	for _, k := range slices.SortedFunc(maps.Keys(a.VirtualServers), compareKeys) {
		b.WriteString(a.VirtualServers[k].String() + "  # " + a.Owners[k] + "\n")
	}
	b.WriteString("# ipsets\n")
	for _, name := range slices.Sorted(maps.Keys(a.Sets)) {
		entries := slices.Sorted(maps.Keys(a.Sets[name]))
		if len(entries) == 0 {
			continue
		}
		b.WriteString(name + ": " + strings.Join(entries, " ") + "\n")
	}
	return b.String()
}

// setEntry is one member of one ipset.
type setEntry struct{ set, entry string }

// refs counts, over all Services, who wants each virtual server, address
// and ipset member. The applier keeps one up to date by replacing only the
// changed Services' contributions, which keeps a sync's work proportional to
// the change.
type refs struct {
	vs    map[VSKey][]string // owners, sorted
	addrs map[netip.Addr]int
	sets  map[setEntry]int
}

func newRefs() *refs {
	return &refs{vs: map[VSKey][]string{}, addrs: map[netip.Addr]int{}, sets: map[setEntry]int{}}
}

// touched collects what a refs update changed, for the applier to diff.
type touched struct {
	vs    map[VSKey]bool
	addrs map[netip.Addr]bool
	sets  map[setEntry]bool
}

func newTouched() *touched {
	return &touched{vs: map[VSKey]bool{}, addrs: map[netip.Addr]bool{}, sets: map[setEntry]bool{}}
}

func (r *refs) add(svc string, ss *ServiceState, t *touched) {
	for _, v := range ss.VirtualServers {
		owners := r.vs[v.Key]
		i, found := slices.BinarySearch(owners, svc)
		if !found {
			r.vs[v.Key] = slices.Insert(owners, i, svc)
		}
		if t != nil {
			t.vs[v.Key] = true
		}
	}
	for _, a := range ss.Addresses {
		r.addrs[a]++
		if t != nil {
			t.addrs[a] = true
		}
	}
	for set, entries := range ss.Sets {
		for _, e := range entries {
			r.sets[setEntry{set, e}]++
			if t != nil {
				t.sets[setEntry{set, e}] = true
			}
		}
	}
}

func (r *refs) remove(svc string, ss *ServiceState, t *touched) {
	for _, v := range ss.VirtualServers {
		owners := r.vs[v.Key]
		if i, found := slices.BinarySearch(owners, svc); found {
			owners = slices.Delete(owners, i, i+1)
		}
		if len(owners) == 0 {
			delete(r.vs, v.Key)
		} else {
			r.vs[v.Key] = owners
		}
		t.vs[v.Key] = true
	}
	for _, a := range ss.Addresses {
		if r.addrs[a]--; r.addrs[a] <= 0 {
			delete(r.addrs, a)
		}
		t.addrs[a] = true
	}
	for set, entries := range ss.Sets {
		for _, e := range entries {
			k := setEntry{set, e}
			if r.sets[k]--; r.sets[k] <= 0 {
				delete(r.sets, k)
			}
			t.sets[k] = true
		}
	}
}
