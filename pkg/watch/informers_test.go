package watch

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// TestWatchSyncedAfterHandlers: Watch reports synced only once every
// object of the initial list has reached the tracker, not merely the
// informers' caches. The handlers are slowed down (OnChange sleeps) so
// that the two moments are far apart.
func TestWatchSyncedAfterHandlers(t *testing.T) {
	const n = 100
	var objs []runtime.Object
	for i := range n {
		objs = append(objs, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d", i)},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: fmt.Sprintf("172.30.0.%d", i+1),
				Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}}},
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tracker := NewTracker("node")
	synced := Watch(ctx, tracker, InformerOptions{
		Client:   fake.NewClientset(objs...),
		NodeName: "node",
		OnChange: func() { time.Sleep(2 * time.Millisecond) },
	})
	select {
	case <-synced:
	case <-ctx.Done():
		t.Fatal("never synced")
	}
	if got := len(tracker.Snapshot().Services); got != n {
		t.Errorf("at sync the tracker holds %d Service ports, want %d", got, n)
	}
}
