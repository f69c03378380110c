package iptables

import "testing"

// saveHook is a Fake whose Save runs a function once, before or after
// reading: a sync landing in the middle of Verify's kernel read.
type saveHook struct {
	*Fake
	before, after func()
}

func (h *saveHook) Save(table string) ([]byte, error) {
	h.runBefore()
	defer h.runAfter()
	return h.Fake.Save(table)
}

func (h *saveHook) SaveLines(table string, fn func([]byte)) error {
	h.runBefore()
	defer h.runAfter()
	return h.Fake.SaveLines(table, fn)
}

func (h *saveHook) runBefore() {
	if h.before != nil {
		h.before()
		h.before = nil
	}
}

func (h *saveHook) runAfter() {
	if h.after != nil {
		h.after()
		h.after = nil
	}
}

// A sync that lands while Verify reads the kernel is not drift, whether the
// read saw the table before or after it; a real change still is.
func TestVerifyDuringSync(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readAfter bool // the read sees the new version
		breakIt   bool // someone also flushes a chain
		want      string
	}{
		{name: "read sees the old version"},
		{name: "read sees the new version", readAfter: true},
		{name: "flushed chain during a sync", readAfter: true, breakIt: true, want: "rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3)
			k := &saveHook{Fake: NewFake()}
			p := NewProxier(k, defaultOpts())
			converge(t, p, k.Fake, c.tr.Snapshot())
			sync := func() {
				c.setService(1, 4, 0) // 10 -> 4 endpoints: KUBE-SVC rule count changes
				res := converge(t, p, k.Fake, c.tr.Snapshot())
				if res.Full {
					t.Fatal("the change should be a delta")
				}
				if tc.breakIt {
					k.Fake.Flush(TableNAT, ChainServices)
				}
			}
			if tc.readAfter {
				k.before = sync
			} else {
				k.after = sync
			}
			d, err := p.Verify()
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if d != nil {
				got = d.Reason
			}
			if got != tc.want {
				t.Fatalf("Verify = %+v; want reason %q", d, tc.want)
			}
		})
	}
}

// A full sync due meanwhile (ForceFull or a failed delta) makes the check
// moot: Verify reports nothing rather than comparing against nothing.
func TestVerifyAfterForceFull(t *testing.T) {
	c := newCluster(t, 2)
	k := &saveHook{Fake: NewFake()}
	p := NewProxier(k, defaultOpts())
	converge(t, p, k.Fake, c.tr.Snapshot())
	k.before = func() {
		k.Fake.Flush(TableNAT, ChainServices)
		p.ForceFull()
	}
	if d, err := p.Verify(); d != nil || err != nil {
		t.Fatalf("Verify = %+v, %v; want nothing while a full sync is due", d, err)
	}
}

// restoreHook is a Fake that runs a function right after a restore lands
// in it, before Restore returns: the moment the kernel holds a delta the
// Proxier has not recorded as applied yet.
type restoreHook struct {
	*Fake
	after func()
}

func (h *restoreHook) Restore(p []byte) error {
	err := h.Fake.Restore(p)
	if h.after != nil {
		f := h.after
		h.after = nil
		f()
	}
	return err
}

// A Verify that reads the kernel between a delta's commit and the
// Proxier's bookkeeping must not call the delta drift.
func TestVerifyBetweenCommitAndBookkeeping(t *testing.T) {
	c := newCluster(t, 3)
	k := &restoreHook{Fake: NewFake()}
	p := NewProxier(k, defaultOpts())
	converge(t, p, k.Fake, c.tr.Snapshot())
	var drift *Drift
	k.after = func() {
		var err error
		if drift, err = p.Verify(); err != nil {
			t.Error(err)
		}
	}
	c.setService(1, 4, 0) // KUBE-SVC rule count changes
	if res := converge(t, p, k.Fake, c.tr.Snapshot()); res.Full {
		t.Fatal("the change should be a delta")
	}
	if k.after != nil {
		t.Fatal("the hook did not run")
	}
	if drift != nil {
		t.Fatalf("Verify during the restore reported %+v", drift)
	}
}

// A read so slow that more than maxVersions syncs pass gives up instead of
// holding every ruleset (and reports nothing, even if something drifted).
func TestVerifyGivesUpPastMaxVersions(t *testing.T) {
	c := newCluster(t, 3)
	k := &saveHook{Fake: NewFake()}
	p := NewProxier(k, defaultOpts())
	converge(t, p, k.Fake, c.tr.Snapshot())
	k.before = func() {
		for i := range maxVersions + 1 {
			c.setService(1, 2+i%5, i)
			converge(t, p, k.Fake, c.tr.Snapshot())
		}
		if len(p.versions) != 0 || !p.lost {
			t.Errorf("after %d syncs Verify still holds %d versions (lost %v)", maxVersions+1, len(p.versions), p.lost)
		}
		k.Fake.Flush(TableNAT, ChainServices)
	}
	if d, err := p.Verify(); d != nil || err != nil {
		t.Fatalf("Verify = %+v, %v; want it to give up", d, err)
	}
}
