package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestRestoreFailures puts a broken iptables-nft-restore first in the
// proxy's PATH: while a flag file exists it logs the call and fails,
// otherwise it runs the real one. With a change queued and every restore
// failing, the old rules keep carrying traffic, retries back off (1 s
// doubling up to syncPeriod), the restore-failure counter grows, /healthz
// turns 503 once 2 x syncPeriod passed since the change was queued and
// comes back to 200 after the first successful sync.
func TestRestoreFailures(t *testing.T) {
	requireRoot(t)
	realRestore, err := exec.LookPath("iptables-nft-restore")
	if err != nil {
		testenv.Missing(t, "%v", err)
	}
	wrapDir := t.TempDir()
	flag := filepath.Join(wrapDir, "fail")
	calls := filepath.Join(wrapDir, "calls.log")
	script := fmt.Sprintf(`#!/bin/sh
# Test double for iptables-nft-restore: fails while %[1]s exists.
if [ -e %[1]s ]; then
	echo "$(date +%%s.%%N) fail" >> %[2]s
	cat > /dev/null
	echo "iptables-nft-restore: injected failure (flag file present)" >&2
	exit 1
fi
echo "$(date +%%s.%%N) ok" >> %[2]s
exec %[3]s "$@"
`, flag, calls, realRestore)
	if err := os.WriteFile(filepath.Join(wrapDir, "iptables-nft-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b := newBed(t, "restore", bedOptions{Env: []string{"PATH=" + wrapDir + ":" + os.Getenv("PATH")}})
	const vip, vip2 = "172.30.42.10", "172.30.42.11"
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA)
	b.startProxy()
	b.expectBackends(c, vip+":80", 5, backendA)
	if n := len(wrapperCalls(t, calls)); n == 0 {
		t.Fatal("the proxy did not run the wrapper: PATH not honoured")
	}
	m0 := b.mustMetrics()

	// Break restores, then queue a change.
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lp := startLoop(c, vip+":80", 100*time.Millisecond)
	health := startPoller(250*time.Millisecond, b.healthz)
	queued := time.Now()
	b.service("next", vip2, ports...)
	b.slice("next", "next-1", ports, backendB)

	// Wait for /healthz to turn 503, then keep failing a while longer to
	// see the backoff settle at syncPeriod.
	var unhealthy time.Time
	for time.Since(queued) < 4*syncPeriod && unhealthy.IsZero() {
		if b.healthz() == 503 {
			unhealthy = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if unhealthy.IsZero() {
		t.Fatalf("/healthz never turned 503 within %s of a change that cannot be synced", 4*syncPeriod)
	}
	time.Sleep(time.Until(queued.Add(22 * time.Second)))
	if a := attempt(c, vip2+":80", time.Second); a.Class != acceptance.ClassDrop && a.Class != acceptance.ClassReject { // not programmed
		t.Errorf("next is reachable (%s) although no restore succeeded", a.Label())
	}
	mFail := b.mustMetrics()
	removed := time.Now()
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	works := b.waitBackend(c, vip2+":80", backendB, 3*syncPeriod)
	var healthy time.Time
	for time.Since(removed) < 3*syncPeriod {
		if b.healthz() == 200 {
			healthy = time.Now()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	results := lp.Stop()
	hs := health.Stop()
	m1 := b.mustMetrics()

	// Traffic on the old rules never stopped.
	total, failed, _, _, labels := summarize(results, queued, time.Now())
	t.Logf("web while restores failed: %d connections, %d failed %v", total, failed, labels)
	if failed > 0 {
		t.Errorf("%d of %d connections to the already programmed Service failed while restores failed", failed, total)
	}

	// Retries back off.
	var fails []float64
	for _, c := range wrapperCalls(t, calls) {
		if c.fail {
			fails = append(fails, c.at)
		}
	}
	var intervals []string
	var gaps []float64
	for i := 1; i < len(fails); i++ {
		gaps = append(gaps, fails[i]-fails[i-1])
		intervals = append(intervals, fmt.Sprintf("%.1fs", fails[i]-fails[i-1]))
	}
	t.Logf("failed restore attempts: %d, intervals %s", len(fails), strings.Join(intervals, ", "))
	if len(gaps) < 4 {
		t.Fatalf("only %d failed attempts in 22 s", len(fails))
	}
	if gaps[len(gaps)-1] < 2*gaps[0] || gaps[len(gaps)-1] > syncPeriod.Seconds()+1.5 {
		t.Errorf("retry intervals %v do not grow from ~1 s to ~syncPeriod (%s)", intervals, syncPeriod)
	}
	for i := 1; i < len(gaps); i++ {
		if gaps[i] < gaps[i-1]*0.7 {
			t.Errorf("retry interval shrank: %v", intervals)
			break
		}
	}

	// Metrics.
	restoreFails := metric(m1, mRestoreFail, v4) - metric(m0, mRestoreFail, v4)
	partialFails := metric(m1, mPartialRestore, v4) - metric(m0, mPartialRestore, v4)
	syncFails := metric(m1, mSyncFailures, v4) - metric(m0, mSyncFailures, v4)
	t.Logf("restore failures +%v (while failing: +%v), partial restore failures +%v, sync failures +%v",
		restoreFails, metric(mFail, mRestoreFail, v4)-metric(m0, mRestoreFail, v4), partialFails, syncFails)
	if restoreFails < 1 || restoreFails+partialFails != float64(len(fails)) || syncFails != float64(len(fails)) {
		t.Errorf("restore failures +%v, partial +%v, sync failures +%v for %d failed attempts", restoreFails, partialFails, syncFails, len(fails))
	}
	if n := len(b.logLines("Sync failed", "injected failure")); n != len(fails) {
		t.Errorf("%d \"Sync failed\" log lines for %d failed attempts", n, len(fails))
	}

	// Health.
	first503 := time.Time{}
	for _, s := range hs {
		if s.v == 503 && first503.IsZero() {
			first503 = s.at
		}
		if s.v == 503 && s.at.Before(queued.Add(2*syncPeriod-500*time.Millisecond)) {
			t.Errorf("/healthz 503 already %s after the change was queued", s.at.Sub(queued).Round(time.Millisecond))
		}
		if s.v != 200 && s.v != 503 {
			t.Errorf("/healthz answered %d", s.v)
		}
	}
	within(t, "/healthz 503 after the change was queued", unhealthy.Sub(queued), 2*syncPeriod+3*time.Second)
	if healthy.IsZero() {
		t.Fatalf("/healthz did not recover within %s of removing the flag", 3*syncPeriod)
	}
	within(t, "change applied after the flag was removed", works.Sub(removed), syncPeriod+2*time.Second)
	within(t, "/healthz 200 again after the flag was removed", healthy.Sub(removed), syncPeriod+2*time.Second)
	record(t, "restore failing 22 s: %d attempts, intervals %s; restore_failures_total +%v, partial +%v, sync_failures +%v; web traffic %d/%d ok; /healthz 503 after %s, 200 again %s after the fix (change live after %s)",
		len(fails), strings.Join(intervals, " "), restoreFails, partialFails, syncFails, total-failed, total,
		unhealthy.Sub(queued).Round(100*time.Millisecond), healthy.Sub(removed).Round(100*time.Millisecond), works.Sub(removed).Round(100*time.Millisecond))
}

type wrapperCall struct {
	at   float64
	fail bool
}

func wrapperCalls(t *testing.T, path string) []wrapperCall {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []wrapperCall
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		at, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out = append(out, wrapperCall{at: at, fail: f[1] == "fail"})
	}
	return out
}

// TestXtablesLockHeld holds the xtables lock for 10 s while a change is
// queued. iptables 1.8.9 takes the lock only in the legacy backend (the nft
// backend's transactions are atomic and ignore it; the test shows both), so
// the proxy runs on iptables-legacy here. Lock holder and proxy share a
// private lock file through XTABLES_LOCKFILE, never the host's
// /run/xtables.lock. The sync waits for the lock, then completes; the
// kernel matches the plan (`proxy diff` exits 0) and traffic works.
func TestXtablesLockHeld(t *testing.T) {
	requireRoot(t)
	lock := filepath.Join(t.TempDir(), "xtables.lock")
	env := []string{"XTABLES_LOCKFILE=" + lock}
	b := newBed(t, "lock", bedOptions{Env: env, Legacy: true})
	const vip, vip2 = "172.30.43.10", "172.30.43.11"
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA)
	b.startProxy()
	if len(b.logLines("Using iptables backend", `backend="legacy"`)) == 0 {
		t.Fatal("the proxy did not pick the legacy backend")
	}
	b.expectBackends(c, vip+":80", 5, backendA)
	m0 := b.mustMetrics()

	const hold = 10 * time.Second
	holder := exec.Command("flock", lock, "sleep", strconv.Itoa(int(hold.Seconds())))
	holder.Env = append(os.Environ(), env...)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
	heldAt := time.Now()
	for exec.Command("flock", "-n", lock, "true").Run() == nil {
		if time.Since(heldAt) > 5*time.Second {
			t.Fatal("flock did not take the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	heldAt = time.Now()

	// What iptables 1.8.9 does with the lock held (empty payloads).
	timeRestore := func(bin string) time.Duration {
		start := time.Now()
		cmd := nsutil.Exec(b.topo.Node, bin, "-w", "1", "--noflush")
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin = strings.NewReader("*filter\nCOMMIT\n")
		out, err := cmd.CombinedOutput()
		t.Logf("%s -w 1 with the lock held: %s, err=%v %s", bin, time.Since(start).Round(time.Millisecond), err, strings.TrimSpace(string(out)))
		return time.Since(start)
	}
	if d := timeRestore("iptables-nft-restore"); d > 900*time.Millisecond {
		t.Errorf("iptables-nft-restore waited %s for the xtables lock; expected it to ignore the lock", d)
	}
	if d := timeRestore("iptables-legacy-restore"); d < 900*time.Millisecond {
		t.Errorf("iptables-legacy-restore did not wait for the lock in %s (XTABLES_LOCKFILE not honoured?)", lock)
	}

	lp := startLoop(c, vip+":80", 100*time.Millisecond)
	queued := time.Now()
	b.service("next", vip2, ports...)
	b.slice("next", "next-1", ports, backendB)
	works := b.waitBackend(c, vip2+":80", backendB, hold+3*syncPeriod)
	released := heldAt.Add(hold)
	results := lp.Stop()
	if err := holder.Wait(); err != nil {
		t.Errorf("lock holder: %v", err)
	}
	t.Logf("change queued %s after the lock was taken; live %s after queueing, %s after the lock was released",
		queued.Sub(heldAt).Round(time.Millisecond), works.Sub(queued).Round(time.Millisecond), works.Sub(released).Round(time.Millisecond))
	if works.Before(released.Add(-300 * time.Millisecond)) {
		t.Errorf("the change went live %s before the lock was released", released.Sub(works))
	}
	within(t, "change live after the lock was released", works.Sub(released), 3*time.Second)

	total, failed, _, _, labels := summarize(results, queued, time.Now())
	if failed > 0 {
		t.Errorf("%d of %d connections to web failed while the lock was held: %v", failed, total, labels)
	}
	m1 := b.mustMetrics()
	if d := metric(m1, mSyncFailures) - metric(m0, mSyncFailures); d != 0 {
		t.Errorf("sync failures +%v: the sync should have waited, not failed", d)
	}
	// Nothing half-written: the kernel holds exactly the plan.
	out, err := b.run(b.proxyBin, "diff", "--config", b.cfgPath, "--hostname-override", b.nodeName)
	if err != nil {
		t.Errorf("proxy diff after the lock was released: %v\n%s", err, out)
	}
	b.expectBackends(c, vip+":80", 5, backendA)
	b.expectBackends(c, vip2+":80", 5, backendB)
	record(t, "xtables lock held %s (legacy backend): change live %s after release, web %d/%d ok meanwhile, 0 sync failures, proxy diff clean; nft restore ignores the lock",
		hold, works.Sub(released).Round(100*time.Millisecond), total-failed, total)
}
