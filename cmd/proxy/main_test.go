package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadConfigExits checks that a broken config file stops start-up with
// an error naming the field and value, before anything else happens.
func TestBadConfigExits(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown field", "iptables:\n  masqueradeBits: 14\n", []string{"iptables.masqueradeBits"}},
		{"bad duration", "iptables:\n  syncPeriod: 3x\n", []string{"iptables.syncPeriod", "3x"}},
		{"bad mode", "mode: userspace\n", []string{"mode", "userspace"}},
		{"bad cidr", "clusterCIDR: 10.0.0.0/33\n", []string{"clusterCIDR", "10.0.0.0/33"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			body := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n" + tc.body
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			if code := run([]string{"--config", path}, &stdout, &stderr); code != exitConfigError {
				t.Fatalf("exit %d for a bad config file, want %d (EX_CONFIG, which the systemd unit does not retry)", code, exitConfigError)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("error %q does not name %q", stderr.String(), w)
				}
			}
		})
	}
}

func TestFlagOverridesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ok.yaml")
	body := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\nhostnameOverride: from-file\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := newFlagSetForTest()
	f := registerFlags(fs)
	if err := fs.Parse([]string{"--config", path, "--hostname-override", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.configuration(fs)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostnameOverride != "from-flag" || cfg.ClusterCIDR != "10.0.0.0/8" {
		t.Errorf("hostnameOverride %q clusterCIDR %q: flag must win, file must fill the rest", cfg.HostnameOverride, cfg.ClusterCIDR)
	}
}

func newFlagSetForTest() *flag.FlagSet { return flag.NewFlagSet("test", flag.ContinueOnError) }
