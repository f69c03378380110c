package acceptance

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Addresses the proxy's own servers use inside the node namespace.
const (
	metricsAddr = "127.0.0.1:10249"
	healthzPort = 10256
	metricsPort = 10249
)

// ProxyConfig renders the KubeProxyConfiguration for a scenario. Conntrack
// sizing and timeouts are zeroed so the proxy writes no conntrack sysctl:
// nf_conntrack_max is global to the host.
func ProxyConfig(s *Scenario, mode, kubeconfig string) ([]byte, error) {
	localhostNodePorts := true
	if s.Config.LocalhostNodePorts != nil {
		localhostNodePorts = *s.Config.LocalhostNodePorts
	}
	masqAll := s.Config.MasqueradeAll != nil && *s.Config.MasqueradeAll
	sync := map[string]any{"syncPeriod": "30s", "minSyncPeriod": "0s"}
	cfg := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"mode":               mode,
		"hostnameOverride":   s.Node.Name,
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig},
		"metricsBindAddress": metricsAddr,
		"healthzBindAddress": fmt.Sprintf("0.0.0.0:%d", healthzPort),
		"detectLocalMode":    "ClusterCIDR",
		"oomScoreAdj":        0,
		"iptables": map[string]any{
			"masqueradeAll":      masqAll,
			"localhostNodePorts": localhostNodePorts,
			"syncPeriod":         "30s",
			"minSyncPeriod":      "0s",
		},
		"ipvs":     merge(sync, map[string]any{"scheduler": "rr"}),
		"nftables": merge(sync, map[string]any{"masqueradeAll": masqAll}),
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
			"udpTimeout":            "0s",
			"udpStreamTimeout":      "0s",
		},
	}
	// localDetector None: ClusterCIDR mode without a CIDR is the proxy's
	// no-op detector (nothing is treated as local pod traffic).
	if s.Node.LocalDetector != "None" && s.Node.ClusterCIDR != "" {
		cfg["clusterCIDR"] = strings.Join(s.Node.ClusterCIDRs(), ",")
	}
	if len(s.Config.NodePortAddresses) > 0 {
		cfg["nodePortAddresses"] = s.Config.NodePortAddresses
	} else if mode == "nftables" && s.Config.LocalhostNodePorts != nil && *s.Config.LocalhostNodePorts {
		// nftables mode has no iptables.localhostNodePorts: as in
		// kube-proxy, a scenario that asks for NodePorts on 127.0.0.1
		// gets them by listing loopback beside the mode's default.
		cfg["nodePortAddresses"] = []string{"primary", "localhost"}
	}
	return yaml.Marshal(cfg)
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// StartProxy runs the proxy binary in the node namespace with kube-proxy's
// flags, its output going to logPath.
func StartProxy(bin, netns, configPath, nodeName, logPath string) (*nsutil.Proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	return nsutil.StartIn(netns, logf, bin, "--config", configPath, "--hostname-override", nodeName, "-v=2")
}

// SyncState is what the proxy's metrics say about its rule syncing.
type SyncState struct {
	// Last is the newest sync_proxy_rules_last_timestamp_seconds over the
	// IP families (a family whose rules did not change does not resync).
	Last float64
	// Behind is set when some family queued a change after its last sync
	// (sync_proxy_rules_last_queued_timestamp_seconds, when exported).
	Behind          bool
	HasQueued       bool
	LastQueued      float64
	ServicePending  float64
	EndpointPending float64
}

// Metric names (kube-proxy's, which svcproxy exports too).
const (
	mLast    = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	mQueued  = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
	mSvcPend = "kubeproxy_sync_proxy_rules_service_changes_pending"
	mEpPend  = "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
)

// ParseSyncState reads the sync metrics from Prometheus text format.
func ParseSyncState(r io.Reader) (SyncState, bool) {
	last := map[string]float64{}
	queued := map[string]float64{}
	var st SyncState
	found := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		switch name {
		case mLast:
			last[labels] = value
			found = true
		case mQueued:
			queued[labels] = value
			st.HasQueued = true
		case mSvcPend:
			st.ServicePending += value
		case mEpPend:
			st.EndpointPending += value
		}
	}
	for l, v := range last {
		st.Last = math.Max(st.Last, v)
		if q, ok := queued[l]; ok && q > v {
			st.Behind = true
		}
	}
	for l, q := range queued {
		st.LastQueued = math.Max(st.LastQueued, q)
		if _, ok := last[l]; !ok && q > 0 {
			st.Behind = true
		}
	}
	return st, found
}

// parseSample splits `name{labels} value [timestamp]`.
func parseSample(line string) (name, labels string, value float64, ok bool) {
	rest := line
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		name = line[:i]
		rest = line[i:]
	} else {
		return "", "", 0, false
	}
	if strings.HasPrefix(rest, "{") {
		j := strings.LastIndex(rest, "}")
		if j < 0 {
			return "", "", 0, false
		}
		labels = rest[1:j]
		rest = rest[j+1:]
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", "", 0, false
	}
	return name, labels, v, true
}

// ReadSyncState fetches the proxy's metrics from inside the node namespace.
func ReadSyncState(ctx context.Context, netns string) (SyncState, error) {
	hc := nsutil.HTTPClient(netns, 3*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return SyncState{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return SyncState{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return SyncState{}, fmt.Errorf("metrics: %s", resp.Status)
	}
	st, found := ParseSyncState(resp.Body)
	if !found {
		return st, fmt.Errorf("metrics have no %s yet", mLast)
	}
	return st, nil
}

// Synced reports whether the state shows a completed sync after since with
// no change left pending. A write that changed nothing for the proxy never
// triggers a sync: when the proxy exports queued timestamps and has been
// idle since, idleOK accepts that after a grace period.
func (st SyncState) Synced(since time.Time, idleOK bool) bool {
	if st.ServicePending != 0 || st.EndpointPending != 0 || st.Behind {
		return false
	}
	s := float64(since.UnixNano()) / 1e9
	if st.Last > s {
		return true
	}
	return idleOK && st.HasQueued && st.LastQueued <= st.Last
}

// WaitSynced polls the proxy's metrics until it has synced after since,
// the proxy exits, or timeout passes.
func WaitSynced(ctx context.Context, netns string, proc *nsutil.Proc, since time.Time, timeout time.Duration) error {
	// Give the watch event of the last write time to reach the proxy, so a
	// sync that was already running cannot pass for the one we wait for.
	if d := time.Until(since.Add(100 * time.Millisecond)); d > 0 {
		time.Sleep(d)
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if proc.Exited() {
			return fmt.Errorf("proxy exited: %v", proc.Err())
		}
		st, err := ReadSyncState(ctx, netns)
		if err == nil {
			idleOK := time.Since(since) > 2*time.Second
			if st.Synced(since, idleOK) {
				return nil
			}
			last = fmt.Sprintf("last sync %.3fs after the write, %v service / %v endpoint changes pending", st.Last-float64(since.UnixNano())/1e9, st.ServicePending, st.EndpointPending)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proxy did not sync within %s (%s)", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
