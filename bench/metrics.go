package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// metricsURL is where both proxies serve /metrics inside the node
// namespace (metricsBindAddress of acceptance.ProxyConfig).
const metricsURL = "http://127.0.0.1:10249/metrics"

// Metric names; kube-proxy's, which svcproxy exports too, plus svcproxy's
// restore payload histogram.
const (
	mLastTimestamp = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	mSyncDuration  = "kubeproxy_sync_proxy_rules_duration_seconds"
	mFullDuration  = "kubeproxy_sync_full_proxy_rules_duration_seconds"
	mPartDuration  = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
	mRestoreBytes  = "kubeproxy_sync_proxy_rules_restore_bytes"
	mConntrack     = "kubeproxy_conntrack_reconciler_sync_duration_seconds"
	mRulesTotal    = "kubeproxy_sync_proxy_rules_iptables_total"
	mRulesLast     = "kubeproxy_sync_proxy_rules_iptables_last"
	mEPPending     = "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
	mSvcPending    = "kubeproxy_sync_proxy_rules_service_changes_pending"
	mEPTotal       = "kubeproxy_sync_proxy_rules_endpoint_changes_total"
	mSvcTotal      = "kubeproxy_sync_proxy_rules_service_changes_total"
	mNetProg       = "kubeproxy_network_programming_duration_seconds"
	mSyncFailures  = "kubeproxy_sync_proxy_rules_sync_failures_total"
	mKernelCalls   = "kubeproxy_sync_kernel_calls_total"
	mDraining      = "kubeproxy_sync_proxy_rules_ipvs_real_servers_draining"
	mGoroutines    = "go_goroutines"
	mThreads       = "go_threads"
	mHeapInuse     = "go_memstats_heap_inuse_bytes"
	mNextGC        = "go_memstats_next_gc_bytes"
)

// sample is one line of the Prometheus text format.
type sample struct {
	labels map[string]string
	value  float64
}

// Metrics is one scrape: metric name -> samples.
type Metrics map[string][]sample

// parseMetrics reads the Prometheus text exposition format (what both
// proxies serve); comments and malformed lines are skipped.
func parseMetrics(r io.Reader) Metrics {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		labels := map[string]string{}
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndex(rest, "}")
			if j < 0 {
				continue
			}
			for _, kv := range splitLabels(rest[1:j]) {
				k, v, ok := strings.Cut(kv, "=")
				if ok {
					labels[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
				}
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[name] = append(m[name], sample{labels: labels, value: v})
	}
	return m
}

// splitLabels splits `a="x",b="y,z"` at commas outside quotes.
func splitLabels(s string) []string {
	var out []string
	inQ, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			inQ = !inQ
		case ',':
			if !inQ {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// v4 sums the samples of name for the IPv4 family (or without a family
// label) whose other labels match want.
func (m Metrics) v4(name string, want ...string) (float64, bool) {
	var sum float64
	found := false
outer:
	for _, s := range m[name] {
		if f, ok := s.labels["ip_family"]; ok && f != "IPv4" {
			continue
		}
		for i := 0; i+1 < len(want); i += 2 {
			if s.labels[want[i]] != want[i+1] {
				continue outer
			}
		}
		sum += s.value
		found = true
	}
	return sum, found
}

// byLabel returns the IPv4 samples of name by the value of one label.
func (m Metrics) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m[name] {
		if f, ok := s.labels["ip_family"]; ok && f != "IPv4" {
			continue
		}
		out[s.labels[label]] += s.value
	}
	return out
}

// perChange is (cur - prev) / changes for every key of cur that grew.
func perChange(prev, cur map[string]float64, changes int) map[string]float64 {
	out := map[string]float64{}
	for k, v := range cur {
		if d := v - prev[k]; d > 0 {
			out[k] = d / float64(changes)
		}
	}
	return out
}

// hist returns a histogram's sum and count for IPv4.
func (m Metrics) hist(name string) (sum, count float64, ok bool) {
	sum, ok1 := m.v4(name + "_sum")
	count, ok2 := m.v4(name + "_count")
	return sum, count, ok1 && ok2
}

// bucket is one cumulative histogram bucket: observations <= le.
type bucket struct{ le, count float64 }

// buckets returns a histogram's cumulative buckets for IPv4, by le
// (the last one is +Inf).
func (m Metrics) buckets(name string) []bucket {
	var out []bucket
	for _, s := range m[name+"_bucket"] {
		if f, ok := s.labels["ip_family"]; ok && f != "IPv4" {
			continue
		}
		le, err := strconv.ParseFloat(s.labels["le"], 64)
		if err != nil {
			continue
		}
		out = append(out, bucket{le, s.value})
	}
	slices.SortFunc(out, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	return out
}

// bucketDelta is the observations between two scrapes: cur - prev, bucket
// by bucket (matched by le; a bucket missing from prev counts from 0).
func bucketDelta(prev, cur []bucket) []bucket {
	old := map[float64]float64{}
	for _, b := range prev {
		old[b.le] = b.count
	}
	out := make([]bucket, len(cur))
	for i, b := range cur {
		out[i] = bucket{b.le, b.count - old[b.le]}
	}
	return out
}

// bucketQuantile is the upper bound of the bucket that holds quantile q
// (0..1) of the observations, -1 when there are none. over is set when
// the quantile lies above the largest finite bound, which is then
// returned.
func bucketQuantile(bs []bucket, q float64) (bound float64, over bool) {
	if len(bs) == 0 || bs[len(bs)-1].count <= 0 {
		return -1, false
	}
	total := bs[len(bs)-1].count
	lastFinite := -1.0
	for _, b := range bs {
		if math.IsInf(b.le, 1) {
			return lastFinite, true
		}
		lastFinite = b.le
		if b.count >= q*total {
			return b.le, false
		}
	}
	return lastFinite, true
}

// bucketShare is the fraction of observations <= le (le must be a bucket
// bound), -1 when there are none.
func bucketShare(bs []bucket, le float64) float64 {
	if len(bs) == 0 || bs[len(bs)-1].count <= 0 {
		return -1
	}
	for _, b := range bs {
		if b.le == le {
			return b.count / bs[len(bs)-1].count
		}
	}
	return -1
}

// scrape fetches /metrics from inside the node namespace.
func scrape(ctx context.Context, netns string) (Metrics, error) {
	hc := nsutil.HTTPClient(netns, 10*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body), nil
}

// ProcStat is a proxy process's resource use.
type ProcStat struct {
	UserSys  float64 // utime+stime of the process, seconds
	Children float64 // cutime+cstime: waited-for children (iptables-restore)
	HWMKB    int64   // VmHWM: peak resident set
	RSSKB    int64   // VmRSS: resident set now
}

// clkTck is USER_HZ, which is 100 on every Linux architecture Go supports
// for /proc/PID/stat purposes.
const clkTck = 100

// readProc reads /proc/PID/stat and /proc/PID/status.
func readProc(pid int) (ProcStat, error) {
	var ps ProcStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ps, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	// Fields after "(comm)": state is field 3; utime..cstime are 14..17.
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return ps, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	tick := func(k int) float64 {
		v, _ := strconv.ParseFloat(f[k-3], 64)
		return v / clkTck
	}
	ps.UserSys = tick(14) + tick(15)
	ps.Children = tick(16) + tick(17)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmHWM":
			ps.HWMKB = n
		case "VmRSS":
			ps.RSSKB = n
		}
	}
	return ps, nil
}
