package explain

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/iptables"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

func TestNormalizeRewrites(t *testing.T) {
	for _, tc := range []struct {
		planned, saved string
	}{
		// option order, -m tcp placement, implicit /32, quotes
		{`-m comment --comment "ns1/web:http cluster IP" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j KUBE-SVC-X`,
			`-d 172.30.0.41/32 -p tcp -m comment --comment "ns1/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-X`},
		{`-d 10.0.0.1 -j ACCEPT`, `-d 10.0.0.1/32 -j ACCEPT`},
		{`-d fd00::1 -j ACCEPT`, `-d fd00::1/128 -j ACCEPT`},
		{`-m comment --comment "ns1/web:http" -j KUBE-MARK-MASQ`, `-m comment --comment ns1/web:http -j KUBE-MARK-MASQ`},
		// MARK spellings
		{`-j MARK --or-mark 0x4000`, `-j MARK --set-xmark 0x4000/0x4000`},
		{`-j MARK --xor-mark 0x4000`, `-j MARK --set-xmark 0x4000/0x0`},
		{`-j MARK --set-mark 0x1`, `-j MARK --set-xmark 0x1/0xffffffff`},
		{`-m mark --mark 0x4000`, `-m mark --mark 0x4000/0xffffffff`},
		// probabilities: 10 decimals planned, 11 saved
		{`-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-X`, `-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-X`},
		// defaults iptables-save spells out
		{`-m tcp -p tcp --dport 80 -j REJECT`, `-p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`},
		{`-m recent --name KUBE-SEP-X --rcheck --seconds 10800 --reap -j KUBE-SEP-X`,
			`-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X`},
		{`-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`},
		{`! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`, `! --source 10.0.0.0/255.0.0.0 -j KUBE-MARK-MASQ`},
	} {
		if !RulesEqual(tc.planned, tc.saved) {
			t.Errorf("not equal:\n  %s -> %s\n  %s -> %s", tc.planned, Normalize(tc.planned), tc.saved, Normalize(tc.saved))
		}
	}
	for _, tc := range [][2]string{
		{`-d 172.30.0.41/32 -j X`, `-d 172.30.0.42/32 -j X`},
		{`-s 10.0.0.0/8 -j X`, `! -s 10.0.0.0/8 -j X`},
		{`-m statistic --mode random --probability 0.5000000000 -j X`, `-m statistic --mode random --probability 0.25000000000 -j X`},
		{`-m comment --comment "a b" -j X`, `-m comment --comment "a c" -j X`},
		{`-j MARK --or-mark 0x4000`, `-j MARK --xor-mark 0x4000`},
		{`-m tcp -p tcp --dport 80 -j X`, `-m udp -p udp --dport 80 -j X`},
		{`-j DNAT --to-destination 10.0.0.1:80`, `-j DNAT --to-destination 10.0.0.1:81`},
		{`-j REJECT`, `-j DROP`},
		{`-m recent --name A --rcheck --seconds 10 --reap -j A`, `-m recent --name A --rcheck --seconds 11 --reap -j A`},
	} {
		if RulesEqual(tc[0], tc[1]) {
			t.Errorf("%q and %q normalise equal (%s)", tc[0], tc[1], Normalize(tc[0]))
		}
	}
}

// skipUnlessKernel skips unless this process can make network namespaces
// and drive iptables-nft in them.
func skipUnlessKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	for _, b := range []string{"ip", "iptables-nft-restore", "iptables-nft-save", "ip6tables-nft-restore", "ip6tables-nft-save"} {
		if _, err := exec.LookPath(b); err != nil {
			testenv.Missing(t, "%s not installed", b)
		}
	}
}

// netns is a throwaway network namespace for real iptables.
type netns struct {
	t    *testing.T
	name string
}

var nsSeq int

func newNetns(t *testing.T) *netns {
	t.Helper()
	nsSeq++
	name := fmt.Sprintf("svcp-explain-%d-%d", os.Getpid(), nsSeq)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return &netns{t: t, name: name}
}

func (n *netns) run(stdin []byte, bin string, args ...string) []byte {
	n.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, bin}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		n.t.Fatalf("%s %v: %v: %s", bin, args, err, stderr.String())
	}
	return out
}

func (n *netns) restore(v6 bool, payload []byte) {
	n.t.Helper()
	n.run(payload, binName(v6, "restore"), "--noflush")
}

func (n *netns) save(v6 bool) Kernel {
	n.t.Helper()
	return ParseSave(n.run(nil, binName(v6, "save")))
}

func binName(v6 bool, suffix string) string {
	if v6 {
		return "ip6tables-nft-" + suffix
	}
	return "iptables-nft-" + suffix
}

// fakeState applies payloads to the validating fake: the rules exactly as
// the planner wrote them, in the state the kernel should be in.
func fakeState(t *testing.T, payloads ...[]byte) Kernel {
	t.Helper()
	fake := iptables.NewFake()
	for _, p := range payloads {
		if err := fake.Restore(p); err != nil {
			t.Fatal(err)
		}
	}
	return saveFake(t, fake)
}

// compareKernels checks that every chain of want exists in got with rules
// that normalise equal, one for one and in order.
func compareKernels(t *testing.T, want, got Kernel) int {
	t.Helper()
	n := 0
	for table, wt := range want {
		for _, chain := range wt.Chains {
			wr := wt.Rules[chain]
			gr, ok := got.Rules(table, chain)
			if !ok {
				t.Errorf("%s %s: missing from iptables-save", table, chain)
				continue
			}
			if len(wr) != len(gr) {
				t.Errorf("%s %s: %d rules planned, %d saved", table, chain, len(wr), len(gr))
				continue
			}
			for i := range wr {
				n++
				if !RulesEqual(wr[i], gr[i]) {
					t.Errorf("%s %s rule %d:\n  planned %s\n  saved   %s\n  norm    %s\n  vs      %s", table, chain, i, wr[i], gr[i], Normalize(wr[i]), Normalize(gr[i]))
				}
			}
		}
	}
	return n
}

// TestNormalizeRealIptables applies every golden payload of pkg/iptables
// with iptables-nft-restore in a throwaway netns and checks that each rule
// iptables-save prints back normalises equal to the planned rule.
func TestNormalizeRealIptables(t *testing.T) {
	skipUnlessKernel(t)
	goldens, err := filepath.Glob("../iptables/testdata/*.golden")
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no golden payloads found: %v", err)
	}
	for _, path := range goldens {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".golden"), func(t *testing.T) {
			payload, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ns := newNetns(t)
			v6 := ipv6Payload(payload)
			ns.restore(v6, payload)
			if n := compareKernels(t, fakeState(t, payload), ns.save(v6)); n == 0 {
				t.Error("no rules compared")
			}
		})
	}
}

// ipv6Payload reports whether a golden payload is for the IPv6 family (it
// names IPv6 addresses).
func ipv6Payload(payload []byte) bool {
	for _, f := range strings.Fields(string(payload)) {
		if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is6() {
			return true
		}
	}
	return false
}

// TestNormalizeRealIp6tables does the same for an IPv6 plan with the
// options whose defaults differ by family (recent --mask, REJECT).
func TestNormalizeRealIp6tables(t *testing.T) {
	skipUnlessKernel(t)
	sticky := svc("web", nodePort, func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00:30::10", []string{"fd00:30::10"}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.ExternalIPs = []string{"fd00:99::1"}
	})
	empty := svc("empty", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00:30::11", []string{"fd00:30::11"} })
	sl := slice("web", "web-1", "http", 8080, ep{ip: "fd00:10::1", node: testNode}, ep{ip: "fd00:10::2", node: "node-b"}, ep{ip: "fd00:10::3", node: "node-b"})
	notReady := slice("empty", "empty-1", "http", 8080, ep{ip: "fd00:10::4", node: "node-b", ready: ptr.To(false)})
	snap := DaemonSnapshot(testNode, testNodeObj(""), []*v1.Service{sticky, empty}, []*discovery.EndpointSlice{sl, notReady})
	rs := iptables.Plan(snap, opts6())
	payloads := iptables.FullPayloads(rs, nil, 1000)
	ns := newNetns(t)
	for _, p := range payloads {
		ns.restore(true, p)
	}
	if n := compareKernels(t, fakeState(t, payloads...), ns.save(true)); n == 0 {
		t.Error("no rules compared")
	}
}

// TestDiffRealIptables breaks a real kernel's rules, checks that explain
// and diff see it, applies diff's payload with iptables-nft-restore and
// checks that nothing differs any more.
func TestDiffRealIptables(t *testing.T) {
	skipUnlessKernel(t)
	web := svc("web", nodePort)
	gone := svc("gone", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "172.30.0.12", []string{"172.30.0.12"} })
	sl := slice("web", "web-1", "http", 8080, readyEps()...)
	goneSl := slice("gone", "gone-1", "http", 8080, ep{ip: "10.3.0.1"})
	all := DaemonSnapshot(testNode, testNodeObj(""), []*v1.Service{web, gone}, []*discovery.EndpointSlice{sl, goneSl})
	ns := newNetns(t)
	rs := iptables.Plan(all, opts4())
	for _, p := range iptables.FullPayloads(rs, nil, 1000) {
		ns.restore(false, p)
	}
	for _, j := range rs.Jumps {
		ns.run(nil, "iptables-nft", append([]string{"-t", j.Table, "-I", j.Chain, "1"}, j.Rule...)...)
	}
	fams := func() []Family {
		return []Family{{Family: v1.IPv4Protocol, Options: opts4(), Backend: "nft", Kernel: ns.save(false)}}
	}
	if d := Diff(all, fams()); d.Differ {
		t.Fatalf("fresh sync differs:\n%s", diffText(d))
	}
	// "gone" is deleted from the API; web loses a rule behind our back.
	now := DaemonSnapshot(testNode, testNodeObj(""), []*v1.Service{web}, []*discovery.EndpointSlice{sl})
	svcChain := chainOf(t, web, "KUBE-SVC-")
	ns.run(nil, "iptables-nft", "-t", "nat", "-D", svcChain, "2")

	in := input(t, "web", []*v1.Service{web}, []*discovery.EndpointSlice{sl}, ns.save(false))
	if r := Build(in); r.Verdict != "kernel rules missing for port 80" {
		t.Errorf("explain verdict %q", r.Verdict)
	}
	d := Diff(now, fams())
	if !d.Differ || len(d.Families[0].Services) != 2 {
		t.Fatalf("diff after breaking:\n%s", diffText(d))
	}
	for _, s := range d.Families[0].Services {
		switch s.Service {
		case "ns1/gone":
			if len(s.RemoveChains) != 2 || len(s.DeleteRules) != 1 {
				t.Errorf("gone: remove %v delete %v", s.RemoveChains, s.DeleteRules)
			}
		case "ns1/web":
			if !slices.Equal(s.RewriteChains, []string{"nat " + svcChain}) || len(s.AddRules)+len(s.DeleteRules)+len(s.RemoveChains) != 0 {
				t.Errorf("web: %+v", s.PayloadDiff)
			}
		}
		ns.restore(false, []byte(s.Payload))
	}
	if d := Diff(now, fams()); d.Differ {
		t.Errorf("still differs after applying the diff:\n%s", diffText(d))
	}
	if r := Build(in); r.Verdict != "kernel rules missing for port 80" {
		// in still holds the old kernel; rebuild from the repaired one.
		t.Errorf("unexpected verdict %q", r.Verdict)
	}
	in.Families = fams()
	if r := Build(in); r.Verdict != VerdictOK {
		t.Errorf("after repair: verdict %q", r.Verdict)
	}
}

func diffText(d *DiffReport) string {
	var b bytes.Buffer
	_ = d.WriteText(&b)
	return b.String()
}
