package health

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// fakeChecker lets tests flip proxy health.
type fakeChecker struct{ unhealthy atomic.Bool }

func (f *fakeChecker) Health() ProxyHealth { return ProxyHealth{Healthy: !f.unhealthy.Load()} }

func newLoopbackServer(checker ProxyHealthChecker) *ServiceHealthServer {
	return NewServiceHealthServer(ServiceHealthServerOptions{
		NodeIPs:     []net.IP{net.ParseIP("127.0.0.1")},
		ProxyHealth: checker,
	})
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	_, p, err := net.SplitHostPort(freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint16(n)
}

type hcResponse struct {
	code    int
	weight  string
	ctype   string
	nosniff string
	raw     string
	body    serviceHealthBody
}

func getHC(t *testing.T, port uint16) hcResponse {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		t.Fatalf("GET health port %d: %v", port, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := hcResponse{
		code:    resp.StatusCode,
		weight:  resp.Header.Get("X-Load-Balancing-Endpoint-Weight"),
		ctype:   resp.Header.Get("Content-Type"),
		nosniff: resp.Header.Get("X-Content-Type-Options"),
		raw:     string(raw),
	}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("body %q: %v", raw, err)
	}
	return r
}

func expectHC(t *testing.T, port uint16, code int, endpoints int, proxyHealthy bool) hcResponse {
	t.Helper()
	r := getHC(t, port)
	if r.code != code || r.weight != strconv.Itoa(endpoints) ||
		r.body.LocalEndpoints != endpoints || r.body.ServiceProxyHealthy != proxyHealthy {
		t.Errorf("port %d: code=%d weight=%q body=%s; want code=%d endpoints=%d healthy=%v",
			port, r.code, r.weight, r.raw, code, endpoints, proxyHealthy)
	}
	if r.ctype != "application/json" || r.nosniff != "nosniff" {
		t.Errorf("Content-Type = %q, X-Content-Type-Options = %q; want kube-proxy's application/json and nosniff", r.ctype, r.nosniff)
	}
	return r
}

func expectClosed(t *testing.T, port uint16) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(int(port)), time.Second)
	if err == nil {
		_ = conn.Close()
		t.Errorf("port %d still open", port)
	}
}

func TestServiceHealthResponses(t *testing.T) {
	checker := &fakeChecker{}
	s := newLoopbackServer(checker)
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	portA, portB := freePort(t), freePort(t)

	if err := s.SyncServices(map[types.NamespacedName]uint16{a: portA, b: portB}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.SyncServices(nil) }()
	if err := s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{a: {IPv4: 2}}); err != nil {
		t.Fatal(err)
	}

	r := expectHC(t, portA, http.StatusOK, 2, true)
	if r.body.Service.Namespace != "ns" || r.body.Service.Name != "a" {
		t.Errorf("service ref = %+v", r.body.Service)
	}
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"a\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if r.raw != want {
		t.Errorf("body = %q, want kube-proxy's layout %q", r.raw, want)
	}
	expectHC(t, portB, http.StatusServiceUnavailable, 0, true)

	// Endpoints with an unhealthy proxy still fail, so LBs avoid stale rules.
	checker.unhealthy.Store(true)
	expectHC(t, portA, http.StatusServiceUnavailable, 2, false)
	checker.unhealthy.Store(false)

	// Services missing from SyncEndpoints drop to zero.
	if err := s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{b: {IPv4: 1}}); err != nil {
		t.Fatal(err)
	}
	expectHC(t, portA, http.StatusServiceUnavailable, 0, true)
	expectHC(t, portB, http.StatusOK, 1, true)
}

func TestServiceHealthSyncServices(t *testing.T) {
	s := newLoopbackServer(nil) // nil checker counts as healthy
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	portA, portB, portA2 := freePort(t), freePort(t), freePort(t)
	defer func() { _ = s.SyncServices(nil) }()

	if err := s.SyncServices(map[types.NamespacedName]uint16{a: portA, b: portB}); err != nil {
		t.Fatal(err)
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{a: {IPv4: 1}, b: {IPv4: 1}})

	// b goes away, a moves port; unchanged Services keep their endpoint count.
	if err := s.SyncServices(map[types.NamespacedName]uint16{a: portA2}); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, portA)
	expectClosed(t, portB)
	expectHC(t, portA2, http.StatusServiceUnavailable, 0, true) // reopened: no count yet
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{a: {IPv4: 3}})
	expectHC(t, portA2, http.StatusOK, 3, true)

	if err := s.SyncServices(nil); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, portA2)
}

func TestServiceHealthPortConflict(t *testing.T) {
	s := newLoopbackServer(nil)
	defer func() { _ = s.SyncServices(nil) }()
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(blocker.Addr().String())
	busyPort, _ := strconv.Atoi(p)

	good := types.NamespacedName{Namespace: "ns", Name: "good"}
	bad := types.NamespacedName{Namespace: "ns", Name: "bad"}
	goodPort := freePort(t)
	svcs := map[types.NamespacedName]uint16{good: goodPort, bad: uint16(busyPort)}

	if err := s.SyncServices(svcs); err == nil {
		t.Fatal("SyncServices with a busy port returned nil, want error")
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{good: {IPv4: 1}, bad: {IPv4: 1}})
	expectHC(t, goodPort, http.StatusOK, 1, true)

	// Once the port is free the next sync opens it.
	_ = blocker.Close()
	if err := s.SyncServices(svcs); err != nil {
		t.Fatalf("retry SyncServices: %v", err)
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{good: {IPv4: 1}, bad: {IPv4: 1}})
	expectHC(t, uint16(busyPort), http.StatusOK, 1, true)
}

// TestServiceHealthWithProxyHealthServer wires the real proxy health server in.
func TestServiceHealthWithProxyHealthServer(t *testing.T) {
	hs, fc := newTestProxyHealthServer()
	s := newLoopbackServer(hs)
	defer func() { _ = s.SyncServices(nil) }()
	svc := types.NamespacedName{Namespace: "ns", Name: "a"}
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svc: port}); err != nil {
		t.Fatal(err)
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{svc: {IPv4: 1}})
	expectHC(t, port, http.StatusOK, 1, true)

	hs.QueuedUpdate(v1.IPv4Protocol)
	fc.Step(testTimeout)
	expectHC(t, port, http.StatusServiceUnavailable, 1, false)
}

func TestListenTargets(t *testing.T) {
	cases := []struct {
		family      string
		ips         []net.IP
		wantNetwork string
		wantHosts   []string
	}{
		{"", nil, "tcp", []string{""}},
		{"IPv4", nil, "tcp4", []string{"0.0.0.0"}},
		{"IPv6", nil, "tcp6", []string{"::"}},
		{"", []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1")}, "tcp", []string{"10.0.0.1", "fd00::1"}},
		// nodePortAddresses that match no address: listen nowhere.
		{"", []net.IP{}, "tcp", []string{}},
	}
	for _, tc := range cases {
		network, hosts := listenTargets(v1.IPFamily(tc.family), tc.ips)
		if network != tc.wantNetwork || len(hosts) != len(tc.wantHosts) || (hosts == nil) != (tc.wantHosts == nil) {
			t.Errorf("%q %v: got %s %q", tc.family, tc.ips, network, hosts)
			continue
		}
		for i := range hosts {
			if hosts[i] != tc.wantHosts[i] {
				t.Errorf("%q %v: hosts %q, want %q", tc.family, tc.ips, hosts, tc.wantHosts)
			}
		}
	}
}

// TestServiceHealthNoMatchingAddress: with nodePortAddresses matching no
// address of the node, kube-proxy opens no health-check port; neither do we.
func TestServiceHealthNoMatchingAddress(t *testing.T) {
	s := NewServiceHealthServer(ServiceHealthServerOptions{NodeIPs: []net.IP{}})
	defer func() { _ = s.SyncServices(nil) }()
	svc := types.NamespacedName{Namespace: "ns", Name: "a"}
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svc: port}); err != nil {
		t.Fatal(err)
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{svc: {IPv4: 1}})
	expectClosed(t, port)
}

// TestServiceHealthPerFamily: the one wildcard listener (nodePortAddresses
// unset) serves both families, IPv4 probes arriving as IPv4-mapped IPv6
// addresses, and answers each probe with the endpoints of the family of
// the address it was sent to.
func TestServiceHealthPerFamily(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		testenv.Missing(t, "no IPv6 loopback here: %v", err)
	}
	_ = ln.Close()
	s := NewServiceHealthServer(ServiceHealthServerOptions{NodeIPs: nil})
	defer func() { _ = s.SyncServices(nil) }()
	svc := types.NamespacedName{Namespace: "ns", Name: "a"}
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svc: port}); err != nil {
		t.Fatal(err)
	}
	_ = s.SyncEndpoints(map[types.NamespacedName]watch.FamilyCount{svc: {IPv4: 2, IPv6: 0}})
	expectHC(t, port, http.StatusOK, 2, true)
	resp, err := http.Get("http://[::1]:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Load-Balancing-Endpoint-Weight") != "0" {
		t.Errorf("IPv6 probe: %d weight %q, want 503 weight 0 (no IPv6 endpoints)", resp.StatusCode, resp.Header.Get("X-Load-Balancing-Endpoint-Weight"))
	}
}
