package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// recorder stands in for a test and records how Missing stopped it.
type recorder struct {
	testing.TB
	failed, skipped string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.failed = format }
func (r *recorder) Skip(args ...any)                  { r.skipped = "skip" }

func TestMissingFailsOnlyWhenRequired(t *testing.T) {
	t.Setenv(RequireEnv, "1")
	r := &recorder{TB: t}
	Missing(r, "no %s", "tool")
	if r.failed == "" || r.skipped != "" {
		t.Errorf("required: failed=%q skipped=%q, want a failure", r.failed, r.skipped)
	}
	t.Setenv(RequireEnv, "")
	r = &recorder{TB: t}
	Missing(r, "no %s", "tool")
	if r.failed != "" || r.skipped == "" {
		t.Errorf("not required: failed=%q skipped=%q, want a skip", r.failed, r.skipped)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "e2e", "testenv", "testenv.go")); err != nil {
		t.Errorf("RepoRoot %s is not this repository: %v", root, err)
	}
}

func TestLineDiff(t *testing.T) {
	want := "a\nb\nc\nd\n"
	got := "a\nc\nb\nd\ne\n"
	if d := LineDiff(want, got); d != "-2: b\n+3: b\n+5: e\n" && d != "+2: c\n-3: c\n+5: e\n" {
		t.Errorf("LineDiff:\n%s", d)
	}
	if d := LineDiff(want, want); d != "" {
		t.Errorf("equal texts: %q", d)
	}
}
