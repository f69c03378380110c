package systemd

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/nsutil"
)

const (
	nodeName    = "systemd-node"
	clusterCIDR = "10.180.0.0/16"
	backendIP   = "10.180.0.1"
	clientIP    = "10.180.0.9"
	clusterIP   = "172.30.0.41"
	podGateway  = "169.254.1.1"
	configPath  = "/etc/svcproxy/config.yaml"
	metricsURL  = "http://127.0.0.1:10249/metrics"
	// conntrackMax is the host's conntrack table size, which the proxy
	// raises to its conntrack settings.
	conntrackMax = "/proc/sys/net/netfilter/nf_conntrack_max"
)

func readInt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

var (
	service = netip.MustParseAddrPort(clusterIP + ":80")
	backend = netip.MustParseAddrPort(backendIP + ":8080")
)

// guest is the state of TestGuestSystemd: the checkout it installs from
// (its working directory) and the client namespace it sends traffic from.
type guest struct {
	t      *testing.T
	dir    string
	client acceptance.Client
}

// TestGuestSystemd runs inside the systemd guest (see TestSystemdNodeAgent),
// itself as the unit svcvm-run.service.
func TestGuestSystemd(t *testing.T) {
	if os.Getenv("SVCPROXY_VM_GUEST") != "1" {
		t.Skip("runs inside the QEMU guest only (started by TestSystemdNodeAgent)")
	}
	if b, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(b)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd", strings.TrimSpace(string(b)))
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, dir: dir}
	g.createObjects()
	g.buildNetwork()

	t.Run("install and start, iptables mode", func(t *testing.T) { g.install(t, "iptables") })
	t.Run("kill -9, systemd restarts it", g.crash)
	t.Run("systemctl reload", g.reload)
	t.Run("broken config file", g.brokenConfig)
	t.Run("stop leaves the rules", g.stop)
	t.Run("start in ipvs mode", func(t *testing.T) { g.install(t, "ipvs") })
	t.Run("remove", g.remove)
}

// run runs a command and logs it with its output, as a transcript.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	status := ""
	if err != nil {
		status = fmt.Sprintf("  [%v]", err)
	}
	t.Logf("$ %s %s%s\n%s", name, strings.Join(args, " "), status, strings.TrimRight(string(out), "\n"))
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// show returns one property of the unit (systemctl show -p NAME --value).
func show(t *testing.T, prop string) string {
	t.Helper()
	out, err := exec.Command("systemctl", "show", "-p", prop, "--value", "svcproxy").Output()
	if err != nil {
		t.Fatalf("systemctl show -p %s: %v", prop, err)
	}
	return strings.TrimSpace(string(out))
}

func (g *guest) createObjects() {
	t := g.t
	api, err := acceptance.APIFromKubeconfig(filepath.Join(g.dir, "kubeconfig"), strings.Split(os.Getenv("SERVICE_CIDRS"), ","))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	svc := acceptance.Service{Namespace: "ns1", Name: "web", ClusterIP: clusterIP,
		Ports: []acceptance.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}}
	if err := api.EnsureServiceCIDRs(ctx, nil, []acceptance.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if err := api.CreateNode(ctx, acceptance.Node{Name: nodeName, IPs: []string{eth0IP(t)}, ClusterCIDR: clusterCIDR}, ""); err != nil {
		t.Fatal(err)
	}
	if err := api.ApplyService(ctx, svc); err != nil {
		t.Fatal(err)
	}
	es := acceptance.EndpointSlice{Namespace: "ns1", Service: "web", Name: "web-1", AddressType: "IPv4",
		Ports:     []acceptance.SlicePort{{Name: ptr.To("http"), Protocol: "TCP", Port: ptr.To(int32(8080))}},
		Endpoints: []acceptance.Endpoint{{Addresses: []string{backendIP}, NodeName: ptr.To(nodeName)}}}
	if err := api.ApplySlice(ctx, es); err != nil {
		t.Fatal(err)
	}
}

// eth0IP is the guest's address on the network that reaches the API server.
func eth0IP(t *testing.T) string {
	ifc, err := net.InterfaceByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ifc.Addrs()
	if err != nil || len(addrs) == 0 {
		t.Fatalf("eth0 addresses: %v %v", addrs, err)
	}
	return addrs[0].(*net.IPNet).IP.String()
}

// buildNetwork gives the guest (the node) a backend pod and a client pod,
// each a network namespace behind a veth, routed through the node.
func (g *guest) buildNetwork() {
	t := g.t
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		mustRun(t, c[0], c[1:]...)
	}
	pod := g.pod("pod", backendIP)
	g.client = acceptance.Client{Netns: g.pod("client", clientIP), Bind: netip.MustParseAddr(clientIP)}
	log, err := os.Create(filepath.Join(g.dir, "responder.log"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := nsutil.StartIn(pod, log, filepath.Join(g.dir, "bin", "responder"), "--addr", backendIP, "--tcp", "8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
}

// pod makes a namespace with ip on a veth to the node: a /32 on its end, a
// route to it on the node's end, and a default route through the node's
// end, which carries the link-local gateway address (one address on every
// pod's veth, as some CNI plugins do).
func (g *guest) pod(role, ip string) string {
	t := g.t
	ns := nsutil.Name(role)
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(ns) })
	host := role + "-h"
	for _, args := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"addr", "add", podGateway + "/32", "dev", host},
		{"link", "set", host, "up"},
		{"route", "add", ip + "/32", "dev", host},
		{"-n", ns, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", podGateway, "dev", "eth0"},
		{"-n", ns, "route", "add", "default", "via", podGateway},
	} {
		if err := nsutil.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// config is config/<mode>.yaml as the README says to edit it: the Node's
// name and the cluster CIDR, plus verbosity 2 so each SIGHUP is logged.
func (g *guest) config(t *testing.T, mode string, edit func(map[string]any)) []byte {
	b, err := os.ReadFile(filepath.Join(g.dir, "config", mode+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["hostnameOverride"] = nodeName
	cfg["clusterCIDR"] = clusterCIDR
	cfg["logging"] = map[string]any{"verbosity": 2}
	if edit != nil {
		edit(cfg)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (g *guest) writeConfig(t *testing.T, b []byte) {
	if err := os.WriteFile(configPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// install follows config/README.md's "On a node" steps.
func (g *guest) install(t *testing.T, mode string) {
	edited := filepath.Join(g.dir, mode+"-edited.yaml")
	if err := os.WriteFile(edited, g.config(t, mode, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "install", "-m", "0755", filepath.Join(g.dir, "bin", "proxy"), "/usr/local/bin/proxy")
	mustRun(t, "install", "-D", "-m", "0644", edited, configPath)
	mustRun(t, "install", "-D", "-m", "0600", filepath.Join(g.dir, "kubeconfig"), "/etc/svcproxy/kubeconfig")
	mustRun(t, "install", "-m", "0644", filepath.Join(g.dir, "config", "svcproxy.service"), "/etc/systemd/system/")
	mustRun(t, "systemctl", "daemon-reload")
	conntrackBefore := readInt(t, conntrackMax)
	started := time.Now()
	if mode == "iptables" {
		mustRun(t, "systemctl", "enable", "--now", "svcproxy")
	} else {
		// Switching modes: an edit of the file and a restart.
		mustRun(t, "systemctl", "restart", "svcproxy")
	}
	if s := show(t, "ActiveState"); s != "active" {
		t.Fatalf("ActiveState %s after start", s)
	}
	// The rules of this process, not the ones a previous run left.
	waitSynced(t, started, 3*time.Minute)
	waitStatus(t, "first sync done")
	g.waitTraffic(t, time.Minute)
	run(t, "systemctl", "status", "--no-pager", "svcproxy")
	checkHardening(t)
	// config/*.yaml: conntrack.min 131072 (maxPerCore 32768 x 2 CPUs is
	// less): the sandboxed proxy must still raise the host's table size.
	after := readInt(t, conntrackMax)
	t.Logf("nf_conntrack_max %d before the start, %d after", conntrackBefore, after)
	if after < 131072 {
		t.Errorf("nf_conntrack_max %d after the start, want at least conntrack.min 131072", after)
	}
	if mode == "ipvs" {
		out := mustRun(t, "ipvsadm", "-Ln", "-t", service.String())
		if !strings.Contains(out, backend.String()) {
			t.Errorf("virtual server %s lacks real server %s", service, backend)
		}
		waitNoIPTablesServices(t)
	} else {
		out := mustRun(t, "iptables-save", "-t", "nat")
		if !strings.Contains(out, "ns1/web:http") {
			t.Error("no rule for ns1/web in the nat table")
		}
	}
}

// waitSynced waits until the running proxy has synced after since.
func waitSynced(t *testing.T, since time.Time, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ts, err := lastSync()
		if err == nil && ts > float64(since.UnixNano())/1e9 {
			t.Logf("synced %.1f s after the start", ts-float64(since.UnixNano())/1e9)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sync %v after the start (last %v, %v)", limit, ts, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitStatus waits until the unit's status line (sd_notify STATUS=, shown
// by `systemctl status`) contains want.
func waitStatus(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := show(t, "StatusText")
		if strings.Contains(got, want) {
			t.Logf("status: %s", got)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %q, want it to contain %q", got, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitNoIPTablesServices waits until, after a switch to IPVS mode, the
// proxy has removed the iptables mode's Service chains.
func waitNoIPTablesServices(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.Command("iptables-save", "-t", "nat").Output()
		if err == nil && !strings.Contains(string(out), "KUBE-SVC-") {
			t.Log("the iptables mode's KUBE-SVC- chains are gone")
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("iptables mode's Service chains still there a minute after the switch:\n%s", out)
		}
		time.Sleep(time.Second)
	}
}

// checkHardening shows the unit's sandbox as systemd applied it to the
// running process, and fails on any permission error in the proxy's log
// (the sandbox must not keep it from writing iptables, ipsets, IPVS,
// conntrack or sysctls).
func checkHardening(t *testing.T) {
	t.Helper()
	run(t, "systemctl", "show", "-p", "CapabilityBoundingSet", "-p", "ProtectSystem", "-p", "NoNewPrivileges", "-p", "RestrictAddressFamilies", "svcproxy")
	run(t, "grep", "^Cap", "/proc/"+show(t, "MainPID")+"/status")
	out, _ := exec.Command("journalctl", "-u", "svcproxy", "--no-pager", "-o", "cat").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "Cannot tell whether this is the host's network namespace") {
			// Expected: PID 1's namespace link needs CAP_SYS_PTRACE, which
			// the unit leaves out; the proxy goes on and raises
			// nf_conntrack_max all the same (checked below).
			continue
		}
		l := strings.ToLower(line)
		if strings.Contains(l, "permission denied") || strings.Contains(l, "operation not permitted") || strings.Contains(l, "read-only file system") {
			t.Errorf("the sandbox got in the way: %s", line)
		}
	}
}

// attempt opens one connection from the client pod to the Service.
func (g *guest) attempt() acceptance.Attempt {
	return g.client.Attempt("TCP", service, 2*time.Second)
}

// waitTraffic waits until a connection to the ClusterIP reaches the
// backend pod.
func (g *guest) waitTraffic(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		a := g.attempt()
		if a.Class == acceptance.ClassBackend && a.Backend == backend {
			t.Logf("%s -> %s answered by %s", clientIP, service, a.Backend)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no traffic to %s after %v: last attempt %s", service, limit, a.Label())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// prober opens a connection to the Service every interval until stopped
// and counts the ones that did not reach the backend.
type prober struct {
	mu              sync.Mutex
	total, failures int
	firstFailure    string
	stop            chan struct{}
	done            chan struct{}
}

func (g *guest) startProber(interval time.Duration) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
			a := g.attempt()
			p.mu.Lock()
			p.total++
			if a.Class != acceptance.ClassBackend || a.Backend != backend {
				p.failures++
				if p.firstFailure == "" {
					p.firstFailure = a.Label()
				}
			}
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *prober) finish() (total, failures int, first string) {
	close(p.stop)
	<-p.done
	return p.total, p.failures, p.firstFailure
}

// lastSync reads the proxy's newest sync time from its metrics.
func lastSync() (float64, error) {
	resp, err := http.Get(metricsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	newest := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > newest {
			newest = v
		}
	}
	return newest, sc.Err()
}

// crash kills the proxy with SIGKILL under traffic: systemd must restart
// it (Restart=), the rules it left must keep carrying every connection
// meanwhile, and the new process must sync (adopting them).
func (g *guest) crash(t *testing.T) {
	pid := show(t, "MainPID")
	restarts := show(t, "NRestarts")
	p := g.startProber(200 * time.Millisecond)
	killed := time.Now()
	mustRun(t, "kill", "-9", pid)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		newPID := show(t, "MainPID")
		if newPID != pid && newPID != "0" && show(t, "ActiveState") == "active" {
			if ts, err := lastSync(); err == nil && ts > float64(killed.Unix()) {
				t.Logf("restarted as PID %s, synced %.1f s after the kill", newPID, ts-float64(killed.UnixNano())/1e9)
				break
			}
		}
		if time.Now().After(deadline) {
			run(t, "systemctl", "status", "--no-pager", "svcproxy")
			total, failures, _ := p.finish()
			t.Fatalf("not restarted and synced 2 minutes after kill -9 (MainPID %s, %d/%d probes failed)", show(t, "MainPID"), failures, total)
		}
		time.Sleep(500 * time.Millisecond)
	}
	total, failures, first := p.finish()
	t.Logf("probes while the proxy was down and restarting: %d, failed: %d", total, failures)
	if failures > 0 {
		t.Errorf("%d of %d connections failed across the restart (first: %s)", failures, total, first)
	}
	n := mustRun(t, "systemctl", "show", "-p", "NRestarts", "svcproxy")
	if got := strings.TrimSpace(strings.TrimPrefix(n, "NRestarts=")); got == restarts {
		t.Errorf("NRestarts still %s after the crash", got)
	}
	run(t, "journalctl", "-u", "svcproxy", "--no-pager", "-o", "short", "-n", "6", "--grep", "Main process|Scheduled restart|Started|Starting svcproxy")
}

// reload: `systemctl reload` must reach the proxy as a SIGHUP that
// re-reads the file (shown with the file unchanged, so the 2 s poll of the
// file cannot be the one that read it), and a changed setting that applies
// at once must be applied (by whichever of the SIGHUP and the poll reads
// the new file first; the journal line names it).
func (g *guest) reload(t *testing.T) {
	since := time.Now().Format("2006-01-02 15:04:05")
	mustRun(t, "systemctl", "reload", "svcproxy")
	g.waitJournal(t, since, `"Configuration re-read" trigger="SIGHUP" changes=0`)
	time.Sleep(time.Second) // journalctl --since counts whole seconds
	since = time.Now().Format("2006-01-02 15:04:05")
	g.writeConfig(t, g.config(t, "iptables", func(c map[string]any) {
		c["iptables"].(map[string]any)["syncPeriod"] = "20s"
	}))
	mustRun(t, "systemctl", "reload", "svcproxy")
	g.waitJournal(t, since, `"Configuration change applied" field="iptables.syncPeriod" old="30s" new="20s"`)
}

// waitJournal waits for a line of the unit's journal since a time.
func (g *guest) waitJournal(t *testing.T, since, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := exec.Command("journalctl", "-u", "svcproxy", "--no-pager", "-o", "cat", "--since", since).Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, want) {
				t.Logf("$ journalctl -u svcproxy --since %q | grep ...\n%s", since, line)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal has no %s since %s:\n%s", want, since, out)
		}
		time.Sleep(time.Second)
	}
}

// brokenConfig: a config file that does not load makes `systemctl start`
// fail, shows the error naming the field in the journal, and leaves the
// unit failed instead of restarting it every few seconds. Traffic keeps
// flowing on the rules already written.
func (g *guest) brokenConfig(t *testing.T) {
	mustRun(t, "systemctl", "stop", "svcproxy")
	good, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(good), "syncPeriod: 20s", "syncPeriod: 3x", 1)
	if bad == string(good) {
		t.Fatalf("no syncPeriod: 20s in %s:\n%s", configPath, good)
	}
	since := time.Now().Format("2006-01-02 15:04:05")
	g.writeConfig(t, []byte(bad))
	if _, err := run(t, "systemctl", "start", "svcproxy"); err == nil {
		t.Error("systemctl start succeeded with a broken config file")
	}
	// A manual start resets the count; any automatic restart adds to it.
	restarts := show(t, "NRestarts")
	g.waitJournal(t, since, `iptables.syncPeriod: invalid duration "3x"`)
	// Longer than RestartSec: a restart loop would have begun.
	time.Sleep(8 * time.Second)
	run(t, "systemctl", "status", "--no-pager", "svcproxy")
	if s, r := show(t, "ActiveState"), show(t, "NRestarts"); s != "failed" || r != restarts || r != "0" {
		t.Errorf("after a broken config: ActiveState %s (want failed), NRestarts %s (%s right after the start; want 0)", s, r, restarts)
	}
	if a := g.attempt(); a.Class != acceptance.ClassBackend {
		t.Errorf("traffic with the proxy failed: %s", a.Label())
	}
	g.writeConfig(t, good)
	mustRun(t, "systemctl", "start", "svcproxy")
	g.waitTraffic(t, time.Minute)
}

// stop: systemctl stop leaves the rules in place, and they keep working.
func (g *guest) stop(t *testing.T) {
	mustRun(t, "systemctl", "stop", "svcproxy")
	if s := show(t, "ActiveState"); s != "inactive" {
		t.Errorf("ActiveState %s after stop", s)
	}
	out := mustRun(t, "sh", "-c", "iptables-save -t nat | grep -c 'ns1/web'")
	if strings.TrimSpace(out) == "0" {
		t.Error("stop removed the Service's rules")
	}
	if a := g.attempt(); a.Class != acceptance.ClassBackend {
		t.Errorf("traffic after stop: %s", a.Label())
	}
}

// remove follows config/README.md's "Removing svcproxy": afterwards no
// KUBE- rule, ipset, virtual server or kube-ipvs0, no unit, no process.
func (g *guest) remove(t *testing.T) {
	mustRun(t, "systemctl", "disable", "--now", "svcproxy")
	mustRun(t, "/usr/local/bin/proxy", "--cleanup")
	mustRun(t, "rm", "/etc/systemd/system/svcproxy.service", "/usr/local/bin/proxy")
	mustRun(t, "rm", "-r", "/etc/svcproxy")
	mustRun(t, "systemctl", "daemon-reload")
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		out, _ := run(t, "sh", "-c", save+" 2>/dev/null | grep KUBE- || true")
		if strings.TrimSpace(out) != "" {
			t.Errorf("%s still has KUBE- chains or rules", save)
		}
	}
	if out, _ := run(t, "sh", "-c", "ipset list -n 2>/dev/null | grep KUBE- || true"); strings.TrimSpace(out) != "" {
		t.Error("KUBE- ipsets left")
	}
	if out := mustRun(t, "ipvsadm", "-Sn"); strings.TrimSpace(out) != "" {
		t.Error("IPVS virtual servers left")
	}
	if _, err := net.InterfaceByName("kube-ipvs0"); err == nil {
		t.Error("kube-ipvs0 left")
	}
	if out, _ := run(t, "systemctl", "list-unit-files", "--no-legend", "svcproxy.service"); strings.TrimSpace(out) != "" {
		t.Error("the unit is still known to systemd")
	}
	if out, err := run(t, "pgrep", "-f", "/usr/local/bin/proxy --config"); err == nil {
		t.Errorf("a proxy process is left: %s", out)
	}
}
