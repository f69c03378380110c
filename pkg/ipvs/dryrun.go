package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// This file serves `proxy explain` and `proxy diff` in IPVS mode: a
// one-time read of the kernel, and the writes a sync would make to it,
// found by running the Applier itself against fakes loaded with that read.
// There is no second diff: what is reported is what the Applier would do.

// KernelState is what the kernel holds for IPVS mode in one IP family.
type KernelState struct {
	Family v1.IPFamily
	// Services are the family's virtual servers, ours or not, sorted.
	Services []Service
	// Destinations are each virtual server's real servers.
	Destinations map[VSKey][]Destination
	// DummyExists says whether kube-ipvs0 exists; Addrs are its addresses.
	DummyExists bool
	Addrs       []netip.Addr
	// Host are the node's addresses on its other interfaces.
	Host []netip.Addr
	// IPSetSave is `ipset save` restricted to the family's sets of ours.
	IPSetSave []byte
}

// ReadKernel reads the IPVS table, kube-ipvs0, the node's addresses and
// our ipsets of one family. It writes nothing.
func ReadKernel(k Kernel, family v1.IPFamily) (*KernelState, error) {
	ks := &KernelState{Family: family, Destinations: map[VSKey][]Destination{}}
	services, err := k.IPVS.Services()
	if err != nil {
		return nil, err
	}
	for _, s := range services {
		if s.Key.Addr.Is4() != (family == v1.IPv4Protocol) {
			continue
		}
		dests, err := k.IPVS.Destinations(s.Key)
		if err != nil {
			return nil, err
		}
		ks.Services = append(ks.Services, s)
		ks.Destinations[s.Key] = dests
	}
	slices.SortFunc(ks.Services, func(a, b Service) int { return compareKeys(a.Key, b.Key) })
	if ks.Addrs, err = k.Link.Addrs(family); err == nil {
		ks.DummyExists = true
	}
	if ks.Host, err = k.Link.HostAddrs(family); err != nil {
		return nil, err
	}
	save, err := k.IPSets.Save()
	if err != nil {
		return nil, err
	}
	ks.IPSetSave = ourSets(save, family)
	return ks, nil
}

// ourSets keeps the lines of `ipset save` that concern our sets of family.
func ourSets(save []byte, family v1.IPFamily) []byte {
	want := map[string]bool{}
	for _, d := range setDefs(family) {
		want[d.Name] = true
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && want[f[1]] {
			out.WriteString(sc.Text() + "\n")
		}
	}
	return out.Bytes()
}

// Sets returns our ipsets as the kernel holds them (set -> members); a set
// that does not exist is absent.
func (ks *KernelState) Sets() map[string]map[string]bool {
	want := map[string]bool{}
	for _, d := range setDefs(ks.Family) {
		want[d.Name] = true
	}
	parsed, _ := parseSave(ks.IPSetSave, want)
	out := map[string]map[string]bool{}
	for name, s := range parsed {
		out[name] = s.Members
	}
	return out
}

// VirtualServer returns the kernel's virtual server k with its real
// servers' weights, or nil.
func (ks *KernelState) VirtualServer(k VSKey) *VirtualServer {
	i, ok := slices.BinarySearchFunc(ks.Services, k, func(s Service, k VSKey) int { return compareKeys(s.Key, k) })
	if !ok {
		return nil
	}
	s := ks.Services[i]
	v := &VirtualServer{Key: k, Scheduler: s.Scheduler, Timeout: s.Timeout, RealServers: map[netip.AddrPort]int{}}
	for _, d := range ks.Destinations[k] {
		v.RealServers[d.Addr] = d.Weight
	}
	return v
}

// HostPlanOptions derives a family's plan options from the node's
// addresses (HostAddrs) as the Proxier does before every sync.
func HostPlanOptions(all []netip.Addr, opts Options) PlanOptions {
	// IPv6 link-local addresses come and go with every pod's veth; they
	// are never service or NodePort addresses, and leaving them out keeps
	// pod churn from changing the plan's options (a full sync).
	var host []netip.Addr
	for _, a := range all {
		if !(a.Is6() && (a.IsLinkLocalUnicast() || a.IsMulticast())) {
			host = append(host, a)
		}
	}
	slices.SortFunc(host, netip.Addr.Compare)
	host = slices.Compact(host)
	sched := opts.Scheduler
	if sched == "" {
		sched = DefaultScheduler
	}
	return PlanOptions{
		Family:    opts.Family,
		Scheduler: sched,
		NodeIPs:   NodePortIPs(host, opts.NodePortAddresses),
		HostAddrs: host,
		NodeIP:    opts.NodeIP,
	}
}

// Change kinds and operations.
const (
	ChangeInterface     = "interface"
	ChangeVirtualServer = "virtual-server"
	ChangeRealServer    = "real-server"
	ChangeAddress       = "address"
	ChangeIPSet         = "ipset"
	ChangeIPSetMember   = "ipset-member"

	OpAdd    = "add"
	OpUpdate = "update"
	OpDelete = "delete"
)

// Change is one kernel write.
type Change struct {
	Op   string `json:"op"`
	Kind string `json:"kind"`
	// VirtualServer is set for virtual and real server changes.
	VirtualServer VSKey  `json:"virtualServer,omitzero"`
	Scheduler     string `json:"scheduler,omitempty"`
	Timeout       uint32 `json:"persistentTimeout,omitempty"`
	// RealServer and Weight are set for real server changes.
	RealServer netip.AddrPort `json:"realServer,omitzero"`
	Weight     int            `json:"weight"`
	// Addr is set for kube-ipvs0 address changes.
	Addr netip.Addr `json:"address,omitzero"`
	// Set and Member are set for ipset changes (Member is the create
	// line's tail for a set creation).
	Set    string `json:"set,omitempty"`
	Member string `json:"member,omitempty"`
}

// String describes the change on one line.
func (c Change) String() string {
	switch c.Kind {
	case ChangeVirtualServer:
		s := fmt.Sprintf("%s virtual server %s", c.Op, c.VirtualServer)
		if c.Op != OpDelete {
			s += " " + c.Scheduler
			if c.Timeout > 0 {
				s += fmt.Sprintf(" persistent %d", c.Timeout)
			}
		}
		return s
	case ChangeRealServer:
		if c.Op == OpDelete {
			return fmt.Sprintf("delete real server %s from %s", c.RealServer, c.VirtualServer)
		}
		return fmt.Sprintf("%s real server %s of %s weight %d", c.Op, c.RealServer, c.VirtualServer, c.Weight)
	case ChangeAddress:
		return fmt.Sprintf("%s address %s on %s", c.Op, c.Addr, DummyInterface)
	case ChangeIPSet:
		return fmt.Sprintf("create ipset %s", c.Set)
	case ChangeIPSetMember:
		return fmt.Sprintf("%s ipset member %s %s", c.Op, c.Set, c.Member)
	}
	return "create interface " + DummyInterface
}

// Command is the shell command that makes the change (ipvsadm, ip, ipset).
func (c Change) Command() string {
	switch c.Kind {
	case ChangeVirtualServer:
		vs := ipvsadmService(c.VirtualServer)
		switch c.Op {
		case OpDelete:
			return "ipvsadm -D " + vs
		case OpUpdate:
			return "ipvsadm -E " + vs + ipvsadmSched(c)
		}
		return "ipvsadm -A " + vs + ipvsadmSched(c)
	case ChangeRealServer:
		vs := ipvsadmService(c.VirtualServer)
		rs := " -r " + c.RealServer.String()
		switch c.Op {
		case OpDelete:
			return "ipvsadm -d " + vs + rs
		case OpUpdate:
			return fmt.Sprintf("ipvsadm -e %s%s -m -w %d", vs, rs, c.Weight)
		}
		return fmt.Sprintf("ipvsadm -a %s%s -m -w %d", vs, rs, c.Weight)
	case ChangeAddress:
		verb := "add"
		if c.Op == OpDelete {
			verb = "del"
		}
		return fmt.Sprintf("ip addr %s %s dev %s", verb, netip.PrefixFrom(c.Addr, c.Addr.BitLen()), DummyInterface)
	case ChangeIPSet:
		return "ipset create -exist " + c.Set + " " + c.Member
	case ChangeIPSetMember:
		verb := "add"
		if c.Op == OpDelete {
			verb = "del"
		}
		return fmt.Sprintf("ipset %s -exist %s %s", verb, c.Set, c.Member)
	}
	return "ip link add " + DummyInterface + " type dummy"
}

func ipvsadmService(k VSKey) string {
	flag := map[v1.Protocol]string{v1.ProtocolTCP: "-t", v1.ProtocolUDP: "-u", v1.ProtocolSCTP: "--sctp-service"}[k.Protocol]
	return flag + " " + netip.AddrPortFrom(k.Addr, k.Port).String()
}

func ipvsadmSched(c Change) string {
	s := " -s " + c.Scheduler
	if c.Timeout > 0 {
		s += fmt.Sprintf(" -p %d", c.Timeout)
	}
	return s
}

// DryRun returns, in order, the writes a full sync of desired would make
// to a kernel holding ks (the Applier's start-up and repair path, then the
// Reap that follows every sync), without making them: it runs the Applier
// on fakes loaded with ks and records their mutations.
func DryRun(ks *KernelState, desired *State, opts ApplierOptions) ([]Change, error) {
	fk, err := loadFakes(ks)
	if err != nil {
		return nil, err
	}
	var log []Change
	rec := Kernel{
		IPVS:   &recIPVS{IPVS: fk.IPVS, log: &log},
		Link:   &recLink{FakeLink: fk.Link.(*FakeLink), log: &log},
		IPSets: &recIPSets{IPSets: fk.IPSets, log: &log},
		Sysctl: fk.Sysctl,
	}
	opts.Family = ks.Family
	a := NewApplier(rec, opts)
	if err := a.Apply(desired, nil); err != nil {
		return log, err
	}
	return log, a.Reap()
}

// loadFakes builds validating fakes holding what ks holds.
func loadFakes(ks *KernelState) (Kernel, error) {
	k, fi, fl, fs, _ := NewFakeKernel(ks.Host...)
	for _, s := range ks.Services {
		if err := fi.AddService(s); err != nil {
			return k, fmt.Errorf("loading the kernel's virtual server %s: %w", s.Key, err)
		}
		for _, d := range ks.Destinations[s.Key] {
			if err := fi.AddDestination(s.Key, d.Addr, d.Weight); err != nil {
				return k, fmt.Errorf("loading the kernel's real server %s of %s: %w", d.Addr, s.Key, err)
			}
			fi.SetConns(s.Key, d.Addr, d.ActiveConn, d.InactiveConn)
		}
	}
	if ks.DummyExists {
		_ = fl.EnsureDummy()
		for _, a := range ks.Addrs {
			if err := fl.AddAddr(a); err != nil {
				return k, err
			}
		}
		fl.Created = 0
	}
	if len(ks.IPSetSave) > 0 {
		if err := fs.Restore(ks.IPSetSave); err != nil {
			return k, fmt.Errorf("loading the kernel's ipsets: %w", err)
		}
	}
	fi.ResetCalls()
	return k, nil
}

// recIPVS records the virtual and real server writes that succeed.
type recIPVS struct {
	IPVS
	log *[]Change
}

func (r *recIPVS) rec(err error, c Change) error {
	if err == nil {
		*r.log = append(*r.log, c)
	}
	return err
}

func (r *recIPVS) AddService(s Service) error {
	return r.rec(r.IPVS.AddService(s), Change{Op: OpAdd, Kind: ChangeVirtualServer, VirtualServer: s.Key, Scheduler: s.Scheduler, Timeout: s.Timeout})
}

func (r *recIPVS) UpdateService(s Service) error {
	return r.rec(r.IPVS.UpdateService(s), Change{Op: OpUpdate, Kind: ChangeVirtualServer, VirtualServer: s.Key, Scheduler: s.Scheduler, Timeout: s.Timeout})
}

func (r *recIPVS) DeleteService(k VSKey) error {
	return r.rec(r.IPVS.DeleteService(k), Change{Op: OpDelete, Kind: ChangeVirtualServer, VirtualServer: k})
}

func (r *recIPVS) AddDestination(k VSKey, rs netip.AddrPort, w int) error {
	return r.rec(r.IPVS.AddDestination(k, rs, w), Change{Op: OpAdd, Kind: ChangeRealServer, VirtualServer: k, RealServer: rs, Weight: w})
}

func (r *recIPVS) UpdateDestination(k VSKey, rs netip.AddrPort, w int) error {
	return r.rec(r.IPVS.UpdateDestination(k, rs, w), Change{Op: OpUpdate, Kind: ChangeRealServer, VirtualServer: k, RealServer: rs, Weight: w})
}

func (r *recIPVS) DeleteDestination(k VSKey, rs netip.AddrPort) error {
	return r.rec(r.IPVS.DeleteDestination(k, rs), Change{Op: OpDelete, Kind: ChangeRealServer, VirtualServer: k, RealServer: rs})
}

// recLink records kube-ipvs0 writes that succeed.
type recLink struct {
	*FakeLink
	log *[]Change
}

func (r *recLink) EnsureDummy() error {
	before := r.Created
	err := r.FakeLink.EnsureDummy()
	if err == nil && r.Created > before {
		*r.log = append(*r.log, Change{Op: OpAdd, Kind: ChangeInterface})
	}
	return err
}

func (r *recLink) AddAddr(a netip.Addr) error {
	err := r.FakeLink.AddAddr(a)
	if err == nil {
		*r.log = append(*r.log, Change{Op: OpAdd, Kind: ChangeAddress, Addr: a})
	}
	return err
}

func (r *recLink) DelAddr(a netip.Addr) error {
	err := r.FakeLink.DelAddr(a)
	if err == nil {
		*r.log = append(*r.log, Change{Op: OpDelete, Kind: ChangeAddress, Addr: a})
	}
	return err
}

// recIPSets records the lines of restore payloads that apply.
type recIPSets struct {
	IPSets
	log *[]Change
}

func (r *recIPSets) Restore(payload []byte) error {
	if err := r.IPSets.Restore(payload); err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(payload)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		switch f[0] {
		case "create":
			*r.log = append(*r.log, Change{Op: OpAdd, Kind: ChangeIPSet, Set: f[1], Member: strings.Join(f[2:], " ")})
		case "add":
			*r.log = append(*r.log, Change{Op: OpAdd, Kind: ChangeIPSetMember, Set: f[1], Member: f[2]})
		case "del":
			*r.log = append(*r.log, Change{Op: OpDelete, Kind: ChangeIPSetMember, Set: f[1], Member: f[2]})
		}
	}
	return nil
}
