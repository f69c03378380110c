package controlplane

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// skipUnlessReady skips when the test cannot run here: it needs root (for
// network namespaces) and the prebuilt binaries.
func skipUnlessReady(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root to create network namespaces")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "binary %s missing in %s: run e2e/build-tools.sh", b, DefaultBinDir())
		}
	}
}

func TestControlPlaneServiceRoundTrip(t *testing.T) {
	skipUnlessReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat("/run/netns/" + cp.Netns); !os.IsNotExist(err) {
			t.Errorf("netns %s still exists after Stop", cp.Netns)
		}
	}()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cptest"}}
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "cptest", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeNodePort,
			ClusterIP: "172.30.5.5",
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(8080), NodePort: 3001,
			}},
		},
	}
	if _, err := cp.Client.CoreV1().Services("cptest").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := cp.Client.CoreV1().Services("cptest").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ClusterIP != "172.30.5.5" || got.Spec.Ports[0].NodePort != 3001 {
		t.Errorf("service read back as clusterIP %s nodePort %d", got.Spec.ClusterIP, got.Spec.Ports[0].NodePort)
	}
}

func TestLinkNetnsReachesAPI(t *testing.T) {
	skipUnlessReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	ns := nsutil.Name("cptest")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer nsutil.Delete(ns)
	if err := cp.LinkNetns(ns); err != nil {
		t.Fatal(err)
	}
	if err := cp.LinkNetns(ns); err != nil {
		t.Fatalf("second LinkNetns: %v", err)
	}
	// A TCP connect from the linked namespace proves the route both ways.
	if err := nsutil.Run("ip", "netns", "exec", ns, "socat", "-u", "OPEN:/dev/null", "TCP:"+cp.APIAddress+",connect-timeout=5"); err != nil {
		t.Fatalf("API not reachable from linked netns: %v", err)
	}
}
