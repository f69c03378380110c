package ipvs

import (
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/proxy"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Provider is IPVS mode for one IP family as the sync loop sees it
// (proxy.Provider).
type Provider struct{ *Proxier }

// Sync makes the kernel match snap; a failed helper-rule restore is
// counted in kube-proxy's restore failure metrics.
func (p Provider) Sync(snap *watch.Snapshot) (proxy.Result, error) {
	res, err := p.Proxier.Sync(snap)
	if err != nil {
		iptables.CountRestoreFailure(p.Family(), err)
		return proxy.Result{}, err
	}
	return proxy.Result{Full: res.Full, PayloadBytes: res.PayloadBytes, Rules: res.Rules.RuleCount(), Written: res.Written, KernelCalls: res.KernelCalls}, nil
}

// Verify looks for drift in the IPVS table, kube-ipvs0, the ipsets and
// the helper rules.
func (p Provider) Verify() (reason, detail string, err error) {
	d, err := p.Proxier.Verify()
	if err != nil || d == nil {
		return "", "", err
	}
	return d.Reason, d.Detail, nil
}
