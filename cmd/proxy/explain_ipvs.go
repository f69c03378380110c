package main

import (
	"sync"

	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/explain"
	"svcproxy.dev/svcproxy/pkg/ipvs"
)

// ipvsKernel is one netlink handle for both families, as the daemon has.
var ipvsKernel = sync.OnceValue(ipvs.NewKernel)

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
