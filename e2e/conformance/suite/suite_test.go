package suite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "suite.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadRejectsSkipWithoutReason(t *testing.T) {
	_, err := Load(write(t, "focus: ['Services']\nskip:\n- match: 'LoadBalancer'\n"))
	if err == nil || !strings.Contains(err.Error(), `skip "LoadBalancer" has no why`) {
		t.Fatalf("err = %v, want one naming the skip without a reason", err)
	}
}

func TestLoadRejectsBadPatternAndUnknownField(t *testing.T) {
	if _, err := Load(write(t, "focus: ['Services(']\n")); err == nil || !strings.Contains(err.Error(), `focus "Services("`) {
		t.Fatalf("bad focus: err = %v", err)
	}
	if _, err := Load(write(t, "focus: ['x']\nskips: []\n")); err == nil || !strings.Contains(err.Error(), "skips") {
		t.Fatalf("unknown field: err = %v", err)
	}
}

func TestSelectionAndSkipReason(t *testing.T) {
	s, err := Load(write(t, `
focus: ['\[sig-network\] Services ', '\[sig-network\] DNS .*\[Conformance\]']
skip:
- match: 'LoadBalancer'
  why: no cloud
`))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"[sig-network] Services should serve a basic endpoint from pods [Conformance]": true,
		"[sig-network] DNS should provide DNS for services [Conformance]":              true,
		"[sig-network] DNS should resolve DNS of partial qualified names":              false,
		"[sig-node] Pods should be submitted and removed":                              false,
	} {
		if got := s.Selected(name); got != want {
			t.Errorf("Selected(%q) = %v, want %v", name, got, want)
		}
	}
	if why, ok := s.SkipReason("[sig-network] Services should be able to change the type of a LoadBalancer", "iptables"); !ok || why != "no cloud" {
		t.Errorf("SkipReason = %q, %v", why, ok)
	}
	if _, ok := s.SkipReason("[sig-network] Services should serve a basic endpoint from pods", "iptables"); ok {
		t.Error("a test matching no skip pattern has a skip reason")
	}
	if got, want := s.SkipRegex("iptables"), "(?:LoadBalancer)"; got != want {
		t.Errorf("SkipRegex = %q, want %q", got, want)
	}
}

func TestSkipLimitedToModes(t *testing.T) {
	s, err := Load(write(t, `
focus: ['Services']
skip:
- match: 'sctp'
  why: no SCTP on this kernel
  modes: [iptables]
- match: 'Disruptive'
  why: no SSH
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.SkipReason("Services sctp", "ipvs"); ok {
		t.Error("an iptables-only skip applies in ipvs mode")
	}
	if _, ok := s.SkipReason("Services sctp", "iptables"); !ok {
		t.Error("an iptables-only skip does not apply in iptables mode")
	}
	if got, want := s.SkipRegex("ipvs"), "(?:Disruptive)"; got != want {
		t.Errorf("SkipRegex(ipvs) = %q, want %q", got, want)
	}
	if _, err := Load(write(t, "focus: ['x']\nskip:\n- match: y\n  why: z\n  modes: [nft]\n")); err == nil || !strings.Contains(err.Error(), `mode "nft"`) {
		t.Errorf("unknown mode: err = %v", err)
	}
}
