package conntrack

import (
	"flag"
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/pkg/watch"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// bulkTracker has n ClusterIP Services of one UDP port x 10 endpoints, as
// bench/ writes them.
func bulkTracker(n int) *watch.Tracker {
	var svcs []watchtest.Service
	var slices []*discovery.EndpointSlice
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("s%05d", i)
		svcs = append(svcs, watchtest.Service{Namespace: "bulk", Name: name, ClusterIPs: []string{fmt.Sprintf("172.30.%d.%d", i/250, 1+i%250)},
			Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}})
		var eps []watchtest.Endpoint
		for e := 0; e < 10; e++ {
			eps = append(eps, watchtest.Endpoint{IP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, e+1), Node: "n"})
		}
		slices = append(slices, watchtest.Slice("bulk", name, name+"-1", 8080, "p", eps...))
	}
	return watchtest.Tracker(svcs, slices...)
}

var rebuild = flag.Bool("rebuild", false, "BenchmarkRoundAfterOneChange selects every Service's endpoints each round (as before the Builder)")

// BenchmarkRoundAfterOneChange: the targets of one reconcile round after
// one endpoint of one Service changed.
func BenchmarkRoundAfterOneChange(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tr := bulkTracker(n)
			builder := NewBuilder(v1.IPv4Protocol)
			builder.Build(tr.Snapshot(), nil)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				tr.OnEndpointSlice(watchtest.Slice("bulk", "s00007", "s00007-1", 8080, "p", watchtest.Endpoint{IP: fmt.Sprintf("10.99.0.%d", i%2+1)}), false)
				snap := tr.Snapshot()
				b.StartTimer()
				if *rebuild {
					BuildTargets(snap, v1.IPv4Protocol, nil)
				} else {
					builder.Build(snap, nil)
				}
			}
		})
	}
}
