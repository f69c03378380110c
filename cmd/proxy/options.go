package main

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// iptablesFamily is one IP family the node programs in iptables mode, with
// the kernel interface and the options its plans use.
type iptablesFamily struct {
	family v1.IPFamily
	kernel *iptables.Kernel
	opts   iptables.PlanOptions
}

// iptablesFamilies returns the families this node programs on backend:
// IPv4 always, IPv6 when ip6tables works. The daemon and `proxy explain` /
// `proxy diff` all build their families here, so they plan alike.
func iptablesFamilies(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, backend iptables.Backend) ([]iptablesFamily, error) {
	var out []iptablesFamily
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		kernel, err := iptables.NewKernel(fam, backend)
		if err != nil {
			if fam == v1.IPv4Protocol {
				return nil, err
			}
			klog.InfoS("IPv6 not available; running single-stack", "reason", err)
			continue
		}
		out = append(out, iptablesFamily{family: fam, kernel: kernel, opts: planOptions(cfg, node, fam)})
	}
	return out, nil
}

func planOptions(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, fam v1.IPFamily) iptables.PlanOptions {
	opts := iptables.PlanOptions{
		Family:             fam,
		MasqueradeBit:      int(ptrOr(cfg.IPTables.MasqueradeBit, 14)),
		MasqueradeAll:      cfg.IPTables.MasqueradeAll,
		LocalDetector:      localDetector(cfg, node, fam),
		NodePortAddresses:  nodePortAddresses(cfg, node, fam),
		LocalhostNodePorts: ptrOr(cfg.IPTables.LocalhostNodePorts, true),
		TCPBeLiberal:       cfg.Conntrack.TCPBeLiberal,
	}
	opts.NodeIP = primaryIPs(node)[fam]
	return opts
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// localDetector builds the detect-local rule for one family, or nil when
// the configured mode has nothing for it.
func localDetector(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node, fam v1.IPFamily) *iptables.LocalDetector {
	var cidrs []string
	switch cfg.DetectLocalMode {
	case config.LocalModeBridgeInterface:
		return iptables.InterfaceDetector(cfg.DetectLocal.BridgeInterface)
	case config.LocalModeInterfaceNamePrefix:
		return iptables.InterfaceDetector(cfg.DetectLocal.InterfaceNamePrefix + "+")
	case config.LocalModeNodeCIDR:
		if node != nil {
			cidrs = node.Spec.PodCIDRs
		}
	default:
		cidrs = splitList(cfg.ClusterCIDR)
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err == nil && watch.FamilyOf(p.Addr()) == fam {
			return iptables.ClusterCIDRDetector(p)
		}
	}
	return nil
}
