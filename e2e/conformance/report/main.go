// Command report turns the JUnit XML of an e2e.test run into the results
// file of make conformance: every selected test with passed, failed or
// skipped and why, and a summary line.
//
//	report -junit junit_01.xml -suite suite.txt -header header.md -out results.md
//
// A test is selected when its name matches a focus line of the suite file.
// Of those, the ones matching a skip line are listed as skipped with that
// line's reason (the runner passed them to --ginkgo.skip); the others carry
// the state e2e.test reported, with the skip message or the first line of
// the failure.
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"svcproxy.dev/svcproxy/e2e/conformance/suite"
)

// testCase is one <testcase> of ginkgo's JUnit report.
type testCase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
		Body    string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
	} `xml:"error"`
}

type junit struct {
	Suites []struct {
		Cases []testCase `xml:"testcase"`
	} `xml:"testsuite"`
}

// Result is the verdict on one selected test.
type Result struct {
	Name    string
	State   string // passed, failed, skipped, interrupted or not run
	Why     string
	Seconds float64
}

func main() {
	junitPath := flag.String("junit", "", "JUnit XML written by e2e.test --report-dir")
	suitePath := flag.String("suite", "", "the suite file (focus and skip lines)")
	header := flag.String("header", "", "markdown to put before the table (optional)")
	trailer := flag.String("trailer", "", "markdown to put after the table (optional)")
	out := flag.String("out", "", "results file to write")
	mode := flag.String("mode", "iptables", "the proxy mode of the run (skips may name modes)")
	sideBySide := flag.String("side-by-side", "", "print one table of several runs: LABEL=JUNIT[,LABEL=JUNIT...] (JUNIT may be gzipped)")
	print := flag.String("print", "", "print the suite's \"focus\" or \"skip\" regular expression and exit")
	flag.Parse()
	if *sideBySide != "" {
		if err := printSideBySide(os.Stdout, *suitePath, *mode, *sideBySide); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		return
	}
	if *print != "" {
		if err := printRegex(*suitePath, *print, *mode); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*junitPath, *suitePath, *mode, *header, *trailer, *out); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(junitPath, suitePath, mode, header, trailer, out string) error {
	s, err := suite.Load(suitePath)
	if err != nil {
		return err
	}
	data, err := readJUnit(junitPath)
	if err != nil {
		return err
	}
	results, err := Classify(data, s, mode)
	if err != nil {
		return fmt.Errorf("%s: %w", junitPath, err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := copyFile(f, header); err != nil {
		return err
	}
	Write(f, results)
	if err := copyFile(f, trailer); err != nil {
		return err
	}
	return f.Close()
}

// readJUnit reads a JUnit file, gunzipping it when it is compressed.
func readJUnit(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		return data, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return io.ReadAll(zr)
}

// printSideBySide prints the summary of each run, then one row per test
// with each run's result, rows where the runs differ first.
func printSideBySide(w io.Writer, suitePath, mode, runs string) error {
	s, err := suite.Load(suitePath)
	if err != nil {
		return err
	}
	var labels []string
	byRun := map[string]map[string]Result{}
	var names []string
	seen := map[string]bool{}
	for _, run := range strings.Split(runs, ",") {
		label, path, ok := strings.Cut(run, "=")
		if !ok {
			return fmt.Errorf("-side-by-side %q: want LABEL=JUNIT", run)
		}
		data, err := readJUnit(path)
		if err != nil {
			return err
		}
		results, err := Classify(data, s, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		labels = append(labels, label)
		byRun[label] = map[string]Result{}
		for _, r := range results {
			byRun[label][r.Name] = r
			if !seen[r.Name] {
				seen[r.Name] = true
				names = append(names, r.Name)
			}
		}
		fmt.Fprintf(w, "- %s: %s\n", label, Summary(results))
	}
	differs := func(name string) bool {
		for _, l := range labels[1:] {
			if byRun[l][name].State != byRun[labels[0]][name].State {
				return true
			}
		}
		return false
	}
	sort.SliceStable(names, func(i, j int) bool {
		di, dj := differs(names[i]), differs(names[j])
		if di != dj {
			return di
		}
		return names[i] < names[j]
	})
	fmt.Fprintf(w, "\n| test | %s |\n|---%s|\n", strings.Join(labels, " | "), strings.Repeat("|---", len(labels)))
	for _, name := range names {
		row := []string{escape(name)}
		for _, l := range labels {
			r, ok := byRun[l][name]
			cell := "not in the run"
			if ok {
				cell = r.State
				if r.State == "skipped" {
					cell = "skipped (" + escape(r.Why) + ")"
				}
			}
			row = append(row, cell)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
	return nil
}

func printRegex(suitePath, which, mode string) error {
	s, err := suite.Load(suitePath)
	if err != nil {
		return err
	}
	switch which {
	case "focus":
		fmt.Println(s.FocusRegex())
	case "skip":
		fmt.Println(s.SkipRegex(mode))
	default:
		return fmt.Errorf("-print %q: want focus or skip", which)
	}
	return nil
}

func copyFile(w io.Writer, path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// Classify picks the selected tests out of a JUnit report and gives each
// its verdict, sorted by name.
func Classify(data []byte, s *suite.Suite, mode string) ([]Result, error) {
	var j junit
	if err := xml.Unmarshal(data, &j); err != nil {
		return nil, err
	}
	var results []Result
	seen := map[string]bool{}
	cut := cutShort(j)
	for _, ts := range j.Suites {
		for _, tc := range ts.Cases {
			name := strings.TrimSpace(strings.TrimPrefix(tc.Name, "[It] "))
			if !s.Selected(name) || seen[name] {
				continue
			}
			seen[name] = true
			r := verdict(name, tc, s, mode)
			_, skippedBySuite := s.SkipReason(name, mode)
			if cut && !skippedBySuite && tc.Status == "skipped" && skipMessage(tc) == "skipped" && tc.Time == 0 {
				// e2e.test gives the specs an interrupted suite never
				// reached a bare "skipped", as it does specs its focus
				// left out; only selected, unskipped ones get here.
				r.State, r.Why = "not run", "not reached: the suite timeout ended the run first"
			}
			results = append(results, r)
		}
	}
	sort.Slice(results, func(i, j int) bool { return results[i].Name < results[j].Name })
	return results, nil
}

// cutShort reports whether the suite timeout (ginkgo --timeout) ended the
// run: some spec was interrupted by it.
func cutShort(j junit) bool {
	for _, ts := range j.Suites {
		for _, tc := range ts.Cases {
			if tc.Status == "timedout" || tc.Status == "interrupted" {
				return true
			}
		}
	}
	return false
}

func verdict(name string, tc testCase, s *suite.Suite, mode string) Result {
	r := Result{Name: name, Seconds: tc.Time}
	if reason, ok := s.SkipReason(name, mode); ok {
		r.State, r.Why = "skipped", reason
		return r
	}
	switch {
	case tc.Status == "timedout" || tc.Status == "interrupted":
		r.State, r.Why = "interrupted", "cut by the suite timeout while it ran"
	case tc.Failure != nil || tc.Error != nil || tc.Status == "failed" || tc.Status == "panicked" || tc.Status == "aborted":
		r.State = "failed"
		switch {
		case tc.Failure != nil && strings.TrimSpace(tc.Failure.Message) != "":
			r.Why = firstLine(tc.Failure.Message)
		case tc.Failure != nil:
			// e2e.test leaves the message empty and puts "[FAILED] why"
			// first in the body.
			r.Why = strings.TrimPrefix(firstLine(tc.Failure.Body), "[FAILED] ")
		case tc.Error != nil:
			r.Why = firstLine(tc.Error.Message)
		default:
			r.Why = tc.Status
		}
	case tc.Skipped != nil || tc.Status == "skipped" || tc.Status == "pending":
		r.State = "skipped"
		r.Why = "e2e.test: " + strings.TrimPrefix(firstLine(skipMessage(tc)), "skipped - ")
	default:
		r.State = "passed"
	}
	return r
}

func skipMessage(tc testCase) string {
	if tc.Skipped == nil {
		return tc.Status
	}
	return tc.Skipped.Message
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// Summary is the one line a reader looks for first.
func Summary(results []Result) string {
	n := map[string]int{}
	for _, r := range results {
		n[r.State]++
	}
	line := fmt.Sprintf("%d passed, %d failed, %d skipped", n["passed"], n["failed"], n["skipped"])
	if n["interrupted"]+n["not run"] > 0 {
		line += fmt.Sprintf("; the suite timeout interrupted %d and left %d not run", n["interrupted"], n["not run"])
	}
	return line
}

// Write prints the summary line and the table of results.
func Write(w io.Writer, results []Result) {
	fmt.Fprintf(w, "**%s** (of %d selected tests)\n\n", Summary(results), len(results))
	fmt.Fprintln(w, "| test | result | seconds | why |")
	fmt.Fprintln(w, "| --- | --- | --- | --- |")
	for _, r := range results {
		fmt.Fprintf(w, "| %s | %s | %.0f | %s |\n", escape(r.Name), r.State, r.Seconds, escape(r.Why))
	}
	fmt.Fprintln(w)
}

func escape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
