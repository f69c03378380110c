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
	"os/exec"
	"strings"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/iptables"
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
// address sits on kube-ipvs0 (never anyone else's), the interface itself,
// the IPVS-only iptables chains and the ipsets. kernels lists the iptables
// interfaces to clean (one per family). Missing pieces are not errors.
func RemoveLeftovers(kernels []iptables.Interface) error {
	var errs []error
	addrs := dummyAddrs()
	if err := removeVirtualServers(addrs); err != nil {
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

func removeVirtualServers(owned map[string]bool) error {
	if len(owned) == 0 {
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
		if s.Address == nil || !owned[s.Address.String()] {
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
