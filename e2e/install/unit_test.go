package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

const (
	unitBinary = "/usr/local/bin/proxy"
	unitExec   = unitBinary + " --config /etc/svcproxy/config.yaml --kubeconfig /etc/svcproxy/kubeconfig"
)

func readUnit(t *testing.T) (string, Unit) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "config", "svcproxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUnit(string(b))
	if err != nil {
		t.Fatalf("config/svcproxy.service: %v", err)
	}
	return string(b), u
}

// TestSystemdUnit checks the settings the unit must have, and the one it
// must not: a clean-up on stop would cut Service traffic on every restart.
func TestSystemdUnit(t *testing.T) {
	_, u := readUnit(t)
	want := map[[2]string]string{
		{"Service", "ExecStart"}:  unitExec,
		{"Service", "Restart"}:    "on-failure",
		{"Service", "KillSignal"}: "SIGTERM",
		// cmd/proxy: sd_notify READY once the config loaded; exit 78 on a
		// config that does not; SIGHUP re-reads the file.
		{"Service", "Type"}:                     "notify",
		{"Service", "RestartPreventExitStatus"}: "2 78",
		{"Service", "ExecReload"}:               "/bin/kill -HUP $MAINPID",
	}
	for k, v := range want {
		if got, _ := u.Get(k[0], k[1]); got != v {
			t.Errorf("[%s] %s=%q, want %q", k[0], k[1], got, v)
		}
	}
	for _, k := range []string{"RestartSec", "LimitNOFILE"} {
		if v, ok := u.Get("Service", k); !ok || v == "" || v == "0" {
			t.Errorf("[Service] %s not set (%q)", k, v)
		}
	}
	for _, k := range []string{"After", "Wants"} {
		if !slices.ContainsFunc(u["Unit"][k], func(v string) bool { return slices.Contains(strings.Fields(v), "network-online.target") }) {
			t.Errorf("[Unit] %s lacks network-online.target: %q", k, u["Unit"][k])
		}
	}
	for _, k := range []string{"ExecStop", "ExecStopPost"} {
		for _, v := range u["Service"][k] {
			if strings.Contains(v, "--cleanup") {
				t.Errorf("[Service] %s=%s: stopping must leave the rules in place", k, v)
			}
		}
	}
	if _, ok := u.Get("Install", "WantedBy"); !ok {
		t.Error("[Install] WantedBy missing: `systemctl enable` would do nothing")
	}
}

// TestSystemdAnalyzeVerify runs systemd's own checker on the unit. verify
// insists that ExecStart's program exists and is executable, so it checks
// a copy of the unit whose ExecStart names a temp copy of the proxy binary
// (bin/proxy, or $SVCPROXY_PROXY); everything else is the file as shipped.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Missing(t, "systemd-analyze not installed (Debian package: systemd); cannot verify config/svcproxy.service")
	}
	text, _ := readUnit(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "proxy")
	src := proxyBinary(t)
	b, err := os.ReadFile(src)
	if err != nil {
		testenv.Missing(t, "no proxy binary to stand in for %s (%v); run make build", unitBinary, err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "ExecStart="+unitBinary+" ") {
		t.Fatalf("ExecStart does not start with %s", unitBinary)
	}
	rewritten := strings.ReplaceAll(text, "ExecStart="+unitBinary+" ", "ExecStart="+bin+" ")
	unit := filepath.Join(dir, "svcproxy.service") // the name matters: verify checks it
	if err := os.WriteFile(unit, []byte(rewritten), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sa, "verify", unit)
	// No pager, no colour, and no reliance on a running systemd.
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	// verify prints warnings (unknown keys, bad values) but still exits 0
	// for many of them, so any output counts as a failure.
	if err != nil || strings.TrimSpace(out.String()) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out.String())
	}
}

// proxyBinary is $SVCPROXY_PROXY or <repo>/bin/proxy.
func proxyBinary(t *testing.T) string {
	if p := os.Getenv("SVCPROXY_PROXY"); p != "" {
		return p
	}
	return filepath.Join(repoRoot(t), "bin", "proxy")
}

func TestParseUnit(t *testing.T) {
	u, err := ParseUnit("# c\n[Unit]\nAfter=a\nAfter=b \\\n  c\n; c\n[Service]\nExecStart=/x --y=z\n")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u["Unit"]["After"], []string{"a", "b c"}) {
		t.Errorf("After %q", u["Unit"]["After"])
	}
	if v, _ := u.Get("Service", "ExecStart"); v != "/x --y=z" {
		t.Errorf("ExecStart %q", v)
	}
	for _, bad := range []string{"Key=v\n", "[Unit\n", "[Unit]\nnokey\n"} {
		if _, err := ParseUnit(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
