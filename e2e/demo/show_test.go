package demo

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/acceptance"
)

const dump = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SEP-111 - [0:0]
:KUBE-SVC-BBB - [0:0]
-A KUBE-SERVICES -d 172.30.0.80/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SERVICES -d 172.30.0.90/32 -p tcp -m comment --comment "demo/other:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-BBB
-A KUBE-SVC-AAA -m comment --comment "demo/web:http -> 10.180.0.1:8080" -j KUBE-SEP-111
-A KUBE-SEP-111 -p tcp -m comment --comment demo/web:http -m tcp -j DNAT --to-destination 10.180.0.1:8080
-A KUBE-SVC-BBB -j KUBE-SEP-222
COMMIT
`

func TestServiceRules(t *testing.T) {
	got := serviceRules(dump, "demo/web")
	want := []string{
		"-A KUBE-SERVICES -d 172.30.0.80/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAA",
		"-A KUBE-SVC-AAA -j KUBE-SEP-111",
		"-A KUBE-SEP-111 -p tcp -m tcp -j DNAT --to-destination 10.180.0.1:8080",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestExplainExcerpt(t *testing.T) {
	lines := strings.Split(`verdict: OK
node: n
service demo/web
port 'http' 80/TCP: ok
  internal traffic: policy Cluster
  planned rules:
    nat KUBE-SERVICES (entry): -A ...
    -A KUBE-SVC-AAA ...
  kernel (iptables-nft): matches the plan`, "\n")
	got := explainExcerpt(lines)
	want := []string{"verdict: OK", "...", "port 'http' 80/TCP: ok", "  internal traffic: policy Cluster",
		"  planned rules:", "    ...", "  kernel (iptables-nft): matches the plan"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q", got)
	}
}

func TestSpread(t *testing.T) {
	b1 := netip.MustParseAddrPort("10.180.0.1:8080")
	b2 := netip.MustParseAddrPort("10.180.0.2:8080")
	own := netip.MustParseAddrPort("10.180.0.9:40000")
	node := netip.MustParseAddrPort("192.168.0.2:40001")
	atts := []acceptance.Attempt{
		{Class: acceptance.ClassBackend, Backend: b1, Peer: own},
		{Class: acceptance.ClassBackend, Backend: b1, Peer: own},
		{Class: acceptance.ClassBackend, Backend: b2, Peer: node},
		{Class: acceptance.ClassReject},
	}
	got := spread(atts, "10.180.0.9")
	if len(got) != 3 || !strings.Contains(got[0], "x2") || !strings.Contains(got[0], "client's own address") ||
		!strings.Contains(got[1], "masqueraded") || !strings.HasPrefix(got[2], "REJECT") {
		t.Errorf("%q", got)
	}
}

func TestRemovedEndpoints(t *testing.T) {
	sc, _, err := acceptance.LoadFile("demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := removedEndpoints(&sc[0], 1)
	if len(got) != 1 || got[0] != netip.MustParseAddr("10.180.0.2") {
		t.Errorf("removed %v, want 10.180.0.2", got)
	}
}
