package conntrack

import (
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Cleaner deletes stale entries from the kernel's conntrack table. It is
// not safe for concurrent use: the proxy runs its rounds one at a time.
type Cleaner struct {
	// Local returns the node's addresses (NodePort destinations). It is
	// called every round, so it should answer from a cache (see
	// hostaddr.Cache) rather than list every address each time.
	Local    func() ([]netip.Addr, error)
	builders map[v1.IPFamily]*Builder
}

// Reconcile deletes every stale UDP/SCTP entry for snap's Services.
func (c *Cleaner) Reconcile(snap *watch.Snapshot, family v1.IPFamily) {
	start := time.Now()
	var local []netip.Addr
	if c.Local != nil {
		var err error
		if local, err = c.Local(); err != nil {
			klog.ErrorS(err, "Listing the node's addresses; UDP NodePort flows are not checked this round")
		}
	}
	if c.builders[family] == nil {
		if c.builders == nil {
			c.builders = map[v1.IPFamily]*Builder{}
		}
		c.builders[family] = NewBuilder(family)
	}
	targets := c.builders[family].Build(snap, local)
	nlFamily := netlink.FAMILY_V4
	if family == v1.IPv6Protocol {
		nlFamily = netlink.FAMILY_V6
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(nlFamily), filter{targets})
	metrics.ReconcileConntrackFlowsLatency.WithLabelValues(string(family)).Observe(metrics.SinceInSeconds(start))
	if err != nil {
		klog.ErrorS(err, "Deleting stale conntrack entries", "family", family)
		return
	}
	if n > 0 {
		metrics.ReconcileConntrackFlowsDeletedEntriesTotal.WithLabelValues(string(family)).Add(float64(n))
		klog.V(2).InfoS("Deleted stale conntrack entries", "family", family, "count", n)
	}
}

type filter struct{ t *Targets }

func (f filter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return f.t.Stale(flow.Forward.Protocol, addr(flow.Forward.DstIP), flow.Forward.DstPort, addr(flow.Reverse.SrcIP), flow.Reverse.SrcPort)
}

func addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
