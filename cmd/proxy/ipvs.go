package main

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/ipvs"
	"svcproxy.dev/svcproxy/pkg/proxy"
)

// reapInterval is how often draining IPVS real servers are checked between
// syncs.
const reapInterval = 2 * time.Second

// newIPVSProviders returns one IPVS provider per IP family. Both share the
// kernel interfaces (one serialised netlink handle, kube-ipvs0, the ipset
// table); each writes its helper iptables rules through its own family's
// iptables.Proxier.
func newIPVSProviders(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) ([]proxy.Provider, error) {
	ipBackend := iptables.DetectBackend()
	klog.InfoS("Using iptables backend for the IPVS helper rules", "backend", ipBackend)
	fams, err := iptablesFamilies(cfg, node, ipBackend)
	if err != nil {
		return nil, err
	}
	kernel := ipvs.NewKernel()
	var out []proxy.Provider
	for _, f := range fams {
		opts := ipvsOptions(cfg, f)
		// IPVS mode serves no NodePort on loopback addresses.
		iptOpts := f.opts
		iptOpts.LocalhostNodePorts = false
		p := ipvs.NewProxier(kernel, f.kernel, iptOpts, opts)
		go reapLoop(ctx, p)
		out = append(out, ipvs.Provider{Proxier: p})
	}
	return out, nil
}

// ipvsOptions are the IPVS options of a family's Proxier; explain and diff
// plan with the same.
func ipvsOptions(cfg *v1alpha1.KubeProxyConfiguration, f iptablesFamily) ipvs.Options {
	return ipvs.Options{
		Family:            f.family,
		Scheduler:         cfg.IPVS.Scheduler,
		NodePortAddresses: f.opts.NodePortAddresses,
		NodeIP:            f.opts.NodeIP,
		ExcludeCIDRs:      config.ExcludeCIDRs(cfg),
		StrictARP:         cfg.IPVS.StrictARP,
		TCPTimeout:        cfg.IPVS.TCPTimeout.Duration,
		TCPFinTimeout:     cfg.IPVS.TCPFinTimeout.Duration,
		UDPTimeout:        cfg.IPVS.UDPTimeout.Duration,
	}
}

// reapLoop deletes drained real servers every few seconds, between syncs,
// until ctx is done.
func reapLoop(ctx context.Context, p *ipvs.Proxier) {
	ticker := time.NewTicker(reapInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := p.Reap(); err != nil {
			klog.ErrorS(err, "Deleting drained IPVS real servers", "family", p.Family())
		}
	}
}
