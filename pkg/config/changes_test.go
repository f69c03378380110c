package config

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestChanges(t *testing.T) {
	base := Default()
	same := Default()
	if got, err := Changes(base, same); err != nil || len(got) != 0 {
		t.Fatalf("defaults against defaults: %v, %v; want no change", got, err)
	}

	next := Default()
	next.Mode = ModeIPVS
	next.IPTables.SyncPeriod = metav1.Duration{Duration: 5 * time.Second}
	next.Conntrack.UDPTimeout = metav1.Duration{Duration: 7 * time.Second}
	next.NodePortAddresses = []string{"10.0.0.0/8", "192.168.0.0/16"}
	next.Logging.Verbosity = 4
	got, err := Changes(base, next)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{ // path -> live
		"conntrack.udpTimeout": true,
		"iptables.syncPeriod":  true,
		"logging.verbosity":    true,
		"mode":                 false,
		"nodePortAddresses":    false,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d changes %v, want %d", len(got), got, len(want))
	}
	for i, c := range got {
		live, ok := want[c.Path]
		if !ok {
			t.Errorf("unexpected change %v", c)
			continue
		}
		if c.Live != live {
			t.Errorf("%s: live = %v, want %v", c.Path, c.Live, live)
		}
		if i > 0 && got[i-1].Path >= c.Path {
			t.Errorf("changes not sorted: %q before %q", got[i-1].Path, c.Path)
		}
	}
	for _, c := range got {
		if c.Path == "mode" && c.String() != `mode: iptables -> ipvs` {
			t.Errorf("mode change renders as %q", c.String())
		}
	}
}

// A list that differs only past the first 80 rendered characters is still
// a change (the error renderer truncates; this must not).
func TestChangesLongList(t *testing.T) {
	a, b := Default(), Default()
	long := []string{"10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "10.6.0.0/16"}
	a.NodePortAddresses = long
	b.NodePortAddresses = append(append([]string{}, long[:len(long)-1]...), "10.9.0.0/16")
	got, err := Changes(a, b)
	if err != nil || len(got) != 1 || got[0].Path != "nodePortAddresses" || got[0].Live {
		t.Fatalf("got %v, %v; want one restart-needed change of nodePortAddresses", got, err)
	}
}

// WithLive takes exactly the live settings: what is left to differ from the
// file afterwards is what needs a restart. This also keeps WithLive and
// liveFields in step.
func TestWithLive(t *testing.T) {
	running := Default()
	next := Default()
	next.Mode = ModeIPVS
	next.ClusterCIDR = "10.0.0.0/8"
	next.IPTables.SyncPeriod = metav1.Duration{Duration: 5 * time.Second}
	next.IPTables.MinSyncPeriod = metav1.Duration{Duration: 2 * time.Second}
	next.IPVS.SyncPeriod = metav1.Duration{Duration: 6 * time.Second}
	next.IPVS.MinSyncPeriod = metav1.Duration{Duration: 3 * time.Second}
	next.Logging.Verbosity = 3
	next.Conntrack.TCPBeLiberal = true // a planner input: needs a restart
	next.Conntrack.UDPStreamTimeout = metav1.Duration{Duration: time.Minute}
	merged := WithLive(running, next)
	left, err := Changes(merged, next)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, c := range left {
		if c.Live {
			t.Errorf("live change %v not taken by WithLive", c)
		}
		paths = append(paths, c.Path)
	}
	if len(paths) != 3 || paths[0] != "clusterCIDR" || paths[1] != "conntrack.tcpBeLiberal" || paths[2] != "mode" {
		t.Errorf("left after WithLive: %v, want clusterCIDR, conntrack.tcpBeLiberal and mode", paths)
	}
	if running.IPTables.SyncPeriod.Duration == 5*time.Second {
		t.Error("WithLive changed its input")
	}
}
