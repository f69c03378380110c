package ipvs

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/iptables"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestRemoveLeftovers builds kube-proxy IPVS-mode leftovers (ipsets and the
// IPVS-only chains that reference them, plus a foreign chain and ipset) in a
// throwaway network namespace and checks that exactly ours go away.
func TestRemoveLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
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

// TestOwnedBySets: the virtual servers off kube-ipvs0 that IPVS mode made
// are found through its ipsets (NodePorts on local addresses; external and
// LB IPs the node already had, on any address), and nothing else is.
func TestOwnedBySets(t *testing.T) {
	save := []byte(`create FOREIGN-PORTS bitmap:port range 30000-32767
add FOREIGN-PORTS 30500
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30081
create KUBE-NODE-PORT-UDP bitmap:port range 0-65535
add KUBE-NODE-PORT-UDP 30053
create KUBE-EXTERNAL-IP-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-EXTERNAL-IP-LOCAL 192.168.0.2,tcp:8080
create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER 192.168.0.3,udp:53
create KUBE-6-EXTERNAL-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536
add KUBE-6-EXTERNAL-IP fd00::2,tcp:80
`)
	local := map[netip.Addr]bool{netip.MustParseAddr("192.168.0.2"): true, netip.MustParseAddr("192.168.0.3"): true, netip.MustParseAddr("fd00::2"): true}
	owned := ownedBySets(save, local)
	if owned == nil {
		t.Fatal("no test for the sets")
	}
	for _, tc := range []struct {
		proto uint16
		addr  string
		port  uint16
		want  bool
	}{
		{unix.IPPROTO_TCP, "192.168.0.2", 30081, true},  // NodePort on a node IP
		{unix.IPPROTO_UDP, "192.168.0.3", 30053, true},  // UDP NodePort
		{unix.IPPROTO_TCP, "192.168.0.2", 8080, true},   // external IP the node had
		{unix.IPPROTO_UDP, "192.168.0.3", 53, true},     // LB IP the node had
		{unix.IPPROTO_TCP, "fd00::2", 80, true},         // IPv6 external IP
		{unix.IPPROTO_TCP, "10.9.9.9", 30081, false},    // NodePort port, not a local address
		{unix.IPPROTO_UDP, "192.168.0.2", 30081, false}, // TCP NodePort, UDP virtual server
		{unix.IPPROTO_TCP, "192.168.0.2", 8443, false},  // someone else's port
		{unix.IPPROTO_TCP, "192.168.0.2", 30500, false}, // in a foreign set only
		{unix.IPPROTO_UDP, "192.168.0.2", 8080, false},  // external IP's port, other protocol
		{unix.IPPROTO_TCP, "192.168.0.3", 8080, false},  // external IP's port, other address
	} {
		s := &ipvs.Service{Protocol: tc.proto, Address: net.ParseIP(tc.addr), Port: tc.port, AddressFamily: unix.AF_INET}
		if got := owned(s); got != tc.want {
			t.Errorf("%d %s:%d: owned %v, want %v", tc.proto, tc.addr, tc.port, got, tc.want)
		}
	}
	if ownedBySets([]byte("create FOREIGN-SET hash:ip family inet\n"), local) != nil {
		t.Error("a test without any of our sets")
	}
}
