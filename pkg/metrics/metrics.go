// Package metrics holds svcproxy's Prometheus metrics.
//
// Every metric that kube-proxy v1.37 exports keeps kube-proxy's exact name,
// help text, labels and buckets, so that dashboards and alerts written for
// kube-proxy keep working when svcproxy replaces it. Like kube-proxy v1.37,
// all per-sync metrics carry an "ip_family" label ("IPv4" / "IPv6", i.e.
// string(v1.IPFamily)) because each IP family is synced by its own loop.
//
// The metrics live on a package-level registry rather than the global default
// one so that libraries pulled in by svcproxy cannot leak unrelated series
// onto the /metrics endpoint.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// namespace is kube-proxy's metric prefix. kube-proxy calls it a subsystem,
// but with an empty namespace the result is the same "kubeproxy_" prefix.
const namespace = "kubeproxy"

// Label names, spelled as kube-proxy spells them.
const (
	labelIPFamily      = "ip_family"
	labelTable         = "table"
	labelTrafficPolicy = "traffic_policy"
	labelCode          = "code"
	labelReason        = "reason"
	labelCall          = "call"
)

// syncLatencyBuckets are kube-proxy's buckets for sync and conntrack
// durations: 1ms doubling up to ~16s.
var syncLatencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// networkProgrammingBuckets are kube-proxy's buckets for the network
// programming SLI: fine-grained below a minute, coarser up to 5 minutes.
var networkProgrammingBuckets = mergeBuckets(
	prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.50s
	prometheus.LinearBuckets(1, 1, 59),      // 1s, 2s, 3s, ... 59s
	prometheus.LinearBuckets(60, 5, 12),     // 60s, 65s, 70s, ... 115s
	prometheus.LinearBuckets(120, 30, 7),    // 2min, 2.5min, 3min, ..., 5min
)

// restoreBytesBuckets cover iptables-restore / ipset payloads from 1KiB (a
// tiny partial sync) to 256MiB (a full sync of a very large cluster).
var restoreBytesBuckets = prometheus.ExponentialBuckets(1024, 4, 10)

// kube-proxy metrics (names, help and labels as in kube-proxy v1.37).
var (
	// SyncProxyRulesLatency is the duration of one sync (full or partial).
	SyncProxyRulesLatency = newHistogramVec("sync_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds", syncLatencyBuckets, labelIPFamily)

	// SyncFullProxyRulesLatency is the duration of one full sync.
	SyncFullProxyRulesLatency = newHistogramVec("sync_full_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds for full resyncs", syncLatencyBuckets, labelIPFamily)

	// SyncPartialProxyRulesLatency is the duration of one partial sync.
	SyncPartialProxyRulesLatency = newHistogramVec("sync_partial_proxy_rules_duration_seconds",
		"SyncProxyRules latency in seconds for partial resyncs", syncLatencyBuckets, labelIPFamily)

	// NetworkProgrammingLatency is the time from a Service/Pod change (as
	// stamped by the EndpointSlice controller) until the rules reflecting it
	// were written. It relies on the control plane's clock, so clock skew
	// between node and control plane distorts it.
	NetworkProgrammingLatency = newHistogramVec("network_programming_duration_seconds",
		"In Cluster Network Programming Latency in seconds", networkProgrammingBuckets, labelIPFamily)

	// SyncProxyRulesLastTimestamp is when rules were last synced successfully.
	SyncProxyRulesLastTimestamp = newGaugeVec("sync_proxy_rules_last_timestamp_seconds",
		"The last time proxy rules were successfully synced", labelIPFamily)

	// SyncProxyRulesLastQueuedTimestamp is when a sync was last requested; if
	// it runs far ahead of SyncProxyRulesLastTimestamp the sync loop is stuck.
	SyncProxyRulesLastQueuedTimestamp = newGaugeVec("sync_proxy_rules_last_queued_timestamp_seconds",
		"The last time a sync of proxy rules was queued", labelIPFamily)

	// EndpointChangesPending is the number of EndpointSlice changes not yet synced.
	EndpointChangesPending = newGauge("sync_proxy_rules_endpoint_changes_pending",
		"Pending proxy rules Endpoint changes")

	// EndpointChangesTotal is the number of EndpointSlice changes seen.
	EndpointChangesTotal = newCounter("sync_proxy_rules_endpoint_changes_total",
		"Cumulative proxy rules Endpoint changes")

	// ServiceChangesPending is the number of Service changes not yet synced.
	ServiceChangesPending = newGauge("sync_proxy_rules_service_changes_pending",
		"Pending proxy rules Service changes")

	// ServiceChangesTotal is the number of Service changes seen.
	ServiceChangesTotal = newCounter("sync_proxy_rules_service_changes_total",
		"Cumulative proxy rules Service changes")

	// SyncProxyRulesNoLocalEndpointsTotal counts Services with a Local traffic
	// policy ("internal" or "external") that have no local endpoint. It is a
	// gauge despite its _total suffix, exactly as in kube-proxy.
	SyncProxyRulesNoLocalEndpointsTotal = newGaugeVec("sync_proxy_rules_no_local_endpoints_total",
		"Number of services with a Local traffic policy and no endpoints", labelTrafficPolicy, labelIPFamily)

	// IPTablesRulesTotal is the number of rules svcproxy owns per table.
	IPTablesRulesTotal = newGaugeVec("sync_proxy_rules_iptables_total",
		"Total number of iptables rules owned by kube-proxy", labelTable, labelIPFamily)

	// IPTablesRulesLastSync is the number of rules written per table by the last sync.
	IPTablesRulesLastSync = newGaugeVec("sync_proxy_rules_iptables_last",
		"Number of iptables rules written by kube-proxy in last sync", labelTable, labelIPFamily)

	// IPTablesRestoreFailuresTotal counts failed iptables-restore runs.
	IPTablesRestoreFailuresTotal = newCounterVec("sync_proxy_rules_iptables_restore_failures_total",
		"Cumulative proxy iptables restore failures", labelIPFamily)

	// IPTablesPartialRestoreFailuresTotal counts partial restores that failed
	// and forced a fallback to a full restore.
	IPTablesPartialRestoreFailuresTotal = newCounterVec("sync_proxy_rules_iptables_partial_restore_failures_total",
		"Cumulative proxy iptables partial restore failures", labelIPFamily)

	// ProxyHealthzTotal counts /healthz responses by HTTP status code.
	ProxyHealthzTotal = newCounterVec("proxy_healthz_total",
		"Cumulative proxy healthz HTTP status", labelCode)

	// ProxyLivezTotal counts /livez responses by HTTP status code.
	ProxyLivezTotal = newCounterVec("proxy_livez_total",
		"Cumulative proxy livez HTTP status", labelCode)

	// ReconcileConntrackFlowsLatency is the duration of one conntrack cleanup round.
	ReconcileConntrackFlowsLatency = newHistogramVec("conntrack_reconciler_sync_duration_seconds",
		"ReconcileConntrackFlowsLatency latency in seconds", syncLatencyBuckets, labelIPFamily)

	// ReconcileConntrackFlowsDeletedEntriesTotal counts stale conntrack entries deleted.
	ReconcileConntrackFlowsDeletedEntriesTotal = newCounterVec("conntrack_reconciler_deleted_entries_total",
		"Cumulative conntrack flows deleted by conntrack reconciler", labelIPFamily)
)

// svcproxy's own metrics. They share the kubeproxy_ prefix so they sit next to
// the metrics they explain, and carry ip_family like the sync metrics.
var (
	// SyncProxyRulesRestoreBytes is the size of each payload written to the
	// kernel (iptables-restore / ipset restore input), to spot syncs that are
	// growing towards kernel or exec limits.
	SyncProxyRulesRestoreBytes = newHistogramVec("sync_proxy_rules_restore_bytes",
		"Size in bytes of each rules payload written by svcproxy", restoreBytesBuckets, labelIPFamily)

	// SyncProxyRulesDriftRepairsTotal counts repairs of rules that were changed
	// behind svcproxy's back. Keep "reason" to a small fixed set of values.
	SyncProxyRulesDriftRepairsTotal = newCounterVec("sync_proxy_rules_drift_repairs_total",
		"Cumulative repairs of proxy rules that drifted from the desired state, by reason", labelReason, labelIPFamily)

	// SyncKernelCallsTotal counts what syncs asked of the kernel, by call:
	// in IPVS mode every netlink request (ipvs_*, link_*) and ipset run;
	// in both modes the iptables-restore runs. Drift checks are not
	// counted. Its change over a number of Service changes is the kernel
	// work per change, which must not grow with the cluster.
	SyncKernelCallsTotal = newCounterVec("sync_kernel_calls_total",
		"Cumulative kernel calls made by syncs (IPVS mode: netlink requests and ipset runs; both modes: iptables-restore runs), by call", labelCall, labelIPFamily)

	// IPVSRealServersDraining is the number of IPVS real servers left at
	// weight 0 after their endpoint went, waiting for their connections to
	// end or their grace period to pass (IPVS mode only). It answers "why
	// is this old backend still in ipvsadm -Ln", and tells a benchmark
	// when the deletions of earlier changes are over.
	IPVSRealServersDraining = newGaugeVec("sync_proxy_rules_ipvs_real_servers_draining",
		"IPVS real servers draining at weight 0 before their deletion", labelIPFamily)

	// SyncDeferredDeletionsDuration is how long nftables mode's second
	// transaction after a partial sync takes: it removes the rules the
	// sync shadowed by writing new ones ahead, and hairpin elements no
	// Service uses. A deletion adds milliseconds to a commit at any size,
	// which is why the sync itself deletes only what changes where
	// traffic goes.
	SyncDeferredDeletionsDuration = newHistogramVec("sync_proxy_rules_deferred_deletions_duration_seconds",
		"Duration in seconds of the transactions that remove what partial syncs left unused (nftables mode)", syncLatencyBuckets, labelIPFamily)

	// SyncProxyRulesSyncFailuresTotal counts syncs that failed for any reason,
	// independent of the backend-specific restore failure counters.
	SyncProxyRulesSyncFailuresTotal = newCounterVec("sync_proxy_rules_sync_failures_total",
		"Cumulative proxy rules sync failures", labelIPFamily)
)

// registry is svcproxy's private registry; see the package doc for why.
var registry = newRegistry()

// newRegistry registers every metric of this package plus the Go runtime and
// process collectors that kube-proxy also exposes.
func newRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),

		SyncProxyRulesLatency,
		SyncFullProxyRulesLatency,
		SyncPartialProxyRulesLatency,
		NetworkProgrammingLatency,
		SyncProxyRulesLastTimestamp,
		SyncProxyRulesLastQueuedTimestamp,
		EndpointChangesPending,
		EndpointChangesTotal,
		ServiceChangesPending,
		ServiceChangesTotal,
		SyncProxyRulesNoLocalEndpointsTotal,
		IPTablesRulesTotal,
		IPTablesRulesLastSync,
		IPTablesRestoreFailuresTotal,
		IPTablesPartialRestoreFailuresTotal,
		ProxyHealthzTotal,
		ProxyLivezTotal,
		ReconcileConntrackFlowsLatency,
		ReconcileConntrackFlowsDeletedEntriesTotal,

		SyncProxyRulesRestoreBytes,
		SyncProxyRulesDriftRepairsTotal,
		IPVSRealServersDraining,
		SyncProxyRulesSyncFailuresTotal,
		SyncKernelCallsTotal,
		SyncDeferredDeletionsDuration,
	)
	return r
}

// SinceInSeconds returns the time elapsed since start in seconds, the unit
// every duration metric here uses.
func SinceInSeconds(start time.Time) float64 {
	return time.Since(start).Seconds()
}

func newHistogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: name, Help: help, Buckets: buckets,
	}, labels)
}

func newGaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

func newGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
}

func newCounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

func newCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
}

// mergeBuckets concatenates ascending bucket lists behind a leading 0 bucket,
// exactly like component-base's MergeBuckets that kube-proxy uses, so the
// exposed le="..." boundaries are identical to kube-proxy's.
func mergeBuckets(lists ...[]float64) []float64 {
	out := make([]float64, 1)
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}
