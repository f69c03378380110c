// Package e2ewatch runs the watch pipeline (informers -> Tracker -> Runner)
// against a real kube-apiserver and etcd and checks the Snapshots a backend
// would receive.
package e2ewatch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/pkg/watch"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

const (
	nodeName = "node-a"
	ns       = "watch-e2e"
	// deadline bounds every wait for the pipeline; it is generous because
	// the machine is shared, and only a failing test waits that long.
	deadline = 45 * time.Second
)

func skipUnlessReady(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real kube-apiserver and etcd; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: the control plane runs in a network namespace of its own")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "binary %s missing in %s: run e2e/build-tools.sh (or set SVCPROXY_BIN_DIR)", b, controlplane.DefaultBinDir())
		}
	}
}

// recorder is the backend: its sync takes a Snapshot, as the real daemon
// does, and keeps it.
type recorder struct {
	tracker *watch.Tracker
	mu      sync.Mutex
	snaps   []*watch.Snapshot
}

func (r *recorder) sync(context.Context) error {
	snap := r.tracker.Snapshot()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, snap)
	return nil
}

// mark returns the position after the last recorded Snapshot.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

func (r *recorder) since(i int) []*watch.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.snaps[i:])
}

// changedSince is the union of the Changed sets of the Snapshots from i on,
// restricted to the test namespace.
func (r *recorder) changedSince(i int) []string {
	set := map[string]bool{}
	for _, s := range r.since(i) {
		for n := range s.Changed {
			if n.Namespace == ns {
				set[n.Name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// waitFor polls until a Snapshot recorded from position from on satisfies
// check, and returns the position after it.
func (r *recorder) waitFor(t *testing.T, from int, what string, check func(*watch.Snapshot) error) int {
	t.Helper()
	end := time.Now().Add(deadline)
	last := fmt.Errorf("no Snapshot recorded")
	for time.Now().Before(end) {
		snaps := r.since(from)
		for i, s := range snaps {
			if err := check(s); err == nil {
				return from + i + 1
			} else {
				last = err
			}
		}
		from += len(snaps)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no matching Snapshot within %v; last mismatch: %v", what, deadline, last)
	return 0
}

func spn(svc, port string) watch.ServicePortName {
	return watch.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: svc}, Port: port, Protocol: corev1.ProtocolTCP}
}

// describe renders a port's endpoints as "ip:port" plus "@local" and
// "(terminating)" / "(not ready)" markers.
func describe(s *watch.Snapshot, name watch.ServicePortName) []string {
	var out []string
	for _, ep := range s.Endpoints.Get(name) {
		d := ep.String()
		if ep.IsLocal {
			d += "@local"
		}
		switch {
		case ep.Terminating:
			d += "(terminating)"
		case !ep.Ready:
			d += "(not ready)"
		}
		out = append(out, d)
	}
	return out
}

// endpointsAre checks the endpoints of a port (and that the port exists).
func endpointsAre(name watch.ServicePortName, want ...string) func(*watch.Snapshot) error {
	return func(s *watch.Snapshot) error {
		if _, ok := s.Services.Lookup(name); !ok {
			return fmt.Errorf("%s missing", name)
		}
		if got := describe(s, name); !slices.Equal(got, want) {
			return fmt.Errorf("%s endpoints %v, want %v", name, got, want)
		}
		return nil
	}
}

func all(checks ...func(*watch.Snapshot) error) func(*watch.Snapshot) error {
	return func(s *watch.Snapshot) error {
		for _, c := range checks {
			if err := c(s); err != nil {
				return err
			}
		}
		return nil
	}
}

func absent(svc string) func(*watch.Snapshot) error {
	return func(s *watch.Snapshot) error {
		for n := range s.Services.All() {
			if n.Namespace == ns && n.Name == svc {
				return fmt.Errorf("%s still present", n)
			}
		}
		return nil
	}
}

func portIs(name watch.ServicePortName, port int32) func(*watch.Snapshot) error {
	return func(s *watch.Snapshot) error {
		p, ok := s.Services.Lookup(name)
		if !ok {
			return fmt.Errorf("%s missing", name)
		}
		if p.Port != port {
			return fmt.Errorf("%s port %d, want %d", name, p.Port, port)
		}
		return nil
	}
}

// --- objects -----------------------------------------------------------

func service(name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, Ports: ports},
	}
}

func svcPort(name string, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}
}

type epOpt func(*discovery.Endpoint)

var terminating epOpt = func(e *discovery.Endpoint) {
	e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
}

func endpoint(ip, node string, opts ...epOpt) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node), Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

type slicePort struct {
	name string
	port int32
}

func slice(name, svc string, at discovery.AddressType, ports []slicePort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discovery.LabelServiceName: svc,
			discovery.LabelManagedBy:   "watch-e2e.svcproxy.dev",
		}},
		AddressType: at,
		Endpoints:   eps,
	}
	for _, p := range ports {
		es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr.To(p.name), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(p.port)})
	}
	return es
}

// --- etcd --------------------------------------------------------------

// etcdPut stores obj as JSON under key straight in etcd (through its gRPC
// gateway), bypassing the API server's validation. This is how the test
// gets objects the API would reject today but a proxy must still survive:
// ones written by an older API server with laxer validation, or by hand.
func etcdPut(ctx context.Context, cp *controlplane.ControlPlane, key string, obj any) error {
	value, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	body, err := json.Marshal(map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString(value),
	})
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: cp.DialContext}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1:2379/v3/kv/put", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcd put %s: %w", key, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd put %s: %s: %s", key, resp.Status, msg)
	}
	return nil
}

func uid() types.UID {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return types.UID(strings.Join([]string{h[:8], h[8:12], h[12:16], h[16:20], h[20:]}, "-"))
}

// --- the test ----------------------------------------------------------

func TestWatchEndToEnd(t *testing.T) {
	skipUnlessReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	}()
	c := cp.Client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	create := func(obj any) {
		t.Helper()
		var err error
		switch o := obj.(type) {
		case *corev1.Service:
			_, err = c.CoreV1().Services(ns).Create(ctx, o, metav1.CreateOptions{})
		case *discovery.EndpointSlice:
			_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("create %T", obj)
		}
		must(err)
	}
	updateSlice := func(es *discovery.EndpointSlice) {
		t.Helper()
		cur, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, es.Name, metav1.GetOptions{})
		must(err)
		es.ResourceVersion = cur.ResourceVersion
		_, err = c.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
		must(err)
	}

	_, err = c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(err)
	_, err = c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: nodeName, Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"},
	}}, metav1.CreateOptions{})
	must(err)

	// The pipeline under test, wired as cmd/proxy wires it.
	tracker := watch.NewTracker(nodeName)
	rec := &recorder{tracker: tracker}
	runner := watch.NewRunner(rec.sync, watch.RunnerOptions{MinInterval: 50 * time.Millisecond, MaxInterval: time.Minute})
	synced := watch.Watch(ctx, tracker, watch.InformerOptions{Client: c, NodeName: nodeName, OnChange: runner.Trigger})
	runDone := make(chan struct{})
	runCtx, stopRun := context.WithCancel(ctx)
	go func() {
		defer close(runDone)
		runner.Run(runCtx, synced)
	}()
	defer func() {
		stopRun()
		<-runDone
	}()

	// 1. The first Snapshot comes once the caches synced and carries the
	// Node.
	at := rec.waitFor(t, 0, "first sync", func(s *watch.Snapshot) error {
		if !s.NodeChanged || s.Node.Name != nodeName || s.Node.Zone != "zone-a" {
			return fmt.Errorf("Node %+v NodeChanged %v", s.Node, s.NodeChanged)
		}
		return nil
	})

	// 2. Services: one to handle, and three a proxy must leave alone.
	t.Log("creating Services")
	mark := rec.mark()
	create(service("web", "172.30.10.10", svcPort("http", 80, 8080), svcPort("metrics", 9090, 9090)))
	other := service("other", "172.30.10.11", svcPort("http", 80, 8080))
	other.Labels = map[string]string{watch.LabelServiceProxyName: "another-proxy"}
	create(other)
	headless := service("headless", corev1.ClusterIPNone, svcPort("http", 80, 8080))
	create(headless)
	create(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "extname"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"},
	})
	for _, svc := range []string{"other", "headless", "extname"} {
		create(slice(svc+"-1", svc, discovery.AddressTypeIPv4, []slicePort{{"http", 8080}}, endpoint("10.1.9.1", nodeName)))
	}
	at = rec.waitFor(t, at, "web appears", func(s *watch.Snapshot) error {
		p, ok := s.Services.Lookup(spn("web", "http"))
		if !ok || p.Port != 80 || len(p.ClusterIPs) != 1 || p.ClusterIPs[0].String() != "172.30.10.10" {
			return fmt.Errorf("web:http = %+v", p)
		}
		if _, ok := s.Services.Lookup(spn("web", "metrics")); !ok {
			return fmt.Errorf("web:metrics missing")
		}
		if len(s.Endpoints.Get(spn("web", "http"))) != 0 {
			return fmt.Errorf("web has endpoints before any slice")
		}
		return nil
	})
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Changed since creating Services = %v, want [web]", got)
	}

	// 3. Endpoints arrive, with locality and conditions.
	t.Log("creating EndpointSlice web-a")
	mark = rec.mark()
	webA := slice("web-a", "web", discovery.AddressTypeIPv4, []slicePort{{"http", 8080}, {"metrics", 9090}},
		endpoint("10.1.0.2", "node-b"), endpoint("10.1.0.1", nodeName), endpoint("10.1.0.3", "node-b", terminating))
	create(webA)
	at = rec.waitFor(t, at, "web-a endpoints", all(
		endpointsAre(spn("web", "http"), "10.1.0.1:8080@local", "10.1.0.2:8080", "10.1.0.3:8080(terminating)"),
		endpointsAre(spn("web", "metrics"), "10.1.0.1:9090@local", "10.1.0.2:9090", "10.1.0.3:9090(terminating)"),
	))
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Changed after web-a = %v, want [web]", got)
	}

	// 4. A second slice merges in; the address both slices hold counts once.
	t.Log("creating EndpointSlice web-b")
	webB := slice("web-b", "web", discovery.AddressTypeIPv4, []slicePort{{"http", 8080}},
		endpoint("10.1.0.4", "node-c"), endpoint("10.1.0.2", "node-b"))
	create(webB)
	at = rec.waitFor(t, at, "web-a + web-b merged", endpointsAre(spn("web", "http"),
		"10.1.0.1:8080@local", "10.1.0.2:8080", "10.1.0.3:8080(terminating)", "10.1.0.4:8080"))

	// 5. A Service update changes its port.
	t.Log("updating web's port")
	mark = rec.mark()
	web, err := c.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	must(err)
	web.Spec.Ports[0].Port = 8000
	_, err = c.CoreV1().Services(ns).Update(ctx, web, metav1.UpdateOptions{})
	must(err)
	at = rec.waitFor(t, at, "web:http on port 8000", all(portIs(spn("web", "http"), 8000),
		endpointsAre(spn("web", "http"), "10.1.0.1:8080@local", "10.1.0.2:8080", "10.1.0.3:8080(terminating)", "10.1.0.4:8080")))
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Changed after port update = %v, want [web]", got)
	}

	// 6. Endpoint data the proxy cannot use must not hold up anything else.
	// kube-apiserver v1.37 rejects every malformed address (leading zeros,
	// non-canonical IPv6, IPv4-mapped, zones, ...), so three kinds are used:
	//  - through the API: an IPv6 slice on an IPv4-only Service (kept: the
	//    planner filters by family) and a slice port without a number
	//    (skipped);
	//  - straight into etcd: a slice with the legacy leading-zero address
	//    "010.1.0.9" next to a good one (the bad endpoint is skipped).
	t.Log("creating Service mixed with unusable endpoint data; changing web-a at the same time")
	mark = rec.mark()
	create(service("mixed", "172.30.10.12", svcPort("http", 80, 8080)))
	create(slice("mixed-v6", "mixed", discovery.AddressTypeIPv6, []slicePort{{"http", 8080}}, endpoint("fd00:10::5", "node-b")))
	noPort := slice("mixed-noport", "mixed", discovery.AddressTypeIPv4, nil, endpoint("10.1.0.11", "node-b"))
	noPort.Ports = []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP)}}
	create(noPort)
	bad := slice("mixed-bad", "mixed", discovery.AddressTypeIPv4, []slicePort{{"http", 8080}},
		endpoint("010.1.0.9", "node-b"), endpoint("10.1.0.10", nodeName))
	bad.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	bad.UID = uid()
	bad.CreationTimestamp = metav1.Now()
	must(etcdPut(ctx, cp, "/registry/endpointslices/"+ns+"/mixed-bad", bad))
	if got, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, "mixed-bad", metav1.GetOptions{}); err != nil || got.Endpoints[0].Addresses[0] != "010.1.0.9" {
		t.Fatalf("raw slice not served by the API server: %v %+v", err, got)
	}
	webA.Endpoints = webA.Endpoints[:2] // 10.1.0.3 is gone
	updateSlice(webA)
	at = rec.waitFor(t, at, "mixed and web both processed", all(
		endpointsAre(spn("mixed", "http"), "10.1.0.10:8080@local", "[fd00:10::5]:8080"),
		endpointsAre(spn("web", "http"), "10.1.0.1:8080@local", "10.1.0.2:8080", "10.1.0.4:8080"),
	))
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"mixed", "web"}) {
		t.Errorf("Changed after mixed = %v, want [mixed web]", got)
	}

	// 7. A Service that turns invalid (duplicate ports, written straight
	// into etcd: the API rejects it) keeps its last good state, and other
	// Services keep flowing.
	t.Log("creating db, then corrupting it in etcd")
	create(service("db", "172.30.10.13", svcPort("sql", 5432, 5432)))
	create(slice("db-1", "db", discovery.AddressTypeIPv4, []slicePort{{"sql", 5432}}, endpoint("10.1.1.1", "node-b")))
	at = rec.waitFor(t, at, "db programmed", endpointsAre(spn("db", "sql"), "10.1.1.1:5432"))
	db, err := c.CoreV1().Services(ns).Get(ctx, "db", metav1.GetOptions{})
	must(err)
	db.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	db.ResourceVersion = ""
	db.Spec.Ports = append(db.Spec.Ports, svcPort("sql2", 5432, 5433))
	mark = rec.mark()
	must(etcdPut(ctx, cp, "/registry/services/specs/"+ns+"/db", db))
	webB.Endpoints = append(webB.Endpoints, endpoint("10.1.0.5", nodeName))
	updateSlice(webB)
	updateSlice(slice("db-1", "db", discovery.AddressTypeIPv4, []slicePort{{"sql", 5432}}, endpoint("10.1.1.2", "node-b")))
	at = rec.waitFor(t, at, "web still updated while db is invalid", all(
		endpointsAre(spn("web", "http"), "10.1.0.1:8080@local", "10.1.0.2:8080", "10.1.0.4:8080", "10.1.0.5:8080@local"),
		endpointsAre(spn("db", "sql"), "10.1.1.1:5432"), // last good state
		portIs(spn("db", "sql"), 5432),
	))
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Changed while db is invalid = %v, want [web]", got)
	}
	for _, s := range rec.since(mark) {
		if _, ok := s.Services.Lookup(spn("db", "sql2")); ok {
			t.Fatal("invalid db programmed")
		}
	}
	t.Log("deleting the invalid db")
	must(c.CoreV1().Services(ns).Delete(ctx, "db", metav1.DeleteOptions{}))
	at = rec.waitFor(t, at, "db gone", absent("db"))

	// 8. A Service that gets labelled for another proxy goes away.
	t.Log("labelling mixed for another proxy")
	mixed, err := c.CoreV1().Services(ns).Get(ctx, "mixed", metav1.GetOptions{})
	must(err)
	mixed.Labels = map[string]string{watch.LabelServiceProxyName: "another-proxy"}
	_, err = c.CoreV1().Services(ns).Update(ctx, mixed, metav1.UpdateOptions{})
	must(err)
	at = rec.waitFor(t, at, "mixed gone", absent("mixed"))

	// 9. Deleting the slices empties the endpoints; the Service stays.
	t.Log("deleting web's slices")
	must(c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-b", metav1.DeleteOptions{}))
	at = rec.waitFor(t, at, "web-b gone", endpointsAre(spn("web", "http"), "10.1.0.1:8080@local", "10.1.0.2:8080"))
	mark = rec.mark()
	must(c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-a", metav1.DeleteOptions{}))
	at = rec.waitFor(t, at, "web without endpoints", all(
		endpointsAre(spn("web", "http")),
		endpointsAre(spn("web", "metrics")),
		portIs(spn("web", "http"), 8000),
	))
	if got := rec.changedSince(mark); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Changed after deleting web-a = %v, want [web]", got)
	}

	// 10. A Node label change re-plans every Service.
	t.Log("relabelling the Node")
	_ = rec.mark()
	node, err := c.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	must(err)
	node.Labels[corev1.LabelTopologyZone] = "zone-b"
	_, err = c.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
	must(err)
	at = rec.waitFor(t, at, "Node change", func(s *watch.Snapshot) error {
		if !s.NodeChanged || s.Node.Zone != "zone-b" {
			return fmt.Errorf("NodeChanged %v zone %q", s.NodeChanged, s.Node.Zone)
		}
		for name := range s.Services.All() {
			if !s.Changed[name.NamespacedName] {
				return fmt.Errorf("%s not in Changed on a Node change", name)
			}
		}
		return nil
	})

	// 11. Deleting the Service removes it.
	t.Log("deleting web")
	must(c.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}))
	rec.waitFor(t, at, "web gone", absent("web"))

	// Throughout, the Services another proxy owns, the headless one and the
	// ExternalName one never reached a Snapshot.
	for _, s := range rec.since(0) {
		for n := range s.Services.All() {
			if n.Namespace == ns && (n.Name == "other" || n.Name == "headless" || n.Name == "extname") {
				t.Errorf("Snapshot holds %s", n)
			}
		}
		for n := range s.Changed {
			if n.Namespace == ns && (n.Name == "other" || n.Name == "headless" || n.Name == "extname") {
				t.Errorf("Snapshot marks %s changed", n)
			}
		}
	}
	t.Logf("%d Snapshots recorded", rec.mark())
}
