package config

import (
	"net"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// This file turns the configuration and the node's own Node object into
// the per-family settings the proxy modes plan with. Every function is
// pure: the node's local addresses are passed in.

// familyOf is the IP family of an address (IPv4-mapped IPv6 counts as IPv4).
func familyOf(a netip.Addr) v1.IPFamily {
	if a.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// PrimaryIPs returns the node's first InternalIP (else ExternalIP) per
// family: a load balancer source range holding it admits the LB IP itself,
// and nodePortAddresses "primary" means it.
func PrimaryIPs(node *v1.Node) map[v1.IPFamily]netip.Addr {
	out := map[v1.IPFamily]netip.Addr{}
	if node == nil {
		return out
	}
	for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != kind {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				if _, ok := out[familyOf(ip)]; !ok {
					out[familyOf(ip)] = ip.Unmap()
				}
			}
		}
	}
	return out
}

// NodePortAddresses resolves nodePortAddresses for one family against the
// node's local addresses: nil means every local address, an empty list
// none of this family.
func NodePortAddresses(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, family v1.IPFamily, local []netip.Addr) []netip.Addr {
	if len(cfg.NodePortAddresses) == 0 {
		return nil
	}
	out := []netip.Addr{}
	for _, entry := range cfg.NodePortAddresses {
		switch entry {
		case NodePortAddressesAll:
			return nil
		case NodePortAddressesPrimary:
			if ip, ok := PrimaryIPs(node)[family]; ok {
				out = append(out, ip)
			}
			continue
		case NodePortAddressesLocalhost:
			entry = "127.0.0.0/8"
			if family == v1.IPv6Protocol {
				entry = "::1/128"
			}
		}
		prefix, err := netip.ParsePrefix(entry)
		if err != nil {
			continue // validated at load time
		}
		for _, a := range local {
			if prefix.Contains(a) && familyOf(a) == family {
				out = append(out, a)
			}
		}
	}
	return out
}

// HealthCheckIPs are the addresses health-check NodePorts listen on: nil
// for every address, empty when nodePortAddresses match none of the
// node's (then, as in kube-proxy, no health-check port is opened).
func HealthCheckIPs(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, local []netip.Addr) []net.IP {
	out := []net.IP{}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		addrs := NodePortAddresses(cfg, node, fam, local)
		if addrs == nil {
			return nil
		}
		for _, a := range addrs {
			out = append(out, net.IP(a.AsSlice()))
		}
	}
	return out
}

// DetectLocal is how traffic from this node's pods is told apart in one
// family: by the input interface (Interface, "+" ending a prefix) or by
// source CIDR; neither when the mode has nothing for the family.
type DetectLocal struct {
	Interface string
	CIDR      netip.Prefix
}

// Detector returns the detect-local setting for one family.
func Detector(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, family v1.IPFamily) DetectLocal {
	var cidrs []string
	switch cfg.DetectLocalMode {
	case LocalModeBridgeInterface:
		return DetectLocal{Interface: cfg.DetectLocal.BridgeInterface}
	case LocalModeInterfaceNamePrefix:
		return DetectLocal{Interface: cfg.DetectLocal.InterfaceNamePrefix + "+"}
	case LocalModeNodeCIDR:
		if node != nil {
			cidrs = node.Spec.PodCIDRs
		}
	default:
		cidrs = strings.Split(cfg.ClusterCIDR, ",")
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err == nil && familyOf(p.Addr()) == family {
			return DetectLocal{CIDR: p}
		}
	}
	return DetectLocal{}
}

// MasqueradeBit is the mode's masqueradeBit (nftables.masqueradeBit in
// nftables mode, iptables.masqueradeBit otherwise), defaulted as
// SetDefaults does.
func MasqueradeBit(cfg *v1alpha1.KubeProxyConfiguration) int {
	if cfg.Mode == ModeNFTables {
		if cfg.NFTables.MasqueradeBit == nil {
			return DefaultMasqueradeBit
		}
		return int(*cfg.NFTables.MasqueradeBit)
	}
	if cfg.IPTables.MasqueradeBit == nil {
		return DefaultMasqueradeBit
	}
	return int(*cfg.IPTables.MasqueradeBit)
}

// LocalhostNodePorts is iptables.localhostNodePorts, defaulted (true) as
// SetDefaults does.
func LocalhostNodePorts(cfg *v1alpha1.KubeProxyConfiguration) bool {
	return cfg.IPTables.LocalhostNodePorts == nil || *cfg.IPTables.LocalhostNodePorts
}

// ExcludeCIDRs is ipvs.excludeCIDRs parsed (entries were validated at load
// time; an unparsable one is left out).
func ExcludeCIDRs(cfg *v1alpha1.KubeProxyConfiguration) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cfg.IPVS.ExcludeCIDRs {
		if p, err := netip.ParsePrefix(strings.TrimSpace(c)); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}
