package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigsLoad loads every example in config/: each must be
// valid and run the mode its file is named for.
func TestExampleConfigsLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range files {
		mode := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if mode != "iptables" && mode != "ipvs" && mode != "nftables" {
			continue
		}
		seen++
		c, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if string(c.Mode) != mode {
			t.Errorf("%s: mode %q", f, c.Mode)
		}
	}
	if seen != 3 {
		t.Errorf("found %d of the 3 example configs in %v", seen, files)
	}
}
