package faults

import (
	"os"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// TestConfigReload edits the running proxy's config file. A shorter
// syncPeriod is applied live (drift is then repaired within the new period,
// not the old one); a mode change is logged as needing a restart and the
// proxy keeps serving in its mode; a broken file and a SIGHUP with it are
// refused with an error and change nothing.
func TestConfigReload(t *testing.T) {
	const oldPeriod, newPeriod = 60 * time.Second, 2 * time.Second
	b := newBed(t, "reload", bedOptions{Config: func(cfg map[string]any) {
		cfg["iptables"].(map[string]any)["syncPeriod"] = oldPeriod.String()
	}})
	const vip = "172.30.42.10"
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	c := b.client(clientIP)
	b.service("web", vip, ports...)
	b.slice("web", "web-1", ports, backendA)
	b.startProxy()
	b.expectBackends(c, vip+":80", 5, backendA)

	b.editConfig(func(cfg map[string]any) {
		cfg["iptables"].(map[string]any)["syncPeriod"] = newPeriod.String()
	})
	b.waitLog(1, 10*time.Second, "Configuration change applied", "iptables.syncPeriod")

	svcChain := b.svcChain(vip, 80)
	baseline, err := b.rules("nat", svcChain)
	if err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	b.mustRun(b.iptables, "-t", "nat", "-F", svcChain)
	var repaired time.Duration
	for time.Since(flushed) < oldPeriod/2 {
		if cur, err := b.rules("nat", svcChain); err == nil && cur == baseline {
			repaired = time.Since(flushed)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if repaired == 0 {
		t.Fatalf("a flushed chain was not repaired within %s: the reloaded syncPeriod %s was not applied", oldPeriod/2, newPeriod)
	}
	within(t, "repair after the reloaded syncPeriod", repaired, 3*newPeriod)
	record(t, "config reload: syncPeriod %s -> %s applied live; a flushed chain came back after %s", oldPeriod, newPeriod, repaired.Round(time.Millisecond))

	b.editConfig(func(cfg map[string]any) { cfg["mode"] = "ipvs" })
	line := b.waitLog(1, 10*time.Second, "needs a restart", `field="mode"`)
	record(t, "config reload: mode change logged: %s", line)
	b.expectBackends(c, vip+":80", 5, backendA)
	if b.proc.Exited() {
		t.Fatal("the proxy exited after a mode change in its file")
	}

	b.editConfig(func(cfg map[string]any) { cfg["iptables"].(map[string]any)["syncPeriod"] = "3x" })
	// The error spans several lines (the file, the YAML problem); the
	// first names the failure, a later one the trigger.
	const failed = "Re-reading the configuration failed"
	b.waitLog(1, 10*time.Second, failed)
	if err := syscall.Kill(b.proc.Cmd.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	b.waitLog(2, 10*time.Second, failed)
	b.waitLog(1, 10*time.Second, `trigger="SIGHUP"`)
	record(t, "config reload: broken file refused on change and on SIGHUP: %s", b.waitLog(1, time.Second, `invalid duration "3x"`))
	b.expectBackends(c, vip+":80", 5, backendA)
	if b.proc.Exited() {
		t.Fatal("the proxy exited on a broken config file or SIGHUP")
	}
}

// editConfig rewrites the proxy's config file with edit applied, the way a
// ConfigMap update lands: a new file renamed over the old one.
func (b *bed) editConfig(edit func(cfg map[string]any)) {
	b.t.Helper()
	raw, err := os.ReadFile(b.cfgPath)
	if err != nil {
		b.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		b.t.Fatal(err)
	}
	edit(cfg)
	if raw, err = yaml.Marshal(cfg); err != nil {
		b.t.Fatal(err)
	}
	tmp := b.cfgPath + ".new"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		b.t.Fatal(err)
	}
	if err := os.Rename(tmp, b.cfgPath); err != nil {
		b.t.Fatal(err)
	}
}

// waitLog waits until n proxy log lines contain every one of subs and
// returns the n-th.
func (b *bed) waitLog(n int, timeout time.Duration, subs ...string) string {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lines := b.logLines(subs...); len(lines) >= n {
			return lines[n-1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("no log line with %q within %s", subs, timeout)
	return ""
}
