package ipvs

import (
	"strings"
	"testing"
)

// savingThen is an ipset table whose Save runs then after reading, as a
// sync would if it came while `ipset save` was still running.
type savingThen struct {
	IPSets
	then func()
}

func (s savingThen) Save() ([]byte, error) {
	out, err := s.IPSets.Save()
	s.then()
	return out, err
}

// TestVerifySetsWithoutTheLock: the drift check reads the ipsets without
// the Proxier's lock; a sync that changes members after the read and
// before the comparison is not drift, and a member deleted by hand after
// it still is, by name.
func TestVerifySetsWithoutTheLock(t *testing.T) {
	svcs, eps := others(3)
	tr := newTracker(append(svcs, webSvc), append(eps, webSlice(ep{IP: "10.180.0.1", Node: testNode}))...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	synced := false
	e.p.sets = savingThen{IPSets: e.sets, then: func() {
		if !e.p.mu.TryLock() {
			t.Fatal("the lock is held while the ipsets are read")
		}
		e.p.mu.Unlock()
		restores := e.sets.Restores
		tr.deleteService("bulk", "s001")
		if e.sync(t, tr.Snapshot()).Full {
			t.Fatal("the sync during the read was a full one, which voids the check")
		}
		synced = e.sets.Restores > restores
	}}
	if d, err := e.p.Verify(); err != nil || d != nil {
		t.Errorf("a sync while the ipsets were read: drift %v, err %v", d, err)
	}
	if !synced {
		t.Fatal("the sync during the read changed no ipset member; the test shows nothing")
	}

	e.p.sets = e.sets
	clusterIPs := SetName(SetClusterIP, e.p.Family())
	member := "172.30.10.1,tcp:80" // s000's ClusterIP and port
	if err := e.sets.Restore([]byte("del " + clusterIPs + " " + member + "\n")); err != nil {
		t.Fatal(err)
	}
	d, err := e.p.Verify()
	if err != nil || d == nil || d.Reason != "ipset" || !strings.Contains(d.Detail, member) {
		t.Errorf("a member deleted by hand: drift %v, err %v; want ipset drift naming %s", d, err, member)
	}
}
