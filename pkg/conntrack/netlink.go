package conntrack

import (
	"net"
	"net/netip"
	"sync/atomic"
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
	Local func() ([]netip.Addr, error)
	// FullEvery is how long a family's table may go unread while no round
	// can have made an entry stale (Builder.MayBeStale); rules changed by
	// someone else are caught within it. Zero reads the table every round.
	FullEvery time.Duration

	builders map[v1.IPFamily]*Builder
	lastRead map[v1.IPFamily]tableRead
	// fullSyncs counts ReadNext calls.
	fullSyncs atomic.Uint64
}

// tableRead is when a family's table was last read, and how many full
// syncs had been reported then.
type tableRead struct {
	at        time.Time
	fullSyncs uint64
}

// ReadNext makes each family's next round read the table whatever changed:
// after a full sync that repaired rules someone else changed, the flows
// tried meanwhile were never DNATed. Safe to call beside Reconcile.
func (c *Cleaner) ReadNext() { c.fullSyncs.Add(1) }

// Reconcile deletes every stale entry for snap's Services (see
// Targets.Stale). It skips reading the table when nothing since the last
// round can have made an entry stale, for at most FullEvery.
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
	b, fullSyncs := c.builders[family], c.fullSyncs.Load()
	targets := b.Build(snap, local)
	last := c.lastRead[family]
	if !b.MayBeStale() && last.fullSyncs == fullSyncs && c.FullEvery > 0 && time.Since(last.at) < c.FullEvery {
		// Reading the table is the round's whole cost once the targets are
		// kept between rounds; after a TCP-only change nothing is new.
		return
	}
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
	if c.lastRead == nil {
		c.lastRead = map[v1.IPFamily]tableRead{}
	}
	c.lastRead[family] = tableRead{at: start, fullSyncs: fullSyncs}
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
