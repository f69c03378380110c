// Package systemd runs svcproxy as a node agent under a real systemd: the
// QEMU guest (e2e/vm) boots the host's systemd as PID 1 on a writable
// overlay of the host root, with the host's kube-apiserver forwarded in,
// and TestGuestSystemd follows config/README.md's "On a node" steps word
// for word there: install, enable --now, real traffic through the rules
// the unit's process wrote, kill -9 and Restart=, reload, a broken config
// file, stop, the other mode, and removal.
package systemd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/testenv"
	"svcproxy.dev/svcproxy/e2e/vm"
)

// unitEnv names a unit file to install instead of config/svcproxy.service
// (to check that the crash step fails without Restart=).
const unitEnv = "SVCPROXY_SYSTEMD_UNIT"

// TestSystemdNodeAgent boots a guest with systemd as init and runs
// TestGuestSystemd in it as a unit. The share holds what the guest
// installs, as a user's checkout would: bin/proxy, config/, and the
// kubeconfig to copy to /etc/svcproxy.
func TestSystemdNodeAgent(t *testing.T) {
	proxy := controlplane.ProxyBinary(t)
	vm.RequireHost(t, proxy)
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	responder := filepath.Join(root, "bin", "responder")
	if _, err := os.Stat(responder); err != nil {
		testenv.Missing(t, "responder binary: %v (make build)", err)
	}
	unit := os.Getenv(unitEnv)
	if unit == "" {
		unit = filepath.Join(root, "config", "svcproxy.service")
	}
	vm.RunGuestTest(t, vm.GuestTest{
		Name:    "TestGuestSystemd",
		Systemd: true,
		Timeout: 13 * time.Minute,
		Files: map[string]string{
			proxy:     "bin/proxy",
			responder: "bin/responder",
			unit:      "config/svcproxy.service",
			filepath.Join(root, "config", "iptables.yaml"): "config/iptables.yaml",
			filepath.Join(root, "config", "ipvs.yaml"):     "config/ipvs.yaml",
		},
	})
}
