package cowmap

import (
	"fmt"
	"maps"
	"testing"
)

// TestEditLeavesOriginal: a copy edited by Set and Delete differs from its
// original only there, the original and an earlier published copy never
// change, and Len counts what All yields.
func TestEditLeavesOriginal(t *testing.T) {
	plain := map[string]int{}
	for i := range 500 {
		plain[fmt.Sprint("k", i)] = i
	}
	orig := From(plain)
	check(t, "From", orig, plain)

	e := orig.Edit()
	e.Set("k1", -1)
	e.Set("new", 7)
	e.Delete("k2")
	e.Delete("absent")
	first := e.Map()
	e.Set("k3", -3) // after Map: a new copy
	second := e.Map()

	check(t, "the original after edits", orig, plain)
	want := maps.Clone(plain)
	want["k1"], want["new"] = -1, 7
	delete(want, "k2")
	check(t, "the first copy", first, want)
	want["k3"] = -3
	check(t, "the second copy", second, want)
	if v, ok := second.Lookup("k2"); ok {
		t.Errorf("deleted k2 is present with %d", v)
	}
	if got := (Map[string, int]{}).Get("x"); got != 0 || (Map[string, int]{}).Len() != 0 {
		t.Errorf("the zero Map is not empty")
	}
}

// TestEditClonesOnlyWrittenLeaves: an edit of one key leaves every other
// leaf, and every other middle table, shared with the original.
func TestEditClonesOnlyWrittenLeaves(t *testing.T) {
	m := map[int]int{}
	for i := range 50000 {
		m[i] = i
	}
	orig := From(m)
	e := orig.Edit()
	e.Set(42, 0)
	edited := e.Map()
	i42, j42 := slot(42)
	sharedMid, sharedLeaf, leaves := 0, 0, 0
	for i := range fanout {
		if orig.table[i] == edited.table[i] {
			sharedMid++
		}
		for j := range fanout {
			leaves++
			if fmt.Sprintf("%p", orig.table[i][j]) == fmt.Sprintf("%p", edited.table[i][j]) {
				sharedLeaf++
			} else if i != i42 || j != j42 {
				t.Errorf("leaf %d/%d was cloned; only %d/%d was written", i, j, i42, j42)
			}
		}
	}
	if sharedMid != fanout-1 || sharedLeaf != leaves-1 {
		t.Errorf("after editing one key, %d of %d middle tables and %d of %d leaves shared; want all but one", sharedMid, fanout, sharedLeaf, leaves)
	}
}

func check[K comparable, V comparable](t *testing.T, what string, m Map[K, V], want map[K]V) {
	t.Helper()
	got := maps.Collect(m.All())
	if !maps.Equal(got, want) || m.Len() != len(want) {
		t.Errorf("%s: %d entries (Len %d), want %d; equal %v", what, len(got), m.Len(), len(want), maps.Equal(got, want))
	}
	for k, v := range want {
		if m.Get(k) != v {
			t.Errorf("%s: Get(%v) = %v, want %v", what, k, m.Get(k), v)
			return
		}
	}
}
