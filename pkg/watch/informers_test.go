package watch

import (
	"context"
	"fmt"
	"slices"
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
	if got := tracker.Snapshot().Services.Len(); got != n {
		t.Errorf("at sync the tracker holds %d Service ports, want %d", got, n)
	}
}

// TestWatchSlices: EndpointSlices reach the tracker through the informer's
// transform (cached as Slices), and a deleted slice takes its endpoints
// away.
func TestWatchSlices(t *testing.T) {
	svc := service("ns", "web", "172.30.0.1", tcp("p", 80))
	slice := endpointSlice("ns", "web", "web-1", "p", 8080, endpoint("10.0.0.1", "node"), endpoint("10.0.0.2", ""))
	client := fake.NewClientset(svc, slice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tracker := NewTracker("node")
	changed := make(chan struct{}, 100)
	synced := Watch(ctx, tracker, InformerOptions{Client: client, NodeName: "node", OnChange: func() { changed <- struct{}{} }})
	select {
	case <-synced:
	case <-ctx.Done():
		t.Fatal("never synced")
	}
	name := spn("ns", "web", "p")
	if got := endpointStrings(tracker.Snapshot(), name); !slices.Equal(got, []string{"10.0.0.1:8080@local", "10.0.0.2:8080"}) {
		t.Fatalf("endpoints after sync = %v", got)
	}
	if err := client.DiscoveryV1().EndpointSlices("ns").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("the deleted slice's endpoints never went away")
		}
		if got := endpointStrings(tracker.Snapshot(), name); len(got) == 0 {
			return
		}
	}
}
