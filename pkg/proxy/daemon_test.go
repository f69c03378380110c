package proxy

import (
	"testing"
	"time"
)

func TestGatherDelay(t *testing.T) {
	d := New(Options{})
	for _, tc := range []struct{ lastPartial, want time.Duration }{
		{0, 0}, // no partial sync yet: no wait
		{15 * time.Millisecond, 1500 * time.Microsecond}, // a cheap commit: a tiny wait
		{200 * time.Millisecond, 20 * time.Millisecond},  // 5,000 Services
		{3 * time.Second, maxGather},                     // never more than the cap
	} {
		d.lastPartial.Store(int64(tc.lastPartial))
		if got := d.GatherDelay(); got != tc.want {
			t.Errorf("last partial sync %v: gather %v, want %v", tc.lastPartial, got, tc.want)
		}
	}
}
