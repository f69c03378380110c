package main

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/conformance/suite"
)

// A trimmed JUnit report in the shape ginkgo writes for e2e.test.
const sampleJUnit = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5">
  <testsuite name="Kubernetes e2e suite" tests="5">
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" status="passed" time="12.5"></testcase>
    <testcase name="[It] [sig-network] Services should be able to up and down services" status="failed" time="80">
      <failure message="service is not reachable within 2m0s timeout on endpoint 10.96.4.7:80&#xA;more detail" type="failed">stack</failure>
    </testcase>
    <testcase name="[It] [sig-network] Services should be able to switch session affinity" status="failed" time="30">
      <failure message="" type="failed">[FAILED] affinity broke&#xA;In [It] at: service.go:1</failure>
    </testcase>
    <testcase name="[It] [sig-network] Services should have session affinity work for LoadBalancer service" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] Services should work with IPv6" status="skipped" time="0.1">
      <skipped message="skipped - Only supported for providers [gce]"></skipped>
    </testcase>
    <testcase name="[It] [sig-node] Pods should be updated" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
  </testsuite>
</testsuites>`

// servicesSuite selects the Services tests and skips LoadBalancer ones.
func servicesSuite(t *testing.T) *suite.Suite {
	t.Helper()
	p := filepath.Join(t.TempDir(), "suite.yaml")
	os.WriteFile(p, []byte("focus: ['\\[sig-network\\] Services ']\nskip:\n- match: LoadBalancer\n  why: no cloud provider here\n"), 0o644)
	s, err := suite.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClassify(t *testing.T) {
	s := servicesSuite(t)
	results, err := Classify([]byte(sampleJUnit), s, "iptables")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Result{}
	for _, r := range results {
		got[r.Name] = r
	}
	if len(results) != 5 {
		t.Fatalf("%d results, want the 5 selected tests: %+v", len(results), results)
	}
	check := func(name, state, why string) {
		t.Helper()
		r, ok := got[name]
		if !ok || r.State != state || r.Why != why {
			t.Errorf("%s: got %+v, want %s %q", name, r, state, why)
		}
	}
	check("[sig-network] Services should serve a basic endpoint from pods [Conformance]", "passed", "")
	check("[sig-network] Services should be able to up and down services", "failed", "service is not reachable within 2m0s timeout on endpoint 10.96.4.7:80")
	check("[sig-network] Services should be able to switch session affinity", "failed", "affinity broke")
	check("[sig-network] Services should have session affinity work for LoadBalancer service", "skipped", "no cloud provider here")
	check("[sig-network] Services should work with IPv6", "skipped", "e2e.test: Only supported for providers [gce]")
	if got, want := Summary(results), "1 passed, 2 failed, 2 skipped"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	var buf bytes.Buffer
	Write(&buf, results)
	if !strings.HasPrefix(buf.String(), "**1 passed, 2 failed, 2 skipped** (of 5 selected tests)") {
		t.Errorf("table starts %q", buf.String()[:60])
	}
}

// TestClassifyCutShort: when the suite timeout ends a run, the specs it
// interrupted and the selected ones it never reached say so, instead of
// failed and skipped.
func TestClassifyCutShort(t *testing.T) {
	s := servicesSuite(t)
	junit := strings.Replace(sampleJUnit, `<testcase name="[It] [sig-network] Services should be able to switch session affinity" status="failed" time="30">
      <failure message="" type="failed">[FAILED] affinity broke&#xA;In [It] at: service.go:1</failure>`, `<testcase name="[It] [sig-network] Services should be able to switch session affinity" status="timedout" time="30">
      <failure message="" type="timedout">[TIMEDOUT] A suite timeout occurred</failure>`, 1)
	junit = strings.Replace(junit, `</testsuite>`, `<testcase name="[It] [sig-network] Services should be reached" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
  </testsuite>`, 1)
	results, err := Classify([]byte(junit), s, "iptables")
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, r := range results {
		states[r.Name] = r.State
	}
	if states["[sig-network] Services should be able to switch session affinity"] != "interrupted" ||
		states["[sig-network] Services should be reached"] != "not run" ||
		states["[sig-network] Services should have session affinity work for LoadBalancer service"] != "skipped" {
		t.Errorf("states: %v", states)
	}
	if got, want := Summary(results), "1 passed, 1 failed, 2 skipped; the suite timeout interrupted 1 and left 1 not run"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
}

func TestSideBySideListsDifferencesFirst(t *testing.T) {
	dir := t.TempDir()
	suitePath := filepath.Join(dir, "suite.yaml")
	os.WriteFile(suitePath, []byte("focus: ['\\[sig-network\\] Services ']\n"), 0o644)
	a := filepath.Join(dir, "a.xml")
	os.WriteFile(a, []byte(sampleJUnit), 0o644)
	// b: every selected test passed, written gzipped.
	passed := strings.NewReplacer(`status="failed"`, `status="passed"`, `status="skipped"`, `status="passed"`).Replace(sampleJUnit)
	passed = regexp.MustCompile(`(?s)<(failure|skipped).*?</(failure|skipped)>`).ReplaceAllString(passed, "")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(passed))
	zw.Close()
	b := filepath.Join(dir, "b.xml.gz")
	os.WriteFile(b, gz.Bytes(), 0o644)

	var out bytes.Buffer
	if err := printSideBySide(&out, suitePath, "iptables", "A="+a+",B="+b); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"- A: 1 passed, 2 failed, 2 skipped\n",
		"- B: 5 passed, 0 failed, 0 skipped\n",
		"| test | A | B |",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	rows := strings.Split(strings.TrimSpace(text[strings.Index(text, "|---"):]), "\n")[1:]
	if len(rows) != 5 || !strings.Contains(rows[0], "| failed | passed |") || !strings.HasSuffix(rows[4], "| passed | passed |") {
		t.Errorf("want the 4 differing rows first and the one agreeing last, got:\n%s", strings.Join(rows, "\n"))
	}
}
