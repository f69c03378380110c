package vm

import (
	"os"
	"path/filepath"
	"testing"

	"svcproxy.dev/svcproxy/e2e/controlplane"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// RequireHost skips a host-side test that boots a guest where that cannot
// work: inside the guest itself, with SVCPROXY_VM=0, without a usable VM
// (Available), in -short mode, or without the proxy binary, etcd or
// kube-apiserver. With SVCPROXY_VM=1 (as under `make test`) a missing VM
// fails the test instead, and -short does not skip it.
func RequireHost(t testing.TB, proxy string) {
	t.Helper()
	if os.Getenv("SVCPROXY_VM_GUEST") == "1" {
		t.Skip("inside the guest")
	}
	err := Available()
	switch {
	case os.Getenv("SVCPROXY_VM") == "0":
		t.Skip("SVCPROXY_VM=0")
	case err != nil && os.Getenv("SVCPROXY_VM") == "1":
		t.Fatal(err)
	case err != nil:
		t.Skip(err)
	case testing.Short() && os.Getenv("SVCPROXY_VM") != "1":
		t.Skip("boots a QEMU guest; SVCPROXY_VM=1 runs it in -short mode")
	}
	if _, err := os.Stat(proxy); err != nil {
		testenv.Missing(t, "proxy binary: %v (make build)", err)
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "%s missing: run e2e/build-tools.sh", b)
		}
	}
}
