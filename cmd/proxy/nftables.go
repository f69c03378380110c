package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/explain"
	"svcproxy.dev/svcproxy/pkg/nftables"
	"svcproxy.dev/svcproxy/pkg/proxy"
)

// newNFTablesProviders returns nftables mode's provider for IPv4 and, when
// the kernel has IPv6 nftables, for IPv6.
func newNFTablesProviders(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) ([]proxy.Provider, error) {
	var out []proxy.Provider
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		kernel := nftables.NewKernel(fam)
		if _, err := kernel.Chains(); err != nil {
			if fam == v1.IPv4Protocol {
				return nil, fmt.Errorf("nftables mode: the kernel's nftables do not answer: %w", err)
			}
			klog.InfoS("IPv6 nftables not available; running single-stack", "reason", err)
			continue
		}
		opts := nftablesPlanOptions(cfg, node, fam)
		if slices.ContainsFunc(opts.NodePortAddresses, netip.Addr.IsLoopback) && fam == v1.IPv4Protocol {
			enableRouteLocalnet()
		}
		out = append(out, nftables.NewProvider(kernel, opts))
	}
	return out, nil
}

func nftablesPlanOptions(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, fam v1.IPFamily) nftables.PlanOptions {
	opts := nftables.PlanOptions{
		Family:            fam,
		MasqueradeBit:     config.MasqueradeBit(cfg),
		MasqueradeAll:     cfg.NFTables.MasqueradeAll,
		NodePortAddresses: nftablesNodePortAddresses(cfg, node, fam),
		NodeIP:            config.PrimaryIPs(node)[fam],
	}
	if d := config.Detector(cfg, node, fam); d.Interface != "" || d.CIDR.IsValid() {
		opts.LocalDetector = &nftables.LocalDetector{CIDR: d.CIDR, Interface: d.Interface}
	}
	return opts
}

// nftablesNodePortAddresses is nodePortAddresses as kube-proxy's nftables
// mode reads it: unset means the node's primary IP, not every address.
func nftablesNodePortAddresses(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, fam v1.IPFamily) []netip.Addr {
	if len(cfg.NodePortAddresses) > 0 {
		return config.NodePortAddresses(cfg, node, fam, localAddrs())
	}
	if ip, ok := config.PrimaryIPs(node)[fam]; ok {
		return []netip.Addr{ip}
	}
	return []netip.Addr{}
}

// cleanupNFTables removes this mode's tables (and kube-proxy's nftables
// mode table) in both families.
func cleanupNFTables() error {
	var errs []error
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		kernel := nftables.NewKernel(fam)
		if err := errors.Join(nftables.Cleanup(kernel), kernel.Close()); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

// nftablesExplainFamilies builds explain's families as the daemon builds
// its providers, each with a reader of its tables over netlink.
func nftablesExplainFamilies(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) []explain.Family {
	var out []explain.Family
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		kernel := nftables.NewKernel(fam)
		nft := nftablesPlanOptions(cfg, node, fam)
		// The trace follows iptables mode's rules for the same decision;
		// NodePorts answer where nftables mode serves them.
		opts := planOptions(cfg, node, fam)
		opts.NodePortAddresses, opts.LocalhostNodePorts = nft.NodePortAddresses, false
		f := explain.Family{Family: fam, Options: opts, NFT: &explain.NFTablesFamily{Options: nft, Read: kernel.Contents}}
		if _, err := kernel.Chains(); err != nil {
			f.NFT.Read, f.KernelError = nil, err.Error()
		}
		out = append(out, f)
	}
	return out
}
