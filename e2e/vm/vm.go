// Package vm runs a command as root in a QEMU guest that boots a stock Debian
// kernel (which has IPVS, unlike the host kernel) on the host's own files.
//
// The guest has no network device unless RunOptions.Forwards asks for one:
// it sees the host's root filesystem read-only over 9p (so the host's
// iptables, ipvsadm, ipset, conntrack, bin/proxy and test binaries run
// unchanged), tmpfs on /tmp, /run, /var/tmp and /dev/shm, and
// RunOptions.ShareDir read-write at the same path as on the host. The command
// runs chrooted into that view after the kernel modules of
// hack/vm/modules.txt (IPVS and its schedulers, nf_tables, xtables, ipset,
// veth, bridge, dummy, ...) are loaded; the kernel loads any other module it
// asks for from the same extracted Debian kernel, whose module tree also
// appears at /lib/modules/<release> (so a plain modprobe works too).
//
// hack/vm/prepare.sh installs QEMU and builds the cache (.cache/vm: the
// kernel package extracted, an initramfs); Available reports whether it has
// run. Emulation is plain TCG (KVM guests hang on these machines): booting
// takes a few seconds and everything in the guest runs several times slower
// than on the host, so keep the guest's work small.
package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunOptions says what to run in the guest and how big the guest is.
type RunOptions struct {
	// Command is the program and its arguments, run as root in the guest
	// (looked up in PATH when it has no slash). Required.
	Command []string
	// Env holds "KEY=value" entries added to the command's environment, which
	// otherwise has PATH, HOME=/root, TERM=dumb and SVCPROXY_VM_GUEST=1.
	Env []string
	// Dir is the command's working directory in the guest; default "/".
	Dir string
	// Memory is the guest's memory in MiB; default 4096.
	Memory int
	// CPUs is the guest's number of CPUs; default 2.
	CPUs int
	// Timeout bounds the whole run, boot included; default 10 minutes. The
	// guest is killed when it, or the context, expires.
	Timeout time.Duration
	// ShareDir, when set, is an existing host directory that the guest mounts
	// read-write at the same path (everything else of the host is read-only).
	// It may lie under /tmp (the guest's /tmp is otherwise its own tmpfs).
	ShareDir string
	// Modules, when not nil, replaces the list of modules loaded before the
	// command (hack/vm/modules.txt as of prepare.sh); ExtraModules adds to
	// whichever list is used. Names the kernel lacks are skipped with a
	// warning in Result.SetupLog.
	Modules      []string
	ExtraModules []string
	// Forwards gives the guest a virtio NIC (eth0) on a QEMU user network
	// that is restricted (restrict=on: no packet reaches the host's network
	// or anything else) except for these guest-to-host forwards: each TCP
	// connection from the guest to a GuestAddr runs its HostCommand on the
	// host with the connection as stdin and stdout. Without Forwards the
	// guest has no NIC at all. See ForwardTCP.
	Forwards []Forward
	// Tap, when set, gives the guest a virtio NIC (eth0, down and without
	// an address: the command sets it up) on a TAP device of this name,
	// which QEMU makes in the network namespace TapNetns (a name under
	// /var/run/netns; required), never in the host's. The caller links the
	// TAP there, to a bridge of its own, say. Excludes Forwards.
	Tap      string
	TapNetns string
	// Network is the IPv4 network of that user network, default
	// 10.0.2.0/24: the guest's eth0 gets host number 15 in it (no default
	// route), QEMU's own virtual addresses take numbers 2 and 3, and every
	// GuestAddr must lie in it. 169.254.250.0/24 lets a guest reach the
	// e2e/controlplane API server at its usual 169.254.250.1:6443.
	Network string
	// Console, when set, receives the guest's serial console as it comes:
	// kernel and init messages, and the command's output too (it is then
	// copied there as well as to Result.Output).
	Console io.Writer
	// ShareCache mounts ShareDir with 9p's page cache (cache=loose): a
	// binary run from it starts several times faster (it is otherwise read
	// page by page anew at each exec), but the guest may not see host
	// changes to files it has already read during the run. The guest's
	// writes reach the host before Run returns either way.
	ShareCache bool
	// RootCacheNone mounts the host root without 9p's page cache
	// (cache=none). By default it is cached (cache=loose), which is faster
	// but does not see host files changing during the run (ShareDir is
	// never cached).
	RootCacheNone bool
	// KernelArgs are added to the guest kernel's command line (after
	// "console=ttyS0 quiet panic=-1").
	KernelArgs []string
	// KeepCtl keeps the per-run control directory (params, cmd.sh, output,
	// console log) and names it in Result.CtlDir.
	KeepCtl bool
	// Systemd boots the host's systemd as PID 1 on a writable view of the
	// host root (a tmpfs overlay over the read-only share, gone with the
	// guest) instead of running the command in a chroot: the command runs
	// as the unit svcvm-run.service once basic.target is reached (journald
	// and the rest of early boot are up), so it can install, start and
	// inspect units with systemctl and journalctl.
	Systemd bool
}

// Forward is one guest-to-host TCP forward; see RunOptions.Forwards.
type Forward struct {
	GuestAddr   string   // e.g. "10.0.2.100:6443"
	HostCommand []string // e.g. {"socat", "STDIO", "TCP:127.0.0.1:6443"}
}

// ForwardTCP forwards guest connections to guestAddr (in 10.0.2.0/24) to
// hostAddr on the host: "127.0.0.1:6443", or "unix:/path/to/socket". It uses
// socat, which prepare.sh installs. The host side may be in a network
// namespace: wrap HostCommand in "ip netns exec NAME".
func ForwardTCP(guestAddr, hostAddr string) Forward {
	target := "TCP:" + hostAddr
	if p, ok := strings.CutPrefix(hostAddr, "unix:"); ok {
		target = "UNIX-CONNECT:" + p
	}
	return Forward{GuestAddr: guestAddr, HostCommand: []string{"socat", "STDIO", target}}
}

// Result is what a run gave.
type Result struct {
	// ExitCode is the command's exit status (128+signal when killed by one;
	// 127 when it was not found).
	ExitCode int
	// Output is the command's stdout and stderr, interleaved.
	Output string
	// Duration is the whole run on the host: QEMU start to QEMU exit.
	Duration time.Duration
	// CommandTime is the command's own run time, by the guest's clock.
	CommandTime time.Duration
	// Boot is QEMU start to command start on the host (Duration less
	// CommandTime, so it includes the short power-off).
	Boot time.Duration
	// SetupLog has the guest's warnings (modules it could not load, network
	// setup).
	SetupLog string
	// Console is the serial console (kernel and init messages).
	Console string
	// CtlDir is the control directory when RunOptions.KeepCtl is set.
	CtlDir string
}

type userNet struct {
	cidr             string
	net              *net.IPNet
	prefix           int
	host, dns, guest net.IP
}

// userNetwork checks a RunOptions.Network and picks QEMU's and the guest's
// addresses in it.
func userNetwork(cidr string) (userNet, error) {
	if cidr == "" {
		cidr = "10.0.2.0/24"
	}
	_, n, err := net.ParseCIDR(cidr)
	if err != nil || n.IP.To4() == nil {
		return userNet{}, fmt.Errorf("vm: bad network %q (want an IPv4 CIDR)", cidr)
	}
	ones, _ := n.Mask.Size()
	if ones > 27 {
		return userNet{}, fmt.Errorf("vm: network %q too small (want /27 or larger)", cidr)
	}
	nth := func(i byte) net.IP {
		ip := append(net.IP{}, n.IP.To4()...)
		ip[3] += i
		return ip
	}
	return userNet{cidr: n.String(), net: n, prefix: ones, host: nth(2), dns: nth(3), guest: nth(15)}, nil
}

// Paths are the files a run uses.
type Paths struct {
	Repo      string // repository root
	Cache     string // .cache/vm
	KernelDir string // the extracted kernel package (modprobe -d)
	Version   string // kernel release, e.g. 6.1.0-56-amd64
	Kernel    string // vmlinux (PVH) when prepare.sh could extract it, else vmlinuz
	Initramfs string
}

// Locate finds the repository and the cache: $SVCPROXY_VM_CACHE if set, else
// .cache/vm under the module root found above the working directory (or
// above this source file).
func Locate() (Paths, error) {
	var p Paths
	p.Repo = findRepo()
	p.Cache = os.Getenv("SVCPROXY_VM_CACHE")
	if p.Cache == "" {
		if p.Repo == "" {
			return p, errors.New("cannot find the svcproxy repository (go.mod of svcproxy.dev/svcproxy) above the working directory; set SVCPROXY_VM_CACHE")
		}
		p.Cache = filepath.Join(p.Repo, ".cache", "vm")
	}
	p.KernelDir = filepath.Join(p.Cache, "kernel")
	b, err := os.ReadFile(filepath.Join(p.Cache, "kernel.version"))
	if err != nil {
		return p, fmt.Errorf("VM cache not prepared (run hack/vm/prepare.sh as root): %w", err)
	}
	p.Version = strings.TrimSpace(string(b))
	// The uncompressed vmlinux (PVH entry) boots about 3 s faster than the
	// bzImage, which has to decompress itself under emulation.
	p.Kernel = filepath.Join(p.KernelDir, "boot", "vmlinuz-"+p.Version)
	if b, err := os.ReadFile(filepath.Join(p.Cache, "vmlinux.version")); err == nil && strings.TrimSpace(string(b)) == p.Version {
		p.Kernel = filepath.Join(p.Cache, "vmlinux")
	}
	p.Initramfs = filepath.Join(p.Cache, "initramfs.cpio")
	return p, nil
}

func findRepo() string {
	isRepo := func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		return err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module svcproxy.dev/svcproxy\n"))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if isRepo(dir) {
				return dir
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if dir := filepath.Join(filepath.Dir(file), "..", ".."); isRepo(dir) {
			return filepath.Clean(dir)
		}
	}
	return ""
}

// Available reports why a guest cannot be run here, or nil: it needs root,
// qemu-system-x86_64, the host's modprobe and a cache prepared by
// hack/vm/prepare.sh that is not older than hack/vm/init.sh and modules.txt.
func Available() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the guest shares the host's / and loads modules)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64 (package qemu-system-x86; run hack/vm/prepare.sh)")
	}
	if _, err := os.Stat("/usr/sbin/modprobe"); err != nil {
		missing = append(missing, "/usr/sbin/modprobe (package kmod; run hack/vm/prepare.sh)")
	}
	p, err := Locate()
	if err != nil {
		missing = append(missing, err.Error())
	} else {
		var initrdTime time.Time
		for _, f := range []string{p.Kernel, p.Initramfs, filepath.Join(p.KernelDir, "lib", "modules", p.Version, "modules.dep.bin")} {
			st, err := os.Stat(f)
			if err != nil {
				missing = append(missing, f+" (run hack/vm/prepare.sh)")
				continue
			}
			if f == p.Initramfs {
				initrdTime = st.ModTime()
			}
		}
		if !initrdTime.IsZero() && p.Repo != "" {
			for _, f := range []string{"init.sh", "modules.txt", "prepare.sh"} {
				if st, err := os.Stat(filepath.Join(p.Repo, "hack", "vm", f)); err == nil && st.ModTime().After(initrdTime) {
					missing = append(missing, fmt.Sprintf("an initramfs newer than hack/vm/%s (rerun hack/vm/prepare.sh)", f))
				}
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("VM guest unavailable, missing: %s", strings.Join(missing, "; "))
	}
	return nil
}

// Run boots a guest, runs opts.Command in it and returns its exit status and
// output. An error means the guest did not report an exit status (QEMU
// failed, timeout, cancellation, broken setup); a command that fails is not
// an error, only a non-zero Result.ExitCode.
func Run(ctx context.Context, opts RunOptions) (Result, error) {
	var res Result
	if len(opts.Command) == 0 {
		return res, errors.New("vm: empty command")
	}
	if err := Available(); err != nil {
		return res, err
	}
	p, err := Locate()
	if err != nil {
		return res, err
	}
	if opts.Memory <= 0 {
		opts.Memory = 4096
	}
	if opts.CPUs <= 0 {
		opts.CPUs = 2
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
	}
	if opts.Dir == "" {
		opts.Dir = "/"
	}
	share := ""
	if opts.ShareDir != "" {
		abs, err := filepath.Abs(opts.ShareDir)
		if err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			return res, fmt.Errorf("vm: share dir: %w", err)
		}
		if st, err := os.Stat(abs); err != nil || !st.IsDir() {
			return res, fmt.Errorf("vm: share dir %s is not a directory", abs)
		}
		if abs == "/" {
			return res, errors.New("vm: share dir cannot be /")
		}
		share = abs
	}

	ctl, err := os.MkdirTemp("", "svcvm-")
	if err != nil {
		return res, err
	}
	if opts.KeepCtl {
		res.CtlDir = ctl
	} else {
		defer os.RemoveAll(ctl)
	}
	args := []string{
		"-accel", "tcg", "-cpu", "max",
		"-nographic", "-no-reboot",
		"-m", strconv.Itoa(opts.Memory), "-smp", strconv.Itoa(opts.CPUs),
		"-kernel", p.Kernel, "-initrd", p.Initramfs,
		"-append", strings.Join(append([]string{"console=ttyS0", "quiet", "panic=-1"}, opts.KernelArgs...), " "),
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + qemuEscape(ctl) + ",mount_tag=ctl,security_model=none,multidevs=remap",
	}
	if share != "" {
		args = append(args, "-virtfs", "local,path="+qemuEscape(share)+",mount_tag=share,security_model=none,multidevs=remap")
	}
	switch {
	case opts.Tap != "":
		if len(opts.Forwards) > 0 || opts.TapNetns == "" {
			return res, fmt.Errorf("vm: Tap %q needs TapNetns and excludes Forwards", opts.Tap)
		}
		args = append(args, "-netdev", "tap,id=n0,script=no,downscript=no,ifname="+qemuEscape(opts.Tap),
			"-device", "virtio-net-pci,netdev=n0")
	case len(opts.Forwards) == 0:
		args = append(args, "-nic", "none")
	default:
		nw, err := userNetwork(opts.Network)
		if err != nil {
			return res, err
		}
		netdev := fmt.Sprintf("user,id=n0,restrict=on,net=%s,host=%s,dns=%s,dhcpstart=%s", nw.cidr, nw.host, nw.dns, nw.guest)
		for _, f := range opts.Forwards {
			host, port, err := net.SplitHostPort(f.GuestAddr)
			ip := net.ParseIP(host)
			if err != nil || ip == nil || !nw.net.Contains(ip) || ip.Equal(nw.host) || ip.Equal(nw.dns) || ip.Equal(nw.guest) || len(f.HostCommand) == 0 {
				return res, fmt.Errorf("vm: bad forward %q -> %q (the guest address must lie in %s and not be .2, .3 or .15)", f.GuestAddr, f.HostCommand, nw.cidr)
			}
			netdev += ",guestfwd=tcp:" + host + ":" + port + "-cmd:" + qemuEscape(shellJoin(f.HostCommand))
		}
		args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0")
		opts.Network = fmt.Sprintf("%s/%d", nw.guest, nw.prefix)
	}

	if err := writeCtl(ctl, p, share, opts); err != nil {
		return res, err
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	qemu := []string{"qemu-system-x86_64"}
	if opts.Tap != "" {
		// QEMU makes the TAP in the namespace it runs in.
		qemu = []string{"nsenter", "--net=/var/run/netns/" + opts.TapNetns, "qemu-system-x86_64"}
	}
	cmd := exec.CommandContext(ctx, qemu[0], append(qemu[1:], args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		// QEMU and the forward commands it spawned.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	console := &tailBuffer{max: 1 << 20}
	var out io.Writer = console
	if opts.Console != nil {
		out = io.MultiWriter(console, opts.Console)
	}
	cmd.Stdout = out
	cmd.Stderr = out
	start := time.Now()
	runErr := cmd.Run()
	res.Duration = time.Since(start)
	if cmd.Process != nil {
		// Forward commands QEMU spawned and left behind, if any.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	res.Console = console.String()
	if opts.KeepCtl {
		_ = os.WriteFile(filepath.Join(ctl, "console"), []byte(res.Console), 0o644)
	}

	if b, err := os.ReadFile(filepath.Join(ctl, "output")); err == nil {
		res.Output = string(b)
	}
	if b, err := os.ReadFile(filepath.Join(ctl, "setup.log")); err == nil {
		res.SetupLog = string(b)
	}
	times := readTimes(filepath.Join(ctl, "times"))
	if s, ok := times["start"]; ok {
		if e, ok := times["end"]; ok {
			res.CommandTime = e - s
		}
	}
	res.Boot = res.Duration - res.CommandTime

	rcText, rcErr := os.ReadFile(filepath.Join(ctl, "rc"))
	if ctx.Err() != nil {
		return res, fmt.Errorf("vm: guest killed after %v: %w%s", res.Duration.Round(time.Millisecond), ctx.Err(), diag(res))
	}
	if rcErr != nil {
		return res, fmt.Errorf("vm: guest ended without an exit status (qemu: %v)%s", runErr, diag(res))
	}
	res.ExitCode, err = strconv.Atoi(strings.TrimSpace(string(rcText)))
	if err != nil {
		return res, fmt.Errorf("vm: bad exit status %q", rcText)
	}
	return res, nil
}

func diag(res Result) string {
	s := ""
	if res.SetupLog != "" {
		s += "\nsetup log:\n" + lastLines(res.SetupLog, 20)
	}
	if res.Console != "" {
		s += "\nconsole:\n" + lastLines(res.Console, 30)
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func writeCtl(ctl string, p Paths, share string, opts RunOptions) error {
	rootCache := "loose"
	if opts.RootCacheNone {
		rootCache = "none"
	}
	tee := "0"
	if opts.Console != nil {
		tee = "1"
	}
	shareCache := "none"
	if opts.ShareCache {
		shareCache = "loose"
	}
	systemd := "0"
	if opts.Systemd {
		systemd = "1"
	}
	params := fmt.Sprintf("KDIR=%s\nSHARE=%s\nTEE=%s\nROOTCACHE=%s\nSHARECACHE=%s\nKEEP=%s\nSYSTEMD=%s\n",
		shellQuote(p.KernelDir), shellQuote(share), tee, rootCache, shareCache, shellQuote(strings.Join(keepVisible(p), " ")), systemd)
	var script strings.Builder
	script.WriteString("# run by the guest's /init chrooted in the host's /, or with Systemd by svcvm-run.service\n")
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "TERM=dumb", "SVCPROXY_VM_GUEST=1",
	}
	for _, kv := range append(env, opts.Env...) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validName(k) {
			return fmt.Errorf("vm: bad env entry %q", kv)
		}
		fmt.Fprintf(&script, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(&script, "cd %s || exit 125\nexec %s\n", shellQuote(opts.Dir), shellJoin(opts.Command))
	files := map[string]string{"params": params, "cmd.sh": script.String()}
	if opts.Modules != nil || len(opts.ExtraModules) > 0 {
		mods := opts.Modules
		if mods == nil {
			b, err := os.ReadFile(filepath.Join(p.Repo, "hack", "vm", "modules.txt"))
			if err != nil {
				return fmt.Errorf("vm: default module list: %w", err)
			}
			mods = parseList(string(b))
		}
		mods = append(append([]string{}, mods...), opts.ExtraModules...)
		files["modules"] = "# modules of this run\n" + strings.Join(mods, "\n") + "\n"
	}
	if len(opts.Forwards) > 0 || opts.Tap != "" {
		net := fmt.Sprintf(`set -e
modprobe -d %s virtio_net
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
`, shellQuote(p.KernelDir))
		if opts.Network != "" {
			net += fmt.Sprintf("ip link set eth0 up\nip addr add %s dev eth0\n", opts.Network)
		}
		files["net.sh"] = net
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(ctl, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func parseList(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		out = append(out, strings.Fields(line)...)
	}
	return out
}

func readTimes(path string) map[string]time.Duration {
	m := map[string]time.Duration{}
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if secs, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			m[name] = time.Duration(secs * float64(time.Second))
		}
	}
	return m
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./=:,+@%", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// qemuEscape doubles commas, QEMU's escape inside an option value.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// keepVisible lists the host directories the guest must still see although
// they sit under a directory it covers with a tmpfs (/tmp, /run, /var/tmp):
// a checkout (and so the kernel cache and the binaries) under /tmp, as a CI
// clone may be.
func keepVisible(p Paths) []string {
	var out []string
	for _, dir := range []string{p.Repo, p.Cache} {
		if dir == "" || strings.ContainsAny(dir, " \t\n'\"") {
			continue
		}
		for _, covered := range []string{"/tmp/", "/run/", "/var/tmp/"} {
			if strings.HasPrefix(dir+"/", covered) {
				out = append(out, dir)
			}
		}
	}
	return out
}
