// Package e2eexplain runs `proxy explain` and `proxy diff` on a node
// namespace programmed by the real proxy, against a real kube-apiserver,
// with Services broken at each layer.
package e2eexplain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/explain"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

const (
	nodeName = "explain-node"
	ns       = "explain"
	nodeIP   = "192.168.77.2"
	podIP    = "10.1.0.9" // a client pod on this node (no namespace needed: explain traces the model)
)

func skipUnlessReady(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real kube-apiserver, etcd and proxy; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: network namespaces and iptables")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "binary %s missing in %s: run e2e/build-tools.sh", b, controlplane.DefaultBinDir())
		}
	}
	for _, b := range []string{"iptables-nft-restore", "iptables-nft-save", "iptables-nft"} {
		if _, err := exec.LookPath(b); err != nil {
			testenv.Missing(t, "%s not installed", b)
		}
	}
}

// env is the running test bed: control plane, node namespace, proxy.
type env struct {
	t       *testing.T
	ctx     context.Context
	cp      *controlplane.ControlPlane
	client  kubernetes.Interface
	node    string // netns
	proxy   string // binary
	config  string // KubeProxyConfiguration path
	logPath string
	proc    *nsutil.Proc
}

func (e *env) startProxy() {
	e.t.Helper()
	start := time.Now()
	proc, err := acceptance.StartProxy(e.proxy, e.node, e.config, nodeName, e.logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	e.proc = proc
	e.waitSynced(start)
}

func (e *env) stopProxy() {
	if e.proc != nil {
		e.proc.Stop(5 * time.Second)
		e.proc = nil
	}
}

func (e *env) waitSynced(since time.Time) {
	e.t.Helper()
	if err := acceptance.WaitSynced(e.ctx, e.node, e.proc, since, 60*time.Second); err != nil {
		log, _ := os.ReadFile(e.logPath)
		e.t.Fatalf("%v\nproxy log:\n%s", err, log)
	}
}

// run runs the proxy binary with args inside the node namespace and
// returns stdout and the exit code.
func (e *env) run(args ...string) (string, int) {
	e.t.Helper()
	cmd := nsutil.Exec(e.node, e.proxy, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		e.t.Fatalf("proxy %v: %v", args, err)
	}
	if code == 2 {
		e.t.Fatalf("proxy %v failed (exit 2):\n%s\n%s", args, stdout.String(), stderr.String())
	}
	return stdout.String(), code
}

// explain runs `proxy explain -o json` and decodes the report.
func (e *env) explain(args ...string) (*explain.Report, int) {
	e.t.Helper()
	out, code := e.run(append([]string{"explain", "--config", e.config, "-o", "json"}, args...)...)
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		e.t.Fatalf("explain %v: %v\n%s", args, err, out)
	}
	return &r, code
}

// expectVerdict checks the verdict (and the exit code that goes with it).
func (e *env) expectVerdict(svc, layer, want string) *explain.Report {
	e.t.Helper()
	r, code := e.explain("svc", ns+"/"+svc)
	if !strings.HasPrefix(r.Verdict, want) || r.Layer != layer {
		text, _ := e.run("explain", "--config", e.config, "svc", ns+"/"+svc)
		e.t.Errorf("%s: verdict %q (layer %q), want %q (layer %q)\n%s", svc, r.Verdict, r.Layer, want, layer, text)
	}
	if wantCode := map[bool]int{true: 0, false: 1}[want == explain.VerdictOK]; code != wantCode {
		e.t.Errorf("%s: exit code %d, want %d", svc, code, wantCode)
	}
	return r
}

func (e *env) iptables(args ...string) string {
	e.t.Helper()
	out, err := nsutil.Exec(e.node, "iptables-nft", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("iptables-nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

// setUp starts a control plane, a node namespace, the test's objects and
// the proxy in mode; everything stops when the test ends.
func setUp(t *testing.T, mode string) (*env, map[string]string) {
	skipUnlessReady(t)
	proxy := controlplane.ProxyBinary(t)
	for _, err := range nsutil.RemoveStale() {
		t.Log("stale cleanup:", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	e := &env{t: t, ctx: ctx, cp: cp, client: cp.Client, proxy: proxy, logPath: filepath.Join(t.TempDir(), "proxy.log")}
	e.node = nsutil.Name("node")
	if err := nsutil.Add(e.node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(e.node) })
	if err := cp.LinkNetns(e.node); err != nil {
		t.Fatal(err)
	}
	if err := nsutil.IP("-n", e.node, "addr", "add", nodeIP+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	e.config = writeConfig(t, cp.KubeconfigPath, mode)
	ips := createObjects(t, ctx, cp.Client)
	e.startProxy()
	t.Cleanup(e.stopProxy)
	return e, ips
}

func TestExplainLayers(t *testing.T) {
	e, ips := setUp(t, "iptables")
	ctx := e.ctx

	t.Run("no slices", func(t *testing.T) { e.expectVerdict("noslices", explain.LayerEndpoints, "no EndpointSlices") })
	t.Run("not ready", func(t *testing.T) { e.expectVerdict("notready", explain.LayerEndpoints, "no endpoints ready") })
	t.Run("etp local", func(t *testing.T) {
		r := e.expectVerdict("etplocal", explain.LayerSelection, "endpoints exist but none are local and externalTrafficPolicy is Local")
		if eps := r.Ports[0].Endpoints; len(eps) != 1 || eps[0].External == nil || !strings.Contains(eps[0].External.Reason, "policy is Local") {
			t.Errorf("endpoint decisions: %+v", eps)
		}
	})
	t.Run("targetPort name", func(t *testing.T) {
		e.expectVerdict("portname", explain.LayerEndpoints, "targetPort name 'http' matches no slice port")
	})
	t.Run("other proxy", func(t *testing.T) {
		e.expectVerdict("otherproxy", explain.LayerService, "service is handled by another proxy (service-proxy-name=someone-else)")
	})
	t.Run("not found", func(t *testing.T) { e.expectVerdict("nosuch", explain.LayerService, "service not found") })
	t.Run("ok", func(t *testing.T) {
		r := e.expectVerdict("ok", "", explain.VerdictOK)
		fp := r.Ports[0].Families[0]
		if !fp.Kernel.Checked || len(fp.Kernel.Differences) != 0 || len(fp.Internal.Endpoints) != 2 {
			t.Errorf("ok: %+v", fp)
		}
	})
	t.Run("trace from pod", func(t *testing.T) {
		r, code := e.explain(ips["ok"]+":80", "--from", podIP)
		if code != 0 || r.Verdict != explain.VerdictOK || r.Query.Service != ns+"/ok" || len(r.Traces) != 1 {
			t.Fatalf("exit %d, verdict %q, service %q, %d traces", code, r.Verdict, r.Query.Service, len(r.Traces))
		}
		tr := r.Traces[0]
		var got []string
		for _, o := range tr.Outcomes {
			if o.Verdict != "DNAT" || math.Abs(o.Probability-0.5) > 1e-6 || o.Masquerade {
				t.Errorf("outcome %+v", o)
			}
			got = append(got, o.Endpoint)
		}
		slices.Sort(got)
		if tr.SourceKind != explain.SourceOther || !slices.Equal(got, []string{"10.1.0.1:8080", "10.2.0.1:8080"}) {
			t.Errorf("trace from %s (%s): endpoints %v", tr.Source, tr.SourceKind, got)
		}
		text, _ := e.run("explain", "--config", e.config, ips["ok"]+":80/tcp", "--from", podIP)
		t.Logf("proxy explain %s:80/tcp --from %s:\n%s", ips["ok"], podIP, text)
		broken, _ := e.run("explain", "--config", e.config, "svc", ns+"/etplocal")
		t.Logf("proxy explain svc %s/etplocal:\n%s", ns, broken)
		for _, want := range []string{"DNAT 10.1.0.1:8080", "DNAT 10.2.0.1:8080", "probability 0.5000"} {
			if !strings.Contains(text, want) {
				t.Errorf("text output lacks %q:\n%s", want, text)
			}
		}
	})
	t.Run("no service port", func(t *testing.T) {
		r, code := e.explain(ips["ok"] + ":99/udp")
		if code != 1 || r.Verdict != "no service port "+ips["ok"]+":99/udp" {
			t.Errorf("exit %d verdict %q", code, r.Verdict)
		}
	})
	t.Run("diff after a fresh sync", func(t *testing.T) {
		if out, code := e.run("diff", "--config", e.config); code != 0 {
			t.Errorf("diff exit %d after a fresh sync:\n%s", code, out)
		}
	})

	// (e) Break the kernel behind the proxy's back: with syncPeriod 1h its
	// drift check does not repair it during the test.
	okPort := e.planned("ok")
	svcChain := okPort.Internal.Chain
	e.iptables("-t", "nat", "-F", svcChain)
	t.Run("kernel rules missing", func(t *testing.T) {
		r := e.expectVerdict("ok", explain.LayerKernel, "kernel rules missing for port 80")
		diffs := r.Ports[0].Families[0].Kernel.Differences
		if len(diffs) == 0 || diffs[0].Chain != svcChain || diffs[0].Kind != explain.MissingRule {
			t.Errorf("differences: %+v", diffs)
		}
	})
	var payload string
	t.Run("diff after the flush", func(t *testing.T) {
		out, code := e.run("diff", "--config", e.config)
		t.Logf("proxy diff:\n%s", out)
		if code != 1 || !strings.Contains(out, ":"+svcChain+" - [0:0]") || !strings.Contains(out, "# service "+ns+"/ok") {
			t.Fatalf("diff exit %d:\n%s", code, out)
		}
		jout, _ := e.run("diff", "--config", e.config, "-o", "json")
		var d explain.DiffReport
		if err := json.Unmarshal([]byte(jout), &d); err != nil {
			t.Fatal(err)
		}
		if !d.Differ || len(d.Families) == 0 || len(d.Families[0].Services) != 1 || d.Families[0].Services[0].Service != ns+"/ok" {
			t.Fatalf("diff json: %s", jout)
		}
		if got := d.Families[0].Services[0].RewriteChains; !slices.Equal(got, []string{"nat " + svcChain}) {
			t.Errorf("rewrite %v, want nat %s", got, svcChain)
		}
		payload = d.Families[0].Services[0].Payload
	})
	t.Run("diff payload repairs", func(t *testing.T) {
		if payload == "" {
			t.Fatal("the diff step before this one gave no payload to apply")
		}
		cmd := nsutil.Exec(e.node, "iptables-nft-restore", "--noflush")
		cmd.Stdin = strings.NewReader(payload)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("restore: %v: %s\n%s", err, out, payload)
		}
		if out, code := e.run("diff", "--config", e.config); code != 0 {
			t.Errorf("diff exit %d after applying its payload:\n%s", code, out)
		}
		e.expectVerdict("ok", "", explain.VerdictOK)
	})
	t.Run("fresh sync after breakage", func(t *testing.T) {
		e.iptables("-t", "nat", "-D", svcChain, "1")
		if _, code := e.run("diff", "--config", e.config); code != 1 {
			t.Errorf("diff exit %d after deleting a rule", code)
		}
		e.stopProxy()
		e.startProxy()
		if out, code := e.run("diff", "--config", e.config); code != 0 {
			t.Errorf("diff exit %d after a fresh sync:\n%s", code, out)
		}
		e.expectVerdict("ok", "", explain.VerdictOK)
	})
	t.Run("large cluster", func(t *testing.T) {
		// Above 1,000 endpoints the daemon drops endpoint-rule comments;
		// explain, planning one Service, must plan it the same way.
		chain := e.planned("ok").Internal.Chain
		createBig(t, ctx, e.cp.Client, 1200)
		deadline := time.Now().Add(30 * time.Second)
		for rules := ""; ; time.Sleep(200 * time.Millisecond) {
			if rules = e.iptables("-t", "nat", "-S", chain); !strings.Contains(rules, " -> ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("endpoint comments still present 30 s after crossing the threshold:\n%s", rules)
			}
		}
		e.expectVerdict("ok", "", explain.VerdictOK)
		if out, code := e.run("diff", "--config", e.config); code != 0 {
			t.Errorf("diff exit %d in a large cluster:\n%s", code, out)
		}
	})
}

// createBig creates Service "big" with n endpoints in slices of 600.
func createBig(t *testing.T, ctx context.Context, c kubernetes.Interface, n int) {
	t.Helper()
	if _, err := c.CoreV1().Services(ns).Create(ctx, service("big"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for first := 0; first < n; first += 600 {
		var eps []endpoint
		for i := first; i < min(n, first+600); i++ {
			eps = append(eps, endpoint{ip: fmt.Sprintf("10.50.%d.%d", i/250, i%250+1), node: "node-b"})
		}
		es := endpointSlice("big", "http", eps)
		es.Name = fmt.Sprintf("big-%d", first/600)
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// planned returns the IPv4 family of a Service's only port from explain.
func (e *env) planned(svc string) explain.FamilyPort {
	e.t.Helper()
	r, _ := e.explain("svc", ns+"/"+svc)
	if len(r.Ports) != 1 || len(r.Ports[0].Families) == 0 || r.Ports[0].Families[0].Internal.Chain == "" {
		e.t.Fatalf("%s: no planned chain in %+v", svc, r.Ports)
	}
	return r.Ports[0].Families[0]
}

func writeConfig(t *testing.T, kubeconfig, mode string) string {
	t.Helper()
	cfg := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"mode":               mode,
		"hostnameOverride":   nodeName,
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig},
		"metricsBindAddress": "127.0.0.1:10249",
		"healthzBindAddress": "0.0.0.0:10256",
		"clusterCIDR":        "10.0.0.0/8",
		"detectLocalMode":    "ClusterCIDR",
		"oomScoreAdj":        0,
		// A long syncPeriod: the drift check must not repair what the test
		// breaks by hand.
		"iptables": map[string]any{"syncPeriod": "1h", "minSyncPeriod": "0s"},
		"nftables": map[string]any{"syncPeriod": "1h", "minSyncPeriod": "0s"},
		"conntrack": map[string]any{
			"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
			"udpTimeout": "0s", "udpStreamTimeout": "0s",
		},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "proxy.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// createObjects writes the Node and one Service per layer to break, and
// returns the allocated cluster IPs by Service name.
func createObjects(t *testing.T, ctx context.Context, c kubernetes.Interface) map[string]string {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	created, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := []endpoint{{ip: "10.1.0.1", node: nodeName}, {ip: "10.2.0.1", node: "node-b"}}
	type obj struct {
		svc      *corev1.Service
		portName string // slice port name
		eps      []endpoint
		noSlice  bool
	}
	objs := []obj{
		{svc: service("ok"), portName: "http", eps: ready},
		{svc: service("noslices"), noSlice: true},
		{svc: service("notready"), portName: "http", eps: []endpoint{
			{ip: "10.1.0.2", node: nodeName, ready: ptr.To(false)},
			{ip: "10.2.0.2", node: "node-b", ready: ptr.To(false), serving: ptr.To(false), terminating: ptr.To(true)},
		}},
		{svc: service("etplocal", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}), portName: "http", eps: []endpoint{{ip: "10.2.0.3", node: "node-b"}}},
		{svc: service("portname"), portName: "web", eps: ready},
		{svc: service("otherproxy", func(s *corev1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "someone-else"}
		}), portName: "http", eps: ready},
	}
	ips := map[string]string{}
	for _, o := range objs {
		s, err := c.CoreV1().Services(ns).Create(ctx, o.svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("service %s: %v", o.svc.Name, err)
		}
		ips[s.Name] = s.Spec.ClusterIP
		if o.noSlice {
			continue
		}
		es := endpointSlice(s.Name, o.portName, o.eps)
		if s.Labels != nil {
			for k, v := range s.Labels {
				es.Labels[k] = v
			}
		}
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("slice %s: %v", es.Name, err)
		}
	}
	if _, err := netip.ParseAddr(ips["ok"]); err != nil {
		t.Fatalf("cluster IP %q: %v", ips["ok"], err)
	}
	return ips
}

func service(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type endpoint struct {
	ip, node                    string
	ready, serving, terminating *bool
}

func endpointSlice(svc, portName string, eps []endpoint) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-1", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(8080))}},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.ip},
			NodeName:   ptr.To(e.node),
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		})
	}
	return es
}
