// Package cowmap is a copy-on-write map for state that is published to
// readers and then changed a little at a time.
//
// The Tracker publishes a Snapshot per sync that readers (the planners, the
// conntrack reconciler running beside the next sync) keep while it builds
// the next one. With plain maps each Snapshot had to clone every map: at
// 5,000 Services that was most of a one-endpoint change's CPU and almost
// all of its garbage, growing with N. A Map splits its entries over a fixed
// number of shards; an edit clones only the shards it writes, so a change
// to one Service copies a few dozen entries however many there are.
package cowmap

import (
	"fmt"
	"hash/maphash"
	"iter"
	"maps"
)

// shards is the number of shards: at 20,000 keys an edit of one key copies
// about 300 entries, and at 200 keys copying the shard table costs as
// little as a small map.
const shards = 64

var seed = maphash.MakeSeed()

// Map is an immutable map; Edit makes changed copies. The zero value is an
// empty map. Map values are cheap to copy and safe for concurrent readers.
type Map[K comparable, V any] struct {
	table *[shards]map[K]V
	n     int
}

// From returns a Map holding m's entries.
func From[K comparable, V any](m map[K]V) Map[K, V] {
	e := Map[K, V]{}.Edit()
	for k, v := range m {
		e.Set(k, v)
	}
	return e.Map()
}

func shardOf[K comparable](k K) int {
	return int(maphash.Comparable(seed, k) % shards)
}

// Get returns k's value, or the zero value when k is absent.
func (m Map[K, V]) Get(k K) V {
	v, _ := m.Lookup(k)
	return v
}

// Lookup returns k's value and whether k is present.
func (m Map[K, V]) Lookup(k K) (V, bool) {
	if m.table == nil {
		var zero V
		return zero, false
	}
	v, ok := m.table[shardOf(k)][k]
	return v, ok
}

// Len returns the number of entries.
func (m Map[K, V]) Len() int { return m.n }

// All yields every entry, in no particular order.
func (m Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if m.table == nil {
			return
		}
		for _, shard := range m.table {
			for k, v := range shard {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// Keys yields every key, in no particular order.
func (m Map[K, V]) Keys() iter.Seq[K] {
	return func(yield func(K) bool) {
		for k := range m.All() {
			if !yield(k) {
				return
			}
		}
	}
}

// String prints the entries as fmt prints a map (sorted by key).
func (m Map[K, V]) String() string { return fmt.Sprint(maps.Collect(m.All())) }

// Edit starts a copy of m to change; m itself never changes.
func (m Map[K, V]) Edit() *Editor[K, V] {
	e := &Editor[K, V]{m: Map[K, V]{table: new([shards]map[K]V), n: m.n}}
	if m.table != nil {
		*e.m.table = *m.table
	}
	return e
}

// Editor changes a copy of a Map. It clones a shard the first time it
// writes to it; the shards it does not write stay shared with the original.
// An Editor is not safe for concurrent use.
type Editor[K comparable, V any] struct {
	m     Map[K, V]
	owned [shards]bool
	// published: Map returned m, so the next write starts a new copy.
	published bool
}

// Get returns k's value in the copy being edited.
func (e *Editor[K, V]) Get(k K) V { return e.m.Get(k) }

// Lookup returns k's value in the copy and whether k is present.
func (e *Editor[K, V]) Lookup(k K) (V, bool) { return e.m.Lookup(k) }

// Set sets k's value.
func (e *Editor[K, V]) Set(k K, v V) {
	shard := e.own(shardOf(k))
	if _, ok := shard[k]; !ok {
		e.m.n++
	}
	shard[k] = v
}

// Delete removes k.
func (e *Editor[K, V]) Delete(k K) {
	i := shardOf(k)
	if _, ok := e.m.table[i][k]; !ok {
		return
	}
	delete(e.own(i), k)
	e.m.n--
}

// own returns shard i, cloned first if it is still shared.
func (e *Editor[K, V]) own(i int) map[K]V {
	if e.published {
		*e = *e.m.Edit()
	}
	if !e.owned[i] {
		shard := make(map[K]V, len(e.m.table[i])+1)
		for k, v := range e.m.table[i] {
			shard[k] = v
		}
		e.m.table[i] = shard
		e.owned[i] = true
	}
	return e.m.table[i]
}

// Map returns the edited copy. Later edits go to a new copy and leave it
// unchanged.
func (e *Editor[K, V]) Map() Map[K, V] {
	e.published = true
	return e.m
}
