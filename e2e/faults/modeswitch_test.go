package faults

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestModeSwitchNFTables switches one node iptables -> nftables ->
// iptables by editing the config file's `mode:` and restarting the proxy
// (SIGTERM, the same command line again), with a client pod opening a new
// connection through the ClusterIP every 30 ms. After each switch the
// Service answers from both backends, the old mode's state goes (the
// KUBE-SERVICES chain; the svcproxy tables) while the new mode's stays,
// and no connection attempt fails: the old rules serve until the new
// mode's first sync is complete, and go only after it.
func TestModeSwitchNFTables(t *testing.T) {
	b := newBed(t, "modesw", bedOptions{Config: func(cfg map[string]any) {
		cfg["nftables"] = map[string]any{"syncPeriod": syncPeriod.String(), "minSyncPeriod": "1s"}
	}})
	const vip = "172.30.42.10"
	c := b.webOnTwoBackends(vip)

	lp := startLoop(c, vip+":80", 30*time.Millisecond)
	defer lp.Stop()
	steps := []struct {
		to        string
		oldGone   func() bool
		newInKern func() bool
	}{
		{"nftables", b.noIPTablesServices, b.hasNFTablesTables},
		{"iptables", func() bool { return !b.hasNFTablesTables() }, func() bool { return !b.noIPTablesServices() }},
	}
	for _, s := range steps {
		start := time.Now()
		b.proc.Stop(5 * time.Second)
		if err := b.proc.Err(); err != nil {
			t.Fatalf("the proxy did not stop cleanly before the switch to %s: %v", s.to, err)
		}
		b.editConfig(func(cfg map[string]any) { cfg["mode"] = s.to })
		b.startProxy()
		if !b.running(s.to) {
			t.Fatalf("after the switch the proxy does not say it runs in %s mode:\n%s", s.to, b.proxyLog())
		}
		deadline := time.Now().Add(4 * syncPeriod)
		for !s.oldGone() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if !s.oldGone() {
			t.Fatalf("switch to %s: the old mode's state is still there after %s", s.to, 4*syncPeriod)
		}
		if !s.newInKern() {
			t.Fatalf("switch to %s: the new mode's state is not in the kernel", s.to)
		}
		b.expectBackends(c, vip+":80", 20, backendA, backendB)
		time.Sleep(time.Second) // traffic after the clean-up too
		total, failed, first, last, labels := summarize(lp.snapshot(), start, time.Now())
		record(t, "switch to %s: %d attempts, %d failed %v (first %s, last %s after the stop), old state gone, Service answered",
			s.to, total, failed, labels, since(first, start), since(last, start))
		if failed > 0 || total < 20 {
			t.Errorf("switch to %s: %d of %d connection attempts failed: %v", s.to, failed, total, labels)
		}
	}
}

func since(t, start time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Sub(start).Round(time.Millisecond).String()
}

// running reports whether the last run's log says it started in mode.
func (b *bed) running(mode string) bool {
	data, err := os.ReadFile(b.logPaths[len(b.logPaths)-1])
	return err == nil && strings.Contains(string(data), `"Starting svcproxy"`) && strings.Contains(string(data), `mode="`+mode+`"`)
}

// noIPTablesServices reports that iptables mode's KUBE-SERVICES chain is
// gone from the node.
func (b *bed) noIPTablesServices() bool {
	_, err := b.rules("nat", "KUBE-SERVICES")
	return err != nil
}

// hasNFTablesTables reports whether nftables mode's tables are in the
// node.
func (b *bed) hasNFTablesTables() bool {
	out, err := b.run("nft", "list", "tables")
	return err == nil && strings.Contains(out, "table ip svcproxy")
}
