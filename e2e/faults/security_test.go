package faults

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
)

const routeLocalnet = "/proc/sys/net/ipv4/conf/all/route_localnet"

// TestSecurityDefaults checks, in the node namespace, what the proxy opens
// and sets with the default settings and with localhost NodePorts off:
// which sockets it listens on (metrics only on 127.0.0.1:10249), whether
// its metrics answer from outside the node, route_localnet, and the
// martian-drop rule that must accompany route_localnet=1 (CVE-2020-8558).
func TestSecurityDefaults(t *testing.T) {
	const vip = "172.30.47.10"
	for _, tc := range []struct {
		name      string
		localhost *bool // iptables.localhostNodePorts; nil: default
		healthz   string
		// what must hold
		wantLocalnet  string
		wantSockets   []string
		wantLocalhost bool // 127.0.0.1:NodePort reaches the backend
	}{
		// The default healthzBindAddress 0.0.0.0:10256 is a wildcard: Go
		// (and so kube-proxy, through k8s.io/utils/net.MultiListen) opens
		// one dual-stack socket for it, which ss shows as *:10256.
		{name: "defaults", wantLocalnet: "1", wantSockets: []string{"*:10256", "127.0.0.1:10249"}, wantLocalhost: true},
		{name: "localhost-off", localhost: ptr.To(false), healthz: nodeIP1 + ":10256", wantLocalnet: "0",
			wantSockets: []string{"127.0.0.1:10249", nodeIP1 + ":10256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t, "sec-"+tc.name, bedOptions{Config: func(cfg map[string]any) {
				delete(cfg, "metricsBindAddress")
				delete(cfg, "healthzBindAddress")
				ipt := cfg["iptables"].(map[string]any)
				delete(ipt, "localhostNodePorts")
				if tc.localhost != nil {
					ipt["localhostNodePorts"] = *tc.localhost
				}
				if tc.healthz != "" {
					cfg["healthzBindAddress"] = tc.healthz
				}
			}})
			b.backend(backendA, false, 80)
			svc := acceptance.Service{Namespace: b.ns, Name: "np", Type: "NodePort", ClusterIP: vip,
				Ports: []acceptance.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: intstr.FromInt32(80), NodePort: 3021}}}
			if err := b.api.ApplyService(b.ctx, svc); err != nil {
				t.Fatal(err)
			}
			b.slice("np", "np-1", []port{{"http", 80}}, backendA)
			before := strings.TrimSpace(b.mustRun("cat", routeLocalnet))
			b.startProxy()

			// Listening sockets of the proxy process.
			pid := b.proc.Cmd.Process.Pid
			var sockets []string
			for _, l := range strings.Split(b.mustRun("ss", "-Hltnp"), "\n") {
				f := strings.Fields(l)
				if len(f) >= 4 && strings.Contains(l, "pid="+strconv.Itoa(pid)+",") {
					sockets = append(sockets, f[3])
				}
			}
			slices.Sort(sockets)
			t.Logf("proxy (pid %d) listens on %v", pid, sockets)
			if !slices.Equal(sockets, tc.wantSockets) {
				t.Errorf("listening sockets %v, want %v", sockets, tc.wantSockets)
			}

			// Metrics are not reachable from outside the node.
			ext := netip.MustParseAddr("203.0.113.2")
			extNS, err := b.topo.EnsureExternal(ext)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.topo.RouteToNode(netip.MustParsePrefix(vip + "/32")); err != nil {
				t.Fatal(err)
			}
			outside := acceptance.Client{Netns: extNS, Bind: ext}
			for _, ip := range []string{nodeIP1, nodeIP2} {
				if a := attempt(outside, ip+":10249", 2*time.Second); a.Class == acceptance.ClassBackend || a.Class == acceptance.ClassLocal || a.Class == acceptance.ClassError {
					t.Errorf("metrics reachable from outside on %s:10249: %s %s", ip, a.Label(), a.Detail)
				} else {
					t.Logf("outside -> %s:10249: %s (%s)", ip, a.Label(), a.Detail)
				}
			}

			// route_localnet and the martian-drop rule.
			after := strings.TrimSpace(b.mustRun("cat", routeLocalnet))
			firewall, _ := b.rules("filter", "KUBE-FIREWALL")
			martian := ""
			for _, l := range strings.Split(firewall, "\n") {
				if strings.Contains(l, "-d 127.0.0.0/8") && strings.Contains(l, "! -s 127.0.0.0/8") && strings.HasSuffix(l, "-j DROP") {
					martian = l
				}
			}
			t.Logf("route_localnet %s before the proxy, %s after; martian-drop rule: %q", before, after, martian)
			if after != tc.wantLocalnet {
				t.Errorf("route_localnet = %s, want %s", after, tc.wantLocalnet)
			}
			if (after == "1") != (martian != "") {
				t.Errorf("route_localnet=%s but martian-drop rule present=%v:\n%s", after, martian != "", firewall)
			}

			// 127.0.0.1:NodePort from the node itself.
			node := acceptance.Client{Netns: b.topo.Node, Bind: netip.MustParseAddr("127.0.0.1")}
			a := attempt(node, "127.0.0.1:3021", 2*time.Second)
			t.Logf("node -> 127.0.0.1:3021: %s %s", a.Label(), a.Detail)
			if got := a.Class == acceptance.ClassBackend; got != tc.wantLocalhost {
				t.Errorf("127.0.0.1:3021 reached a backend = %v, want %v (%s)", got, tc.wantLocalhost, a.Label())
			}
			b.expectBackends(outside, nodeIP1+":3021", 3, backendA)
			record(t, "listens on %v; outside -> metrics refused; route_localnet %s -> %s; martian drop rule present=%v; localhost NodePort served=%v",
				sockets, before, after, martian != "", a.Class == acceptance.ClassBackend)
		})
	}
}

// TestSecurityScenarios runs testdata/security.yaml through the acceptance
// runner: nodePortAddresses limits the NodePort to one node IP (the other
// node IP and 127.0.0.1 reach the node's sentinel), loadBalancerSourceRanges
// drops unlisted sources with real packets, and localhost NodePorts can be
// switched off. The runner starts its own control plane, so the shared one
// is stopped first (their namespace name is per process).
func TestSecurityScenarios(t *testing.T) {
	requireRoot(t)
	proxy := controlplane.ProxyBinary(t)
	responder := responderBinary(t)
	stopSharedControlPlane()
	file, err := filepath.Abs("testdata/security.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	r, err := acceptance.NewRunner(acceptance.Options{Mode: "iptables", File: file, Proxy: proxy, ResponderBin: responder, Out: &out, Log: &log, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	sum, err := r.RunFile(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	t.Logf("acceptance report (%s):\n%s", time.Since(start).Round(time.Second), out.String())
	if sum.Failed > 0 || sum.Skipped > 0 || sum.Passed == 0 {
		t.Errorf("%s\n%s", sum.Line(), log.String())
	}
	var passed []string
	re := regexp.MustCompile(`^(\S+): pass$`)
	for _, l := range strings.Split(out.String(), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			passed = append(passed, m[1])
		}
	}
	record(t, "%s: %s", sum.Line(), strings.Join(passed, ", "))
}
