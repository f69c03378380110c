// Package ipvs is svcproxy's IPVS backend: a pure planner (Snapshot ->
// virtual servers, kube-ipvs0 addresses, ipset members, and the helper
// iptables rules written through pkg/iptables), an applier that turns the
// difference into the fewest netlink calls and drains removed real servers
// gracefully, thin kernel interfaces with validating fakes, and the
// clean-up of IPVS-mode state that iptables mode runs at start-up.
package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// DummyInterface holds every service IP in IPVS mode.
const DummyInterface = "kube-ipvs0"

// ipsetNames are the ipsets kube-proxy's IPVS mode creates (and ours
// does), in both families.
var ipsetNames = allSetNames()

// iptablesChains are the chains only IPVS mode uses; the ones both modes
// share are rewritten by the iptables backend itself.
var iptablesChains = map[string][]string{
	iptables.TableNAT:    {"KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-LOOP-BACK"},
	iptables.TableFilter: {"KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-NODE-PORT"},
}

// RemoveLeftovers removes IPVS-mode state: the virtual servers whose
// address sits on kube-ipvs0, the NodePort ones on node IPs and the ones
// on external or LB IPs the node already had (never anyone else's), the
// interface itself,
// the IPVS-only iptables chains and the ipsets. kernels lists the iptables
// interfaces to clean (one per family). Missing pieces are not errors.
func RemoveLeftovers(kernels []iptables.Interface) error {
	var errs []error
	addrs := dummyAddrs()
	// Read before the ipsets go: they name the virtual servers on node
	// IPs (NodePorts, and external or LB IPs the node already had).
	bySets := setVirtualServers()
	if err := removeVirtualServers(addrs, bySets); err != nil {
		errs = append(errs, err)
	}
	if err := removeDummy(); err != nil {
		errs = append(errs, err)
	}
	for _, k := range kernels {
		for table, chains := range iptablesChains {
			if err := iptables.RemoveChains(k, table, chains); err != nil {
				errs = append(errs, fmt.Errorf("iptables %s: %w", table, err))
			}
		}
	}
	if err := destroyIPSets(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dummyAddrs returns the addresses on kube-ipvs0: exactly the service IPs
// the IPVS proxy owned.
func dummyAddrs() map[string]bool {
	out := map[string]bool{}
	link, err := netlink.LinkByName(DummyInterface)
	if err != nil {
		return out
	}
	list, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return out
	}
	for _, a := range list {
		out[a.IP.String()] = true
	}
	return out
}

// setVirtualServers returns a test for the virtual servers IPVS mode
// (ours or kube-proxy's) made on addresses that are not on kube-ipvs0,
// named by its ipsets: NodePorts on node IPs (a local address whose
// protocol and port are in a KUBE-NODE-PORT-* set), and external IPs and
// load-balancer IPs the node already had (address, protocol and port in
// KUBE-EXTERNAL-IP, KUBE-EXTERNAL-IP-LOCAL or KUBE-LOAD-BALANCER). It
// returns nil when there is no such ipset.
func setVirtualServers() func(s *ipvs.Service) bool {
	save, err := exec.Command("ipset", "save").Output()
	if err != nil {
		return nil
	}
	local := map[netip.Addr]bool{}
	if list, err := netlink.AddrList(nil, netlink.FAMILY_ALL); err == nil {
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				local[ip.Unmap()] = true
			}
		}
	}
	return ownedBySets(save, local)
}

// vsSets are the ipsets that name virtual servers off kube-ipvs0.
var vsSets = []string{SetNodePortTCP, SetNodePortUDP, SetNodePortSCTP, SetExternalIP, SetExternalIPLocal, SetLoadBalancer}

// ownedBySets is setVirtualServers' test over `ipset save` output and the
// node's local addresses; nil when none of vsSets exists.
func ownedBySets(save []byte, local map[netip.Addr]bool) func(s *ipvs.Service) bool {
	want := map[string]bool{}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, n := range vsSets {
			want[SetName(n, fam)] = true
		}
	}
	sets, err := parseSave(save, want)
	if err != nil || len(sets) == 0 {
		return nil
	}
	member := func(base string, fam v1.IPFamily, m string) bool {
		ks := sets[SetName(base, fam)]
		return ks != nil && ks.Members[m]
	}
	return func(s *ipvs.Service) bool {
		addr, ok := netip.AddrFromSlice(s.Address)
		if !ok {
			return false
		}
		addr = addr.Unmap()
		fam := watch.FamilyOf(addr)
		proto, ok := protoFromNumber(s.Protocol)
		if !ok {
			return false
		}
		e := ipPortEntry(addr, proto, int32(s.Port))
		if member(SetExternalIP, fam, e) || member(SetExternalIPLocal, fam, e) || member(SetLoadBalancer, fam, e) {
			return true
		}
		switch {
		case !local[addr]:
			return false
		case proto == v1.ProtocolTCP:
			return member(SetNodePortTCP, fam, portEntry(int32(s.Port)))
		case proto == v1.ProtocolUDP:
			return member(SetNodePortUDP, fam, portEntry(int32(s.Port)))
		}
		return member(SetNodePortSCTP, fam, e)
	}
}

func removeVirtualServers(owned map[string]bool, bySets func(*ipvs.Service) bool) error {
	if len(owned) == 0 && bySets == nil {
		return nil
	}
	h, err := ipvs.New("")
	if err != nil {
		klog.V(2).InfoS("IPVS not available; no virtual servers to remove", "reason", err)
		return nil
	}
	defer h.Close()
	services, err := h.GetServices()
	if err != nil {
		return fmt.Errorf("listing IPVS virtual servers: %w", err)
	}
	var errs []error
	for _, s := range services {
		if s.Address == nil || s.FWMark != 0 || !(owned[s.Address.String()] || (bySets != nil && bySets(s))) {
			continue
		}
		if err := h.DelService(s); err != nil {
			errs = append(errs, fmt.Errorf("deleting virtual server %s: %w", net.JoinHostPort(s.Address.String(), fmt.Sprint(s.Port)), err))
		}
	}
	return errors.Join(errs...)
}

func removeDummy() error {
	link, err := netlink.LinkByName(DummyInterface)
	if err != nil {
		return nil // not there
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting %s: %w", DummyInterface, err)
	}
	klog.InfoS("Removed IPVS-mode interface", "interface", DummyInterface)
	return nil
}

// destroyIPSets destroys kube-proxy's IPVS ipsets that exist. It runs
// after the iptables rules that reference them are gone.
func destroyIPSets() error {
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return nil // no ipset tool or no ipset support: nothing to clean
	}
	present := map[string]bool{}
	for _, n := range strings.Fields(string(out)) {
		present[n] = true
	}
	var errs []error
	for _, n := range ipsetNames {
		if !present[n] {
			continue
		}
		if msg, err := exec.Command("ipset", "destroy", n).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ipset destroy %s: %w: %s", n, err, strings.TrimSpace(string(msg))))
		}
	}
	return errors.Join(errs...)
}
