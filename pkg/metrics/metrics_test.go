package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// touchAll creates one child of every labelled metric, because vectors
// without children are not exposed at all.
func touchAll() {
	const fam = "IPv4"
	SyncProxyRulesLatency.WithLabelValues(fam).Observe(0.01)
	SyncFullProxyRulesLatency.WithLabelValues(fam).Observe(0.01)
	SyncPartialProxyRulesLatency.WithLabelValues(fam).Observe(0.01)
	NetworkProgrammingLatency.WithLabelValues(fam).Observe(1)
	SyncProxyRulesLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
	SyncProxyRulesLastQueuedTimestamp.WithLabelValues(fam).SetToCurrentTime()
	EndpointChangesPending.Set(1)
	EndpointChangesTotal.Inc()
	ServiceChangesPending.Set(1)
	ServiceChangesTotal.Inc()
	SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", fam).Set(0)
	IPTablesRulesTotal.WithLabelValues("nat", fam).Set(10)
	IPTablesRulesLastSync.WithLabelValues("nat", fam).Set(10)
	IPTablesRestoreFailuresTotal.WithLabelValues(fam).Inc()
	IPTablesPartialRestoreFailuresTotal.WithLabelValues(fam).Inc()
	ProxyHealthzTotal.WithLabelValues("200").Inc()
	ProxyLivezTotal.WithLabelValues("200").Inc()
	ReconcileConntrackFlowsLatency.WithLabelValues(fam).Observe(0.01)
	ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues(fam).Add(3)
	SyncProxyRulesRestoreBytes.WithLabelValues(fam).Observe(4096)
	SyncProxyRulesDriftRepairsTotal.WithLabelValues("chain_missing", fam).Inc()
	SyncProxyRulesSyncFailuresTotal.WithLabelValues(fam).Inc()
	SyncDeferredDeletionsDuration.WithLabelValues(fam).Observe(0.01)
}

var wantNames = []string{
	"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
	"kubeproxy_sync_full_proxy_rules_duration_seconds_bucket",
	"kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket",
	"kubeproxy_network_programming_duration_seconds_bucket",
	"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
	"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
	"kubeproxy_sync_proxy_rules_endpoint_changes_pending",
	"kubeproxy_sync_proxy_rules_endpoint_changes_total",
	"kubeproxy_sync_proxy_rules_service_changes_pending",
	"kubeproxy_sync_proxy_rules_service_changes_total",
	`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"}`,
	`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`,
	"kubeproxy_sync_proxy_rules_iptables_last",
	"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
	"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
	`kubeproxy_proxy_healthz_total{code="200"}`,
	`kubeproxy_proxy_livez_total{code="200"}`,
	"kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket",
	"kubeproxy_conntrack_reconciler_deleted_entries_total",
	"kubeproxy_sync_proxy_rules_restore_bytes_bucket",
	`kubeproxy_sync_proxy_rules_drift_repairs_total{ip_family="IPv4",reason="chain_missing"}`,
	"kubeproxy_sync_proxy_rules_sync_failures_total",
	"kubeproxy_sync_proxy_rules_deferred_deletions_duration_seconds_bucket",
	"# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
	"go_goroutines",
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape status = %d, want 200", rec.Code)
	}
	return rec.Body.String()
}

func TestHandlerExposesKubeProxyNames(t *testing.T) {
	touchAll()
	body := scrape(t, Handler())
	for _, name := range wantNames {
		if !strings.Contains(body, name) {
			t.Errorf("scrape output lacks %q", name)
		}
	}
}

// TestBucketsMatchKubeProxy pins the bucket boundaries, including the leading
// 0 that component-base's MergeBuckets adds to the network programming SLI.
func TestBucketsMatchKubeProxy(t *testing.T) {
	if got := len(networkProgrammingBuckets); got != 1+2+59+12+7 {
		t.Errorf("network programming buckets: %d, want 81", got)
	}
	if networkProgrammingBuckets[0] != 0 || networkProgrammingBuckets[80] != 300 {
		t.Errorf("network programming bounds: first %v last %v", networkProgrammingBuckets[0], networkProgrammingBuckets[80])
	}
	if len(syncLatencyBuckets) != 15 || syncLatencyBuckets[0] != 0.001 || syncLatencyBuckets[14] != 16.384 {
		t.Errorf("sync latency buckets = %v", syncLatencyBuckets)
	}
}

func TestServeDisabled(t *testing.T) {
	if err := Serve(context.Background(), "", false); err != nil {
		t.Fatalf("Serve with empty addr = %v, want nil", err)
	}
}

func TestServeUntilCancelled(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, addr, true) }()

	body := getWithRetry(t, "http://"+addr+"/metrics")
	if !strings.Contains(body, "kubeproxy_sync_proxy_rules_endpoint_changes_total") {
		t.Errorf("served metrics lack kubeproxy_ names")
	}
	if heap := getWithRetry(t, "http://"+addr+"/debug/pprof/heap?debug=1"); !strings.Contains(heap, "heap profile") {
		t.Errorf("profiling on, yet /debug/pprof/heap is %.80q", heap)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	if err := Serve(context.Background(), ln.Addr().String(), false); err == nil {
		t.Fatal("Serve on a busy port returned nil, want error")
	}
}

// freeAddr reserves a loopback port and releases it for the code under test.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// getWithRetry polls until the server started in another goroutine answers.
func getWithRetry(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			defer func() { _ = resp.Body.Close() }()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
