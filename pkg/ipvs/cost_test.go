package ipvs

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

// kernelCost is what one sync asked of the fake kernels: calls by kind,
// rows the kernel sent back, and whole-table tool runs.
type kernelCost map[string]int

func (c kernelCost) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c[k]))
	}
	return strings.Join(parts, " ")
}

// measure runs fn and returns the kernel work it did.
func (e *env) measure(fn func()) kernelCost {
	e.ipvs.ResetCalls()
	e.link.ResetCalls()
	restores, saves, iptRestores, iptSaves := e.sets.Restores, e.sets.Saves, len(e.ipt.Restores), e.ipt.Saves
	fn()
	c := kernelCost{}
	for k, v := range e.ipvs.Calls {
		c["ipvs."+k] = v
	}
	for k, v := range e.link.Calls {
		c["link."+k] = v
	}
	c["ipvs.rows-read"] = e.ipvs.Read
	c["link.addresses-read"] = e.link.Read
	c["ipset.restore"] = e.sets.Restores - restores
	c["ipset.save"] = e.sets.Saves - saves
	c["iptables.restore"] = len(e.ipt.Restores) - iptRestores
	c["iptables.save"] = e.ipt.Saves - iptSaves
	return c
}

// oneEndpointChangeCost syncs n other Services, then adds one endpoint to
// a Service and removes it again, and returns the kernel work of each of
// the two syncs. Endpoint removal drains at weight 0, so the Reap after the
// sync runs too.
func oneEndpointChangeCost(t *testing.T, n int) (add, remove kernelCost) {
	svcs, slices := others(n)
	two := webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"})
	tr := newTracker(append(svcs, webSvc), append(slices, two)...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	add = e.measure(func() {
		tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}, ep{IP: "10.180.2.2", Node: "node2"}), false)
		e.sync(t, tr.Snapshot())
	})
	remove = e.measure(func() {
		tr.OnEndpointSlice(two, false)
		e.sync(t, tr.Snapshot())
	})
	return add, remove
}

// TestOneEndpointChangeCostFlat: the kernel work of a one-endpoint change
// is the same with 20 and with 400 other Services: the same calls, the
// same rows read back, no table-wide tool run.
func TestOneEndpointChangeCostFlat(t *testing.T) {
	addSmall, removeSmall := oneEndpointChangeCost(t, 20)
	addLarge, removeLarge := oneEndpointChangeCost(t, 400)
	if addSmall.String() != addLarge.String() {
		t.Errorf("adding an endpoint:\n  20 Services: %s\n 400 Services: %s", addSmall, addLarge)
	}
	if removeSmall.String() != removeLarge.String() {
		t.Errorf("removing an endpoint:\n  20 Services: %s\n 400 Services: %s", removeSmall, removeLarge)
	}
	t.Logf("adding an endpoint: %s", addLarge)
	t.Logf("removing an endpoint: %s", removeLarge)
}

// TestHostAddressesReadWhenUnwatched: without address notifications every
// sync reads the node's addresses, so a new node address is never missed.
func TestHostAddressesReadWhenUnwatched(t *testing.T) {
	svcs, slices := others(3)
	tr := newTracker(svcs, slices...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.link.Unwatched = true
	e.sync(t, tr.Snapshot())
	cost := e.measure(func() {
		tr.OnEndpointSlice(slices[0], true)
		e.sync(t, tr.Snapshot())
	})
	if cost["link.HostAddrs"] != 1 {
		t.Errorf("unwatched addresses: a delta sync read them %d times, want once", cost["link.HostAddrs"])
	}
}

func BenchmarkOneEndpointChange(b *testing.B) {
	for _, n := range []int{200, 1000, 5000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			svcs, slices := others(n)
			tr := newTracker(append(svcs, webSvc), append(slices, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))...)
			k, _, _, _, _ := NewFakeKernel(hostAddrs...)
			p := NewProxier(k, iptables.NewFake(), iptOpts(), ipvsOpts())
			if _, err := p.Sync(tr.Snapshot()); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				eps := []ep{{IP: "10.180.0.1", Node: testNode}, {IP: fmt.Sprintf("10.180.3.%d", i%2+1), Node: "node2"}}
				tr.OnEndpointSlice(webSlice(eps...), false)
				snap := tr.Snapshot()
				b.StartTimer()
				if _, err := p.Sync(snap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
