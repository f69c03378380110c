// Package nsutil creates, enters and removes the network namespaces the
// end-to-end tests run in. Every namespace it names starts with "svcp-" and
// carries the creating process id, so a later run can tell a namespace left by
// a killed run (its process is gone) from one a concurrent run still uses.
package nsutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "svcp-"

var seq atomic.Int64

// Name returns a fresh namespace name "svcp-<pid>-<role><n>", unique in this
// process; the pid lets RemoveStale recognise leftovers of dead runs.
func Name(role string) string {
	return fmt.Sprintf("%s%d-%s%d", Prefix, os.Getpid(), role, seq.Add(1))
}

// Add creates the named namespace and brings its loopback up. The new
// namespace has no link to any other namespace yet.
func Add(name string) error {
	if err := IP("netns", "add", name); err != nil {
		return err
	}
	if err := IP("-n", name, "link", "set", "lo", "up"); err != nil {
		_ = Delete(name)
		return err
	}
	return nil
}

// Delete removes the named namespace. Processes still running inside keep the
// namespace alive, so callers stop them first. A missing namespace is no error.
func Delete(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); os.IsNotExist(err) {
		return nil
	}
	return IP("netns", "del", name)
}

// List returns the names of all named network namespaces with Prefix.
func List() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), Prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// OwnerPID returns the pid embedded in a name made by Name (or by the
// control plane's "svcp-cp-<pid>"), or 0 if the name has neither form.
func OwnerPID(name string) int {
	fields := strings.Split(strings.TrimPrefix(name, Prefix), "-")
	for _, f := range fields[:min(2, len(fields))] {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}

// RemoveStale deletes namespaces and temp dirs (made by TempDir) whose
// creating process no longer exists: the leftovers of a run that was killed
// before it could clean up. Those of live processes (a concurrent run) are
// left alone.
func RemoveStale() []error {
	names, err := List()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, n := range names {
		if stale(n) {
			if err := Delete(n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	entries, _ := os.ReadDir(os.TempDir())
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), Prefix) && stale(e.Name()) {
			if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

func stale(name string) bool {
	pid := OwnerPID(name)
	return pid != 0 && pid != os.Getpid() && !processAlive(pid)
}

// TempDir makes a temp dir "svcp-<role>-<pid>-*" that RemoveStale can
// attribute to this process.
func TempDir(role string) (string, error) {
	return os.MkdirTemp("", fmt.Sprintf("%s%s-%d-", Prefix, role, os.Getpid()))
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// IP runs the ip(8) command and returns its stderr in the error.
func IP(args ...string) error {
	return Run("ip", args...)
}

// Run runs a command and returns its combined output in the error.
func Run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Do runs fn on an OS thread switched into the named namespace. Sockets
// opened inside fn stay in that namespace after Do returns, which is how the
// harness dials and listens in namespaces from its own process. fn must not
// hand work to other goroutines that expect the namespace.
func Do(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with this goroutine, so the
		// runtime never reuses a thread stuck in the wrong namespace.
		return fmt.Errorf("leave netns %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen opens a listener on address in the named namespace; it stays
// there, and may be used from any goroutine.
func Listen(name, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := Do(name, func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// Sysctls writes net.* sysctls inside the named namespace. Keys use dots
// ("net.ipv4.ip_forward"); only per-namespace keys may be given, so the host's
// own settings are never touched.
func Sysctls(ns string, kv [][2]string) error {
	return Do(ns, func() error {
		for _, p := range kv {
			if !strings.HasPrefix(p[0], "net.") || strings.HasPrefix(p[0], "net.netfilter.nf_conntrack_max") || strings.HasPrefix(p[0], "net.core.") {
				return fmt.Errorf("sysctl %s is not per-namespace", p[0])
			}
			path := "/proc/sys/" + strings.ReplaceAll(p[0], ".", "/")
			if err := os.WriteFile(path, []byte(p[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", p[0], p[1], ns, err)
			}
		}
		return nil
	})
}

// Exec prepares a command that runs inside the named namespace (via
// "ip netns exec", which execs the program in place, so the returned
// command's pid is the program's own). The child is killed if this process
// dies, so an aborted run does not leave servers behind.
func Exec(ns, name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}
