package cleanup

import (
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// TestCleanupNFTablesTables puts nftables mode's tables (shared and a
// shard, both families), kube-proxy's nftables table and another
// component's table into a throwaway namespace; `proxy --cleanup` must
// leave only the other component's.
func TestCleanupNFTablesTables(t *testing.T) {
	_, proxy, ns := setUp(t)
	for _, fam := range []string{"ip", "ip6"} {
		for _, table := range []string{"svcproxy", "svcproxy-07", "kube-proxy", "other"} {
			for _, args := range [][]string{{"add", "table", fam, table},
				{"add", "chain", fam, table, "c", "{ type nat hook output priority -100; }"}} {
				if out, err := nsutil.Exec(ns, "nft", args...).CombinedOutput(); err != nil {
					t.Fatalf("nft %v: %v\n%s", args, err, out)
				}
			}
		}
	}
	if out, err := nsutil.Exec(ns, proxy, "--cleanup").CombinedOutput(); err != nil {
		t.Fatalf("proxy --cleanup: %v\n%s", err, out)
	}
	out, err := nsutil.Exec(ns, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "table ip other\ntable ip6 other" {
		t.Errorf("tables after --cleanup:\n%s\nwant only the other component's", got)
	}
}
