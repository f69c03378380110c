package main

import (
	"context"
	"testing"
	"time"
)

// latest keeps only the newest value for a busy worker.
func TestLatestKeepsNewest(t *testing.T) {
	l := newLatest[int]()
	for i := range 5 {
		l.offer(i)
	}
	got := make(chan int, 5)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.each(ctx, func(v int) { got <- v })
	select {
	case v := <-got:
		if v != 4 {
			t.Fatalf("worker got %d, want the newest, 4", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("worker got nothing")
	}
	select {
	case v := <-got:
		t.Fatalf("worker got a superseded value %d", v)
	case <-time.After(50 * time.Millisecond):
	}
}
