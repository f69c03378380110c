package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// ProxyHealthChecker is what the Service health checks need from the proxy
// health server: a Service is only reported healthy on this node while the
// proxy itself keeps its rules up to date. *ProxyHealthServer implements it.
type ProxyHealthChecker interface {
	Health() ProxyHealth
}

var _ ProxyHealthChecker = (*ProxyHealthServer)(nil)

// ServiceHealthServerOptions configures a ServiceHealthServer.
type ServiceHealthServerOptions struct {
	// NodeIPs are the node addresses to listen on, resolved from the
	// nodePortAddresses CIDRs. Nil means every address (":port"); an empty,
	// non-nil list means none: as in kube-proxy, nodePortAddresses that
	// match no address of the node open no health-check port at all.
	NodeIPs []net.IP
	// IPFamily, when set, restricts listening to that family (tcp4/tcp6, and
	// 0.0.0.0 / [::] when NodeIPs is empty), so one server per family can
	// share a port like kube-proxy's per-family servers. Empty: both.
	IPFamily v1.IPFamily
	// ProxyHealth is consulted on every probe; nil counts as healthy.
	ProxyHealth ProxyHealthChecker
}

// ServiceHealthServer serves the healthCheckNodePort of every
// externalTrafficPolicy=Local Service. Load balancers probe it to send
// traffic only to nodes that have local endpoints for the Service.
type ServiceHealthServer struct {
	network  string
	hosts    []string
	checker  ProxyHealthChecker
	mu       sync.RWMutex
	services map[types.NamespacedName]*hcInstance
}

// hcInstance is the set of listeners serving one Service's health port.
type hcInstance struct {
	nsn       types.NamespacedName
	port      uint16
	servers   []*http.Server
	listeners []net.Listener
	endpoints watch.FamilyCount // local ready endpoints of the Service on this node
}

// NewServiceHealthServer returns a server with no Services; call
// SyncServices to open ports.
func NewServiceHealthServer(opts ServiceHealthServerOptions) *ServiceHealthServer {
	network, hosts := listenTargets(opts.IPFamily, opts.NodeIPs)
	return &ServiceHealthServer{
		network:  network,
		hosts:    hosts,
		checker:  opts.ProxyHealth,
		services: make(map[types.NamespacedName]*hcInstance),
	}
}

// listenTargets picks the socket network and the hosts to bind for a family.
func listenTargets(family v1.IPFamily, ips []net.IP) (string, []string) {
	network, wildcard := "tcp", ""
	switch family {
	case v1.IPv4Protocol:
		network, wildcard = "tcp4", net.IPv4zero.String()
	case v1.IPv6Protocol:
		network, wildcard = "tcp6", net.IPv6zero.String()
	}
	if ips == nil {
		return network, []string{wildcard}
	}
	hosts := make([]string, 0, len(ips))
	for _, ip := range ips {
		hosts = append(hosts, ip.String())
	}
	return network, hosts
}

// SyncServices makes newServices (Service -> healthCheckNodePort) the active
// set: ports of Services that are gone or changed port are closed, new ones
// opened, unchanged ones left alone. A port that cannot be opened is logged
// and reported in the returned error while all other Services keep being
// served; the failed one is retried on the next call. Passing an empty map
// closes everything, e.g. on shutdown.
func (s *ServiceHealthServer) SyncServices(newServices map[types.NamespacedName]uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeStale(newServices)
	return s.openMissing(newServices)
}

// closeStale closes Services that disappeared or moved to another port.
func (s *ServiceHealthServer) closeStale(newServices map[types.NamespacedName]uint16) {
	for nsn, hci := range s.services {
		if port, found := newServices[nsn]; found && port == hci.port {
			continue
		}
		klog.V(2).InfoS("Closing healthcheck", "service", nsn, "port", hci.port)
		hci.closeAll()
		delete(s.services, nsn)
	}
}

// openMissing opens ports for Services not served yet and collects failures.
func (s *ServiceHealthServer) openMissing(newServices map[types.NamespacedName]uint16) error {
	var errs []error
	for nsn, port := range newServices {
		if s.services[nsn] != nil {
			continue
		}
		klog.V(2).InfoS("Opening healthcheck", "service", nsn, "port", port)
		hci := &hcInstance{nsn: nsn, port: port}
		if err := hci.listenAndServeAll(s); err != nil {
			klog.ErrorS(err, "Failed to start healthcheck", "service", nsn, "port", port)
			errs = append(errs, fmt.Errorf("failed to start healthcheck %q on port %d: %w", nsn, port, err))
			continue
		}
		s.services[nsn] = hci
	}
	return errors.Join(errs...)
}

// listenAndServeAll opens the port on every configured address. It is all or
// nothing: on failure whatever was opened is closed again, so a later retry
// (or another owner of the port) starts from a clean state.
func (hci *hcInstance) listenAndServeAll(s *ServiceHealthServer) error {
	for _, host := range s.hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(int(hci.port)))
		ln, err := (&net.ListenConfig{}).Listen(context.Background(), s.network, addr)
		if err != nil {
			hci.closeAll()
			return err
		}
		srv := &http.Server{Handler: hcHandler{nsn: hci.nsn, s: s}, ReadHeaderTimeout: readHeaderTimeout}
		hci.servers = append(hci.servers, srv)
		hci.listeners = append(hci.listeners, ln)
		go hci.serve(srv, ln)
	}
	return nil
}

// serve runs until the server is closed by closeAll.
func (hci *hcInstance) serve(srv *http.Server, ln net.Listener) {
	klog.V(3).InfoS("Starting goroutine for healthcheck", "service", hci.nsn, "address", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		klog.ErrorS(err, "Healthcheck closed", "service", hci.nsn)
		return
	}
	klog.V(3).InfoS("Healthcheck closed", "service", hci.nsn, "address", ln.Addr())
}

// closeAll closes listeners and connections at once (no graceful drain): the
// port must be free immediately so it can be reopened or reused. Listeners
// are closed directly too, because a serve goroutine that has not reached
// Serve yet would otherwise keep the port bound for a moment.
func (hci *hcInstance) closeAll() {
	for _, srv := range hci.servers {
		if err := srv.Close(); err != nil {
			klog.ErrorS(err, "Error closing server for health check service", "service", hci.nsn)
		}
	}
	for _, ln := range hci.listeners {
		_ = ln.Close() // usually already closed by srv.Close
	}
	hci.servers, hci.listeners = nil, nil
}

// SyncEndpoints sets the number of local ready endpoints per Service and IP
// family (see watch.HealthChecksOf). Services missing from newEndpoints have
// none; entries for Services without an open health port are ignored.
func (s *ServiceHealthServer) SyncEndpoints(newEndpoints map[types.NamespacedName]watch.FamilyCount) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for nsn, hci := range s.services {
		hci.endpoints = newEndpoints[nsn]
		klog.V(3).InfoS("Reporting endpoints for healthcheck", "IPv4", hci.endpoints.IPv4, "IPv6", hci.endpoints.IPv6, "service", nsn)
	}
	return nil
}

// localEndpoints returns the endpoint counts of nsn and whether it is served.
func (s *ServiceHealthServer) localEndpoints(nsn types.NamespacedName) (watch.FamilyCount, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	hci, ok := s.services[nsn]
	if !ok {
		return watch.FamilyCount{}, false
	}
	return hci.endpoints, true
}

// probedFamily is the IP family of the address a probe was sent to: it
// answers with that family's endpoints, as kube-proxy's per-family servers
// do. One listener may serve both families, so the address decides.
func probedFamily(r *http.Request) v1.IPFamily {
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok && addr.IP.To4() == nil {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

// proxyHealthy reports the proxy-wide health that gates every Service.
func (s *ServiceHealthServer) proxyHealthy() bool {
	if s.checker == nil {
		return true
	}
	return s.checker.Health().Healthy
}

// hcHandler answers probes for one Service.
type hcHandler struct {
	nsn types.NamespacedName
	s   *ServiceHealthServer
}

// serviceHealthBody is the probe response; field order and names are
// kube-proxy's.
type serviceHealthBody struct {
	Service             serviceRef `json:"service"`
	LocalEndpoints      int        `json:"localEndpoints"`
	ServiceProxyHealthy bool       `json:"serviceProxyHealthy"`
}

type serviceRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// ServeHTTP returns 200 only if the Service has local endpoints and the proxy
// is healthy, so load balancers skip nodes that would drop its traffic.
func (h hcHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	counts, ok := h.s.localEndpoints(h.nsn)
	if !ok {
		// Raced with the Service being closed; it has no traffic to take here.
		klog.ErrorS(nil, "Received request for closed healthcheck", "service", h.nsn)
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	count := counts.Of(probedFamily(r))
	healthy := h.s.proxyHealthy()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	// Tab indentation reproduces kube-proxy's hand-formatted body byte for byte.
	body, _ := json.MarshalIndent(serviceHealthBody{
		Service:             serviceRef{Namespace: h.nsn.Namespace, Name: h.nsn.Name},
		LocalEndpoints:      count,
		ServiceProxyHealthy: healthy,
	}, "", "\t")
	_, _ = w.Write(body)
}
