package iptables

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// serviceChainsWritten lists the Service chains the payloads rewrite
// (declared, and not deleted: a stale chain is flushed, then deleted).
func serviceChainsWritten(payloads [][]byte) []string {
	var declared []string
	deleted := map[string]bool{}
	for _, p := range payloads {
		for _, line := range strings.Split(string(p), "\n") {
			if name, ok := strings.CutPrefix(line, ":"); ok {
				if name, _, _ = strings.Cut(name, " "); IsServiceChain(name) {
					declared = append(declared, name)
				}
			}
			if name, ok := strings.CutPrefix(line, "-X "); ok {
				deleted[name] = true
			}
		}
	}
	var out []string
	for _, name := range declared {
		if !deleted[name] {
			out = append(out, name)
		}
	}
	return out
}

// A restarted proxy's first (full) sync adopts the Service chains the
// kernel already holds as planned and rewrites only the ones that differ.
func TestFullSyncAdoptsChainsInPlace(t *testing.T) {
	c := newCluster(t, 20)
	fake := NewFake()
	converge(t, NewProxier(fake, defaultOpts()), fake, c.tr.Snapshot())

	before := len(fake.Restores)
	restarted := NewProxier(fake, defaultOpts())
	converge(t, restarted, fake, c.tr.Snapshot())
	if written := serviceChainsWritten(fake.Restores[before:]); len(written) != 0 {
		t.Fatalf("a restart with every chain in place rewrote %d Service chains: %v", len(written), written)
	}

	// While "down", one Service changed: only its chains are rewritten.
	c.setService(4, 10, 1)
	before = len(fake.Restores)
	restarted = NewProxier(fake, defaultOpts())
	converge(t, restarted, fake, c.tr.Snapshot())
	written := serviceChainsWritten(fake.Restores[before:])
	svc := svcChainOf(c.tr.Snapshot(), "svc-4")
	if len(written) != 2 || !strings.Contains(strings.Join(written, " "), svc) {
		t.Fatalf("after one endpoint change, rewrote %v; want svc-4's %s and its new KUBE-SEP", written, svc)
	}
}

// The same on the real kernel, for every golden behaviour: what
// iptables-nft-save prints back must compare equal to the plan, or a
// restart rewrites everything.
func TestRealRestartAdopts(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	if _, err := exec.LookPath("iptables-nft-restore"); err != nil {
		testenv.Missing(t, "iptables-nft not installed (Debian package iptables)")
	}
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaultOpts()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			snap := snapshot(t, tc.svcs, tc.slices...)
			ns := nsutil.Name("adopt")
			if err := nsutil.Add(ns); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = nsutil.Delete(ns) }()
			err := nsutil.Do(ns, func() error {
				kernel, err := NewKernel(opts.Family, BackendNFT)
				if err != nil {
					return err
				}
				if _, err := NewProxier(kernel, opts).Sync(snap); err != nil {
					return err
				}
				rec := &recordingKernel{Interface: kernel}
				if _, err := NewProxier(rec, opts).Sync(snap); err != nil {
					return err
				}
				if written := serviceChainsWritten(rec.payloads); len(written) != 0 {
					t.Errorf("restart rewrote %d Service chains (normalisation mismatch?): %v", len(written), written)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

type recordingKernel struct {
	Interface
	payloads [][]byte
}

func (r *recordingKernel) Restore(p []byte) error {
	r.payloads = append(r.payloads, p)
	return r.Interface.Restore(p)
}
