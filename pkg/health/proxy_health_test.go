package health

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"svcproxy.dev/svcproxy/pkg/metrics"
)

const testTimeout = 10 * time.Second

func newTestProxyHealthServer() (*ProxyHealthServer, *clocktesting.FakeClock) {
	fc := clocktesting.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	hs := NewProxyHealthServer(ProxyHealthServerOptions{Addr: "", HealthTimeout: testTimeout, Clock: fc})
	return hs, fc
}

// probe calls path on hs and decodes the JSON body.
func probe(t *testing.T, hs *ProxyHealthServer, path string) (int, ProxyHealth, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	hs.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body ProxyHealth
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, body, rec.Header()
}

func expectCode(t *testing.T, hs *ProxyHealthServer, path string, want int) ProxyHealth {
	t.Helper()
	code, body, _ := probe(t, hs, path)
	if code != want {
		t.Fatalf("%s = %d, want %d (body %+v)", path, code, want, body)
	}
	return body
}

func counterValue(t *testing.T, vec *prometheus.CounterVec, code string) float64 {
	t.Helper()
	var m dto.Metric
	if err := vec.WithLabelValues(code).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestProxyHealthTimeoutAndRecovery(t *testing.T) {
	hs, fc := newTestProxyHealthServer()

	// Healthy before anything was queued, however long that lasts.
	fc.Step(time.Hour)
	expectCode(t, hs, "/healthz", http.StatusOK)

	hs.Updated(v1.IPv4Protocol)
	hs.Updated(v1.IPv6Protocol)
	synced := fc.Now()
	fc.Step(25 * time.Second)
	expectCode(t, hs, "/healthz", http.StatusOK) // nothing queued: idle is fine

	hs.QueuedUpdate(v1.IPv4Protocol)
	fc.Step(testTimeout - time.Second)
	expectCode(t, hs, "/healthz", http.StatusOK) // queued, not late yet
	hs.QueuedUpdate(v1.IPv4Protocol)             // must not restart the timer
	fc.Step(time.Second)

	body := expectCode(t, hs, "/healthz", http.StatusServiceUnavailable)
	if body.Healthy || body.Status[v1.IPv4Protocol].Healthy || !body.Status[v1.IPv6Protocol].Healthy {
		t.Errorf("unhealthy body = %+v, want only IPv4 unhealthy", body)
	}
	if !body.LastUpdated.Equal(synced) || !body.CurrentTime.Equal(fc.Now()) {
		t.Errorf("lastUpdated/currentTime = %v/%v", body.LastUpdated, body.CurrentTime)
	}
	expectCode(t, hs, "/livez", http.StatusServiceUnavailable)

	hs.Updated(v1.IPv4Protocol)
	body = expectCode(t, hs, "/healthz", http.StatusOK)
	if !body.Healthy || !body.LastUpdated.Equal(fc.Now()) {
		t.Errorf("recovered body = %+v, want healthy with lastUpdated=now", body)
	}
	expectCode(t, hs, "/livez", http.StatusOK)
}

// TestProxyHealthFirstSyncLate covers a family that queued work but never
// completed a sync: it must not stay healthy forever.
func TestProxyHealthFirstSyncLate(t *testing.T) {
	hs, fc := newTestProxyHealthServer()
	hs.QueuedUpdate(v1.IPv4Protocol)
	fc.Step(testTimeout)
	if hs.Health().Healthy {
		t.Fatal("Health() healthy after queued update timed out without any sync")
	}
	hs.Updated(v1.IPv4Protocol)
	if !hs.Health().Healthy {
		t.Fatal("Health() unhealthy after Updated")
	}
}

func TestProxyHealthNodeEligibility(t *testing.T) {
	deleting := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", DeletionTimestamp: &metav1.Time{Time: time.Now()}}}
	tainted := &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}}
	otherTaint := &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: "other", Effect: v1.TaintEffectNoSchedule}}}}

	cases := []struct {
		name        string
		node        *v1.Node
		wantHealthz int
	}{
		{"other taint", otherTaint, http.StatusOK},
		{"deleting", deleting, http.StatusServiceUnavailable},
		{"autoscaler taint", tainted, http.StatusServiceUnavailable},
		{"plain node again", &v1.Node{}, http.StatusOK},
		{"node gone", nil, http.StatusServiceUnavailable},
	}
	hs, _ := newTestProxyHealthServer()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hs.SyncNode(tc.node)
			body := expectCode(t, hs, "/healthz", tc.wantHealthz)
			if body.NodeEligible == nil || *body.NodeEligible != (tc.wantHealthz == http.StatusOK) {
				t.Errorf("healthz nodeEligible = %v", body.NodeEligible)
			}
			if !body.Healthy {
				t.Errorf("healthz healthy = false; eligibility must not affect it")
			}
			body = expectCode(t, hs, "/livez", http.StatusOK)
			if body.NodeEligible != nil {
				t.Errorf("livez has nodeEligible %v, want absent", *body.NodeEligible)
			}
		})
	}
}

func TestProxyHealthHeadersAndMetrics(t *testing.T) {
	hs, fc := newTestProxyHealthServer()
	ok0 := counterValue(t, metrics.ProxyHealthzTotal, "200")
	bad0 := counterValue(t, metrics.ProxyHealthzTotal, "503")
	live0 := counterValue(t, metrics.ProxyLivezTotal, "503")

	_, _, hdr := probe(t, hs, "/healthz")
	if hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers = %v", hdr)
	}
	hs.QueuedUpdate(v1.IPv4Protocol)
	fc.Step(testTimeout)
	probe(t, hs, "/healthz")
	probe(t, hs, "/livez")

	if d := counterValue(t, metrics.ProxyHealthzTotal, "200") - ok0; d != 1 {
		t.Errorf("healthz 200 count delta = %v, want 1", d)
	}
	if d := counterValue(t, metrics.ProxyHealthzTotal, "503") - bad0; d != 1 {
		t.Errorf("healthz 503 count delta = %v, want 1", d)
	}
	if d := counterValue(t, metrics.ProxyLivezTotal, "503") - live0; d != 1 {
		t.Errorf("livez 503 count delta = %v, want 1", d)
	}
}

// TestProxyHealthJSONFields pins kube-proxy's field names.
func TestProxyHealthJSONFields(t *testing.T) {
	hs, _ := newTestProxyHealthServer()
	hs.Updated(v1.IPv4Protocol)
	rec := httptest.NewRecorder()
	hs.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"lastUpdated", "currentTime", "nodeEligible", "healthy", "status"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("healthz body %s lacks %q", rec.Body.String(), k)
		}
	}
	if got := string(raw["currentTime"]); got != `"2026-01-02T03:04:05Z"` {
		t.Errorf("currentTime = %s, want RFC 3339", got)
	}
}

func TestProxyHealthRun(t *testing.T) {
	addr := freeAddr(t)
	hs := NewProxyHealthServer(ProxyHealthServerOptions{Addr: addr, HealthTimeout: testTimeout})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hs.Run(ctx) }()

	resp := getWithRetry(t, "http://"+addr+"/livez")
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /livez = %d, want 200", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestProxyHealthRunErrors(t *testing.T) {
	disabled := NewProxyHealthServer(ProxyHealthServerOptions{HealthTimeout: testTimeout})
	if err := disabled.Run(context.Background()); err != nil {
		t.Errorf("Run with empty addr = %v, want nil", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	busy := NewProxyHealthServer(ProxyHealthServerOptions{Addr: ln.Addr().String(), HealthTimeout: testTimeout})
	if err := busy.Run(context.Background()); err == nil {
		t.Error("Run on a busy port returned nil, want error")
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

// getWithRetry polls until a server started in another goroutine answers.
func getWithRetry(t *testing.T, url string) *http.Response {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A reloaded, shorter syncPeriod shortens the timeout of what is already
// queued.
func TestProxyHealthSetHealthTimeout(t *testing.T) {
	hs, fc := newTestProxyHealthServer()
	hs.Updated(v1.IPv4Protocol)
	hs.QueuedUpdate(v1.IPv4Protocol)
	fc.Step(4 * time.Second)
	expectCode(t, hs, "/healthz", http.StatusOK)
	hs.SetHealthTimeout(3 * time.Second)
	expectCode(t, hs, "/healthz", http.StatusServiceUnavailable)
}
