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

// SkipReason is the why of the first skip pattern the test matches.
func (s *Suite) SkipReason(name string) (string, bool) {
	for _, sk := range s.Skip {
		if sk.re.MatchString(name) {
			return sk.Why, true
		}
	}
	return "", false
}

// FocusRegex is the --ginkgo.focus value: any focus pattern.
func (s *Suite) FocusRegex() string { return alternatives(s.Focus) }

// SkipRegex is the --ginkgo.skip value: any skip pattern.
func (s *Suite) SkipRegex() string {
	var m []string
	for _, sk := range s.Skip {
		m = append(m, sk.Match)
	}
	return alternatives(m)
}

func alternatives(patterns []string) string {
	var parts []string
	for _, p := range patterns {
		parts = append(parts, "(?:"+p+")")
	}
	return strings.Join(parts, "|")
}
