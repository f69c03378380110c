package cleanup

// `proxy --cleanup` after a real run, in both modes, on a real IPVS kernel:
// the host kernel has no IPVS, so TestCleanupVM boots the QEMU guest
// (e2e/vm) with the host's control plane forwarded in and runs
// TestGuestCleanup there. Each case gets a fresh node namespace holding
// someone else's state (iptables chains and rules in both backends and
// families, kubelet's canary chains, an ipset, IPVS virtual servers with
// real servers, a dummy interface with an address, a second address on the
// uplink), runs the proxy until it has synced, stops it with SIGTERM (its
// state stays), runs `proxy --cleanup` and compares the node with how it
// was before the proxy started: iptables-save (nft and legacy, IPv4 and
// IPv6), ipset save, ipvsadm -Sn, ip addr and ip link must be the same,
// except for empty built-in tables that appeared.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/vm"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

const (
	vmNodeName = "cleanup-node"
	vmNodeIP   = "192.168.0.2"
)

func inGuest() bool { return os.Getenv("SVCPROXY_VM_GUEST") == "1" }

func proxyBin(t *testing.T) string {
	if p := os.Getenv("SVCPROXY_PROXY"); p != "" {
		return p
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		testenv.Missing(t, "%v", err)
	}
	return filepath.Join(root, "bin", "proxy")
}

// TestCleanupVM boots one guest that runs TestGuestCleanup. It skips (with
// the reason) when the guest cannot be booted: not root, no QEMU, no
// prepared .cache/vm (make vm), no etcd/kube-apiserver (make tools), no
// proxy binary (make build); SVCPROXY_VM=1 turns a missing VM into a
// failure, SVCPROXY_VM=0 skips.
func TestCleanupVM(t *testing.T) {
	proxy := proxyBin(t)
	vm.RequireHost(t, proxy)
	vm.RunGuestTest(t, vm.GuestTest{
		Name:    "TestGuestCleanup",
		Proxy:   proxy,
		Timeout: 11 * time.Minute,
	})
}

// TestGuestCleanup runs inside the guest (see TestCleanupVM).
func TestGuestCleanup(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestCleanupVM)")
	}
	ctx := t.Context()
	kc := os.Getenv("KUBECONFIG")
	createObjects(t, ctx, kc)
	for _, tc := range []struct {
		name  string
		modes []string
	}{
		{"ipvs", []string{"ipvs"}},
		{"iptables", []string{"iptables"}},
		{"ipvs then iptables", []string{"ipvs", "iptables"}},
	} {
		t.Run(tc.name, func(t *testing.T) { cleanupCase(t, ctx, kc, tc.modes) })
	}
}

// createObjects creates the Node and Services that give the proxy a bit of
// everything to program: a ClusterIP Service; a NodePort Service with TCP
// and UDP ports; a LoadBalancer Service with externalTrafficPolicy Local
// (health-check NodePort), source ranges, an LB IP and two external IPs,
// one of them the node's own address (so its virtual server is not on
// kube-ipvs0).
func createObjects(t *testing.T, ctx context.Context, kc string) {
	api, err := acceptance.APIFromKubeconfig(kc, strings.Split(os.Getenv("SERVICE_CIDRS"), ","))
	if err != nil {
		t.Fatal(err)
	}
	svcs := []acceptance.Service{
		{Namespace: "ns1", Name: "web", ClusterIP: "172.30.0.41",
			Ports: []acceptance.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}},
		{Namespace: "ns1", Name: "np", Type: "NodePort", ClusterIP: "172.30.0.42",
			Ports: []acceptance.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, NodePort: 30081}, {Name: "dns", Protocol: "UDP", Port: 53, NodePort: 30053}}},
		{Namespace: "ns1", Name: "lb", Type: "LoadBalancer", ClusterIP: "172.30.0.43",
			Ports:                 []acceptance.ServicePort{{Name: "http", Protocol: "TCP", Port: 8080, NodePort: 30082}},
			ExternalTrafficPolicy: "Local", HealthCheckNodePort: 30090,
			LoadBalancerIPs: []string{"203.0.113.10"}, ExternalIPs: []string{"198.51.100.20", vmNodeIP},
			LoadBalancerSourceRanges: []string{"10.0.0.0/8", "192.168.0.0/24"}},
	}
	if err := api.EnsureServiceCIDRs(ctx, nil, svcs); err != nil {
		t.Fatal(err)
	}
	if err := api.CreateNode(ctx, acceptance.Node{Name: vmNodeName, IPs: []string{vmNodeIP}, ClusterCIDR: "10.0.0.0/8"}, ""); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := api.ApplyService(ctx, s); err != nil {
			t.Fatal(err)
		}
		var ports []acceptance.SlicePort
		for _, p := range s.Ports {
			ports = append(ports, acceptance.SlicePort{Name: ptr.To(p.Name), Protocol: p.Protocol, Port: ptr.To(p.Port)})
		}
		es := acceptance.EndpointSlice{Namespace: s.Namespace, Service: s.Name, Name: s.Name + "-1", AddressType: "IPv4", Ports: ports,
			Endpoints: []acceptance.Endpoint{
				{Addresses: []string{"10.180.0.1"}, NodeName: ptr.To(vmNodeName)},
				{Addresses: []string{"10.180.2.1"}, NodeName: ptr.To("node2")},
			}}
		if err := api.ApplySlice(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
}

// iptablesTools are the save/restore pairs compared, when installed.
var iptablesTools = []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"}

// foreignRules is someone else's iptables state, planted in every backend
// and family: chains with rules in nat and filter, and rules of theirs in
// built-in chains (one matching their ipset).
//
// With kubeletFirewall, kubelet's KUBE-FIREWALL (its copy of the
// 127.0.0.0/8 guard, which kube-proxy's clean-up leaves alone) is planted
// too: neither mode's daemon nor --cleanup may remove it.
func foreignRules(tool string, kubeletFirewall bool) string {
	src := "10.99.0.0/16"
	dst := "198.18.0.1/32"
	if strings.HasPrefix(tool, "ip6") {
		src, dst = "fd99::/64", "fd18::1/128"
	}
	s := fmt.Sprintf(`*nat
:FOREIGN-NAT - [0:0]
-A FOREIGN-NAT -d %[2]s -p tcp -m tcp --dport 8443 -j RETURN
-A PREROUTING -j FOREIGN-NAT
-A OUTPUT -j FOREIGN-NAT
-A POSTROUTING -s %[1]s -m comment --comment "someone's masquerade" -j MASQUERADE
COMMIT
*filter
:FOREIGN-FILTER - [0:0]
-A FOREIGN-FILTER -p tcp -m tcp --dport 2222 -j ACCEPT
-A FOREIGN-FILTER -j RETURN
-A INPUT -j FOREIGN-FILTER
-A FORWARD -s %[1]s -j ACCEPT
-A OUTPUT -p udp -m udp --dport 9999 -j DROP
COMMIT
`, src, dst)
	if tool == "iptables-nft" {
		// kubelet's chains (KUBE-* but not the proxy's): its canaries,
		// the backend hint and its copy of the 127.0.0.0/8 guard that
		// kube-proxy shares (kube-proxy's clean-up leaves it); and a rule
		// using someone else's ipset.
		s += `*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
-A OUTPUT -m set --match-set FOREIGN-SET dst -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
`
		if kubeletFirewall {
			// Where kubelet's canary is in the filter table, --cleanup
			// takes KUBE-FIREWALL for kubelet's (see
			// iptables.KubeletFirewall), so the two go together.
			s += `*filter
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
COMMIT
`
		}
	}
	return s
}

// kubeProxyLeftovers is what kube-proxy might have left in the backend the
// proxy does not use (both its modes' chain names), planted after the
// proxy stopped: --cleanup cleans both backends.
const kubeProxyLeftovers = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-NODE-PORT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SERVICES -d 172.30.9.9/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.180.9.9:80
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
`

// vmNode is one case's node namespace.
type vmNode struct {
	t  *testing.T
	ns string
}

func (n *vmNode) run(args ...string) string {
	n.t.Helper()
	out, err := nsutil.Exec(n.ns, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (n *vmNode) restore(tool, payload string) {
	n.t.Helper()
	cmd := nsutil.Exec(n.ns, tool+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("%s-restore: %v\n%s\n%s", tool, err, out, payload)
	}
}

// plantForeign gives the node someone else's state.
func (n *vmNode) plantForeign(tools []string, kubeletFirewall bool) {
	n.run("ipset", "create", "FOREIGN-SET", "hash:ip")
	n.run("ipset", "add", "FOREIGN-SET", "198.18.0.5")
	n.run("ipset", "create", "FOREIGN-PORTS", "bitmap:port", "range", "30000-32767")
	n.run("ipset", "add", "FOREIGN-PORTS", "30081") // one of our NodePorts, in their set
	for _, tool := range tools {
		n.restore(tool, foreignRules(tool, kubeletFirewall))
	}
	n.run("ip", "link", "add", "foreign0", "type", "dummy")
	n.run("ip", "addr", "add", "198.18.0.1/32", "dev", "foreign0")
	n.run("ip", "link", "set", "foreign0", "up")
	n.run("ip", "addr", "add", "192.0.2.99/32", "dev", "eth0")
	for _, c := range [][]string{
		{"-A", "-t", "10.9.9.9:80", "-s", "rr"},
		{"-a", "-t", "10.9.9.9:80", "-r", "10.9.9.10:80", "-m", "-w", "3"},
		{"-A", "-u", "198.18.0.1:53", "-s", "wrr"},
		{"-a", "-u", "198.18.0.1:53", "-r", "10.9.9.11:53", "-m"},
		// On the node's own address, on a port that is no Service's.
		{"-A", "-t", vmNodeIP + ":8443", "-s", "rr", "-p", "60"},
		{"-a", "-t", vmNodeIP + ":8443", "-r", "10.9.9.12:8443", "-m"},
	} {
		n.run(append([]string{"ipvsadm"}, c...)...)
	}
}

// state is everything compared before and after.
type state struct {
	iptables map[string]string // tool -> save output
	ipsets   string
	ipvs     string
	addrs    string
	links    string
}

func (n *vmNode) snapshot(tools []string) state {
	s := state{iptables: map[string]string{}}
	for _, tool := range tools {
		s.iptables[tool] = n.run(tool + "-save")
	}
	s.ipsets = n.run("ipset", "save")
	s.ipvs = sortedLines(n.run("ipvsadm", "-Sn"))
	s.addrs = n.run("ip", "-o", "addr", "show")
	s.links = n.run("ip", "-o", "link", "show")
	return s
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// cleanupCase runs the proxy in each of modes in turn on a fresh node
// with foreign state, then `proxy --cleanup`, and compares.
func cleanupCase(t *testing.T, ctx context.Context, kc string, modes []string) {
	n := &vmNode{t: t, ns: nsutil.Name("cln")}
	if err := nsutil.Add(n.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(n.ns) })
	n.run("ip", "link", "add", "eth0", "type", "dummy")
	n.run("ip", "addr", "add", vmNodeIP+"/24", "dev", "eth0")
	n.run("ip", "link", "set", "eth0", "up")
	relay, err := acceptance.StartRelay(n.ns, kc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Close() })

	var tools []string
	for _, tool := range iptablesTools {
		if _, err := exec.LookPath(tool + "-save"); err == nil {
			tools = append(tools, tool)
		}
	}
	t.Logf("iptables tools compared: %v", tools)
	n.plantForeign(tools, true)
	before := n.snapshot(tools)

	dir := t.TempDir()
	for i, mode := range modes {
		cfg, err := yaml.Marshal(map[string]any{
			"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
			"mode": mode, "hostnameOverride": vmNodeName, "clusterCIDR": "10.0.0.0/8",
			"clientConnection":   map[string]any{"kubeconfig": kc},
			"metricsBindAddress": "127.0.0.1:10249",
			"ipvs":               map[string]any{"syncPeriod": "10s", "minSyncPeriod": "0s", "scheduler": "rr"},
			"iptables":           map[string]any{"syncPeriod": "10s", "minSyncPeriod": "0s"},
			"conntrack":          map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
		})
		if err != nil {
			t.Fatal(err)
		}
		cfgPath := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", i))
		if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(dir, fmt.Sprintf("proxy-%d-%s.log", i, mode))
		started := time.Now()
		proc, err := acceptance.StartProxy(proxyBin(t), n.ns, cfgPath, vmNodeName, logPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := acceptance.WaitSynced(ctx, n.ns, proc, started, 3*time.Minute); err != nil {
			proc.Stop(5 * time.Second)
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s proxy: %v\n%s", mode, err, b)
		}
		if mode == "iptables" && i > 0 {
			// The switch from ipvs removes IPVS-mode state after the first
			// sync; wait for that so the proxy is stopped in a steady state.
			n.waitFor("ipvs leftovers removed by iptables mode", time.Minute, func() bool {
				_, err := nsutil.Exec(n.ns, "ip", "link", "show", "kube-ipvs0").CombinedOutput()
				return err != nil
			})
		}
		t.Logf("%s proxy synced after %v", mode, time.Since(started).Round(100*time.Millisecond))
		proc.Stop(30 * time.Second)
		if err := proc.Err(); err != nil {
			b, _ := os.ReadFile(logPath)
			t.Errorf("%s proxy: exit after SIGTERM: %v\n%s", mode, err, b)
		}
		// SIGTERM leaves the rules in place.
		n.expectOurs(mode)
	}
	// kube-proxy's leftovers in the other backend, which no proxy of ours
	// wrote: --cleanup looks at both.
	if slices.Contains(tools, "iptables-legacy") && slices.Contains(tools, "iptables-nft") {
		n.restore("iptables-legacy", kubeProxyLeftovers)
	}

	out, err := nsutil.Exec(n.ns, proxyBin(t), "--cleanup", "-v=2").CombinedOutput()
	t.Logf("proxy --cleanup:\n%s", out)
	if err != nil {
		t.Errorf("proxy --cleanup: %v", err)
	}
	after := n.snapshot(tools)
	n.compare(before, after)
	// A second run finds nothing to do and succeeds.
	if out, err := nsutil.Exec(n.ns, proxyBin(t), "--cleanup").CombinedOutput(); err != nil {
		t.Errorf("second proxy --cleanup: %v\n%s", err, out)
	}
	if again := n.snapshot(tools); !equalState(after, again) {
		t.Errorf("a second proxy --cleanup changed the node")
	}
}

func equalState(a, b state) bool {
	for tool, s := range a.iptables {
		if normalizeSave(s) != normalizeSave(b.iptables[tool]) {
			return false
		}
	}
	return a.ipsets == b.ipsets && a.ipvs == b.ipvs && a.addrs == b.addrs && a.links == b.links
}

func (n *vmNode) waitFor(what string, timeout time.Duration, ok func() bool) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// expectOurs checks that the stopped proxy's state is still there, so the
// clean-up has something to remove.
func (n *vmNode) expectOurs(mode string) {
	t := n.t
	save := n.run("iptables-save")
	ipvsadm := n.run("ipvsadm", "-Ln")
	sets := n.run("ipset", "list", "-n")
	_, linkErr := nsutil.Exec(n.ns, "ip", "link", "show", "kube-ipvs0").CombinedOutput()
	var missing []string
	want := map[string]bool{"nat KUBE-SERVICES": strings.Contains(save, ":KUBE-SERVICES ")}
	if mode == "ipvs" {
		want["kube-ipvs0"] = linkErr == nil
		want["virtual server 172.30.0.41:80"] = strings.Contains(ipvsadm, "172.30.0.41:80")
		want["virtual server on the node IP's external IP "+vmNodeIP+":8080"] = strings.Contains(ipvsadm, vmNodeIP+":8080")
		want["NodePort virtual server "+vmNodeIP+":30081"] = strings.Contains(ipvsadm, vmNodeIP+":30081")
		want["LB virtual server 203.0.113.10:8080"] = strings.Contains(ipvsadm, "203.0.113.10:8080")
		for _, s := range []string{"KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-UDP", "KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW", "KUBE-HEALTH-CHECK-NODE-PORT"} {
			want["ipset "+s] = slices.Contains(strings.Fields(sets), s)
		}
		want["KUBE-IPVS-FILTER"] = strings.Contains(save, ":KUBE-IPVS-FILTER ")
	} else {
		want["KUBE-SVC- chains"] = strings.Contains(save, ":KUBE-SVC-")
		want["KUBE-EXT- chains"] = strings.Contains(save, ":KUBE-EXT-")
		want["KUBE-FW- chains"] = strings.Contains(save, ":KUBE-FW-")
	}
	for k, ok := range want {
		if !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Fatalf("after SIGTERM the %s proxy's state is incomplete (missing %v):\niptables-save:\n%s\nipvsadm:\n%s\nipsets: %s", mode, missing, save, ipvsadm, sets)
	}
	t.Logf("%s mode: state present after SIGTERM (%d virtual servers, %d ipsets, %d KUBE- chains in iptables-save)",
		mode, strings.Count(ipvsadm, "\nTCP ")+strings.Count(ipvsadm, "\nUDP "), len(strings.Fields(sets)), strings.Count(save, "\n:KUBE-"))
}

// compare reports everything of ours left and everything foreign changed.
func (n *vmNode) compare(before, after state) {
	t := n.t
	for tool, b := range before.iptables {
		for _, d := range diffSave(parseSave(b), parseSave(after.iptables[tool])) {
			t.Errorf("%s-save: %s", tool, d)
		}
	}
	if before.ipsets != after.ipsets {
		t.Errorf("ipset save differs:\nbefore:\n%s\nafter:\n%s", before.ipsets, after.ipsets)
	}
	if before.ipvs != after.ipvs {
		t.Errorf("ipvsadm -Sn differs:\nbefore:\n%s\nafter:\n%s", before.ipvs, after.ipvs)
	}
	if before.addrs != after.addrs {
		t.Errorf("ip -o addr differs:\nbefore:\n%s\nafter:\n%s", before.addrs, after.addrs)
	}
	if before.links != after.links {
		t.Errorf("ip -o link differs:\nbefore:\n%s\nafter:\n%s", before.links, after.links)
	}
	if !t.Failed() {
		t.Logf("after --cleanup the node is as before the proxy ran: %d iptables dumps, ipsets %q, %d IPVS lines, %d addresses",
			len(before.iptables), setNames(after.ipsets), len(strings.Split(after.ipvs, "\n")), len(strings.Split(strings.TrimSpace(after.addrs), "\n")))
	}
}

func setNames(save string) []string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "create" {
			out = append(out, f[1])
		}
	}
	return out
}

// savedTable is one table of an iptables-save dump.
type savedTable struct {
	policies map[string]string   // chain -> policy ("-" for user chains)
	rules    map[string][]string // chain -> rules, in order
}

// parseSave reads an iptables-save dump; counters and comments are dropped.
func parseSave(s string) map[string]*savedTable {
	out := map[string]*savedTable{}
	var cur *savedTable
	for _, l := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			cur = &savedTable{policies: map[string]string{}, rules: map[string][]string{}}
			out[l[1:]] = cur
		case cur == nil, l == "", strings.HasPrefix(l, "#"), l == "COMMIT":
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			if len(f) >= 2 {
				cur.policies[f[0]] = f[1]
			}
		case strings.HasPrefix(l, "-A "):
			chain := strings.Fields(l)[1]
			cur.rules[chain] = append(cur.rules[chain], l)
		}
	}
	return out
}

func normalizeSave(s string) string {
	var b strings.Builder
	tables := parseSave(s)
	for _, name := range slices.Sorted(mapKeys(tables)) {
		tb := tables[name]
		fmt.Fprintf(&b, "*%s\n", name)
		for _, c := range slices.Sorted(mapKeys(tb.policies)) {
			fmt.Fprintf(&b, ":%s %s\n%s\n", c, tb.policies[c], strings.Join(tb.rules[c], "\n"))
		}
	}
	return b.String()
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// diffSave lists the differences between two dumps: chains and rules
// added (ours left behind, or anything else) and removed or changed
// (someone else's state touched). A table that appeared with nothing but
// empty built-in chains at policy ACCEPT is no difference.
func diffSave(before, after map[string]*savedTable) []string {
	var out []string
	for _, name := range slices.Sorted(mapKeys(after)) {
		a, b := after[name], before[name]
		if b == nil {
			b = &savedTable{policies: map[string]string{}, rules: map[string][]string{}}
			for c, p := range a.policies {
				if p == "ACCEPT" && len(a.rules[c]) == 0 {
					b.policies[c] = p // a new, empty built-in chain
				}
			}
		}
		for _, c := range slices.Sorted(mapKeys(a.policies)) {
			if _, ok := b.policies[c]; !ok {
				out = append(out, fmt.Sprintf("%s: chain %s left behind (policy %s, %d rules)", name, c, a.policies[c], len(a.rules[c])))
			}
		}
		for _, c := range slices.Sorted(mapKeys(b.policies)) {
			if _, ok := a.policies[c]; !ok {
				out = append(out, fmt.Sprintf("%s: chain %s removed", name, c))
				continue
			}
			if a.policies[c] != b.policies[c] {
				out = append(out, fmt.Sprintf("%s: chain %s policy %s -> %s", name, c, b.policies[c], a.policies[c]))
			}
			for _, r := range a.rules[c] {
				if !slices.Contains(b.rules[c], r) {
					out = append(out, fmt.Sprintf("%s: rule left behind: %s", name, r))
				}
			}
			for _, r := range b.rules[c] {
				if !slices.Contains(a.rules[c], r) {
					out = append(out, fmt.Sprintf("%s: rule removed: %s", name, r))
				}
			}
			if !slices.Equal(a.rules[c], b.rules[c]) && len(a.rules[c]) == len(b.rules[c]) {
				out = append(out, fmt.Sprintf("%s: chain %s reordered:\nbefore:\n%s\nafter:\n%s", name, c, strings.Join(b.rules[c], "\n"), strings.Join(a.rules[c], "\n")))
			}
		}
	}
	for _, name := range slices.Sorted(mapKeys(before)) {
		if after[name] == nil {
			out = append(out, fmt.Sprintf("table %s removed", name))
		}
	}
	return out
}
