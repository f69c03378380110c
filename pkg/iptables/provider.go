package iptables

import (
	"errors"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/proxy"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Provider is iptables mode for one IP family as the sync loop sees it
// (proxy.Provider): a Proxier, with its results turned into the loop's
// metrics.
type Provider struct {
	family  v1.IPFamily
	kernel  Interface
	proxier *Proxier
}

// NewProvider returns the Provider of opts.Family on kernel.
func NewProvider(kernel Interface, opts PlanOptions) *Provider {
	return &Provider{family: opts.Family, kernel: kernel, proxier: NewProxier(kernel, opts)}
}

// Family is the IP family the provider programs.
func (p *Provider) Family() v1.IPFamily { return p.family }

// Kernel is the family's iptables interface.
func (p *Provider) Kernel() Interface { return p.kernel }

// ForceFull makes the next Sync a full one.
func (p *Provider) ForceFull() { p.proxier.ForceFull() }

// Sync makes the kernel match snap; a failed restore is counted in
// kube-proxy's restore failure metrics.
func (p *Provider) Sync(snap *watch.Snapshot) (proxy.Result, error) {
	res, err := p.proxier.Sync(snap)
	if err != nil {
		CountRestoreFailure(p.family, err)
		return proxy.Result{}, err
	}
	noLocalInternal, noLocalExternal := res.Ruleset.NoLocalEndpoints()
	return proxy.Result{Full: res.Full, PayloadBytes: res.PayloadBytes, Rules: res.Ruleset.RuleCount(), Written: res.Written,
		NoLocalInternal: noLocalInternal, NoLocalExternal: noLocalExternal, KernelCalls: map[string]int{"iptables_restore": res.Payloads}}, nil
}

// Verify looks for drift between the kernel and the last sync.
func (p *Provider) Verify() (reason, detail string, err error) {
	d, err := p.proxier.Verify()
	if err != nil || d == nil {
		return "", "", err
	}
	return d.Reason, d.Detail, nil
}

// CountRestoreFailure counts a failed iptables-restore of family in
// kube-proxy's metrics: a failed delta as a partial restore failure, any
// other restore failure as a restore failure.
func CountRestoreFailure(family v1.IPFamily, err error) {
	var partial *PartialError
	var restore *RestoreError
	switch {
	case errors.As(err, &partial):
		metrics.IPTablesPartialRestoreFailuresTotal.WithLabelValues(string(family)).Inc()
	case errors.As(err, &restore):
		metrics.IPTablesRestoreFailuresTotal.WithLabelValues(string(family)).Inc()
	}
}
