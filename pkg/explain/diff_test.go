package explain

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

// TestDiffFake breaks the fake kernel in several ways at once, checks what
// diff reports, applies its payloads and checks that nothing differs.
func TestDiffFake(t *testing.T) {
	web := svc("web", nodePort)
	sl := slice("web", "web-1", "http", 8080, readyEps()...)
	snap := DaemonSnapshot(testNode, testNodeObj(""), []*v1.Service{web}, []*discovery.EndpointSlice{sl})
	rs := iptables.Plan(snap, opts4())
	fake := iptables.NewFake()
	for _, p := range iptables.FullPayloads(rs, nil, 1000) {
		if err := fake.Restore(p); err != nil {
			t.Fatal(err)
		}
	}
	// Jumps as the kernel prints them (quoted comments), which the fake's
	// EnsureJump does not do.
	for _, j := range rs.Jumps {
		if err := fake.Restore([]byte("*" + j.Table + "\n-I " + j.Chain + " 1 " + quoteArgs(j.Rule) + "\nCOMMIT\n")); err != nil {
			t.Fatal(err)
		}
	}
	fams := func() []Family {
		return []Family{{Family: v1.IPv4Protocol, Options: opts4(), Backend: "nft", Kernel: saveFake(t, fake)}}
	}
	if d := Diff(snap, fams()); d.Differ {
		t.Fatalf("fresh sync differs:\n%s", diffText(d))
	}

	var entry string
	for _, r := range fake.Rules(iptables.TableNAT, iptables.ChainNodePorts) {
		if strings.Contains(r, "ns1/web:http") {
			entry = r
		}
	}
	j := rs.Jumps[0]
	breakIt := "*nat\n-D KUBE-NODEPORTS " + entry + "\n:KUBE-MARK-MASQ - [0:0]\n-D " + j.Chain + " " + quoteArgs(j.Rule) + "\nCOMMIT\n*mangle\n-X KUBE-PROXY-CANARY\nCOMMIT\n"
	if err := fake.Restore([]byte(breakIt)); err != nil {
		t.Fatal(err)
	}
	d := Diff(snap, fams())
	if !d.Differ || len(d.Families[0].Services) != 1 || d.Families[0].Base == nil {
		t.Fatalf("diff:\n%s", diffText(d))
	}
	base := d.Families[0].Base
	if len(base.RewriteChains) != 2 || len(base.AddRules) != 1 {
		// KUBE-MARK-MASQ rewritten, mangle canary declared; the jump inserted.
		t.Errorf("base: %+v", *base)
	}
	s := d.Families[0].Services[0]
	if s.Service != "ns1/web" || len(s.AddRules) != 1 || !strings.HasPrefix(s.AddRules[0], "nat KUBE-NODEPORTS ") || len(s.RewriteChains) != 0 {
		t.Errorf("service: %+v", s.PayloadDiff)
	}
	if err := fake.Restore([]byte(base.Payload)); err != nil {
		t.Fatalf("base payload: %v\n%s", err, base.Payload)
	}
	if err := fake.Restore([]byte(s.Payload)); err != nil {
		t.Fatalf("service payload: %v\n%s", err, s.Payload)
	}
	if d := Diff(snap, fams()); d.Differ {
		t.Errorf("still differs:\n%s", diffText(d))
	}
}
