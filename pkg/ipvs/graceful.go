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
	a.reaping[k] = true
	return nil
}

// Draining reports how many real servers are draining.
func (a *Applier) Draining() int {
	n := 0
	for k := range a.reaping {
		if av := a.vs[k]; av != nil {
			n += len(av.terminating)
		}
	}
	return n
}

// Reap deletes draining real servers that have no connections left or
// whose grace period is over, then orphaned virtual servers left empty and
// the kube-ipvs0 addresses only they kept. It looks only at the virtual
// servers with something draining, and reads only their real servers.
func (a *Applier) Reap() error {
	return a.reapKeys(a.Reaping())
}

// ReapTouched is Reap for the virtual servers the last Apply touched (all
// of them after a full one): a real server that has just been removed
// without connections goes within the sync, while those draining from
// earlier changes are left to the periodic Reap, so a sync's reads do not
// grow with what is still draining.
func (a *Applier) ReapTouched() error {
	if a.touched == nil {
		return a.Reap()
	}
	var keys []VSKey
	for _, k := range a.Reaping() {
		if a.touched[k] {
			keys = append(keys, k)
		}
	}
	return a.reapKeys(keys)
}

// Reaping returns the virtual servers with something draining or
// orphaned, sorted.
func (a *Applier) Reaping() []VSKey {
	return slices.SortedFunc(maps.Keys(a.reaping), compareKeys)
}

// ReapOne is Reap for one virtual server.
func (a *Applier) ReapOne(k VSKey) error { return a.reapKeys([]VSKey{k}) }

func (a *Applier) reapKeys(keys []VSKey) error {
	var errs []error
	var freed []netip.Addr
	for _, k := range keys {
		if have := a.vs[k]; have != nil {
			f, err := a.reapVS(k, have)
			freed = append(freed, f...)
			errs = append(errs, err)
		}
		if have := a.vs[k]; have == nil || (len(have.terminating) == 0 && !have.orphan) {
			delete(a.reaping, k)
		}
	}
	if len(freed) > 0 && a.refs != nil {
		if err := a.removeAddrs(freed); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reapVS deletes the drained real servers of one virtual server, and the
// virtual server itself when it is an orphan left empty; freed reports
// whether the virtual server is gone (its address may be free).
func (a *Applier) reapVS(k VSKey, have *appliedVS) (freed []netip.Addr, err error) {
	if len(have.terminating) == 0 {
		return nil, a.dropIfEmpty(k, have)
	}
	dests, err := a.k.IPVS.Destinations(k)
	if errors.Is(err, syscall.ENOENT) {
		// Gone behind our back; the next full sync sorts it out.
		a.dropVS(k)
		return []netip.Addr{k.Addr}, nil
	}
	if err != nil {
		return nil, err
	}
	conns := map[netip.AddrPort]int{}
	present := map[netip.AddrPort]bool{}
	for _, d := range dests {
		conns[d.Addr] = d.ActiveConn + d.InactiveConn
		present[d.Addr] = true
	}
	now := a.now()
	var errs []error
	for _, rs := range slices.SortedFunc(maps.Keys(have.terminating), compareAddrPorts) {
		if present[rs] && conns[rs] > 0 && now.Before(have.terminating[rs]) {
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
		freed = []netip.Addr{k.Addr}
	}
	return freed, errors.Join(errs...)
}
