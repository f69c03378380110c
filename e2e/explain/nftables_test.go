package e2eexplain

import (
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/explain"
)

// TestExplainNFTables runs `proxy explain` and `proxy diff` against the
// proxy in nftables mode: a healthy Service shows its shard and planned
// objects and matches the kernel; a map element deleted by hand is named
// by both, as a kernel-layer problem.
func TestExplainNFTables(t *testing.T) {
	e, ips := setUp(t, "nftables")
	r := e.expectVerdict("ok", "", explain.VerdictOK)
	fp := r.Ports[0].Families[0]
	c := fp.NFTables
	if c == nil || !c.Checked || len(c.Differences) != 0 || !strings.HasPrefix(c.Shard, "svcproxy-") || len(c.Planned) == 0 {
		t.Fatalf("nftables check of a healthy Service: %+v", c)
	}
	if out, code := e.run("diff", "--config", e.config); code != 0 {
		t.Errorf("diff after a sync: exit %d\n%s", code, out)
	}
	tr, code := e.explain(ips["ok"]+":80", "--from", podIP)
	if code != 0 || len(tr.Traces) != 1 || len(tr.Traces[0].Outcomes) != 2 {
		t.Fatalf("trace from a pod: exit %d, %+v", code, tr.Traces)
	}
	for _, o := range tr.Traces[0].Outcomes {
		if o.Verdict != "DNAT" || o.Probability < 0.49 || o.Probability > 0.51 || len(o.Path) != 0 {
			t.Errorf("trace outcome %+v: want DNAT with probability 0.5 and no iptables path", o)
		}
	}

	elem := ips["ok"] + " . tcp . 80"
	out, err := nsutil.Exec(e.node, "nft", "delete", "element", "ip", c.Shard, "service-ips", "{ "+elem+" }").CombinedOutput()
	if err != nil {
		t.Fatalf("nft delete element: %v: %s", err, out)
	}
	r = e.expectVerdict("ok", explain.LayerKernel, "kernel nftables objects differ for port 80")
	if d := r.Ports[0].Families[0].NFTables.Differences; len(d) != 1 || !strings.Contains(d[0], ips["ok"]+" . tcp . 80") {
		t.Errorf("differences after deleting %s: %v", elem, d)
	}
	text, code := e.run("diff", "--config", e.config)
	if code != 1 || !strings.Contains(text, "service "+ns+"/ok: element "+ips["ok"]+" . tcp . 80 is missing") {
		t.Errorf("diff after deleting %s: exit %d\n%s", elem, code, text)
	}
	t.Logf("proxy diff:\n%s", text)
}
