package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// floorBatchLines is the batch size of the batched floor load, the same as
// svcproxy's full-sync batch (pkg/iptables.DefaultBatchLines).
const floorBatchLines = 20000

// Floor is what a bare iptables-nft-restore needs to load the proxy's final
// ruleset into an empty namespace.
type Floor struct {
	Lines, Bytes int
	SaveS        float64 // iptables-nft-save of the proxy's namespace (what a periodic drift check reads)
	OnePayloadS  float64 // one payload, plain restore (tables flushed: they are empty)
	BatchedS     float64 // chain declarations, then rule batches with --noflush
	Batches      int
	// CommitS is the median of commitSamples one-change commits into a
	// namespace holding the same ruleset: a new chain with one rule and a
	// jump to it from KUBE-SERVICES, one `iptables-nft-restore --noflush`
	// each, what a new Service with one endpoint costs at the least.
	CommitS float64 `json:",omitempty"`
	Err     string  `json:",omitempty"`
}

// commitSamples is how many one-change commits the commit floor takes.
const commitSamples = 10

// Best is the faster of the two loads.
func (f *Floor) Best() float64 {
	switch {
	case f.OnePayloadS > 0 && f.BatchedS > 0:
		return min(f.OnePayloadS, f.BatchedS)
	case f.OnePayloadS > 0:
		return f.OnePayloadS
	}
	return f.BatchedS
}

// nfacctMatch is kube-proxy's "-m nfacct --nfacct-name NAME" match (one
// rule in KUBE-FORWARD counting invalid packets). The accounting object
// it names exists only in kube-proxy's own namespace, so the floor loads
// that rule without the match.
var nfacctMatch = regexp.MustCompile(`-m nfacct --nfacct-name +\S+ `)

// dumpRules runs iptables-nft-save in the namespace.
func dumpRules(netns string) ([]byte, error) {
	out, err := nsutil.Exec(netns, "iptables-nft-save").Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-nft-save in %s: %w", netns, err)
	}
	return out, nil
}

// measureFloor loads dump into fresh empty namespaces, once as one payload
// (then times one-change commits into that copy) and once in batches.
func measureFloor(dump []byte) Floor {
	dump = nfacctMatch.ReplaceAll(dump, nil)
	f := Floor{Bytes: len(dump), Lines: bytes.Count(dump, []byte("\n"))}
	var err error
	if f.OnePayloadS, f.CommitS, err = loadAndCommit(dump); err != nil {
		f.Err = err.Error()
		return f
	}
	batches := splitBatches(dump, floorBatchLines)
	f.Batches = len(batches)
	b, err := timedRestore(batches, true)
	if err != nil {
		f.Err = err.Error()
		return f
	}
	f.BatchedS = b.Seconds()
	return f
}

// loadAndCommit times the load of dump into a fresh namespace as one
// payload, then commitSamples one-change commits into that same ruleset,
// and returns the load's seconds and the commits' median.
func loadAndCommit(dump []byte) (loadS, commitS float64, err error) {
	ns := nsutil.Name("floor")
	if err := nsutil.Add(ns); err != nil {
		return 0, 0, err
	}
	defer func() { _ = nsutil.Delete(ns) }()
	start := time.Now()
	if err := restoreIn(ns, dump, false); err != nil {
		return 0, 0, err
	}
	loadS = time.Since(start).Seconds()
	var samples []float64
	for i := range commitSamples {
		payload := fmt.Sprintf("*nat\n:BENCH-FLOOR-%[1]d - [0:0]\n-A BENCH-FLOOR-%[1]d -j RETURN\n-A KUBE-SERVICES -d 172.31.255.%[1]d/32 -p tcp -m tcp --dport 80 -j BENCH-FLOOR-%[1]d\nCOMMIT\n", i+1)
		start := time.Now()
		if err := restoreIn(ns, []byte(payload), true); err != nil {
			return loadS, 0, fmt.Errorf("commit floor: %w", err)
		}
		samples = append(samples, time.Since(start).Seconds())
	}
	return loadS, percentile(samples, 50), nil
}

// restoreIn feeds one payload to iptables-nft-restore in the namespace.
func restoreIn(ns string, payload []byte, noflush bool) error {
	var args []string
	if noflush {
		args = append(args, "--noflush")
	}
	cmd := nsutil.Exec(ns, "iptables-nft-restore", args...)
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("iptables-nft-restore in %s: %v: %s", ns, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// timedRestore creates an empty namespace, feeds it the payloads one after
// the other and returns the total restore time.
func timedRestore(payloads [][]byte, noflush bool) (time.Duration, error) {
	ns := nsutil.Name("floor")
	if err := nsutil.Add(ns); err != nil {
		return 0, err
	}
	defer func() { _ = nsutil.Delete(ns) }()
	var total time.Duration
	for i, p := range payloads {
		start := time.Now()
		err := restoreIn(ns, p, noflush)
		total += time.Since(start)
		if err != nil {
			return total, fmt.Errorf("payload %d/%d: %w", i+1, len(payloads), err)
		}
	}
	return total, nil
}

// splitBatches turns an iptables-save dump into --noflush payloads: the
// first declares every chain of every table, the others append the rules
// in order, at most batchLines rules each. Jumps only need their target
// chain to exist, so every batch is valid on its own.
func splitBatches(dump []byte, batchLines int) [][]byte {
	type table struct {
		name  string
		decl  []string
		rules []string
	}
	var tables []*table
	var cur *table
	for _, line := range strings.Split(string(dump), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &table{name: line[1:]}
			tables = append(tables, cur)
		case cur == nil || line == "" || strings.HasPrefix(line, "#") || line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			cur.decl = append(cur.decl, line)
		default:
			cur.rules = append(cur.rules, line)
		}
	}
	var out [][]byte
	var first bytes.Buffer
	for _, t := range tables {
		first.WriteString("*" + t.name + "\n")
		for _, d := range t.decl {
			first.WriteString(d + "\n")
		}
		first.WriteString("COMMIT\n")
	}
	out = append(out, first.Bytes())
	for _, t := range tables {
		for i := 0; i < len(t.rules); i += batchLines {
			var b bytes.Buffer
			b.WriteString("*" + t.name + "\n")
			for _, r := range t.rules[i:min(i+batchLines, len(t.rules))] {
				b.WriteString(r + "\n")
			}
			b.WriteString("COMMIT\n")
			out = append(out, b.Bytes())
		}
	}
	return out
}

// writeDump keeps a rule dump in the log directory for inspection.
func writeDump(path string, dump []byte) {
	_ = os.WriteFile(path, dump, 0o644)
}
