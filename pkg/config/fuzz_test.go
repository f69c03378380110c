package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzDecode checks that Decode never panics, whatever the input, and that
// anything it accepts is a fully defaulted, valid configuration.
func FuzzDecode(f *testing.F) {
	for _, pattern := range []string{"testdata/*.yaml", "testdata/*.json", "../../config/*.yaml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte(header + "iptables:\n  syncPeriod: 3x\n"))
	f.Add([]byte(header + "mode: ipvs\nipvs: {minSyncPeriod: 1m}\n"))
	f.Add([]byte("{}"))

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Decode(data)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Decode returned both a configuration and an error: %v", err)
			}
			return
		}
		if err := Validate(cfg); err != nil {
			t.Fatalf("Decode accepted a configuration that does not validate: %v", err)
		}
		again := cfg.DeepCopy()
		SetDefaults(again)
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("Decode returned a configuration that is not fully defaulted")
		}
	})
}
