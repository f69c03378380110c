// Package hostaddr lists the node's own addresses and follows the kernel's
// address notifications, so that callers on a hot path (every sync, every
// conntrack round) read the addresses only when one changed.
//
// The listing is a dump of every address in the network namespace. In
// IPVS mode that includes kube-ipvs0's service IPs, one per Service: at
// 5,000 Services, listing them after every change was the largest part of
// a one-endpoint change that grew with N. A Watch can be told to ignore
// one link (kube-ipvs0), both in its version and in its listing.
package hostaddr

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// Watch follows address notifications in the network namespace of the
// thread that first asks for its Version. Every notification for a link
// other than the ignored one bumps the version; so does anything that may
// have lost one (a receive error such as ENOBUFS ends the subscription,
// which is then made again). While no subscription stands, Version says so
// and callers read the addresses every time.
type Watch struct {
	start   sync.Once
	version atomic.Uint64
	watched atomic.Bool
	ignore  atomic.Int32
}

// New returns a Watch that has not subscribed yet.
func New() *Watch { return &Watch{} }

// Node returns the process's Watch: one subscription, however many
// readers (the IPVS proxier and the conntrack reconciler share it).
var Node = sync.OnceValue(New)

// notifyBuffer is the subscription socket's receive buffer: a full IPVS
// sync adds thousands of service IPs to kube-ipvs0 at once, each one a
// notification, and an overflow costs a resubscription.
const notifyBuffer = 4 << 20

// resubscribeDelay spaces out attempts to subscribe again.
const resubscribeDelay = time.Second

// Ignore makes notifications for the link with this index leave the
// version alone and drops its addresses from List.
func (w *Watch) Ignore(linkIndex int) { w.ignore.Store(int32(linkIndex)) }

// Version returns a number that changes whenever an address of a link
// other than the ignored one may have changed, and whether a subscription
// stands (if not, the number means nothing). It subscribes on its first
// call, on the calling thread, so the socket belongs to the caller's
// network namespace; no setns is needed (the systemd unit's sandbox has no
// CAP_SYS_ADMIN for one).
func (w *Watch) Version() (version uint64, watched bool) {
	w.start.Do(func() {
		updates, err := w.subscribe()
		go w.run(updates, err)
	})
	return w.version.Load(), w.watched.Load()
}

// List returns the addresses of family (a netlink family: FAMILY_V4,
// FAMILY_V6 or FAMILY_ALL) on every link but the ignored one.
func (w *Watch) List(family int) ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, family)
	if err != nil {
		return nil, err
	}
	skip := int(w.ignore.Load())
	var out []netip.Addr
	for _, a := range list {
		if a.LinkIndex == skip && skip != 0 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (w *Watch) subscribe() (chan netlink.AddrUpdate, error) {
	updates := make(chan netlink.AddrUpdate, 1024)
	err := netlink.AddrSubscribeWithOptions(updates, nil, netlink.AddrSubscribeOptions{
		ErrorCallback:     func(err error) { w.version.Add(1); klog.V(2).InfoS("Address notifications", "err", err) },
		ReceiveBufferSize: notifyBuffer,
	})
	return updates, err
}

// run reads notifications for the life of the process, subscribing again
// when a subscription fails or ends.
func (w *Watch) run(updates chan netlink.AddrUpdate, err error) {
	for failures := 0; ; failures++ {
		if err == nil {
			// Changes before the subscription stood are unknown: a new
			// version makes the next reader list the addresses once.
			w.version.Add(1)
			w.watched.Store(true)
			for u := range updates {
				if int32(u.LinkIndex) != w.ignore.Load() {
					w.version.Add(1)
				}
			}
			w.watched.Store(false)
			w.version.Add(1)
			err = errors.New("the subscription ended")
		}
		if failures == 0 {
			klog.ErrorS(err, "Address notifications unavailable; reading the node's addresses every time until they are back")
		} else {
			klog.V(2).InfoS("Address notifications still unavailable", "err", err)
		}
		time.Sleep(resubscribeDelay)
		updates, err = w.subscribe()
	}
}

// Cache answers a listing of every family's addresses from its last one
// while the Watch's version has not moved. It is safe for concurrent use.
type Cache struct {
	watch *Watch

	mu      sync.Mutex
	version uint64
	valid   bool
	addrs   []netip.Addr
}

// NewCache returns a Cache of w's addresses.
func NewCache(w *Watch) *Cache { return &Cache{watch: w} }

// Addrs returns the addresses; callers must not modify the slice.
func (c *Cache) Addrs() ([]netip.Addr, error) {
	version, watched := c.watch.Version()
	c.mu.Lock()
	defer c.mu.Unlock()
	if watched && c.valid && c.version == version {
		return c.addrs, nil
	}
	addrs, err := c.watch.List(netlink.FAMILY_ALL)
	if err != nil {
		c.valid = false
		return nil, err
	}
	c.addrs, c.version, c.valid = addrs, version, watched
	return addrs, nil
}
