// Package cowmap is a copy-on-write map for state that is published to
// readers and then changed a little at a time.
//
// The Tracker publishes a Snapshot per sync that readers (the planners, the
// conntrack reconciler running beside the next sync) keep while it builds
// the next one. With plain maps each Snapshot had to clone every map: at
// 5,000 Services that was most of a one-endpoint change's CPU and almost
// all of its garbage, growing with N. A Map splits its entries over a
// fixed two-level table of leaves; an edit clones only the leaves it
// writes (and the two small tables above them), so a change to one
// Service copies a few dozen entries however many there are.
package cowmap

import (
	"fmt"
	"hash/maphash"
	"iter"
	"maps"
)

// fanout is the width of each level: 4,096 leaves. With one level of 64,
// nftables mode's map of 200,000 endpoint addresses (20,000 Services) had
// 3,000 entries per shard, and copying the two an endpoint change wrote
// took a sync about 4 ms (CPU profile of make bench's churn); with two,
// an edit copies about 50 entries and two 64-entry tables per key.
const fanout = 64

var seed = maphash.MakeSeed()

// table is the top level; each entry is nil or a middle level, whose
// entries are nil or a leaf map.
type table[K comparable, V any] [fanout]*[fanout]map[K]V

// Map is an immutable map; Edit makes changed copies. The zero value is an
// empty map. Map values are cheap to copy and safe for concurrent readers.
type Map[K comparable, V any] struct {
	table *table[K, V]
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

// slot is the leaf of k: its index in the top level, then in the middle.
func slot[K comparable](k K) (int, int) {
	h := maphash.Comparable(seed, k)
	return int(h % fanout), int(h / fanout % fanout)
}

// leaf is k's leaf map (nil when it has none).
func (m Map[K, V]) leaf(k K) map[K]V {
	if m.table == nil {
		return nil
	}
	i, j := slot(k)
	if mid := m.table[i]; mid != nil {
		return mid[j]
	}
	return nil
}

// Get returns k's value, or the zero value when k is absent.
func (m Map[K, V]) Get(k K) V {
	v, _ := m.Lookup(k)
	return v
}

// Lookup returns k's value and whether k is present.
func (m Map[K, V]) Lookup(k K) (V, bool) {
	v, ok := m.leaf(k)[k]
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
		for _, mid := range m.table {
			if mid == nil {
				continue
			}
			for _, leaf := range mid {
				for k, v := range leaf {
					if !yield(k, v) {
						return
					}
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
	e := &Editor[K, V]{m: Map[K, V]{table: new(table[K, V]), n: m.n}}
	if m.table != nil {
		*e.m.table = *m.table
	}
	return e
}

// Editor changes a copy of a Map. It clones a middle table and a leaf the
// first time it writes to them; what it does not write stays shared with
// the original. An Editor is not safe for concurrent use.
type Editor[K comparable, V any] struct {
	m         Map[K, V]
	ownedMid  [fanout]bool
	ownedLeaf map[[2]int]bool
	// published: Map returned m, so the next write starts a new copy.
	published bool
}

// Get returns k's value in the copy being edited.
func (e *Editor[K, V]) Get(k K) V { return e.m.Get(k) }

// Lookup returns k's value in the copy and whether k is present.
func (e *Editor[K, V]) Lookup(k K) (V, bool) { return e.m.Lookup(k) }

// Set sets k's value.
func (e *Editor[K, V]) Set(k K, v V) {
	leaf := e.own(slot(k))
	if _, ok := leaf[k]; !ok {
		e.m.n++
	}
	leaf[k] = v
}

// Delete removes k.
func (e *Editor[K, V]) Delete(k K) {
	if _, ok := e.m.Lookup(k); !ok {
		return
	}
	delete(e.own(slot(k)), k)
	e.m.n--
}

// own returns leaf j of middle table i, each cloned first if it is still
// shared.
func (e *Editor[K, V]) own(i, j int) map[K]V {
	if e.published {
		*e = *e.m.Edit()
	}
	if !e.ownedMid[i] {
		mid := new([fanout]map[K]V)
		if old := e.m.table[i]; old != nil {
			*mid = *old
		}
		e.m.table[i] = mid
		e.ownedMid[i] = true
	}
	mid := e.m.table[i]
	if !e.ownedLeaf[[2]int{i, j}] {
		leaf := make(map[K]V, len(mid[j])+1)
		for k, v := range mid[j] {
			leaf[k] = v
		}
		mid[j] = leaf
		if e.ownedLeaf == nil {
			e.ownedLeaf = map[[2]int]bool{}
		}
		e.ownedLeaf[[2]int{i, j}] = true
	}
	return mid[j]
}

// Map returns the edited copy. Later edits go to a new copy and leave it
// unchanged.
func (e *Editor[K, V]) Map() Map[K, V] {
	e.published = true
	return e.m
}
