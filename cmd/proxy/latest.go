package main

import "context"

// latest hands the newest of a stream of values to one worker, dropping
// those it had no time for. Stale conntrack entries are cleaned against
// the newest snapshot after its rules are in place; the scan of the
// conntrack table runs beside the sync loop rather than delaying the next
// sync, and a cleanup for a snapshot already superseded is wasted work.
type latest[T any] struct{ ch chan T }

func newLatest[T any]() latest[T] { return latest[T]{ch: make(chan T, 1)} }

// offer queues v, replacing a value not yet taken.
func (l latest[T]) offer(v T) {
	for {
		select {
		case l.ch <- v:
			return
		default:
		}
		select {
		case <-l.ch:
		default:
		}
	}
}

// each calls f with every value it takes, until ctx is done.
func (l latest[T]) each(ctx context.Context, f func(T)) {
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-l.ch:
			f(v)
		}
	}
}
