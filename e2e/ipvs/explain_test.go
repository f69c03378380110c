package ipvs_test

import (
	"bytes"
	"encoding/json"
	"errors"
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
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/explain"
)

// TestIPVSExplain boots one guest that runs TestGuestExplain: `proxy
// explain` and `proxy diff` in IPVS mode against a real IPVS kernel.
func TestIPVSExplain(t *testing.T) {
	runGuest(t, "TestGuestExplain")
}

// explainer runs `proxy explain` and `proxy diff` in the guest's node
// namespace with the daemon's config file.
type explainer struct {
	t    *testing.T
	g    *guest
	conf string
}

// TestGuestExplain runs inside the guest (see TestIPVSExplain). It breaks
// a Service at each layer and checks that the verdict names that layer.
// The proxy runs with a 1 h syncPeriod, and is stopped before the kernel is
// broken by hand, so nothing repairs it behind the test's back.
func TestGuestExplain(t *testing.T) {
	if !inGuest() {
		t.Skip("runs inside the QEMU guest only (started by TestIPVSExplain)")
	}
	g := &guest{t: t, ctx: t.Context()}
	g.setupNode()
	createExplainServices(t, g)
	e := &explainer{t: t, g: g, conf: filepath.Join(g.dir, "explain.yaml")}
	if err := os.WriteFile(e.conf, explainConfig(t, g.kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	g.launch(e.conf, "ipvs")
	g.waitFor("the virtual server with both real servers", 30*time.Second, func() bool {
		out := g.ipvsadm()
		return strings.Contains(out, "10.180.0.1:80") && strings.Contains(out, "10.180.2.1:80")
	})

	t.Run("no slices", func(t *testing.T) { e.expect(t, "noslices", explain.LayerEndpoints, "no EndpointSlices") })
	t.Run("not ready", func(t *testing.T) { e.expect(t, "notready", explain.LayerEndpoints, "no endpoints ready") })
	t.Run("etp local", func(t *testing.T) {
		e.expect(t, "etplocal", explain.LayerSelection, "endpoints exist but none are local and externalTrafficPolicy is Local")
	})
	t.Run("port name", func(t *testing.T) {
		e.expect(t, "portname", explain.LayerEndpoints, "targetPort name 'http' matches no slice port")
	})
	t.Run("ok", func(t *testing.T) {
		r := e.expect(t, "web", "", explain.VerdictOK)
		c := r.Ports[0].Families[0].IPVS
		if c == nil || !c.Checked || len(c.Changes) != 0 || len(c.Planned) < 2 || len(c.Kernel) != len(c.Planned) {
			t.Errorf("IPVS check: %+v", c)
		}
	})
	t.Run("trace from pod", e.traceFromPod)
	t.Run("diff after a fresh sync", func(t *testing.T) {
		if out, code := e.run("diff", "--config", e.conf); code != 0 {
			t.Errorf("diff exit %d after a fresh sync:\n%s", code, out)
		}
	})

	g.stopProxy()
	g.run("ipvsadm", "-D", "-t", clusterIP+":80")
	t.Run("virtual server deleted", func(t *testing.T) {
		r := e.expect(t, "web", explain.LayerKernel, "kernel virtual server missing for port 80: add virtual server TCP/"+clusterIP+":80 rr")
		text, _ := e.run("explain", "--config", e.conf, "svc", "ns1/web")
		t.Logf("proxy explain svc ns1/web:\n%s", text)
		if c := r.Ports[0].Families[0].IPVS; c == nil || len(c.Kernel) != len(c.Planned)-1 || len(c.Changes) != 3 {
			t.Errorf("IPVS check: %+v", c)
		}
	})
	t.Run("diff shows and repairs the missing virtual server", e.diffRepairs)
}

// expect runs explain on ns1/name and checks verdict, layer and exit code.
func (e *explainer) expect(t *testing.T, name, layer, want string) *explain.Report {
	t.Helper()
	out, code := e.run("explain", "--config", e.conf, "-o", "json", "svc", "ns1/"+name)
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("explain %s: %v\n%s", name, err, out)
	}
	if !strings.HasPrefix(r.Verdict, want) || r.Layer != layer {
		text, _ := e.run("explain", "--config", e.conf, "svc", "ns1/"+name)
		t.Errorf("%s: verdict %q [%s], want %q [%s]\n%s", name, r.Verdict, r.Layer, want, layer, text)
	}
	if wantCode := map[bool]int{true: 0, false: 1}[want == explain.VerdictOK]; code != wantCode {
		t.Errorf("%s: exit code %d, want %d", name, code, wantCode)
	}
	if len(r.Ports) == 0 || len(r.Ports[0].Families) == 0 {
		t.Fatalf("%s: no ports in the report", name)
	}
	return &r
}

// traceFromPod traces the client pod to the ClusterIP: the virtual server,
// both real servers at weight 1, half the connections each, no masquerade
// (the pod is inside clusterCIDR).
func (e *explainer) traceFromPod(t *testing.T) {
	out, code := e.run("explain", "--config", e.conf, "-o", "json", clusterIP+":80", "--from", "10.0.0.2")
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || len(r.Traces) != 1 {
		t.Fatalf("exit %d, %v, %d traces:\n%s", code, err, len(r.Traces), out)
	}
	var got []string
	for _, o := range r.Traces[0].Outcomes {
		if o.Verdict != "IPVS" || o.Weight == nil || *o.Weight != 1 || math.Abs(o.Probability-0.5) > 1e-9 || o.Masquerade ||
			o.VirtualServer != "TCP/"+clusterIP+":80" {
			t.Errorf("outcome %+v", o)
		}
		got = append(got, o.Endpoint)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"10.180.0.1:80", "10.180.2.1:80"}) {
		t.Errorf("real servers %v", got)
	}
	text, _ := e.run("explain", "--config", e.conf, clusterIP+":80/tcp", "--from", "10.0.0.2")
	t.Logf("proxy explain %s:80/tcp --from 10.0.0.2:\n%s", clusterIP, text)
}

// diffRepairs checks that diff prints the calls that put the virtual
// server back, runs them, and expects no difference and traffic after.
func (e *explainer) diffRepairs(t *testing.T) {
	out, code := e.run("diff", "--config", e.conf)
	t.Logf("proxy diff:\n%s", out)
	want := []string{
		"ipvsadm -A -t " + clusterIP + ":80 -s rr",
		"ipvsadm -a -t " + clusterIP + ":80 -r 10.180.0.1:80 -m -w 1",
		"ipvsadm -a -t " + clusterIP + ":80 -r 10.180.2.1:80 -m -w 1",
	}
	var cmds []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "ipvsadm ") {
			cmds = append(cmds, l)
		}
	}
	if code != 1 || !slices.Equal(cmds, want) {
		t.Fatalf("diff exit %d, commands %q, want %q", code, cmds, want)
	}
	for _, c := range cmds {
		e.g.run("sh", "-c", c)
	}
	if out, code := e.run("diff", "--config", e.conf); code != 0 {
		t.Errorf("diff exit %d after running its commands:\n%s", code, out)
	}
	e.expect(t, "web", "", explain.VerdictOK)
	if b := dial(t, e.g.topo.Pod(netip.MustParseAddr("10.0.0.2")).Netns); b == "" {
		t.Errorf("no answer through %s after the repair", clusterIP)
	}
}

// run runs the proxy binary in the node namespace; exit 2 is fatal.
func (e *explainer) run(args ...string) (string, int) {
	e.t.Helper()
	cmd := nsutil.Exec(e.g.node, proxyBin(e.t), args...)
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

// explainConfig is the guest proxy's config with a 1 h syncPeriod: its
// drift check must not repair what the test breaks.
func explainConfig(t *testing.T, kubeconfig string) []byte {
	cfg, err := yaml.Marshal(map[string]any{
		"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
		"mode": "ipvs", "hostnameOverride": nodeName, "clusterCIDR": "10.0.0.0/8",
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig},
		"metricsBindAddress": "127.0.0.1:10249",
		"ipvs":               map[string]any{"syncPeriod": "1h", "minSyncPeriod": "0s", "scheduler": "rr"},
		"iptables":           map[string]any{"syncPeriod": "1h", "minSyncPeriod": "0s"},
		"conntrack":          map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// createExplainServices adds to ns1/web one Service per layer to break:
// noslices, notready, etplocal (NodePort, eTP Local, only a remote
// endpoint) and portname (the slice names its port "web", the Service
// "http"). Cluster IPs and node ports are allocated by the API server.
func createExplainServices(t *testing.T, g *guest) {
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	type obj struct {
		name, slicePort string
		eps             []discovery.Endpoint
		mutate          func(*corev1.Service)
	}
	remote := func(ip string, ready *bool) discovery.Endpoint {
		return discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To("node2"), Conditions: discovery.EndpointConditions{Ready: ready}}
	}
	for _, o := range []obj{
		{name: "noslices"},
		{name: "notready", slicePort: "http", eps: []discovery.Endpoint{remote("10.180.2.5", ptr.To(false))}},
		{name: "etplocal", slicePort: "http", eps: []discovery.Endpoint{remote("10.180.2.6", nil)}, mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}},
		{name: "portname", slicePort: "web", eps: []discovery.Endpoint{remote("10.180.2.7", nil)}},
	} {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: o.name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}}},
		}
		if o.mutate != nil {
			o.mutate(s)
		}
		if _, err := c.CoreV1().Services("ns1").Create(g.ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("service %s: %v", o.name, err)
		}
		if o.slicePort == "" {
			continue
		}
		es := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns1", Name: o.name + "-1", Labels: map[string]string{discovery.LabelServiceName: o.name}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To(o.slicePort), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(80))}},
			Endpoints:   o.eps,
		}
		if _, err := c.DiscoveryV1().EndpointSlices("ns1").Create(g.ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("slice %s: %v", es.Name, err)
		}
	}
}
