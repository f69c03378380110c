package ipvs

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/iptables"
)

// TestRemoveLeftovers builds kube-proxy IPVS-mode leftovers (ipsets and the
// IPVS-only chains that reference them, plus a foreign chain and ipset) in a
// throwaway network namespace and checks that exactly ours go away.
func TestRemoveLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns := nsutil.Name("ipvsleft")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	run := func(args ...string) string {
		t.Helper()
		out, err := nsutil.Exec(ns, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return string(out)
	}
	run("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
	run("ipset", "create", "SOMEONE-ELSES", "hash:ip")
	restore := exec.Command("ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush")
	restore.Stdin = strings.NewReader(`*filter
:KUBE-IPVS-FILTER - [0:0]
:OTHER - [0:0]
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j OTHER
COMMIT
`)
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("seeding rules: %v: %s", err, out)
	}
	err := nsutil.Do(ns, func() error {
		k, err := iptables.NewKernel(v1.IPv4Protocol, iptables.BackendNFT)
		if err != nil {
			return err
		}
		return RemoveLeftovers([]iptables.Interface{k})
	})
	if err != nil {
		t.Fatal(err)
	}
	sets := run("ipset", "list", "-n")
	if strings.Contains(sets, "KUBE-CLUSTER-IP") || !strings.Contains(sets, "SOMEONE-ELSES") {
		t.Errorf("ipsets after clean-up: %q", sets)
	}
	rules := run("iptables-nft-save", "-t", "filter")
	if strings.Contains(rules, "KUBE-IPVS-FILTER") || !strings.Contains(rules, "-A INPUT -j OTHER") {
		t.Errorf("filter table after clean-up:\n%s", rules)
	}
}
