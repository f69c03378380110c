package explain

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/ipvs"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// IPVS mode. The virtual servers, kube-ipvs0 addresses and ipset members
// are ipvs.Plan's with the daemon's options; what differs in the kernel is
// what ipvs.DryRun says the Applier would write, so explain, diff and the
// daemon agree by construction. The helper iptables rules go through the
// iptables-mode checks with ipvs.PlanRules as the planner.

// IPVSFamily is one IP family's IPVS-mode input.
type IPVSFamily struct {
	// Options are the plan options the daemon would use
	// (ipvs.HostPlanOptions of the node's addresses).
	Options ipvs.PlanOptions
	// Applier holds what the daemon's Applier is configured with
	// (excludeCIDRs).
	Applier ipvs.ApplierOptions
	// Kernel is the IPVS table, kube-ipvs0 and our ipsets as read; nil
	// when they could not be read (KernelError says why).
	Kernel      *ipvs.KernelState
	KernelError string
}

// IPVSCheck is one port's virtual servers, planned and in the kernel.
type IPVSCheck struct {
	Checked bool   `json:"checked"`
	Error   string `json:"error,omitempty"`
	// Planned are the virtual servers the port should have; Kernel the
	// kernel's at the same keys (a missing one is absent).
	Planned []VirtualServerInfo `json:"planned"`
	Kernel  []VirtualServerInfo `json:"kernel"`
	// Addresses are the port's service IPs kube-ipvs0 should hold.
	Addresses []string `json:"addresses"`
	// Changes are the writes the next sync would make for this port: every
	// difference, as the Applier would repair it.
	Changes []IPVSChange `json:"changes,omitempty"`
}

// VirtualServerInfo is one virtual server and its real servers.
type VirtualServerInfo struct {
	Key         string           `json:"key"`
	Scheduler   string           `json:"scheduler"`
	Persistent  uint32           `json:"persistentTimeout,omitempty"`
	RealServers []RealServerInfo `json:"realServers"`
}

// RealServerInfo is one real server; connection counts are the kernel's.
type RealServerInfo struct {
	Address      string `json:"address"`
	Weight       int    `json:"weight"`
	ActiveConn   int    `json:"activeConn,omitempty"`
	InactiveConn int    `json:"inactiveConn,omitempty"`
}

// IPVSChange is one kernel write, described and as a shell command.
type IPVSChange struct {
	ipvs.Change
	Description string `json:"description"`
	Command     string `json:"command"`
}

func newIPVSChange(c ipvs.Change) IPVSChange {
	return IPVSChange{Change: c, Description: c.String(), Command: c.Command()}
}

// ipvsPlan plans a snapshot's IPVS state for the family.
func ipvsPlan(f Family, snap *watch.Snapshot) *ipvs.State {
	return ipvs.Plan(snap, f.IPVS.Options)
}

// ipvsChanges runs the dry run once per family: the writes a full sync of
// this Service's plan would make. It is applied to the Service alone, so
// the other Services' state shows up as deletions; callers keep only the
// changes that touch this Service's keys, addresses and set members.
func (b *builder) ipvsChanges(f Family, name types.NamespacedName) ([]ipvs.Change, error) {
	if c, ok := b.ipvsDry[f.Family]; ok {
		return c.changes, c.err
	}
	changes, err := ipvs.DryRun(f.IPVS.Kernel, ipvsPlan(f, serviceSnapshot(b.in.Snapshot, name)), f.IPVS.Applier)
	if b.ipvsDry == nil {
		b.ipvsDry = map[v1.IPFamily]dryRun{}
	}
	b.ipvsDry[f.Family] = dryRun{changes, err}
	return changes, err
}

type dryRun struct {
	changes []ipvs.Change
	err     error
}

// ipvsCheck compares one port's planned virtual servers with the kernel.
func (b *builder) ipvsCheck(f Family, name types.NamespacedName, port *watch.ServicePort) *IPVSCheck {
	c := &IPVSCheck{Planned: []VirtualServerInfo{}, Kernel: []VirtualServerInfo{}, Addresses: []string{}}
	var want *ipvs.ServiceState
	if sub := portSnapshot(b.in.Snapshot, port.Name); sub != nil {
		want = ipvsPlan(f, sub).Services.Get(name.String())
	}
	if want == nil {
		want = &ipvs.ServiceState{}
	}
	for _, v := range want.VirtualServers {
		c.Planned = append(c.Planned, vsInfo(v, nil))
	}
	for _, a := range want.Addresses {
		c.Addresses = append(c.Addresses, a.String())
	}
	ks := f.IPVS.Kernel
	if ks == nil {
		c.Error = orDefault(f.IPVS.KernelError, "IPVS table not read")
		return c
	}
	for _, v := range want.VirtualServers {
		if kv := ks.VirtualServer(v.Key); kv != nil {
			c.Kernel = append(c.Kernel, vsInfo(kv, ks.Destinations[v.Key]))
		}
	}
	changes, err := b.ipvsChanges(f, name)
	if err != nil {
		c.Error = "dry run of the IPVS sync failed: " + err.Error()
		return c
	}
	c.Checked = true
	for _, ch := range changes {
		if touches(want, ch) {
			c.Changes = append(c.Changes, newIPVSChange(ch))
		}
	}
	return c
}

// touches reports whether a change concerns the port's state: one of its
// virtual servers, addresses or set members, or what every port needs
// (kube-ipvs0 itself, a missing ipset).
func touches(want *ipvs.ServiceState, ch ipvs.Change) bool {
	switch ch.Kind {
	case ipvs.ChangeVirtualServer, ipvs.ChangeRealServer:
		return slices.ContainsFunc(want.VirtualServers, func(v *ipvs.VirtualServer) bool { return v.Key == ch.VirtualServer })
	case ipvs.ChangeAddress:
		return slices.Contains(want.Addresses, ch.Addr)
	case ipvs.ChangeIPSetMember:
		return slices.Contains(want.Sets[ch.Set], ch.Member)
	}
	return true
}

func vsInfo(v *ipvs.VirtualServer, dests []ipvs.Destination) VirtualServerInfo {
	vi := VirtualServerInfo{Key: v.Key.String(), Scheduler: v.Scheduler, Persistent: v.Timeout, RealServers: []RealServerInfo{}}
	conns := map[netip.AddrPort]ipvs.Destination{}
	for _, d := range dests {
		conns[d.Addr] = d
	}
	for _, rs := range slices.SortedFunc(maps.Keys(v.RealServers), netip.AddrPort.Compare) {
		d := conns[rs]
		vi.RealServers = append(vi.RealServers, RealServerInfo{Address: rs.String(), Weight: v.RealServers[rs], ActiveConn: d.ActiveConn, InactiveConn: d.InactiveConn})
	}
	return vi
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ipvsProblem names the first IPVS difference of a port, most basic
// first: a virtual server, then real servers, then kube-ipvs0 and the
// ipsets. It returns "" when the IPVS state matches the plan.
func ipvsProblem(c *IPVSCheck, port int32, suffix string) string {
	if c == nil {
		return ""
	}
	if c.Error != "" {
		return fmt.Sprintf("IPVS state not checked for port %d%s: %s", port, suffix, c.Error)
	}
	for _, rank := range []struct{ kind, op, what string }{
		{ipvs.ChangeInterface, ipvs.OpAdd, "kernel interface " + ipvs.DummyInterface + " missing"},
		{ipvs.ChangeVirtualServer, ipvs.OpAdd, "kernel virtual server missing"},
		{ipvs.ChangeVirtualServer, "", "kernel virtual server differs"},
		{ipvs.ChangeRealServer, ipvs.OpAdd, "kernel real server missing"},
		{ipvs.ChangeRealServer, "", "kernel real servers differ"},
		{ipvs.ChangeAddress, "", "service IP missing on " + ipvs.DummyInterface},
		{ipvs.ChangeIPSet, "", "ipset missing"},
		{ipvs.ChangeIPSetMember, "", "ipset members differ"},
	} {
		for _, ch := range c.Changes {
			if ch.Kind == rank.kind && (rank.op == "" || ch.Op == rank.op) {
				return fmt.Sprintf("%s for port %d%s: %s", rank.what, port, suffix, ch.Description)
			}
		}
	}
	return ""
}

// ipvsStale lists the kernel's virtual servers on the Service's addresses
// that no current port plans (a removed port): the dry run deletes them.
func (b *builder) ipvsStale(name types.NamespacedName) {
	for _, f := range b.in.Families {
		if f.IPVS == nil || f.IPVS.Kernel == nil {
			continue
		}
		want := ipvsPlan(f, serviceSnapshot(b.in.Snapshot, name)).Services.Get(name.String())
		if want == nil {
			continue
		}
		changes, _ := b.ipvsChanges(f, name)
		for _, ch := range changes {
			if ch.Kind != ipvs.ChangeVirtualServer || ch.Op != ipvs.OpDelete || !slices.Contains(want.Addresses, ch.VirtualServer.Addr) {
				continue
			}
			if !slices.ContainsFunc(want.VirtualServers, func(v *ipvs.VirtualServer) bool { return v.Key == ch.VirtualServer }) {
				b.r.Stale = append(b.r.Stale, Difference{Kind: StaleVirtualServer, Detail: fmt.Sprintf("%s: %s", f.Family, ch.VirtualServer)})
			}
		}
	}
}

// StaleVirtualServer is a virtual server on a Service's address that no
// current port of it plans.
const StaleVirtualServer = "stale-virtual-server"
