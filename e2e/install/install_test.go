package install

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// The objects the e2e test creates besides the manifests.
const (
	nodeName  = "svcp-install-node"
	nodeIP    = "10.0.0.10"
	testNS    = "install-test"
	svcName   = "web"
	clusterIP = "172.30.77.7" // inside controlplane.DefaultServiceCIDRs
	podIP     = "10.244.1.5"
)

// skipUnlessE2E skips unless the test can run a real control plane and the
// proxy: root, etcd and kube-apiserver in the tools dir, a proxy binary
// ($SVCPROXY_PROXY or bin/proxy). It returns the path of a copy of that
// binary.
func skipUnlessE2E(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for network namespaces and kernel rules")
	}
	bin := controlplane.DefaultBinDir()
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			testenv.Missing(t, "binary %s missing in %s: run e2e/build-tools.sh", b, bin)
		}
	}
	for _, tool := range []string{"ip", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s not installed: run hack/install-deps.sh", tool)
		}
	}
	b, err := os.ReadFile(proxyBinary(t))
	if err != nil {
		testenv.Missing(t, "no proxy binary (%v): run make build", err)
	}
	// A private copy, so a rebuild of bin/proxy while the test runs
	// cannot swap the binary between the proxy run and its --cleanup.
	proxy := filepath.Join(t.TempDir(), "proxy")
	if err := os.WriteFile(proxy, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return proxy
}

// TestInstallInClusterWithRBAC installs config/ the way an operator would,
// on a real API server that enforces RBAC, then runs the proxy as the pod
// would run: with the DaemonSet's arguments, the ConfigMap's files and the
// ServiceAccount's token. It shows that the ClusterRole is enough for the
// proxy to sync, and that it grants nothing more.
func TestInstallInClusterWithRBAC(t *testing.T) {
	proxyBin := skipUnlessE2E(t)
	for _, err := range nsutil.RemoveStale() {
		t.Logf("stale cleanup: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{Authorization: "RBAC", AllowPrivileged: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	}()
	admin := cp.Client

	ms := loadManifests(t)
	applyManifests(ctx, t, cp.RESTConfig, ms)

	// The Node the proxy runs as, and its ServiceAccount token, as the
	// kubelet would mount it (a TokenRequest, like a projected token).
	createNode(ctx, t, admin)
	tr, err := admin.CoreV1().ServiceAccounts(systemNS).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for ServiceAccount %s/%s: %v", systemNS, name, err)
	}
	sa := saClient(t, cp, tr.Status.Token)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("identity", func(t *testing.T) {
		r, err := sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := "system:serviceaccount:" + systemNS + ":" + name; r.Status.UserInfo.Username != want {
			t.Errorf("token authenticates as %q, want %q", r.Status.UserInfo.Username, want)
		}
	})
	t.Run("allowed", func(t *testing.T) { checkAllowed(ctx, t, sa) })
	t.Run("forbidden", func(t *testing.T) { checkForbidden(ctx, t, admin, sa) })
	t.Run("proxy syncs as the ServiceAccount", func(t *testing.T) {
		runProxy(ctx, t, cp, proxyBin, ms, tr.Status.Token)
	})
}

// applyManifests server-side applies every manifest, reads each back, and
// applies them all again: a second apply with the same field manager must
// change nothing.
func applyManifests(ctx context.Context, t *testing.T, cfg *rest.Config, ms []Manifest) {
	t.Helper()
	ap, err := NewApplier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rv := map[string]string{}
	for _, m := range ms {
		got, err := ap.Apply(ctx, m.Obj)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		rv[m.String()] = got.GetResourceVersion()
	}
	for _, m := range ms {
		got, err := ap.Get(ctx, m.Obj)
		if err != nil {
			t.Fatalf("%s not found after apply: %v", m, err)
		}
		managed := false
		for _, f := range got.GetManagedFields() {
			managed = managed || (f.Manager == FieldManager && f.Operation == metav1.ManagedFieldsOperationApply)
		}
		if !managed {
			t.Errorf("%s: no managedFields entry for %s (Apply)", m, FieldManager)
		}
		t.Logf("applied %s", m)
	}
	for _, m := range ms {
		got, err := ap.Apply(ctx, m.Obj)
		if err != nil {
			t.Fatalf("second apply of %s: %v", m, err)
		}
		if got.GetResourceVersion() != rv[m.String()] {
			t.Errorf("second apply of %s changed it (resourceVersion %s -> %s)", m, rv[m.String()], got.GetResourceVersion())
		}
	}
}

func createNode(ctx context.Context, t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}, {Type: corev1.NodeHostName, Address: nodeName}}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// saClient talks to the API server with the ServiceAccount's token only.
func saClient(t *testing.T, cp *controlplane.ControlPlane, token string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{
		Host:            "https://" + cp.APIAddress,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            cp.DialContext,
		Timeout:         30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkAllowed makes every call the proxy makes. The RBAC authorizer sees
// a new binding through an informer, so the first call is retried briefly.
func checkAllowed(ctx context.Context, t *testing.T, sa kubernetes.Interface) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := sa.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("get own node: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	calls := map[string]func() error{
		"list nodes": func() error { _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); return err },
		"watch own node": func() error {
			w, err := sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + nodeName})
			if err == nil {
				w.Stop()
			}
			return err
		},
		"list services (all namespaces)": func() error { _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err },
		"watch services": func() error {
			w, err := sa.CoreV1().Services("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		},
		"list endpointslices (all namespaces)": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		},
		"watch endpointslices": func() error {
			w, err := sa.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		},
		"create and patch an event (core)": func() error {
			now := metav1.Now()
			ev, err := sa.CoreV1().Events(testNS).Create(ctx, &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{GenerateName: name + "-", Namespace: testNS},
				InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: testNS, Name: svcName},
				Reason:         "InstallTest", Message: "core event", Type: corev1.EventTypeNormal,
				Source:         corev1.EventSource{Component: name, Host: nodeName},
				FirstTimestamp: now, LastTimestamp: now, Count: 1,
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = sa.CoreV1().Events(testNS).Patch(ctx, ev.Name, types.MergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
			return err
		},
		"create and patch an event (events.k8s.io)": func() error {
			ev, err := sa.EventsV1().Events(testNS).Create(ctx, &eventsv1.Event{
				ObjectMeta:          metav1.ObjectMeta{GenerateName: name + "-", Namespace: testNS},
				EventTime:           metav1.NowMicro(),
				ReportingController: "svcproxy.dev/" + name, ReportingInstance: name + "-" + nodeName,
				Action: "Sync", Reason: "InstallTest", Note: "events.k8s.io event", Type: corev1.EventTypeNormal,
				Regarding: corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: testNS, Name: svcName},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			// A repeat of an events.k8s.io event is recorded in its series.
			series := fmt.Sprintf(`{"series":{"count":2,"lastObservedTime":%q}}`, time.Now().UTC().Format(metav1.RFC3339Micro))
			_, err = sa.EventsV1().Events(testNS).Patch(ctx, ev.Name, types.MergePatchType, []byte(series), metav1.PatchOptions{})
			return err
		},
	}
	for what, call := range calls {
		if err := call(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}

// checkForbidden tries what the proxy never needs; each must be refused
// with 403 Forbidden, not fail for another reason.
func checkForbidden(ctx context.Context, t *testing.T, admin, sa kubernetes.Interface) {
	svc, err := admin.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "forbidden-probe"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.CoreV1().Services(testNS).Delete(ctx, svc.Name, metav1.DeleteOptions{}) }()
	if _, err := admin.CoreV1().Secrets(testNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "s"}, StringData: map[string]string{"k": "v"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"list secrets (all namespaces)": func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err },
		"list secrets in kube-system": func() error {
			_, err := sa.CoreV1().Secrets(systemNS).List(ctx, metav1.ListOptions{})
			return err
		},
		"get a secret": func() error { _, err := sa.CoreV1().Secrets(testNS).Get(ctx, "s", metav1.GetOptions{}); return err },
		"update a service": func() error {
			upd := svc.DeepCopy()
			upd.Labels = map[string]string{"changed": "by-svcproxy"}
			_, err := sa.CoreV1().Services(testNS).Update(ctx, upd, metav1.UpdateOptions{})
			return err
		},
		"patch a service status": func() error {
			_, err := sa.CoreV1().Services(testNS).Patch(ctx, svc.Name, types.MergePatchType, []byte(`{"status":{"loadBalancer":{}}}`), metav1.PatchOptions{}, "status")
			return err
		},
		"create a service": func() error {
			_, err := sa.CoreV1().Services(testNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
			return err
		},
		"delete a service": func() error { return sa.CoreV1().Services(testNS).Delete(ctx, svc.Name, metav1.DeleteOptions{}) },
		// Only list and watch are granted: the proxy reads Services
		// through informers, never one by one.
		"get a service": func() error {
			_, err := sa.CoreV1().Services(testNS).Get(ctx, svc.Name, metav1.GetOptions{})
			return err
		},
		"update a node": func() error {
			n, err := sa.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("get before update: %w", err)
			}
			n.Labels = map[string]string{"changed": "by-svcproxy"}
			_, err = sa.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			return err
		},
		"delete a node": func() error { return sa.CoreV1().Nodes().Delete(ctx, nodeName, metav1.DeleteOptions{}) },
		"create an endpointslice": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices(testNS).Create(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "x"}, AddressType: discoveryv1.AddressTypeIPv4}, metav1.CreateOptions{})
			return err
		},
		"list pods":       func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"list configmaps": func() error { _, err := sa.CoreV1().ConfigMaps(systemNS).List(ctx, metav1.ListOptions{}); return err },
		"list endpoints":  func() error { _, err := sa.CoreV1().Endpoints("").List(ctx, metav1.ListOptions{}); return err },
		"list events":     func() error { _, err := sa.CoreV1().Events("").List(ctx, metav1.ListOptions{}); return err },
		"create a token for another account": func() error {
			_, err := sa.CoreV1().ServiceAccounts(systemNS).CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			return err
		},
	}
	for what, call := range calls {
		err := call()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: want 403 Forbidden, got %v", what, err)
		}
	}
}

// podFiles lays out, under root, the files the kubelet would give the
// pod: the ConfigMap at /etc/svcproxy and the ServiceAccount's token and
// CA at its usual place. remap turns a path inside the pod into ours.
type podFiles struct{ root string }

func (p podFiles) remap(path string) string {
	for _, mount := range []string{configMount, saMount} {
		if rel, ok := strings.CutPrefix(path, mount+"/"); ok {
			return filepath.Join(p.root, filepath.FromSlash(strings.TrimPrefix(mount, "/")), rel)
		}
	}
	return path
}

func (p podFiles) write(t *testing.T, podPath string, data []byte) {
	t.Helper()
	path := p.remap(podPath)
	if path == podPath {
		t.Fatalf("%s is outside the pod's mounts", podPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// runProxy starts the proxy in a node namespace linked to the API server,
// with the DaemonSet container's arguments and the ConfigMap's config and
// kubeconfig (paths remapped to a temp dir, the server address replaced),
// and checks that it programs a Service, answers its probes, and leaves
// the rules in place when stopped.
func runProxy(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, proxyBin string, ms []Manifest, token string) {
	pod := podFiles{root: t.TempDir()}

	// ConfigMap files. The config is used as shipped except for what must
	// differ in a test: the kubeconfig path (remapped) and the conntrack
	// sysctls, which are global to the host, so the test leaves them alone.
	cfgText, err := ConfigMapFile(ms, name, "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cfgText), &cfg); err != nil {
		t.Fatal(err)
	}
	cc := cfg["clientConnection"].(map[string]any)
	kubeconfigPath := cc["kubeconfig"].(string)
	cc["kubeconfig"] = pod.remap(kubeconfigPath)
	cfg["conntrack"] = map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}
	cfg["metricsBindAddress"] = "127.0.0.1:10249"
	cfg["oomScoreAdj"] = 0 // this is a test process, not a node's proxy
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pod.write(t, configMount+"/config.yaml", b)

	kcText, err := ConfigMapFile(ms, name, strings.TrimPrefix(kubeconfigPath, configMount+"/"))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.Load([]byte(kcText))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + cp.APIAddress
		c.CertificateAuthority = pod.remap(c.CertificateAuthority)
	}
	for _, u := range kc.AuthInfos {
		u.TokenFile = pod.remap(u.TokenFile)
	}
	kcBytes, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	pod.write(t, kubeconfigPath, kcBytes)
	pod.write(t, saMount+"/token", []byte(token))
	// The API server's self-signed serving certificate and its CA, as the
	// cluster CA the ServiceAccount mount would hold.
	ca, err := os.ReadFile(filepath.Join(cp.Dir, "certs", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pod.write(t, saMount+"/ca.crt", ca)

	// The container's arguments, with the downward API's NODE_NAME.
	ds, _ := Find(ms, "DaemonSet", name)
	containers, _, err := unstructured.NestedSlice(ds.Obj.Object, "spec", "template", "spec", "containers")
	if err != nil || len(containers) != 1 {
		t.Fatalf("DaemonSet: want one container (%v)", err)
	}
	c, _ := containers[0].(map[string]any)
	dsArgs, _, err := unstructured.NestedStringSlice(c, "args")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range dsArgs {
		a = strings.ReplaceAll(a, "$(NODE_NAME)", nodeName)
		if k, v, ok := strings.Cut(a, "="); ok {
			a = k + "=" + pod.remap(v)
		}
		args = append(args, a)
	}
	args = append(args, "-v=2")

	ns := nsutil.Name("install")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	if err := nsutil.IP("-n", ns, "addr", "add", nodeIP+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	if err := cp.LinkNetns(ns); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(pod.root, "proxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("proxy %s", strings.Join(args, " "))
	proc, err := nsutil.StartIn(ns, logf, proxyBin, args...)
	logf.Close()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			proc.Stop(5 * time.Second)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("proxy log:\n%s", b)
		}
	}()

	// A Service with one ready endpoint, written by the admin.
	writeService(ctx, t, cp.Client)
	rule := regexp.MustCompile(`(?m)^-A KUBE-SERVICES -d ` + regexp.QuoteMeta(clusterIP) + `/32 .*` + regexp.QuoteMeta(testNS+"/"+svcName+":http") + `.* -j KUBE-SVC-`)
	var nat string
	deadline := time.Now().Add(60 * time.Second)
	for {
		if proc.Exited() {
			t.Fatalf("proxy exited: %v", proc.Err())
		}
		out, err := nsutil.Exec(ns, "iptables-nft-save", "-t", "nat").CombinedOutput()
		nat = string(out)
		if err == nil && rule.MatchString(nat) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no KUBE-SERVICES rule for %s after 60s (err %v); nat table:\n%s", clusterIP, err, nat)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("synced: %s", rule.FindString(nat))

	// The probes, at the node's address as the kubelet sends them to a
	// hostNetwork pod.
	for _, path := range []string{"/healthz", "/livez"} {
		code, body, err := httpGetIn(ctx, ns, fmt.Sprintf("http://%s:%d%s", nodeIP, healthzPort, path))
		if err != nil || code != http.StatusOK {
			t.Errorf("GET %s: %d %v %s", path, code, err, body)
		}
	}

	// With the right role nothing was refused: no RBAC error in the log.
	if b, _ := os.ReadFile(logPath); regexp.MustCompile(`(?i)forbidden|cannot (list|watch|get)`).Match(b) {
		t.Errorf("proxy log shows a refused API call")
	}

	// SIGTERM (the unit's KillSignal, the kubelet's stop signal) leaves
	// the rules in place; `proxy --cleanup` is what removes them.
	proc.Stop(10 * time.Second)
	stopped = true
	if err := proc.Err(); err != nil {
		t.Errorf("proxy exit after SIGTERM: %v", err)
	}
	out, err := nsutil.Exec(ns, "iptables-nft-save", "-t", "nat").CombinedOutput()
	if err != nil || !rule.Match(out) {
		t.Errorf("rules gone after SIGTERM (%v):\n%s", err, out)
	}
	if out, err := nsutil.Exec(ns, proxyBin, "--cleanup").CombinedOutput(); err != nil {
		t.Fatalf("proxy --cleanup: %v\n%s", err, out)
	}
	out, err = nsutil.Exec(ns, "iptables-nft-save", "-t", "nat").CombinedOutput()
	if err != nil || strings.Contains(string(out), "KUBE-") {
		t.Errorf("KUBE- rules left after proxy --cleanup (%v):\n%s", err, out)
	}
}

func writeService(ctx context.Context, t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	_, err := admin.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: svcName},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Ports:     []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proto := corev1.ProtocolTCP
	_, err = admin.DiscoveryV1().EndpointSlices(testNS).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: testNS, Name: svcName + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: &proto, Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{podIP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// httpGetIn makes a GET from inside the namespace.
func httpGetIn(ctx context.Context, ns, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := nsutil.HTTPClient(ns, 5*time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}
