package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
)

const reloadBase = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
iptables:
  syncPeriod: 30s
`

func TestReloaderAppliesLiveAndKeepsTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(reloadBase)
	start, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var applied []*v1alpha1.KubeProxyConfiguration
	r := &reloader{path: path, running: start, poll: time.Hour,
		load:  func() (*v1alpha1.KubeProxyConfiguration, error) { return config.Load(path) },
		apply: func(c *v1alpha1.KubeProxyConfiguration) { applied = append(applied, c) },
	}

	write(strings.Replace(reloadBase, "30s", "5s", 1))
	r.reload("test")
	if len(applied) != 1 || applied[0].IPTables.SyncPeriod.Duration != 5*time.Second {
		t.Fatalf("after a syncPeriod change: applied %d configs; want one with syncPeriod 5s", len(applied))
	}

	write(strings.Replace(strings.Replace(reloadBase, "30s", "5s", 1), "mode: iptables", "mode: ipvs", 1))
	r.reload("test")
	if len(applied) != 1 || r.running.Mode != config.ModeIPTables {
		t.Fatalf("a mode change was applied live (applied %d, running mode %q)", len(applied), r.running.Mode)
	}

	write("mode: [broken")
	r.reload("test")
	if len(applied) != 1 || r.running.IPTables.SyncPeriod.Duration != 5*time.Second {
		t.Fatal("a broken file changed the running configuration")
	}
}

// The file is polled: a new content is picked up without a signal, and a
// SIGHUP re-reads it on demand.
func TestReloaderNoticesFileAndSignal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(reloadBase), 0o600); err != nil {
		t.Fatal(err)
	}
	start, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Duration, 4)
	r := &reloader{path: path, running: start, poll: 10 * time.Millisecond,
		load:  func() (*v1alpha1.KubeProxyConfiguration, error) { return config.Load(path) },
		apply: func(c *v1alpha1.KubeProxyConfiguration) { got <- c.IPTables.SyncPeriod.Duration },
	}
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.run(ctx, hup)

	// Replace the file the way a ConfigMap update does: a new file renamed
	// over the old one.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(strings.Replace(reloadBase, "30s", "7s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expectApplied(t, got, 7*time.Second)

	// Write without the poller seeing a difference in time is not
	// guaranteed; a signal forces the read.
	r2 := strings.Replace(reloadBase, "30s", "9s", 1)
	if err := os.WriteFile(path, []byte(r2), 0o600); err != nil {
		t.Fatal(err)
	}
	hup <- os.Interrupt
	expectApplied(t, got, 9*time.Second)
}

func expectApplied(t *testing.T, got <-chan time.Duration, want time.Duration) {
	t.Helper()
	select {
	case d := <-got:
		if d != want {
			t.Fatalf("applied syncPeriod %v, want %v", d, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no reload applied (want syncPeriod %v)", want)
	}
}
