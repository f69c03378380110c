package conntrack

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fakeProc(t *testing.T, values map[string]string) Sysctl {
	root := t.TempDir()
	for name, v := range values {
		p := filepath.Join(root, strings.ReplaceAll(name, ".", "/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Sysctl{Root: root}
}

func TestApply(t *testing.T) {
	sys := fakeProc(t, map[string]string{
		"net.netfilter.nf_conntrack_max":                     "1000",
		"net.netfilter.nf_conntrack_tcp_timeout_established": "432000",
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  "60",
	})
	s := Settings{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour}
	if err := Apply(sys, s, false); err != nil {
		t.Fatal(err)
	}
	if v, _ := sys.get("net.netfilter.nf_conntrack_max"); v != 1000 {
		t.Errorf("outside the host netns nf_conntrack_max must stay: %d", v)
	}
	if v, _ := sys.get("net.netfilter.nf_conntrack_tcp_timeout_established"); v != 86400 {
		t.Errorf("established timeout = %d, want 86400", v)
	}
	if v, _ := sys.get("net.netfilter.nf_conntrack_tcp_timeout_close_wait"); v != 60 {
		t.Errorf("unset close-wait timeout changed to %d", v)
	}
	if err := Apply(sys, s, true); err != nil {
		t.Fatal(err)
	}
	if v, _ := sys.get("net.netfilter.nf_conntrack_max"); v < 131072 {
		t.Errorf("nf_conntrack_max = %d, want at least min", v)
	}
}
