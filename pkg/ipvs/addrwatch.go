package ipvs

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// addrWatch follows the kernel's address notifications so that a sync need
// not dump every address to learn whether the node's own addresses
// changed: that dump holds kube-ipvs0's service IPs too, and at 5,000
// Services it was the largest part of a one-endpoint change that grew
// with N.
//
// Every notification for an interface other than kube-ipvs0 bumps the
// version; so does anything that may have lost one (a receive error such
// as ENOBUFS ends the subscription, which is then made again). While no
// subscription stands, watched is false and callers read the addresses
// every time, as before.
type addrWatch struct {
	start      sync.Once
	version    atomic.Uint64
	watched    atomic.Bool
	dummyIndex atomic.Int32
}

// addrWatchBuffer is the subscription socket's receive buffer: a full sync
// adds thousands of service IPs to kube-ipvs0 at once, each one a
// notification, and an overflow costs a resubscription.
const addrWatchBuffer = 4 << 20

// resubscribeDelay spaces out attempts to subscribe again.
const resubscribeDelay = time.Second

// HostAddrsVersion starts the watch on its first call. The subscription
// is made on the calling thread, so its socket belongs to the caller's
// network namespace; no setns is needed (the systemd unit's sandbox has no
// CAP_SYS_ADMIN for one).
func (l *netlinkLink) HostAddrsVersion() (uint64, bool) {
	w := l.watch
	w.start.Do(func() {
		updates, err := w.subscribe()
		go w.run(updates, err)
	})
	return w.version.Load(), w.watched.Load()
}

func (w *addrWatch) subscribe() (chan netlink.AddrUpdate, error) {
	updates := make(chan netlink.AddrUpdate, 1024)
	err := netlink.AddrSubscribeWithOptions(updates, nil, netlink.AddrSubscribeOptions{
		ErrorCallback:     func(err error) { w.version.Add(1); klog.V(2).InfoS("Address notifications", "err", err) },
		ReceiveBufferSize: addrWatchBuffer,
	})
	return updates, err
}

// run reads notifications for the life of the process, subscribing again
// when a subscription fails or ends.
func (w *addrWatch) run(updates chan netlink.AddrUpdate, err error) {
	for failures := 0; ; failures++ {
		if err == nil {
			// Changes before the subscription stood are unknown: a new
			// version makes the next sync read the addresses once.
			w.version.Add(1)
			w.watched.Store(true)
			for u := range updates {
				if int32(u.LinkIndex) != w.dummyIndex.Load() {
					w.version.Add(1)
				}
			}
			w.watched.Store(false)
			w.version.Add(1)
			err = errors.New("the subscription ended")
		}
		if failures == 0 {
			klog.ErrorS(err, "Address notifications unavailable; reading the node's addresses at every sync until they are back")
		} else {
			klog.V(2).InfoS("Address notifications still unavailable", "err", err)
		}
		time.Sleep(resubscribeDelay)
		updates, err = w.subscribe()
	}
}
