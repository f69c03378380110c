package ipvs

import (
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
)

// callCounts counts kernel calls by kind ("ipvs_add_destination",
// "link_list_all_addresses", "ipsetnl_add", "ipset_restore", ...). The Proxier reads and
// resets it under its lock, so it needs none of its own.
type callCounts map[string]int

// take returns the counts so far and starts afresh.
func (c *callCounts) take() map[string]int {
	out := *c
	*c = callCounts{}
	return out
}

// countingKernel wraps k so that every call is counted in c: a sync reports
// the kernel work it did (kubeproxy_sync_kernel_calls_total), which is how
// a one-endpoint change is seen to cost the same at any cluster size.
func countingKernel(k Kernel, c *callCounts) Kernel {
	return Kernel{
		IPVS:   countingIPVS{k.IPVS, c},
		Link:   countingLink{k.Link, c},
		IPSets: countingIPSets{k.IPSets, c},
		Sysctl: k.Sysctl,
	}
}

type countingIPVS struct {
	IPVS
	c *callCounts
}

func (i countingIPVS) Services() ([]Service, error) {
	(*i.c)["ipvs_list_services"]++
	return i.IPVS.Services()
}

func (i countingIPVS) Destinations(k VSKey) ([]Destination, error) {
	(*i.c)["ipvs_list_destinations"]++
	return i.IPVS.Destinations(k)
}

func (i countingIPVS) AddService(s Service) error {
	(*i.c)["ipvs_add_service"]++
	return i.IPVS.AddService(s)
}

func (i countingIPVS) UpdateService(s Service) error {
	(*i.c)["ipvs_update_service"]++
	return i.IPVS.UpdateService(s)
}

func (i countingIPVS) DeleteService(k VSKey) error {
	(*i.c)["ipvs_delete_service"]++
	return i.IPVS.DeleteService(k)
}

func (i countingIPVS) AddDestination(k VSKey, rs netip.AddrPort, w int) error {
	(*i.c)["ipvs_add_destination"]++
	return i.IPVS.AddDestination(k, rs, w)
}

func (i countingIPVS) UpdateDestination(k VSKey, rs netip.AddrPort, w int) error {
	(*i.c)["ipvs_update_destination"]++
	return i.IPVS.UpdateDestination(k, rs, w)
}

func (i countingIPVS) DeleteDestination(k VSKey, rs netip.AddrPort) error {
	(*i.c)["ipvs_delete_destination"]++
	return i.IPVS.DeleteDestination(k, rs)
}

func (i countingIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	(*i.c)["ipvs_set_timeouts"]++
	return i.IPVS.SetTimeouts(tcp, tcpFin, udp)
}

type countingLink struct {
	Link
	c *callCounts
}

func (l countingLink) EnsureDummy() error {
	(*l.c)["link_ensure_dummy"]++
	return l.Link.EnsureDummy()
}

func (l countingLink) Addrs(f v1.IPFamily) ([]netip.Addr, error) {
	(*l.c)["link_list_dummy_addresses"]++
	return l.Link.Addrs(f)
}

func (l countingLink) AddAddr(a netip.Addr) error {
	(*l.c)["link_add_address"]++
	return l.Link.AddAddr(a)
}

func (l countingLink) DelAddr(a netip.Addr) error {
	(*l.c)["link_delete_address"]++
	return l.Link.DelAddr(a)
}

func (l countingLink) HostAddrs(f v1.IPFamily) ([]netip.Addr, error) {
	(*l.c)["link_list_all_addresses"]++
	return l.Link.HostAddrs(f)
}

type countingIPSets struct {
	IPSets
	c *callCounts
}

func (s countingIPSets) Save() ([]byte, error) {
	(*s.c)["ipset_save"]++
	return s.IPSets.Save()
}

// Restore counts as the real kernel writes: one netlink request per member
// for a payload of members only (netlinkIPSets), else one ipset run.
func (s countingIPSets) Restore(payload []byte) error {
	if ops, ok := memberOps(payload); ok {
		for _, op := range ops {
			(*s.c)["ipsetnl_"+op.verb]++
		}
	} else {
		(*s.c)["ipset_restore"]++
	}
	return s.IPSets.Restore(payload)
}
