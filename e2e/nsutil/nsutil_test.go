package nsutil

import (
	"os"
	"testing"
)

func TestOwnerPID(t *testing.T) {
	for name, want := range map[string]int{
		"svcp-123-node7":             123,
		"svcp-cp-456":                456,
		"svcp-acceptance-789-123456": 789,
		"svcp-probe-x":               0,
		"other":                      0,
	} {
		if got := OwnerPID(name); got != want {
			t.Errorf("%s: %d, want %d", name, got, want)
		}
	}
	if got := OwnerPID(Name("pod")); got != os.Getpid() {
		t.Errorf("Name() not attributable: %d", got)
	}
}
