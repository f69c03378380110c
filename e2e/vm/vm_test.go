package vm

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"
)

// The tests boot a guest only when it can run here: root, QEMU and a cache
// made by hack/vm/prepare.sh. SVCPROXY_VM=1 turns a missing piece into a
// failure (and runs in -short mode too), SVCPROXY_VM=0 skips them.
//
// The test binary doubles as the guest's Go program: the host copies it into
// the shared directory and runs it in the guest with -test.run=TestGuest...,
// where SVCPROXY_VM_GUEST=1 (set by Run) enables those tests.

func requireVM(t *testing.T) {
	t.Helper()
	if inGuest() {
		t.Skip("inside the guest")
	}
	err := Available()
	switch os.Getenv("SVCPROXY_VM") {
	case "0":
		t.Skip("SVCPROXY_VM=0")
	case "1":
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil {
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("boots a QEMU guest (several seconds); SVCPROXY_VM=1 runs it in -short mode")
	}
}

func inGuest() bool { return os.Getenv("SVCPROXY_VM_GUEST") == "1" }

func requireGuest(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestVM)")
	}
}

// shareSelf copies the running test binary into a fresh shared directory.
func shareSelf(t *testing.T) (dir, bin string) {
	t.Helper()
	dir = t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "vm.test")
	copyFile(t, self, bin)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

func logResult(t *testing.T, res Result) {
	t.Helper()
	t.Logf("run %v: boot %v, command %v, exit %d",
		res.Duration.Round(time.Millisecond), res.Boot.Round(time.Millisecond),
		res.CommandTime.Round(time.Millisecond), res.ExitCode)
	if res.SetupLog != "" {
		t.Logf("setup log:\n%s", res.SetupLog)
	}
}

// TestVM boots one guest and checks the kernel features the IPVS proxy needs,
// with the host's own tools, and moby/ipvs from a host-compiled Go binary.
func TestVM(t *testing.T) {
	requireVM(t)
	share, _ := shareSelf(t)
	script := `set -e
echo "== kernel $(uname -r)"
ipvsadm -A -t 10.9.9.9:80 -s rr
ipvsadm -Ln
echo "== dummy"
ip link add kube-ipvs0 type dummy
ip -o link show kube-ipvs0
echo "== iptables"
iptables -t nat -L -n
echo "== ipset"
ipset create x hash:ip
ipset list -n
echo "== moby/ipvs"
./vm.test -test.run '^TestGuestIPVS$' -test.v -test.count=1
echo "== share"
echo "written in $MARK" >"$SHARE/from-guest"
exit 7
`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, RunOptions{
		Command:  []string{"/bin/sh", "-c", script},
		Env:      []string{"SHARE=" + share, "MARK=the guest"},
		Dir:      share,
		ShareDir: share,
		// vm.test starts faster from a cached share.
		ShareCache: true,
		Timeout:    4 * time.Minute,
	})
	logResult(t, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", res.Output)
	if res.ExitCode != 7 {
		t.Fatalf("exit code %d, want 7 (the script's own)", res.ExitCode)
	}
	for _, want := range []string{
		"TCP  10.9.9.9:80 rr",
		"kube-ipvs0:",
		"Chain POSTROUTING (policy ACCEPT)",
		"\nx\n",
		"--- PASS: TestGuestIPVS",
	} {
		if !strings.Contains(res.Output, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(share, "from-guest")); err != nil || string(b) != "written in the guest\n" {
		t.Errorf("shared file: %q, %v", b, err)
	}
}

// TestGuestIPVS runs inside the guest (see TestVM): moby/ipvs sees the
// virtual server ipvsadm made and manages one of its own.
func TestGuestIPVS(t *testing.T) {
	requireGuest(t)
	h, err := ipvs.New("")
	if err != nil {
		t.Fatalf("ipvs.New: %v", err)
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatalf("GetServices: %v", err)
	}
	found := false
	for _, s := range svcs {
		t.Logf("service %s:%d proto %d sched %s", s.Address, s.Port, s.Protocol, s.SchedName)
		if s.Address.Equal(net.ParseIP("10.9.9.9")) && s.Port == 80 && s.SchedName == "rr" {
			found = true
		}
	}
	if !found {
		t.Errorf("GetServices does not list 10.9.9.9:80 rr (made by ipvsadm)")
	}
	svc := &ipvs.Service{
		AddressFamily: syscall.AF_INET,
		Protocol:      syscall.IPPROTO_TCP,
		Address:       net.ParseIP("10.9.9.10"),
		Port:          443,
		SchedName:     "wrr",
		Netmask:       0xffffffff,
	}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("NewService: %v", err)
	}
	dst := &ipvs.Destination{
		AddressFamily: syscall.AF_INET,
		Address:       net.ParseIP("10.1.1.1"),
		Port:          8443,
		Weight:        3,
	}
	if err := h.NewDestination(svc, dst); err != nil {
		t.Fatalf("NewDestination: %v", err)
	}
	got, err := h.GetService(svc)
	if err != nil {
		t.Fatalf("GetService: %v", err)
	}
	dsts, err := h.GetDestinations(got)
	if err != nil {
		t.Fatalf("GetDestinations: %v", err)
	}
	if len(dsts) != 1 || !dsts[0].Address.Equal(dst.Address) || dsts[0].Port != 8443 || dsts[0].Weight != 3 {
		t.Errorf("destinations %+v", dsts)
	}
}

// TestVMForward checks the guest-to-host forward of the restricted user
// network: the guest reaches a host loopback listener through it, and
// nothing else of the host.
func TestVMForward(t *testing.T) {
	requireVM(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "host got "+line)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	script := `set -e
echo ping | socat -T10 - TCP:10.0.2.100:80
echo ping | socat -T10 - TCP:10.0.2.100:80
if echo x | socat -T3 - TCP:10.0.2.2:` + port + ` 2>/dev/null; then echo "host reachable"; fi
`
	res, err := Run(context.Background(), RunOptions{
		Command:  []string{"/bin/sh", "-c", script},
		Forwards: []Forward{ForwardTCP("10.0.2.100:80", ln.Addr().String())},
		Timeout:  3 * time.Minute,
	})
	logResult(t, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", res.Output)
	if res.ExitCode != 0 || strings.Count(res.Output, "host got ping\n") != 2 {
		t.Errorf("exit %d, want two answers through the forward", res.ExitCode)
	}
	if strings.Contains(res.Output, "host reachable") {
		t.Errorf("the guest reached the host's loopback outside the forward")
	}
}

// TestVMTimeout checks that the guest is killed when the run times out.
func TestVMTimeout(t *testing.T) {
	requireVM(t)
	start := time.Now()
	res, err := Run(context.Background(), RunOptions{
		Command: []string{"sleep", "600"},
		Timeout: 3 * time.Second,
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("returned after %v", d)
	}
	t.Logf("killed after %v", res.Duration.Round(time.Millisecond))
}

func TestShellQuote(t *testing.T) {
	args := []string{"plain", "", "a b", "it's", `"$HOME"`, "back\\slash", "new\nline", "semi;colon", "*"}
	out, err := exec.Command("/bin/sh", "-c", "for a in "+shellJoin(args)+`; do printf '[%s]' "$a"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, a := range args {
		want += "[" + a + "]"
	}
	if string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
	if got := qemuEscape("/a,b"); got != "/a,,b" {
		t.Errorf("qemuEscape: %q", got)
	}
}

func TestUserNetwork(t *testing.T) {
	n, err := userNetwork("169.254.250.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if n.guest.String() != "169.254.250.15" || n.host.String() != "169.254.250.2" || n.dns.String() != "169.254.250.3" {
		t.Errorf("%+v", n)
	}
	for _, bad := range []string{"fd00::/64", "10.0.0.0/30", "x"} {
		if _, err := userNetwork(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
