package acceptance

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// proxyForSelfTest returns the proxy binary the self-test runs:
// $SVCPROXY_PROXY ("reference" means the prebuilt kube-proxy), else
// <repo>/bin/proxy.
func proxyForSelfTest(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SVCPROXY_PROXY")
	switch p {
	case "reference":
		p = filepath.Join(controlplane.DefaultBinDir(), "kube-proxy")
	case "":
		root, err := controlplane.RepoRoot()
		if err != nil {
			testenv.Missing(t, "%v", err)
		}
		p = filepath.Join(root, "bin", "proxy")
	}
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "no proxy binary (%v): build it or set SVCPROXY_PROXY (\"reference\" for kube-proxy)", err)
	}
	return p
}

// TestSelfWrongScenarioFails runs testdata/wrong.yaml, whose flows
// deliberately expect what must not happen, and checks that the runner
// reports each of them as failed for the right reason, while the one correct
// flow passes.
func TestSelfWrongScenarioFails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and iptables")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			t.Skipf("%s missing: run e2e/build-tools.sh", b)
		}
	}
	proxy := proxyForSelfTest(t)
	file, err := filepath.Abs("testdata/wrong.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	r, err := NewRunner(Options{Mode: "iptables", File: file, Proxy: proxy, Out: &out, Log: &log, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sum, err := r.RunFile(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	t.Logf("report:\n%s", out.String())
	want := map[string]struct{ status, reason string }{
		"right-pod-to-svc1":                 {"pass", ""},
		"wrong-backend-of-another-service":  {"fail", "got 10.180.0.1:80 x"},
		"wrong-reject-where-traffic-passes": {"fail", "got 10.180.0.1:80 x"},
		"wrong-masquerade-for-pod-traffic":  {"fail", "masquerade: backend 10.180.0.1:80 saw 10.0.0.2, expected SNAT"},
		"wrong-drop-where-rejected":         {"fail", "got REJECT x"},
		"wrong-extra-backend-never-seen":    {"fail", "never 10.180.0.3:80"},
	}
	if len(sum.Results) != len(want) {
		t.Errorf("%d results, want %d", len(sum.Results), len(want))
	}
	for _, res := range sum.Results {
		w, ok := want[res.Flow]
		if !ok {
			t.Errorf("unexpected flow %s", res.Flow)
			continue
		}
		if res.Status != w.status || !strings.Contains(res.Reason, w.reason) {
			t.Errorf("%s: got %q, want %s containing %q", res.Flow, res.Line(), w.status, w.reason)
		}
	}
	if sum.Line() != "1 passed, 5 failed, 0 skipped" {
		t.Errorf("summary %q", sum.Line())
	}
	if t.Failed() {
		t.Log(log.String())
	}
}
