package iptables

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// FuzzRestorePayloads drives the planner and the restore writer with
// arbitrary sequences of Service and endpoint changes (decoded from the
// fuzz input) and checks, against the validating fake kernel, that every
// full and delta payload is accepted and that after each sync the kernel
// holds exactly the plan. Seeds and found inputs live in testdata/fuzz.
func FuzzRestorePayloads(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7})
	f.Add([]byte{9, 9, 9, 0, 0, 0, 255, 128, 64, 32})
	f.Add([]byte("svcproxy: a change to one Service writes only that Service"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fake := NewFake()
		p := NewProxier(fake, defaultOpts())
		tr := watch.NewTracker(watchtest.Node)
		for len(data) >= 3 {
			applyChange(tr, data[0], data[1], data[2])
			data = data[3:]
			converge(t, p, fake, tr.Snapshot())
		}
	})
}

// applyChange turns three bytes into one API event on a small set of
// Services, so the fuzzer explores adds, deletes, policy flips and
// endpoint churn on the same few objects.
func applyChange(tr *watch.Tracker, op, a, b byte) {
	i := int(a % 6)
	name := fmt.Sprintf("svc-%d", i)
	key := types.NamespacedName{Namespace: "fz", Name: name}
	switch op % 4 {
	case 0:
		tr.OnService(key, nil)
	case 1, 2:
		s := watchtest.Service{Namespace: "fz", Name: name, ClusterIPs: []string{fmt.Sprintf("172.30.9.%d", i+1)},
			Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}}
		if b&1 != 0 {
			s.Type, s.Ports[0].NodePort = v1.ServiceTypeLoadBalancer, int32(3000+i)
			s.LBIPs = []string{fmt.Sprintf("198.51.100.%d", i+1)}
		}
		if b&2 != 0 {
			s.ExternalIPs = []string{fmt.Sprintf("192.168.99.%d", i+1)}
		}
		s.ETPLocal = b&4 != 0 && s.Type == v1.ServiceTypeLoadBalancer
		s.ITPLocal = b&8 != 0
		if b&16 != 0 {
			s.AffinitySeconds = 60
		}
		if b&32 != 0 && s.Type == v1.ServiceTypeLoadBalancer {
			s.SourceRanges = []string{"203.0.113.0/25"}
		}
		tr.OnService(key, s.Object())
	case 3:
		var eps []watchtest.Endpoint
		for e := range int(b % 5) {
			eps = append(eps, watchtest.Endpoint{IP: fmt.Sprintf("10.9.%d.%d", i, e+1), Node: []string{watchtest.Node, "other"}[(int(b)>>e)&1],
				NotReady: (int(b)>>(e+3))&1 == 1, Serving: true, Terminating: true})
		}
		tr.OnEndpointSlice(watchtest.Slice("fz", name, name+"-1", 8080, "p", eps...), false)
	}
}
