package iptables

import (
	"fmt"
	"os"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// BenchmarkOneEndpointChange measures, on the real kernel (iptables-nft in
// a throwaway network namespace), what one endpoint change costs once N
// Services x 10 endpoints are programmed: the restore payload size and the
// sync time. It also reports the first full sync. Run with `make bench`.
func BenchmarkOneEndpointChange(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchOneChange(b, n) })
	}
}

func benchOneChange(b *testing.B, n int) {
	ns := nsutil.Name("bench")
	if err := nsutil.Add(ns); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	err := nsutil.Do(ns, func() error {
		kernel, err := NewKernel(v1.IPv4Protocol, BackendNFT)
		if err != nil {
			return err
		}
		c := newCluster(&testing.T{}, n)
		p := NewProxier(kernel, defaultOpts())
		start := time.Now()
		full, err := p.Sync(c.tr.Snapshot())
		if err != nil {
			return err
		}
		fullTime := time.Since(start)
		b.ResetTimer()
		var bytes int
		var restore time.Duration
		for i := 0; i < b.N; i++ {
			c.setService(i%n, 10, i+1)
			snap := c.tr.Snapshot()
			rs := PlanFrom(p.applied, snap, p.opts)
			var changed []string
			for name := range snap.Changed {
				changed = append(changed, name.String())
			}
			payload := DeltaPayload(p.applied, rs, changed)
			t0 := time.Now()
			if err := kernel.Restore(payload); err != nil {
				return err
			}
			restore += time.Since(t0)
			p.applied = rs
			res := SyncResult{PayloadBytes: len(payload)}
			if err != nil {
				return err
			}
			if res.Full {
				return fmt.Errorf("endpoint change caused a full sync")
			}
			bytes += res.PayloadBytes
		}
		b.ReportMetric(float64(bytes)/float64(b.N), "payload-bytes/op")
		b.ReportMetric(restore.Seconds()/float64(b.N)*1000, "restore-ms/op")
		b.ReportMetric(fullTime.Seconds(), "full-sync-s")
		b.ReportMetric(float64(full.PayloadBytes), "full-payload-bytes")
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
