package acceptance

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	b1  = netip.MustParseAddrPort("10.180.0.1:80")
	b2  = netip.MustParseAddrPort("10.180.2.1:80")
	pod = netip.MustParseAddr("10.0.0.2")
)

func backend(b netip.AddrPort, peer string) Attempt {
	return Attempt{Class: ClassBackend, Backend: b, Peer: netip.MustParseAddrPort(peer)}
}

func repeat(a Attempt, n int) []Attempt {
	out := make([]Attempt, n)
	for i := range out {
		out[i] = a
	}
	return out
}

func mustExpect(t *testing.T, list ...string) Expectation {
	t.Helper()
	e, err := ParseExpect(list)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestEvaluateBackendSet(t *testing.T) {
	f := false
	c := Check{Expect: mustExpect(t, "10.180.0.1:80", "10.180.2.1:80"), Masquerade: &f, Source: pod, SourceKind: KindPod}
	both := append(repeat(backend(b1, "10.0.0.2:4000"), 5), repeat(backend(b2, "10.0.0.2:4001"), 5)...)
	if v := c.Evaluate(both); !v.Pass {
		t.Errorf("both seen: %+v", v)
	}
	v := c.Evaluate(repeat(backend(b1, "10.0.0.2:4000"), 10))
	if v.Pass || !v.MoreMayHelp || !strings.Contains(v.Reason, "never 10.180.2.1:80") {
		t.Errorf("one missing: %+v", v)
	}
	mixed := append(repeat(backend(b1, "10.0.0.2:4000"), 7), repeat(Attempt{Class: ClassReject}, 3)...)
	v = c.Evaluate(mixed)
	if v.Pass || v.MoreMayHelp || v.Reason != "got 10.180.0.1:80 x7, REJECT x3; expected {10.180.0.1:80, 10.180.2.1:80}" {
		t.Errorf("stray outcome: %+v", v)
	}
	other := netip.MustParseAddrPort("10.180.9.9:80")
	if v := c.Evaluate(append(both, backend(other, "10.0.0.2:1"))); v.Pass {
		t.Error("backend outside the set passed")
	}
}

func TestEvaluateMasquerade(t *testing.T) {
	yes, no := true, false
	e := mustExpect(t, "10.180.0.1:80")
	c := Check{Expect: e, Masquerade: &yes, Source: pod, SourceKind: KindPod}
	if v := c.Evaluate(repeat(backend(b1, "10.0.0.2:5"), 10)); v.Pass || v.Reason != "masquerade: backend 10.180.0.1:80 saw 10.0.0.2, expected SNAT" {
		t.Errorf("unmasqueraded: %+v", v)
	}
	if v := c.Evaluate(repeat(backend(b1, "192.168.0.2:5"), 10)); !v.Pass {
		t.Errorf("masqueraded: %+v", v)
	}
	c.Masquerade = &no
	if v := c.Evaluate(repeat(backend(b1, "192.168.0.2:5"), 10)); v.Pass || !strings.Contains(v.Reason, "expected the client address 10.0.0.2") {
		t.Errorf("unexpected SNAT: %+v", v)
	}
	c.Masquerade = nil
	if v := c.Evaluate(repeat(backend(b1, "192.168.0.2:5"), 10)); !v.Pass {
		t.Errorf("masquerade unset is not checked: %+v", v)
	}
}

func TestEvaluateConntrackMasquerade(t *testing.T) {
	yes, no := true, false
	local := netip.MustParseAddrPort("192.168.0.2:40000")
	a := backend(b1, "192.168.0.2:40000")
	a.Local = local
	c := Check{Expect: mustExpect(t, "10.180.0.1:80"), Masquerade: &yes, Source: local.Addr(), SourceKind: KindNode}
	if v := c.Evaluate(repeat(a, 10)); v.Pass || !strings.Contains(v.Reason, "no conntrack entry") {
		t.Errorf("missing entry: %+v", v)
	}
	a.ReplyDst = local
	if v := c.Evaluate(repeat(a, 10)); v.Pass || !strings.Contains(v.Reason, "unchanged, expected SNAT") {
		t.Errorf("no SNAT: %+v", v)
	}
	a.ReplyDst = netip.MustParseAddrPort("192.168.0.2:61000") // --random-fully port
	if v := c.Evaluate(repeat(a, 10)); !v.Pass {
		t.Errorf("port-only SNAT: %+v", v)
	}
	c.Masquerade = &no
	if v := c.Evaluate(repeat(a, 10)); v.Pass {
		t.Errorf("SNAT where none expected passed")
	}
}

func TestEvaluateWords(t *testing.T) {
	reject := Attempt{Class: ClassReject}
	drop := Attempt{Class: ClassDrop}
	local := Attempt{Class: ClassLocal}
	cases := []struct {
		expect []string
		atts   []Attempt
		pass   bool
	}{
		{[]string{"REJECT"}, repeat(reject, 10), true},
		{[]string{"REJECT"}, append(repeat(reject, 9), drop), false},
		{[]string{"DROP"}, repeat(drop, 10), true},
		{[]string{"DROP"}, repeat(reject, 10), false},
		{[]string{"LOCAL"}, repeat(local, 10), true},
		{[]string{"LOCAL"}, repeat(backend(b1, "10.0.0.2:1"), 10), false},
		{[]string{"REJECT", "DROP"}, append(repeat(reject, 5), repeat(drop, 5)...), true},
		{[]string{"UNHANDLED"}, append(append(repeat(reject, 3), repeat(drop, 3)...), local, Attempt{Class: ClassError, Detail: "x"}), true},
		{[]string{"UNHANDLED"}, append(repeat(drop, 9), backend(b1, "10.0.0.2:1")), false},
	}
	for i, tc := range cases {
		c := Check{Expect: mustExpect(t, tc.expect...), Source: pod, SourceKind: KindPod}
		if v := c.Evaluate(tc.atts); v.Pass != tc.pass {
			t.Errorf("case %d %v: pass=%v (%s)", i, tc.expect, v.Pass, v.Reason)
		}
	}
}

func TestEvaluateSticky(t *testing.T) {
	c := Check{Expect: mustExpect(t, "10.180.0.1:80", "10.180.2.1:80"), Source: pod, SourceKind: KindPod, Sticky: true}
	if v := c.Evaluate(repeat(backend(b2, "10.0.0.2:1"), 10)); !v.Pass {
		t.Errorf("sticky to one member: %+v", v)
	}
	flap := append(repeat(backend(b2, "10.0.0.2:1"), 9), backend(b1, "10.0.0.2:1"))
	if v := c.Evaluate(flap); v.Pass || !strings.HasPrefix(v.Reason, "not sticky") {
		t.Errorf("flapping: %+v", v)
	}
}

func TestErrAttemptClasses(t *testing.T) {
	wrap := func(e error) error { return fmt.Errorf("dial tcp: %w", os.NewSyscallError("connect", e)) }
	cases := map[error]Class{
		wrap(syscall.ECONNREFUSED): ClassReject,
		wrap(syscall.EHOSTUNREACH): ClassReject,
		wrap(syscall.ENETUNREACH):  ClassReject,
		wrap(syscall.EPERM):        ClassDrop,
		os.ErrDeadlineExceeded:     ClassDrop,
		wrap(syscall.ECONNRESET):   ClassError,
		errors.New("strange"):      ClassError,
	}
	for err, want := range cases {
		if got := errAttempt(err).Class; got != want {
			t.Errorf("%v: class %d, want %d", err, got, want)
		}
	}
}

func TestWithReply(t *testing.T) {
	a := Attempt{}.withReply("10.180.0.1:80 10.0.0.2:43210\n")
	if a.Class != ClassBackend || a.Backend != b1 || a.Peer.Addr() != pod {
		t.Errorf("backend reply: %+v", a)
	}
	if a := (Attempt{}).withReply("LOCAL 192.168.0.2:3001 10.0.0.2:1\n"); a.Class != ClassLocal {
		t.Errorf("sentinel reply: %+v", a)
	}
	if a := (Attempt{}).withReply("[fd00:10:180::71]:80 [fd00:10::2]:5\n"); a.Class != ClassBackend || a.Backend.Addr() != netip.MustParseAddr("fd00:10:180::71") {
		t.Errorf("v6 reply: %+v", a)
	}
	if a := (Attempt{}).withReply("garbage"); a.Class != ClassError {
		t.Errorf("garbage: %+v", a)
	}
}

func TestParseSyncState(t *testing.T) {
	text := `# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds x
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.6e+09
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1.69e+09
kubeproxy_sync_proxy_rules_service_changes_pending 0
kubeproxy_sync_proxy_rules_endpoint_changes_pending 2
`
	st, ok := ParseSyncState(strings.NewReader(text))
	if !ok || st.Last != 1.7e9 || st.EndpointPending != 2 || st.Behind || !st.HasQueued {
		t.Fatalf("%+v", st)
	}
	if st.Synced(time.Unix(1.65e9, 0), false) {
		t.Error("synced with endpoint changes pending")
	}
	st.EndpointPending = 0
	if !st.Synced(time.Unix(1.65e9, 0), false) || st.Synced(time.Unix(1.75e9, 0), false) {
		t.Error("timestamp comparison")
	}
	if !st.Synced(time.Unix(1.75e9, 0), true) {
		t.Error("an idle proxy after a no-op write counts as synced")
	}
	behind, _ := ParseSyncState(strings.NewReader(`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 10
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 11
`))
	if !behind.Behind || behind.Synced(time.Unix(5, 0), true) {
		t.Errorf("queued after last sync must not count as synced: %+v", behind)
	}
	if _, ok := ParseSyncState(strings.NewReader("other_metric 1\n")); ok {
		t.Error("missing metric reported as found")
	}
}

func TestHTTPGetCheck(t *testing.T) {
	h := &HTTPGet{
		ExpectStatus:  503,
		ExpectHeaders: map[string]string{"X-Content-Type-Options": "nosniff"},
		ExpectJSON:    map[string]any{"localEndpoints": float64(0), "serviceProxyHealthy": true},
	}
	hdr := http.Header{}
	hdr.Set("X-Content-Type-Options", "nosniff")
	ok := HTTPResponse{Status: 503, Header: hdr, Body: []byte(`{"service": {"namespace": "a", "name": "b"}, "localEndpoints": 0, "serviceProxyHealthy": true}`)}
	if why := h.Check(ok); why != "" {
		t.Errorf("matching response refused: %s", why)
	}
	bad := map[string]HTTPResponse{
		"status":  {Status: 200, Header: hdr, Body: ok.Body},
		"header":  {Status: 503, Header: http.Header{}, Body: ok.Body},
		"count":   {Status: 503, Header: hdr, Body: []byte(`{"localEndpoints": 1, "serviceProxyHealthy": true}`)},
		"missing": {Status: 503, Header: hdr, Body: []byte(`{"localEndpoints": 0}`)},
		"no json": {Status: 503, Header: hdr, Body: []byte(`ok`)},
	}
	for name, resp := range bad {
		if why := h.Check(resp); why == "" {
			t.Errorf("%s: a wrong response passed", name)
		}
	}
}
