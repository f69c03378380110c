// Package health implements kube-proxy's health endpoints: the proxy-wide
// /healthz and /livez server, and the per-Service health-check NodePorts that
// external load balancers probe for externalTrafficPolicy=Local Services.
//
// Behaviour, status codes, headers and JSON field names follow kube-proxy
// v1.37 (pkg/proxy/healthcheck) so that probes, load balancers and tooling
// configured for kube-proxy keep working unchanged.
package health

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"svcproxy.dev/svcproxy/pkg/metrics"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is
// about to remove. /healthz fails on such nodes so load balancers drain them
// before the node disappears.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxierHealth is the health of the sync loop of one IP family.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the JSON body of /healthz and /livez; the field names are
// kube-proxy's.
type ProxyHealth struct {
	// LastUpdated is the most recent successful sync of any family. When the
	// proxy is healthy the HTTP handlers replace it with the current time, as
	// kube-proxy does for compatibility with older releases.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is only set in /healthz responses; /livez ignores it.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is true when every family is healthy (node eligibility aside).
	Healthy bool                          `json:"healthy"`
	Status  map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// ProxyHealthServerOptions configures a ProxyHealthServer.
type ProxyHealthServerOptions struct {
	// Addr is the host:port serving /healthz and /livez (kube-proxy's
	// healthzBindAddress). Empty disables serving; Health() still works.
	Addr string
	// HealthTimeout is how long a queued update may stay unsynced before the
	// proxy is reported unhealthy. kube-proxy uses 2 x syncPeriod.
	HealthTimeout time.Duration
	// Clock is used for all timestamps; nil means the real clock. Tests pass
	// a fake clock.
	Clock clock.PassiveClock
}

// ProxyHealthServer tracks whether the sync loops keep up with the changes
// they are asked to apply, and whether this node should still receive
// traffic, and serves both over HTTP.
type ProxyHealthServer struct {
	addr          string
	healthTimeout time.Duration
	clock         clock.PassiveClock

	mu sync.RWMutex
	// lastUpdated is the time of the last successful sync per family.
	lastUpdated map[v1.IPFamily]time.Time
	// oldestPendingQueued is when the oldest still-unsynced update was
	// queued per family; absent when the family is fully synced.
	oldestPendingQueued map[v1.IPFamily]time.Time
	nodeEligible        bool
}

// NewProxyHealthServer returns a server that is healthy and node-eligible
// until told otherwise, so a starting proxy is not killed by its liveness
// probe before its first sync.
func NewProxyHealthServer(opts ProxyHealthServerOptions) *ProxyHealthServer {
	c := opts.Clock
	if c == nil {
		c = clock.RealClock{}
	}
	return &ProxyHealthServer{
		addr:                opts.Addr,
		healthTimeout:       opts.HealthTimeout,
		clock:               c,
		lastUpdated:         make(map[v1.IPFamily]time.Time),
		oldestPendingQueued: make(map[v1.IPFamily]time.Time),
		nodeEligible:        true,
	}
}

// SetHealthTimeout changes the timeout (a reloaded syncPeriod).
func (hs *ProxyHealthServer) SetHealthTimeout(d time.Duration) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.healthTimeout = d
}

// QueuedUpdate records that the sync loop of family has received a change it
// has not applied yet. Only the first pending time is kept: the timeout runs
// from the oldest unapplied change, so a steady stream of changes cannot keep
// a stuck loop looking healthy.
func (hs *ProxyHealthServer) QueuedUpdate(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, pending := hs.oldestPendingQueued[family]; !pending {
		hs.oldestPendingQueued[family] = hs.clock.Now()
	}
}

// Updated records a successful sync of family, which applies every change
// queued so far. Like kube-proxy, callers should also call it once when the
// sync loop starts, so a slow first sync is measured from then.
func (hs *ProxyHealthServer) Updated(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.oldestPendingQueued, family)
	hs.lastUpdated[family] = hs.clock.Now()
}

// SyncNode updates node eligibility from the latest Node object. A node that
// is being deleted or is tainted for removal by the Cluster Autoscaler is not
// eligible; a nil node (deleted from the API) is not eligible either.
func (hs *ProxyHealthServer) SyncNode(node *v1.Node) {
	eligible := nodeEligible(node)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.nodeEligible = eligible
}

// NodeEligible reports whether load balancers should send traffic to this
// node, as last computed by SyncNode.
func (hs *ProxyHealthServer) NodeEligible() bool {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	return hs.nodeEligible
}

func nodeEligible(node *v1.Node) bool {
	if node == nil || !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// Health returns the proxy health, ignoring node eligibility. A family is
// unhealthy when an update was queued at least HealthTimeout ago and no sync
// has succeeded since; with nothing queued (before the first change, or when
// fully synced) it is healthy.
func (hs *ProxyHealthServer) Health() ProxyHealth {
	hs.mu.RLock()
	defer hs.mu.RUnlock()

	now := hs.clock.Now()
	health := ProxyHealth{
		CurrentTime: now,
		Healthy:     true,
		Status:      make(map[v1.IPFamily]ProxierHealth, len(hs.lastUpdated)),
	}
	for family, updated := range hs.lastUpdated {
		if updated.After(health.LastUpdated) {
			health.LastUpdated = updated
		}
		health.Status[family] = ProxierHealth{LastUpdated: updated, Healthy: true}
	}
	for family, queued := range hs.oldestPendingQueued {
		if now.Sub(queued) < hs.healthTimeout {
			continue // pending, but not late yet
		}
		health.Healthy = false
		health.Status[family] = ProxierHealth{LastUpdated: hs.lastUpdated[family], Healthy: false}
	}
	return health
}

// Handler returns the /healthz and /livez handlers, for Run and for tests or
// callers that mount them on their own server.
func (hs *ProxyHealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", hs.serveHealthz)
	mux.HandleFunc("/livez", hs.serveLivez)
	return mux
}

// Run serves /healthz and /livez on the configured address until ctx is done
// and then returns nil. With an empty address it returns nil at once. Listen
// and serve errors are returned.
func (hs *ProxyHealthServer) Run(ctx context.Context) error {
	if hs.addr == "" {
		return nil
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", hs.addr)
	if err != nil {
		return fmt.Errorf("failed to start proxy healthz on %s: %w", hs.addr, err)
	}
	klog.V(3).InfoS("Starting healthz HTTP server", "address", ln.Addr().String())
	srv := &http.Server{Handler: hs.Handler(), ReadHeaderTimeout: readHeaderTimeout}
	if err := serveUntilDone(ctx, srv, ln); err != nil {
		return fmt.Errorf("proxy healthz closed with error: %w", err)
	}
	return nil
}

// serveHealthz answers readiness-style probes (and load balancers that probe
// kube-proxy itself): it also fails while the node is being removed.
func (hs *ProxyHealthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	eligible := hs.NodeEligible()
	health.NodeEligible = &eligible
	writeProxyHealth(w, health, health.Healthy && eligible, metrics.ProxyHealthzTotal)
}

// serveLivez answers liveness probes: a node being drained must not get its
// proxy restarted, so eligibility is ignored here.
func (hs *ProxyHealthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	writeProxyHealth(w, health, health.Healthy, metrics.ProxyLivezTotal)
}

// writeProxyHealth writes the status code and JSON body and counts the
// response by code in counter.
func writeProxyHealth(w http.ResponseWriter, health ProxyHealth, healthy bool, counter *prometheus.CounterVec) {
	code := http.StatusServiceUnavailable
	if healthy {
		code = http.StatusOK
		// kube-proxy reports lastUpdated as "now" while healthy, because older
		// releases bumped it on every sync loop iteration.
		health.LastUpdated = health.CurrentTime
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	body, _ := json.Marshal(health) // cannot fail: plain struct of times, bools and a string-keyed map
	_, _ = w.Write(body)
}
