package iptables

import (
	"maps"
	"slices"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Read-only accessors for tools that inspect what the planner would write
// and what the kernel holds (`proxy explain`, `proxy diff`). They expose
// names and classifications only; planning stays in Plan.

// IsSharedChain reports whether k holds entries of many Services followed
// by fixed tail rules (nat and filter KUBE-SERVICES, KUBE-NODEPORTS, ...).
func IsSharedChain(k ChainKey) bool { return sharedChains[k] }

// SharedChains returns the shared chains, sorted by table and name.
func SharedChains() []ChainKey { return slices.SortedFunc(maps.Keys(sharedChains), compareKeys) }

// IsBaseChain reports whether name is one of the fixed chains this proxy
// owns outside any Service (KUBE-SERVICES, KUBE-MARK-MASQ, ...); the canary
// chain is not one of them.
func IsBaseChain(name string) bool { return isBaseChain(name) }

// PortChains returns the names the planner gives a Service port's own
// chains: KUBE-SVC-*, KUBE-SVL-*, KUBE-EXT-* and KUBE-FW-*.
func PortChains(p *watch.ServicePort) (svc, svl, ext, fw string) {
	return portChain(prefixSVC, p), portChain(prefixSVL, p), portChain(prefixEXT, p), portChain(prefixFW, p)
}

// EndpointChain returns the name of the KUBE-SEP-* chain of one endpoint of
// a Service port.
func EndpointChain(p *watch.ServicePort, ep *watch.Endpoint) string { return endpointChain(p, ep) }
