package faults

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDriftRepaired changes the proxy's rules behind its back, three ways,
// and checks that each change is repaired within syncPeriod (5 s here),
// counted once in kubeproxy_sync_proxy_rules_drift_repairs_total and logged
// once, while a client loop shows traffic coming back.
func TestDriftRepaired(t *testing.T) {
	b := newBed(t, "drift", bedOptions{})
	const vip = "172.30.41.10"
	c := b.webOnTwoBackends(vip)
	svcChain := b.svcChain(vip, 80)

	incidents := []struct {
		name, chain string
		cmd         []string
	}{
		{"someone flushes nat KUBE-SERVICES", "KUBE-SERVICES", []string{"-t", "nat", "-F", "KUBE-SERVICES"}},
		{"someone deletes the rules of " + svcChain, svcChain, []string{"-t", "nat", "-F", svcChain}},
		{"someone adds a stray rule to " + svcChain, svcChain, []string{"-t", "nat", "-I", svcChain, "1", "-j", "RETURN"}},
	}
	lp := startLoop(c, vip+":80", 50*time.Millisecond)
	defer lp.Stop()
	var summary []string
	for _, inc := range incidents {
		baseline, err := b.rules("nat", inc.chain)
		if err != nil {
			t.Fatal(err)
		}
		m0 := b.mustMetrics()
		logs0 := len(b.logLines("drifted"))

		start := time.Now()
		b.mustRun(b.iptables, inc.cmd...)
		var repaired time.Time
		for time.Since(start) < 4*syncPeriod {
			if cur, err := b.rules("nat", inc.chain); err == nil && cur == baseline {
				repaired = time.Now()
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if repaired.IsZero() {
			t.Fatalf("%s: not repaired within %s", inc.name, 4*syncPeriod)
		}
		took := repaired.Sub(start)
		// Let another drift check pass, to see that the incident is
		// counted and logged once, not on every check.
		time.Sleep(syncPeriod + time.Second)
		m1 := b.mustMetrics()
		drift := metric(m1, mDrift, v4) - metric(m0, mDrift, v4)
		byRules := metric(m1, mDrift, v4, `reason="rules"`) - metric(m0, mDrift, v4, `reason="rules"`)
		lines := b.logLines("drifted")[logs0:]
		_, failed, first, last, _ := summarize(lp.snapshot(), start, repaired.Add(time.Second))
		outage := time.Duration(0)
		if failed > 0 {
			outage = last.Sub(first)
		}
		t.Logf("%s: repaired after %s; drift repairs +%v (reason rules +%v); %d log line(s): %s; client saw %d failed connections over %s",
			inc.name, took.Round(time.Millisecond), drift, byRules, len(lines), strings.Join(lines, " | "), failed, outage.Round(time.Millisecond))
		// Connections tried while the rules were broken left conntrack
		// entries without DNAT (SYN_SENT, 120 s); a new connection that
		// happens to reuse one's source port would follow it and be
		// dropped. The kernel keeps them whoever repairs the rules
		// (kube-proxy flushes conntrack only for UDP), so they are
		// counted and removed here, before checking fresh traffic.
		out, _ := b.run("conntrack", "-D", "-p", "tcp", "--orig-dst", vip, "--reply-src", vip)
		stale := "0"
		if m := flowsDeletedRE.FindStringSubmatch(out); m != nil {
			stale = m[1]
		}
		t.Logf("%s: %s conntrack entries without DNAT left by connections tried meanwhile, removed", inc.name, stale)
		within(t, inc.name+": repair", took, syncPeriod+time.Second)
		if drift != 1 {
			t.Errorf("%s: drift repairs counter grew by %v, want 1", inc.name, drift)
		}
		if len(lines) != 1 {
			t.Errorf("%s: %d \"drifted\" log lines, want 1", inc.name, len(lines))
		}
		b.expectBackends(c, vip+":80", 20, backendA, backendB)
		summary = append(summary, fmt.Sprintf("%s: repaired in %s, %d failed connections over %s, %s stale conntrack entries",
			inc.name, took.Round(10*time.Millisecond), failed, outage.Round(100*time.Millisecond), stale))
	}
	record(t, "drift repaired (syncPeriod %s): %s", syncPeriod, strings.Join(summary, "; "))
}

// snapshot returns the loop's results so far without stopping it.
func (l *loop) snapshot() []loopResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]loopResult(nil), l.results...)
}

var flowsDeletedRE = regexp.MustCompile(`(\d+) flow entries have been deleted`)
