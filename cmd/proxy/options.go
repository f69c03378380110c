package main

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/iptables"
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
	return iptables.PlanOptions{
		Family:             fam,
		MasqueradeBit:      config.MasqueradeBit(cfg),
		MasqueradeAll:      cfg.IPTables.MasqueradeAll,
		LocalDetector:      localDetector(config.Detector(cfg, node, fam)),
		NodePortAddresses:  config.NodePortAddresses(cfg, node, fam, localAddrs()),
		LocalhostNodePorts: config.LocalhostNodePorts(cfg),
		TCPBeLiberal:       cfg.Conntrack.TCPBeLiberal,
		NodeIP:             config.PrimaryIPs(node)[fam],
	}
}

// localDetector is the iptables form of a detect-local setting.
func localDetector(d config.DetectLocal) *iptables.LocalDetector {
	switch {
	case d.Interface != "":
		return iptables.InterfaceDetector(d.Interface)
	case d.CIDR.IsValid():
		return iptables.ClusterCIDRDetector(d.CIDR)
	}
	return nil
}
