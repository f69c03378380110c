package acceptance

import (
	"bytes"
	"strings"
	"testing"
)

// TestResultCollector: marked result lines are picked out of the guest's
// console (split anywhere, with \r\n endings and kernel noise around them),
// printed once each even when the output file repeats them, and counted.
func TestResultCollector(t *testing.T) {
	var guestOut bytes.Buffer
	w := MarkedWriter{W: &guestOut}
	for _, r := range []Result{{"s1", "f1", "pass", ""}, {"s1", "f2", "fail", "got REJECT x10; expected {DROP}"}, {"s2", "f1", "skip", "not for mode ipvs"}} {
		if _, err := w.Write([]byte(r.Line() + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	console := "[  1.0] kernel noise\r\n" + strings.ReplaceAll(guestOut.String(), "\n", "\r\n")

	var out bytes.Buffer
	c := &resultCollector{out: &out, seen: map[string]bool{}}
	for i := 0; i < len(console); i += 7 {
		_, _ = c.Write([]byte(console[i:min(i+7, len(console))]))
	}
	_, _ = c.Write(guestOut.Bytes()) // the output file, after the run
	c.flush()
	s := c.summary()
	if s.Passed != 1 || s.Failed != 1 || s.Skipped != 1 {
		t.Errorf("summary %+v", s)
	}
	want := "s1/f1: pass\ns1/f2: fail: got REJECT x10; expected {DROP}\ns2/f1: skip: not for mode ipvs\n"
	if out.String() != want {
		t.Errorf("printed:\n%s\nwant:\n%s", out.String(), want)
	}
	if s.Results[1].Reason != "got REJECT x10; expected {DROP}" {
		t.Errorf("reason %q", s.Results[1].Reason)
	}
}
