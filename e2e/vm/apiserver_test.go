package vm

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"svcproxy.dev/svcproxy/e2e/controlplane"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestVMAPIServer keeps etcd and kube-apiserver on the host (in their netns,
// as e2e/controlplane runs them) and lets a guest reach the API at its usual
// address, 169.254.250.1:6443, through a guestfwd of the restricted user
// network: no link between the guest and any host interface.
func TestVMAPIServer(t *testing.T) {
	requireVM(t)
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(controlplane.DefaultBinDir(), b)); err != nil {
			testenv.Missing(t, "%s missing in %s: run e2e/build-tools.sh", b, controlplane.DefaultBinDir())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	t.Logf("control plane ready in %v", time.Since(start).Round(time.Millisecond))

	share, _ := shareSelf(t)
	kc := filepath.Join(share, "kubeconfig")
	copyFile(t, cp.KubeconfigPath, kc)
	res, err := Run(ctx, RunOptions{
		Command:  []string{"./vm.test", "-test.run", "^TestGuestAPI$", "-test.v", "-test.count=1"},
		Env:      []string{"KUBECONFIG=" + kc},
		Dir:      share,
		ShareDir: share,
		// vm.test starts faster from a cached share.
		ShareCache: true,
		Network:    APINetwork,
		Forwards:   []Forward{APIForward(cp)},
		Timeout:    3 * time.Minute,
	})
	logResult(t, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", res.Output)
	if res.ExitCode != 0 {
		t.Fatalf("guest exit %d", res.ExitCode)
	}
	if _, err := cp.Client.CoreV1().Services("default").Get(ctx, "from-guest", metav1.GetOptions{}); err != nil {
		t.Errorf("the guest's Service is not in the API: %v", err)
	}
}

// TestGuestAPI runs inside the guest (see TestVMAPIServer): client-go with
// the control plane's kubeconfig.
func TestGuestAPI(t *testing.T) {
	requireGuest(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t0 := time.Now()
	v, err := cl.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	t.Logf("server %s: first request (TCP+TLS) %v", v.GitVersion, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "from-guest"},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := cl.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	t.Logf("create Service %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	list, err := cl.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list services: %v", err)
	}
	t.Logf("list %d Services %v", len(list.Items), time.Since(t0).Round(time.Millisecond))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
