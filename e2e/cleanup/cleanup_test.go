// Package cleanup tests `proxy --cleanup` on a real kernel.
package cleanup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestCleanupRemovesEverythingOurs programs a full ruleset (a golden plan,
// exactly what a running proxy writes) plus another component's rules into a
// throwaway namespace, runs `proxy --cleanup` there, and checks that every
// KUBE-* chain and jump is gone while the other rules stay.
func TestCleanupRemovesEverythingOurs(t *testing.T) {
	root, proxy, ns := setUp(t)

	golden, err := os.ReadFile(filepath.Join(root, "pkg", "iptables", "testdata", "loadbalancer-source-ranges.golden"))
	if err != nil {
		t.Fatal(err)
	}
	restore(t, ns, string(golden))
	restore(t, ns, "*nat\n:OTHER - [0:0]\n-A OTHER -j RETURN\n-A PREROUTING -j OTHER\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")

	out, err := nsutil.Exec(ns, proxy, "--cleanup").CombinedOutput()
	if err != nil {
		t.Fatalf("proxy --cleanup: %v\n%s", err, out)
	}
	for _, table := range []string{"nat", "filter", "mangle"} {
		saved, err := nsutil.Exec(ns, "iptables-nft-save", "-t", table).CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(saved), "KUBE-") {
			t.Errorf("%s table still has KUBE- rules:\n%s", table, saved)
		}
		if table == "nat" && !strings.Contains(string(saved), "-A PREROUTING -j OTHER") {
			t.Errorf("clean-up removed another component's rule:\n%s", saved)
		}
	}
}

// setUp checks the prerequisites and returns the repository root, the
// proxy binary and a throwaway network namespace removed when t ends.
func setUp(t *testing.T) (root, proxy, ns string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	proxy = os.Getenv("SVCPROXY_PROXY")
	if proxy == "" {
		proxy = filepath.Join(root, "bin", "proxy")
	}
	if _, err := os.Stat(proxy); err != nil {
		testenv.Missing(t, "no proxy binary (%v); run make build", err)
	}
	ns = nsutil.Name("cleanup")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(ns) })
	return root, proxy, ns
}

func restore(t *testing.T, ns, payload string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush")
	cmd.Stdin = strings.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
}
