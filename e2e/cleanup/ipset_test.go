package cleanup

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestCleanupIPVSModeSets runs `proxy --cleanup` over IPVS-mode iptables
// rules and ipsets as the proxy (or kube-proxy) leaves them: the chains
// both modes share match on the ipsets, so the sets can only go once those
// rules are gone. Someone else's set and rules stay. Needs no IPVS, so it
// runs on the host (TestCleanupVM covers the whole thing in the guest).
func TestCleanupIPVSModeSets(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	proxy := os.Getenv("SVCPROXY_PROXY")
	if proxy == "" {
		root, err := controlplane.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		proxy = filepath.Join(root, "bin", "proxy")
	}
	if _, err := os.Stat(proxy); err != nil {
		testenv.Missing(t, "no proxy binary (%v); run make build", err)
	}
	ns := nsutil.Name("cleanset")
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
	for _, c := range [][]string{
		{"create", "KUBE-CLUSTER-IP", "hash:ip,port"},
		{"add", "KUBE-CLUSTER-IP", "172.30.0.41,tcp:80"},
		{"create", "KUBE-LOOP-BACK", "hash:ip,port,ip"},
		{"create", "KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535"},
		{"create", "FOREIGN-SET", "hash:ip"},
		{"add", "FOREIGN-SET", "198.18.0.5"},
	} {
		run(append([]string{"ipset"}, c...)...)
	}
	restore(t, ns, `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:FOREIGN - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j FOREIGN
-A FOREIGN -m set --match-set FOREIGN-SET dst -j RETURN
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES ! -s 10.0.0.0/8 -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
COMMIT
`)
	if out, err := nsutil.Exec(ns, proxy, "--cleanup").CombinedOutput(); err != nil {
		t.Errorf("proxy --cleanup: %v\n%s", err, out)
	}
	if sets := strings.Fields(run("ipset", "list", "-n")); !slices.Equal(sets, []string{"FOREIGN-SET"}) {
		t.Errorf("ipsets after --cleanup: %v, want only FOREIGN-SET", sets)
	}
	nat := run("iptables-nft-save", "-t", "nat")
	if strings.Contains(nat, "KUBE-") {
		t.Errorf("KUBE- rules left:\n%s", nat)
	}
	if !strings.Contains(nat, "-A POSTROUTING -j FOREIGN") || !strings.Contains(nat, "-A FOREIGN -m set --match-set FOREIGN-SET dst -j RETURN") {
		t.Errorf("someone else's rules went:\n%s", nat)
	}
}
