package ipvs

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"syscall"

	v1 "k8s.io/api/core/v1"
)

// Graceful termination. A TCP real server that is no longer wanted is not
// deleted at once, which would cut its connections (expire_nodest_conn=1
// drops their next packet): it gets weight 0, so no new connection picks
// it, and is deleted once its ActiveConn+InactiveConn reach 0 or its grace
// period ends. UDP and SCTP real servers go at once; stale UDP/SCTP
// conntrack entries are the conntrack reconciler's job, after each sync.
// Reap runs at the end of every sync and on a timer in between.

// retire starts draining one real server (or deletes it at once).
func (a *Applier) retire(k VSKey, have *appliedVS, rs netip.AddrPort) error {
	if k.Protocol != v1.ProtocolTCP {
		if err := a.k.IPVS.DeleteDestination(k, rs); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		logVS("Deleted real server", k, rs)
		delete(have.rs, rs)
		delete(have.terminating, rs)
		return nil
	}
	if have.rs[rs] != 0 {
		if err := a.k.IPVS.UpdateDestination(k, rs, 0); err != nil {
			if !errors.Is(err, syscall.ENOENT) {
				return err
			}
			delete(have.rs, rs)
			delete(have.terminating, rs)
			return nil
		}
		have.rs[rs] = 0
		logVS("Draining real server", k, rs)
	}
	if _, ok := have.terminating[rs]; !ok {
		have.terminating[rs] = a.now().Add(a.grace)
	}
	return nil
}

// Draining reports how many real servers are draining.
func (a *Applier) Draining() int {
	n := 0
	for _, av := range a.vs {
		n += len(av.terminating)
	}
	return n
}

// Reap deletes draining real servers that have no connections left or
// whose grace period is over, then orphaned virtual servers left empty and
// the kube-ipvs0 addresses only they kept. It reads the real servers of the
// virtual servers with draining ones only.
func (a *Applier) Reap() error {
	now := a.now()
	var errs []error
	var freed []netip.Addr
	for _, k := range slices.SortedFunc(maps.Keys(a.vs), compareKeys) {
		have := a.vs[k]
		if len(have.terminating) == 0 {
			if err := a.dropIfEmpty(k, have); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		dests, err := a.k.IPVS.Destinations(k)
		if errors.Is(err, syscall.ENOENT) {
			// Gone behind our back; the next full sync sorts it out.
			delete(a.vs, k)
			freed = append(freed, k.Addr)
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		conns := map[netip.AddrPort]int{}
		present := map[netip.AddrPort]bool{}
		for _, d := range dests {
			conns[d.Addr] = d.ActiveConn + d.InactiveConn
			present[d.Addr] = true
		}
		for _, rs := range slices.SortedFunc(maps.Keys(have.terminating), compareAddrPorts) {
			deadline := have.terminating[rs]
			if present[rs] && conns[rs] > 0 && now.Before(deadline) {
				continue
			}
			if present[rs] {
				if err := a.k.IPVS.DeleteDestination(k, rs); err != nil && !errors.Is(err, syscall.ENOENT) {
					errs = append(errs, err)
					continue
				}
				logVS("Deleted drained real server", k, rs)
			}
			delete(have.rs, rs)
			delete(have.terminating, rs)
		}
		if err := a.dropIfEmpty(k, have); err != nil {
			errs = append(errs, err)
		} else if a.vs[k] == nil {
			freed = append(freed, k.Addr)
		}
	}
	if len(freed) > 0 && a.refs != nil {
		if err := a.removeAddrs(freed); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
