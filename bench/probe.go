package main

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"svcproxy.dev/svcproxy/e2e/acceptance"
)

const (
	// probeInterval is how often a new connection attempt starts while a
	// proxy starts up (cold start, restart).
	probeInterval = 50 * time.Millisecond
	// attemptTimeout bounds one attempt; a SYN the node does not DNAT yet
	// is blackholed by the router, so a failed attempt usually ends here.
	// Attempts overlap, so a long timeout costs no resolution.
	attemptTimeout = time.Second
	// The latency series probes faster. The first attempt starts when
	// the EndpointSlice write returns, about when the proxy hears of it,
	// so the first success comes one interval later at the earliest: at
	// 10 ms that floor (API writes + 10 ms, 25 ms at 5,000 Services) was
	// above a quarter of iptables mode's latency, which nftables mode is
	// judged against. 2 ms keeps attempts at 500/s.
	latencyInterval = 2 * time.Millisecond
	latencyTimeout  = 300 * time.Millisecond
	// maxInFlight bounds overlapping attempts: a latency series of 300 ms
	// at 2 ms holds 150.
	maxInFlight = 200
)

// cadence is how a probe series paces its attempts.
type cadence struct{ interval, timeout time.Duration }

var (
	startupCadence = cadence{probeInterval, attemptTimeout}
	latencyCadence = cadence{latencyInterval, latencyTimeout}
)

// attempt is one connection attempt of a probe series.
type attempt struct {
	Start, End time.Time
	OK         bool
}

// probeLog is the attempts of one series, in completion order.
type probeLog []attempt

// firstOK is the completion time of the earliest successful attempt.
func (l probeLog) firstOK() (time.Time, bool) {
	var first time.Time
	for _, a := range l {
		if a.OK && (first.IsZero() || a.End.Before(first)) {
			first = a.End
		}
	}
	return first, !first.IsZero()
}

// failedStartedBefore counts failed attempts that started before t.
func (l probeLog) failedStartedBefore(t time.Time) int {
	n := 0
	for _, a := range l {
		if !a.OK && a.Start.Before(t) {
			n++
		}
	}
	return n
}

// probe starts a TCP connection attempt from the client pod to dst every
// cd.interval (attempts overlap, each with cd.timeout) until ctx ends
// or done reports true; done is asked after every attempt and every tick,
// with the log so far. probe returns once every started attempt finished.
func probe(ctx context.Context, c acceptance.Client, dst netip.AddrPort, cd cadence, done func(probeLog) bool) probeLog {
	var (
		mu  sync.Mutex
		log probeLog
		wg  sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if done(log) {
			cancel()
		}
	}
	sem := make(chan struct{}, maxInFlight)
	t := time.NewTicker(cd.interval)
	defer t.Stop()
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return log
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			a := c.Attempt("TCP", dst, cd.timeout)
			mu.Lock()
			log = append(log, attempt{Start: start, End: time.Now(), OK: a.Class == acceptance.ClassBackend})
			mu.Unlock()
			check()
		}()
		select {
		case <-t.C:
			check()
		case <-ctx.Done():
			wg.Wait()
			return log
		}
	}
}

// untilOK ends a series at the first success.
func untilOK(l probeLog) bool {
	_, ok := l.firstOK()
	return ok
}

// connRateAttempts is how many connections connectionRate makes.
const connRateAttempts = 2000

// connectionRate makes connRateAttempts TCP connections (each one a
// request answered by a real responder) from c to dst, one after the
// other. It returns the answered ones per second of their own duration
// (an unanswered one waits out its timeout, which says nothing about the
// cost of a connection through the rules) and how many were not answered.
func connectionRate(c acceptance.Client, dst netip.AddrPort) (rate float64, failed int) {
	var answered time.Duration
	for range connRateAttempts {
		start := time.Now()
		if a := c.Attempt("TCP", dst, attemptTimeout); a.Class != acceptance.ClassBackend {
			failed++
			continue
		}
		answered += time.Since(start)
	}
	if answered == 0 {
		return 0, failed
	}
	return float64(connRateAttempts-failed) / answered.Seconds(), failed
}
