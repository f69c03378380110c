// Package suite reads e2e/conformance/suite.yaml: which upstream e2e tests
// make conformance selects (focus) and which of those it cannot run here,
// each with the reason (skip). The runner passes both to e2e.test; the
// report lists every selected test, naming the reason of each skip.
package suite

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Suite is the parsed file.
type Suite struct {
	Focus []string `json:"focus"`
	Skip  []Skip   `json:"skip"`

	focus []*regexp.Regexp
}

// Skip is one kind of test that cannot run in this harness.
type Skip struct {
	Match string `json:"match"`
	Why   string `json:"why"`
	// Modes, when set, limits the skip to runs in these proxy modes.
	Modes []string `json:"modes,omitempty"`

	re *regexp.Regexp
}

// Load reads and checks a suite file: every pattern must compile, and every
// skip must say why.
func Load(path string) (*Suite, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Suite
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Focus) == 0 {
		return nil, fmt.Errorf("%s: no focus patterns", path)
	}
	for _, f := range s.Focus {
		re, err := regexp.Compile(f)
		if err != nil {
			return nil, fmt.Errorf("%s: focus %q: %w", path, f, err)
		}
		s.focus = append(s.focus, re)
	}
	for i := range s.Skip {
		sk := &s.Skip[i]
		if strings.TrimSpace(sk.Why) == "" {
			return nil, fmt.Errorf("%s: skip %q has no why", path, sk.Match)
		}
		for _, m := range sk.Modes {
			if m != "iptables" && m != "ipvs" {
				return nil, fmt.Errorf("%s: skip %q: mode %q: want iptables or ipvs", path, sk.Match, m)
			}
		}
		if sk.re, err = regexp.Compile(sk.Match); err != nil {
			return nil, fmt.Errorf("%s: skip %q: %w", path, sk.Match, err)
		}
	}
	return &s, nil
}

// Selected reports whether a test (its full name) matches a focus pattern.
func (s *Suite) Selected(name string) bool {
	for _, re := range s.focus {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// SkipReason is the why of the first skip pattern of the mode that the
// test matches.
func (s *Suite) SkipReason(name, mode string) (string, bool) {
	for _, sk := range s.Skip {
		if sk.appliesTo(mode) && sk.re.MatchString(name) {
			return sk.Why, true
		}
	}
	return "", false
}

// FocusRegex is the --ginkgo.focus value: any focus pattern.
func (s *Suite) FocusRegex() string { return alternatives(s.Focus) }

// SkipRegex is the --ginkgo.skip value of a run in mode: any of its skip
// patterns.
func (s *Suite) SkipRegex(mode string) string {
	var m []string
	for _, sk := range s.Skip {
		if sk.appliesTo(mode) {
			m = append(m, sk.Match)
		}
	}
	return alternatives(m)
}

func (sk Skip) appliesTo(mode string) bool {
	if len(sk.Modes) == 0 {
		return true
	}
	for _, m := range sk.Modes {
		if m == mode {
			return true
		}
	}
	return false
}

func alternatives(patterns []string) string {
	var parts []string
	for _, p := range patterns {
		parts = append(parts, "(?:"+p+")")
	}
	return strings.Join(parts, "|")
}
