package controlplane

import (
	"os"
	"path/filepath"
	"testing"
)

// ProxyBinary returns the proxy a host test runs: $SVCPROXY_PROXY, or
// <repo>/bin/proxy when it is unset or "reference" (the reference
// kube-proxy has no explain, diff or svcproxy-only flags). It skips the
// test when the binary is missing.
func ProxyBinary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("SVCPROXY_PROXY")
	if p == "" || p == "reference" {
		root, err := RepoRoot()
		if err != nil {
			t.Skip(err)
		}
		p = filepath.Join(root, "bin", "proxy")
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no proxy binary (%v): go build -o bin/proxy ./cmd/proxy", err)
	}
	return p
}
