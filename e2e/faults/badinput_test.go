package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// TestBadInput writes objects the proxy cannot use: those the API server
// rejects go straight into etcd (as e2e/watch does), the others through the
// API. Each must be skipped with a clear log line, without a crash and
// without holding up other Services: a good Service keeps answering real
// traffic, and changes to good Services made afterwards are applied.
func TestBadInput(t *testing.T) {
	b := newBed(t, "bad", bedOptions{})
	const (
		vipGood  = "172.30.46.10"
		vipMixed = "172.30.46.11"
		vipBig   = "172.30.46.12"
		vipLong  = "172.30.46.13"
		vipGood2 = "172.30.46.14"
	)
	ports := []port{{"http", 80}}
	b.backend(backendA, false, 80)
	b.backend(backendB, false, 80)
	b.backend(backendC, false, 80)
	b.backend(backendL, true, 80)
	c := b.client(clientIP)
	b.service("good", vipGood, ports...)
	b.slice("good", "good-1", ports, backendA)
	b.startProxy()
	b.expectBackends(c, vipGood+":80", 5, backendA)
	m0 := b.mustMetrics()
	lp := startLoop(c, vipGood+":80", 100*time.Millisecond)

	// Raw objects, straight into etcd.
	etcdSvc := func(name, clusterIP string, ps ...corev1.ServicePort) {
		t.Helper()
		svc := &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: name, UID: newUID(), CreationTimestamp: metav1.Now()},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
				IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicySingleStack),
				Ports: ps, SessionAffinity: corev1.ServiceAffinityNone, InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyCluster)},
		}
		if _, err := b.cp.EtcdPut(b.ctx, "/registry/services/specs/"+b.ns+"/"+name, svc); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = b.cp.Client.CoreV1().Services(b.ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}
	svcPort := func(name string, p int32) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: p, TargetPort: intstr.FromInt32(max(p, 1))}
	}
	etcdSlice := func(svc, name string, p int32, addrs ...string) {
		t.Helper()
		es := &discovery.EndpointSlice{
			TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
			ObjectMeta: metav1.ObjectMeta{Namespace: b.ns, Name: name, UID: newUID(), CreationTimestamp: metav1.Now(),
				Labels: map[string]string{discovery.LabelServiceName: svc}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(p)}},
		}
		for _, a := range addrs {
			es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{a}})
		}
		if _, err := b.cp.EtcdPut(b.ctx, "/registry/endpointslices/"+b.ns+"/"+name, es); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = b.cp.Client.DiscoveryV1().EndpointSlices(b.ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}

	type badCase struct {
		what   string   // README row
		logged []string // a log line must contain all of these
	}
	var cases []badCase
	written := time.Now()

	etcdSvc("bad-ip", "172.30.46.300", svcPort("http", 80))
	cases = append(cases, badCase{"Service with clusterIP 172.30.46.300 (etcd)", []string{"Skipping invalid Service", "bad-ip", `invalid IP \"172.30.46.300\"`}})
	etcdSvc("bad-port0", "172.30.46.20", svcPort("http", 0))
	cases = append(cases, badCase{"Service port 0 (etcd)", []string{"Skipping invalid Service", "bad-port0", "port: 0 is not in 1-65535"}})
	etcdSvc("bad-port65536", "172.30.46.21", svcPort("http", 65536))
	cases = append(cases, badCase{"Service port 65536 (etcd)", []string{"Skipping invalid Service", "bad-port65536", "port: 65536 is not in 1-65535"}})
	etcdSvc("bad-dupports", "172.30.46.22", svcPort("a", 80), svcPort("b", 80))
	cases = append(cases, badCase{"Service with two ports 80/TCP (etcd)", []string{"Skipping invalid Service", "bad-dupports", "duplicate port"}})

	// A valid Service whose slices are partly broken: only backendB is
	// usable.
	b.service("mixed", vipMixed, ports...)
	etcdSlice("mixed", "mixed-badip", 80, "999.0.0.1", backendB.String())
	cases = append(cases, badCase{"slice endpoint 999.0.0.1 next to a good one (etcd)", []string{"Skipping invalid part of EndpointSlice", "mixed-badip", `invalid IP \"999.0.0.1\"`}})
	etcdSlice("mixed", "mixed-port0", 0, backendC.String())
	cases = append(cases, badCase{"slice port 0 (etcd)", []string{"Skipping invalid part of EndpointSlice", "mixed-port0", "port 0 is not in 1-65535"}})
	etcdSlice("mixed", "mixed-port65536", 65536, backendC.String())
	cases = append(cases, badCase{"slice port 65536 (etcd)", []string{"Skipping invalid part of EndpointSlice", "mixed-port65536", "port 65536 is not in 1-65535"}})
	v6 := b.sliceObj("mixed", "mixed-v6", ports)
	v6.AddressType = "IPv6"
	v6.Endpoints = []acceptance.Endpoint{{Addresses: []string{"fd00:10::5"}}}
	if err := b.api.ApplySlice(b.ctx, v6); err != nil {
		t.Fatal(err)
	}

	// 1,000 endpoints in one slice (the API's limit per slice).
	b.service("big", vipBig, ports...)
	var many []netip.Addr
	for i := 0; i < 1000; i++ {
		many = append(many, netip.AddrFrom4([4]byte{10, 201, byte(i / 250), byte(1 + i%250)}))
	}
	bigStart := time.Now()
	b.slice("big", "big-1", ports, many...)

	// Names at the length limits: a 63-character Service and a
	// 253-character slice.
	longSvc := "long-" + strings.Repeat("s", 58)
	longSlice := strings.Join([]string{strings.Repeat("a", 63), strings.Repeat("b", 63), strings.Repeat("c", 63), strings.Repeat("d", 61)}, ".")
	if len(longSvc) != 63 || len(longSlice) != 253 {
		t.Fatalf("name lengths %d, %d", len(longSvc), len(longSlice))
	}
	b.service(longSvc, vipLong, ports...)
	b.slice(longSvc, longSlice, ports, backendL)
	b.waitSynced(written)
	bigSynced := time.Since(bigStart)

	// Good changes after the bad ones.
	changed := time.Now()
	b.slice("good", "good-1", ports, backendA, backendB)
	b.service("good2", vipGood2, ports...)
	b.slice("good2", "good2-1", ports, backendC)
	b.waitSynced(changed)
	goodLive := time.Since(changed)

	b.expectBackends(c, vipGood+":80", 20, backendA, backendB)
	b.expectBackends(c, vipGood2+":80", 5, backendC)
	b.expectBackends(c, vipMixed+":80", 10, backendB)
	b.expectBackends(c, netip.AddrPortFrom(netip.MustParseAddr(vipLong), 80).String(), 5, backendL)
	results := lp.Stop()

	if b.proc.Exited() {
		t.Fatalf("proxy exited: %v", b.proc.Err())
	}
	total, failed, _, _, labels := summarize(results, written, time.Now())
	if failed > 0 {
		t.Errorf("good Service: %d of %d connections failed while bad objects arrived: %v", failed, total, labels)
	}
	m1 := b.mustMetrics()
	if d := metric(m1, mSyncFailures) - metric(m0, mSyncFailures); d != 0 {
		t.Errorf("sync failures +%v", d)
	}
	if n := countRules(b.mustRun(b.iptables, "-t", "nat", "-S", b.svcChain(vipBig, 80))); n < 1000 {
		t.Errorf("big's KUBE-SVC chain has %d rules, want >= 1000", n)
	}
	for _, ip := range []string{"172.30.46.20", "172.30.46.21", "172.30.46.22"} {
		if out := b.mustRun(b.iptables, "-t", "nat", "-S", "KUBE-SERVICES"); strings.Contains(out, ip) {
			t.Errorf("invalid Service %s programmed:\n%s", ip, out)
		}
	}
	var rows []string
	for _, bc := range cases {
		lines := b.logLines(bc.logged...)
		if len(lines) == 0 {
			t.Errorf("%s: no log line with %q", bc.what, bc.logged)
			continue
		}
		t.Logf("%s: %d log line(s), e.g. %s", bc.what, len(lines), trimLog(lines[0]))
		rows = append(rows, fmt.Sprintf("%s: skipped, logged x%d", bc.what, len(lines)))
	}
	v6lines := b.logLines("mixed-v6")
	t.Logf("IPv6 slice on the IPv4-only Service: %d log lines (kube-proxy ignores other-family slices silently too); mixed answers from %s only", len(v6lines), backendB)
	t.Logf("1,000-endpoint slice synced %s after it was written; good changes afterwards live in %s", bigSynced.Round(time.Millisecond), goodLive.Round(time.Millisecond))
	record(t, "%s; IPv6 slice on IPv4 Service ignored; 1,000-endpoint slice synced in %s; 63/253-char names work; good Service %d/%d ok throughout, later changes live in %s; no crash, 0 sync failures",
		strings.Join(rows, "; "), bigSynced.Round(100*time.Millisecond), total-failed, total, goodLive.Round(100*time.Millisecond))
}

func newUID() types.UID {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return types.UID(strings.Join([]string{h[:8], h[8:12], h[12:16], h[16:20], h[20:]}, "-"))
}

func trimLog(l string) string {
	if i := strings.Index(l, "] "); i >= 0 {
		return l[i+2:]
	}
	return l
}

// TestBadConfigFile starts the proxy with broken config files, one kind of
// error each. It must exit non-zero at once with an error naming the field.
// The proxy runs in a throwaway namespace, in case a file were accepted.
func TestBadConfigFile(t *testing.T) {
	requireRoot(t)
	proxy := controlplane.ProxyBinary(t)
	ns := nsutil.Name("cfg")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	head := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: /nonexistent\n"
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown field", head + "iptables:\n  syncPeriodd: 5s\n", []string{"iptables.syncPeriodd"}},
		{"wrong type", head + "iptables:\n  masqueradeAll: often\n", []string{"iptables.masqueradeAll"}},
		{"bad duration", head + "iptables:\n  syncPeriod: soon\n", []string{"iptables.syncPeriod", "soon"}},
		{"negative duration", head + "iptables:\n  minSyncPeriod: -1s\n", []string{"iptables.minSyncPeriod"}},
		{"bad CIDR", head + "nodePortAddresses: [192.168.0.0/24, 10.0.0.0/33]\n", []string{"nodePortAddresses[1]", "10.0.0.0/33"}},
		{"bad bind address", head + "metricsBindAddress: 127.0.0.1:99999\n", []string{"metricsBindAddress", "99999"}},
		{"unknown mode", head + "mode: userspace\n", []string{"mode", "userspace"}},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n", []string{"kind"}},
		{"not YAML", head + "iptables: [\n", []string{"yaml"}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, proxy, "--config", path)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 78 {
				t.Fatalf("proxy with a bad config: %v (want exit 78, EX_CONFIG)\n%s", err, out.String())
			}
			msg := strings.TrimSpace(out.String())
			for _, w := range tc.want {
				if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
					t.Errorf("error does not name %q: %s", w, msg)
				}
			}
			t.Logf("exit %d after %s: %s", exit.ExitCode(), time.Since(start).Round(time.Millisecond), msg)
		})
	}
}
