package ipvs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestMemberOps: payloads of members of our hash sets go over netlink;
// anything else (a create line, a bitmap:port set, someone else's set, a
// member that does not parse) goes to the tool whole.
func TestMemberOps(t *testing.T) {
	for _, tc := range []struct {
		payload string
		netlink bool
	}{
		{"add KUBE-CLUSTER-IP 10.96.0.1,tcp:80\ndel KUBE-IPVS-IPS 10.96.0.2\n", true},
		{"add KUBE-6-CLUSTER-IP fd00::1,udp:53\n", true},
		{"add KUBE-LOOP-BACK 10.0.0.1,sctp:80,10.0.0.1\n", true},
		{"add KUBE-LOAD-BALANCER-SOURCE-CIDR 10.0.0.9,tcp:80,192.168.0.0/16\n", true},
		{"", false},
		{"create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\nadd KUBE-CLUSTER-IP 10.96.0.1,tcp:80\n", false},
		{"add KUBE-NODE-PORT-TCP 30080\n", false},
		{"add SOMEONE-ELSES 10.0.0.1\n", false},
		{"add KUBE-CLUSTER-IP 10.96.0.1\n", false},
		{"add KUBE-CLUSTER-IP 10.96.0.1,icmp:80\n", false},
		{"add KUBE-CLUSTER-IP 10.96.0.1,tcp:70000\n", false},
		{"add KUBE-LOOP-BACK 10.0.0.1,tcp:80,10.0.0.0/24\n", false},
		{"flush KUBE-CLUSTER-IP\n", false},
	} {
		if _, ok := memberOps([]byte(tc.payload)); ok != tc.netlink {
			t.Errorf("%q: over netlink %v, want %v", tc.payload, ok, tc.netlink)
		}
	}
	var many strings.Builder
	for i := range maxNetlinkMembers + 1 {
		fmt.Fprintf(&many, "add KUBE-CLUSTER-IP 10.96.%d.%d,tcp:80\n", i/256, i%256)
		ops, ok := memberOps([]byte(many.String()))
		if want := i < maxNetlinkMembers; ok != want || (ok && len(ops) != i+1) {
			t.Fatalf("%d members: over netlink %v (%d ops), want %v", i+1, ok, len(ops), want)
		}
	}
}

// refusingTool is an IPSets that must not be used: in the test below the
// tool would run in the test's own network namespace, not the throwaway one.
type refusingTool struct{ t *testing.T }

func (r refusingTool) Save() ([]byte, error) {
	r.t.Error("ipset save run by the tool")
	return nil, errors.New("refused")
}

func (r refusingTool) Restore(p []byte) error {
	r.t.Errorf("payload given to the tool, not netlink: %q", p)
	return errors.New("refused")
}

// TestNetlinkIPSetsInTheKernel writes members of every hash set type, both
// families, over netlink into a throwaway network namespace and reads them
// back with `ipset save`: the kernel must hold what `ipset restore -exist`
// would have written, adding a member twice and deleting a missing one
// being no error.
func TestNetlinkIPSetsInTheKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	ns := nsutil.Name("ipsetnl")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	var creates strings.Builder
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, d := range setDefs(fam) {
			creates.WriteString(d.createLine() + "\n")
		}
	}
	tool := nsutil.Exec(ns, "ipset", "restore")
	tool.Stdin = strings.NewReader(creates.String())
	if out, err := tool.CombinedOutput(); err != nil {
		t.Fatalf("creating the sets: %v: %s", err, out)
	}
	handle, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	s := &netlinkIPSets{tool: refusingTool{t}, ns: handle, b: &bounded{timeout: DefaultCallTimeout}}

	members := []string{
		"add KUBE-CLUSTER-IP 10.96.0.1,tcp:80",
		"add KUBE-CLUSTER-IP 10.96.0.2,udp:53",
		"add KUBE-NODE-PORT-SCTP-HASH 192.168.1.2,sctp:30080",
		"add KUBE-IPVS-IPS 10.96.0.1",
		"add KUBE-LOOP-BACK 10.0.0.1,tcp:8080,10.0.0.1",
		"add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.1,tcp:80,192.168.0.0/16",
		"add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.1,tcp:80,10.1.2.3",
		"add KUBE-6-CLUSTER-IP fd00::1,tcp:443",
		"add KUBE-6-LOOP-BACK fd00:10::1,tcp:80,fd00:10::1",
	}
	for _, payload := range []string{
		strings.Join(members, "\n"),
		members[0] + "\n" + "del KUBE-CLUSTER-IP 10.96.0.2,udp:53\ndel KUBE-CLUSTER-IP 10.96.0.9,tcp:1\n",
	} {
		if err := s.Restore([]byte(payload)); err != nil {
			t.Fatalf("restore %q: %v", payload, err)
		}
	}
	out, err := nsutil.Exec(ns, "ipset", "save").Output()
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]bool{}
	for _, n := range allSetNames() {
		ours[n] = true
	}
	sets, err := parseSave(out, ours)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for name, ks := range sets {
		for m := range ks.Members {
			got = append(got, "add "+name+" "+m)
		}
	}
	want := slices.Concat(members[:1], members[2:])
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the kernel holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
