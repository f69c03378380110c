package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"
)

// GuestTest is one test of the running test binary to run in a guest, with
// the host's control plane forwarded in (see RunGuestTest).
type GuestTest struct {
	// Name is the guest-side test function, e.g. "TestGuestCleanup".
	Name string
	// Files are copied into the share (host path -> path relative to the
	// share, directories made as needed). Copies, not the host's files:
	// the guest's view of the host root is cached, and a rebuild on the
	// host during the run would leave the guest exec-ing a mix of old and
	// new pages.
	Files map[string]string
	// Proxy, when set, is the proxy binary to copy into the share as
	// "proxy"; the guest test finds the copy in SVCPROXY_PROXY.
	Proxy string
	// Env is added to the guest test's environment, which already has
	// KUBECONFIG (the share's copy), SERVICE_CIDRS (comma-separated) and,
	// with Proxy, SVCPROXY_PROXY.
	Env []string
	// Systemd boots the guest with systemd as PID 1 (RunOptions.Systemd).
	Systemd bool
	// Timeout bounds the guest run (default 7 minutes); the control plane
	// gets a minute more.
	Timeout time.Duration
}

// RunGuestTest starts etcd and kube-apiserver on the host, copies this test
// binary, the kubeconfig and gt.Files into a fresh share, boots a guest
// whose working directory is the share, runs gt.Name there, logs the
// guest's output and fails t when the guest test fails. It returns the
// share, so the caller can read what the guest left in it. The caller
// checks RequireHost first.
func RunGuestTest(t *testing.T, gt GuestTest) (share string) {
	t.Helper()
	if gt.Timeout == 0 {
		gt.Timeout = 7 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), gt.Timeout+time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()

	share = t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{self: "guest.test", cp.KubeconfigPath: "kubeconfig"}
	for from, to := range gt.Files {
		files[from] = to
	}
	env := []string{"KUBECONFIG=" + filepath.Join(share, "kubeconfig"), "SERVICE_CIDRS=" + strings.Join(cp.ServiceCIDRs, ",")}
	if gt.Proxy != "" {
		files[gt.Proxy] = "proxy"
		env = append(env, "SVCPROXY_PROXY="+filepath.Join(share, "proxy"))
	}
	for from, to := range files {
		copyInto(t, from, filepath.Join(share, to))
	}
	res, err := Run(ctx, RunOptions{
		Command:    []string{"./guest.test", "-test.run", "^" + gt.Name + "$", "-test.v", "-test.count=1"},
		Env:        append(env, gt.Env...),
		Dir:        share,
		ShareDir:   share,
		ShareCache: true,
		Systemd:    gt.Systemd,
		Network:    APINetwork,
		Forwards:   []Forward{APIForward(cp)},
		Timeout:    gt.Timeout,
	})
	t.Logf("guest: boot %v, command %v, exit %d", res.Boot.Round(time.Millisecond), res.CommandTime.Round(time.Millisecond), res.ExitCode)
	t.Logf("guest output:\n%s", res.Output)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("guest test failed (exit %d); setup log:\n%s", res.ExitCode, res.SetupLog)
	}
	return share
}

// copyInto copies a file (mode 0755: binaries and data alike) and makes
// the directories it needs.
func copyInto(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
