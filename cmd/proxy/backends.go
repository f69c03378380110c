package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/proxy"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// newBackends returns one backend per IP family the node can program.
func newBackends(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) ([]proxy.Backend, error) {
	if cfg.Mode != config.ModeIPTables {
		return nil, fmt.Errorf("mode %q is not implemented yet; use %q", cfg.Mode, config.ModeIPTables)
	}
	ipBackend := iptables.DetectBackend()
	klog.InfoS("Using iptables backend", "backend", ipBackend)
	var out []proxy.Backend
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		kernel, err := iptables.NewKernel(fam, ipBackend)
		if err != nil {
			if fam == v1.IPv4Protocol {
				return nil, err
			}
			klog.InfoS("IPv6 not available; running single-stack", "reason", err)
			continue
		}
		opts := planOptions(cfg, node, fam)
		if iptablesLocalhost(opts) {
			enableRouteLocalnet()
		}
		out = append(out, &iptablesBackend{family: fam, proxier: iptables.NewProxier(kernel, opts)})
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

func iptablesLocalhost(opts iptables.PlanOptions) bool {
	if opts.Family != v1.IPv4Protocol || !opts.LocalhostNodePorts {
		return false
	}
	if opts.NodePortAddresses == nil {
		return true
	}
	for _, a := range opts.NodePortAddresses {
		if a.IsLoopback() {
			return true
		}
	}
	return false
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

// iptablesBackend adapts an iptables.Proxier to proxy.Backend.
type iptablesBackend struct {
	family  v1.IPFamily
	proxier *iptables.Proxier
}

func (b *iptablesBackend) Family() v1.IPFamily { return b.family }
func (b *iptablesBackend) ForceFull()          { b.proxier.ForceFull() }

func (b *iptablesBackend) Sync(snap *watch.Snapshot) (proxy.Result, error) {
	res, err := b.proxier.Sync(snap)
	if err != nil {
		fam := string(b.family)
		var partial *iptables.PartialError
		if errors.As(err, &partial) {
			metricsPartialFailure(fam)
		} else {
			metricsRestoreFailure(fam)
		}
		return proxy.Result{}, err
	}
	return proxy.Result{Full: res.Full, PayloadBytes: res.PayloadBytes, Rules: res.Ruleset.RuleCount()}, nil
}

func (b *iptablesBackend) Verify() (string, string, error) {
	d, err := b.proxier.Verify()
	if err != nil || d == nil {
		return "", "", err
	}
	return d.Reason, d.Detail, nil
}

// cleanup removes this proxy's (and kube-proxy's) rules from both iptables
// backends and both families.
func cleanup() error {
	var errs []error
	for _, be := range []iptables.Backend{iptables.BackendNFT, iptables.BackendLegacy} {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if _, err := exec.LookPath(fmt.Sprintf("%s-%s-restore", map[v1.IPFamily]string{v1.IPv4Protocol: "iptables", v1.IPv6Protocol: "ip6tables"}[fam], be)); err != nil {
				continue
			}
			kernel, err := iptables.NewKernel(fam, be)
			if err != nil {
				continue
			}
			if err := iptables.Cleanup(kernel); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", be, fam, err))
			}
		}
	}
	return errors.Join(errs...)
}
