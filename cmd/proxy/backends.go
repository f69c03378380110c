package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/ipvs"
	"svcproxy.dev/svcproxy/pkg/nftables"
	"svcproxy.dev/svcproxy/pkg/proxy"
)

// newProviders returns one provider per IP family the node can program.
func newProviders(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) ([]proxy.Provider, error) {
	switch cfg.Mode {
	case config.ModeIPVS:
		return newIPVSProviders(ctx, cfg, node)
	case config.ModeNFTables:
		return newNFTablesProviders(cfg, node)
	case config.ModeIPTables:
	default:
		return nil, fmt.Errorf("mode %q is not implemented; use %q, %q or %q", cfg.Mode, config.ModeIPTables, config.ModeIPVS, config.ModeNFTables)
	}
	ipBackend := iptables.DetectBackend()
	klog.InfoS("Using iptables backend", "backend", ipBackend)
	fams, err := iptablesFamilies(cfg, node, ipBackend)
	if err != nil {
		return nil, err
	}
	var out []proxy.Provider
	for _, f := range fams {
		if iptables.LocalhostNodePorts(f.opts) {
			enableRouteLocalnet()
		}
		out = append(out, iptables.NewProvider(f.kernel, f.opts))
	}
	return out, nil
}

// enableRouteLocalnet lets DNAT of 127.0.0.1 NodePort traffic leave the
// host; KUBE-FIREWALL drops martian packets to 127/8 from elsewhere
// (CVE-2020-8558).
func enableRouteLocalnet() {
	const path = "/proc/sys/net/ipv4/conf/all/route_localnet"
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		klog.ErrorS(err, "Could not enable route_localnet; NodePorts on 127.0.0.1 will not work")
	}
}

// removeOtherModeLeftovers removes the other modes' state (ours or
// kube-proxy's) after the first successful sync: nftables tables in
// iptables and IPVS mode, IPVS-mode state in iptables mode, and
// everything of the other two in nftables mode.
func removeOtherModeLeftovers(providers []proxy.Provider) {
	for _, p := range providers {
		if _, ok := p.(*nftables.Provider); ok {
			if err := cleanupIPTablesModes(); err != nil {
				klog.ErrorS(err, "Removing iptables- and IPVS-mode leftovers")
			}
			return
		}
	}
	if err := cleanupNFTables(); err != nil {
		klog.ErrorS(err, "Removing nftables-mode leftovers")
	}
	var kernels []iptables.Interface
	for _, p := range providers {
		if _, ok := p.(ipvs.Provider); ok {
			// IPVS mode: iptables mode's chains went with the first full
			// sync of the shared iptables.Proxier.
			return
		}
		if ip, ok := p.(*iptables.Provider); ok {
			kernels = append(kernels, ip.Kernel())
		}
	}
	if err := ipvs.RemoveLeftovers(kernels); err != nil {
		klog.ErrorS(err, "Removing IPVS-mode leftovers")
	}
}

// cleanup removes this proxy's (and kube-proxy's) rules of every mode and
// both families.
func cleanup() error {
	return errors.Join(cleanupIPTablesModes(), cleanupNFTables())
}

// cleanupIPTablesModes removes iptables- and IPVS-mode state from both
// iptables backends and both families.
func cleanupIPTablesModes() error {
	var errs []error
	var kernels []iptables.Interface
	for _, be := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if _, err := exec.LookPath(fmt.Sprintf("%s-%s-restore", map[v1.IPFamily]string{v1.IPv4Protocol: "iptables", v1.IPv6Protocol: "ip6tables"}[fam], be)); err != nil {
				continue
			}
			kernel, err := iptables.NewKernel(fam, be)
			if err != nil {
				continue
			}
			kernels = append(kernels, kernel)
		}
	}
	// Every KUBE-* chain first (IPVS mode's too): in IPVS mode the chains
	// both modes share (KUBE-SERVICES, KUBE-POSTROUTING, ...) match on the
	// ipsets, and a set still in use by a rule cannot be destroyed.
	for _, k := range kernels {
		if err := iptables.KubeletFirewall(k); err != nil {
			errs = append(errs, err)
		}
		if err := iptables.Cleanup(k); err != nil {
			errs = append(errs, err)
		}
	}
	// Then IPVS-mode state: virtual servers (found through the ipsets,
	// which are still there), kube-ipvs0, the ipsets.
	if err := ipvs.RemoveLeftovers(kernels); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
