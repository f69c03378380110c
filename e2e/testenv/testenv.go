// Package testenv decides what a test does when this machine lacks
// something it needs: root, a built binary, a Debian tool, IPv6, or a file
// of the shared acceptance examples beside the repository.
//
// On a developer's machine such a test skips and says why. Under `make
// test` (which sets SVCPROXY_REQUIRE=1 after installing and building
// everything) it fails instead: a test that CI never runs must not look
// like a test that passed.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RequireEnv is the environment variable that turns a missing prerequisite
// from a skip into a failure.
const RequireEnv = "SVCPROXY_REQUIRE"

// Required reports whether every prerequisite must be met.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing stops t because a prerequisite is missing: a failure when
// Required, a skip otherwise. The message says what is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s=1: a missing prerequisite fails the test)", msg, RequireEnv)
		return
	}
	t.Skip(msg)
}

// NeedRoot stops t unless it runs as root.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: %s", why)
	}
}

// RepoRoot returns the directory of svcproxy's go.mod, searched upwards
// from the working directory (a package's folder under `go test`).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module svcproxy.dev/svcproxy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod of svcproxy.dev/svcproxy) not found above the working directory")
		}
		dir = parent
	}
}

// SharedFile returns the path of a file of the project's shared directory,
// which sits beside the repository (<repo>/../shared/<parts...>). A file
// that is not there is a missing prerequisite.
func SharedFile(t testing.TB, parts ...string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		Missing(t, "%v", err)
	}
	p := filepath.Join(append([]string{root, "..", "shared"}, parts...)...)
	if _, err := os.Stat(p); err != nil {
		Missing(t, "shared file not found: %v", err)
	}
	return p
}
