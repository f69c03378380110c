package main

import (
	"net/netip"
	"strings"
	"sync"

	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/explain"
	"svcproxy.dev/svcproxy/pkg/ipvs"
)

// ipvsKernel is one netlink handle for both families, as the daemon has.
var ipvsKernel = sync.OnceValue(ipvs.NewKernel)

// ipvsOptions are the IPVS options the daemon gives a family's Proxier
// (newIPVSBackends); explain and diff plan with the same.
func ipvsOptions(cfg *v1alpha1.KubeProxyConfiguration, f iptablesFamily) ipvs.Options {
	var exclude []netip.Prefix
	for _, c := range cfg.IPVS.ExcludeCIDRs {
		if p, err := netip.ParsePrefix(strings.TrimSpace(c)); err == nil {
			exclude = append(exclude, p.Masked())
		}
	}
	return ipvs.Options{
		Family:            f.family,
		Scheduler:         cfg.IPVS.Scheduler,
		NodePortAddresses: f.opts.NodePortAddresses,
		NodeIP:            f.opts.NodeIP,
		ExcludeCIDRs:      exclude,
	}
}

// ipvsFamily reads a family's IPVS table, kube-ipvs0, node addresses and
// ipsets, and derives the plan options from them as the Proxier does
// before each sync. It writes nothing.
func ipvsFamily(cfg *v1alpha1.KubeProxyConfiguration, f iptablesFamily) *explain.IPVSFamily {
	opts := ipvsOptions(cfg, f)
	out := &explain.IPVSFamily{Applier: ipvs.ApplierOptions{Family: f.family, ExcludeCIDRs: opts.ExcludeCIDRs}}
	ks, err := ipvs.ReadKernel(ipvsKernel(), f.family)
	if err != nil {
		out.Options = ipvs.HostPlanOptions(nil, opts)
		out.KernelError = err.Error()
		return out
	}
	out.Options, out.Kernel = ipvs.HostPlanOptions(ks.Host, opts), ks
	return out
}
