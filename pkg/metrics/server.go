package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

const (
	// readHeaderTimeout bounds slow clients so a stuck scraper cannot pin
	// connections forever.
	readHeaderTimeout = 10 * time.Second
	// shutdownGrace lets an in-flight scrape finish when svcproxy stops.
	shutdownGrace = 5 * time.Second
)

// Handler serves the package registry in the Prometheus exposition format.
// Collection errors are reported in the response instead of failing the
// whole scrape, so one broken collector does not hide all other metrics.
func Handler() http.Handler {
	return promhttp.HandlerFor(registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      registry,
	})
}

// Serve serves /metrics on addr until ctx is done, then shuts down
// gracefully and returns nil. An empty addr disables the endpoint (Serve
// returns nil at once), mirroring kube-proxy's empty metricsBindAddress.
// Listen and serve errors are returned.
//
// With profiling (kube-proxy's enableProfiling) it also serves Go's
// /debug/pprof handlers there, as kube-proxy does.
func Serve(ctx context.Context, addr string, profiling bool) error {
	if addr == "" {
		return nil
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("failed to start metrics server on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler())
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout}
	klog.V(2).InfoS("Starting metrics server", "address", ln.Addr().String())
	return serveUntilDone(ctx, srv, ln)
}

// serveUntilDone runs srv on ln and shuts it down once ctx is done. It waits
// for the shutdown so callers know the port is released when it returns.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener) error {
	served := make(chan struct{})
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		select {
		case <-ctx.Done():
		case <-served:
			return
		}
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			klog.V(2).InfoS("Metrics server shutdown incomplete", "err", err)
		}
	}()
	err := srv.Serve(ln)
	close(served)
	<-shutdownDone
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
