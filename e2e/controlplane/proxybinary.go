package controlplane

import (
	"os"
	"path/filepath"
	"testing"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// ProxyBinary returns the proxy a host test runs: $SVCPROXY_PROXY, or
// <repo>/bin/proxy when it is unset or "reference" (the reference
// kube-proxy has no explain, diff or svcproxy-only flags). A missing
// binary is a missing prerequisite (testenv.Missing).
func ProxyBinary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("SVCPROXY_PROXY")
	if p == "" || p == "reference" {
		root, err := RepoRoot()
		if err != nil {
			testenv.Missing(t, "%v", err)
		}
		p = filepath.Join(root, "bin", "proxy")
	}
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "no proxy binary (%v): go build -o bin/proxy ./cmd/proxy", err)
	}
	return p
}
