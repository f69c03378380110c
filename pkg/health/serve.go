package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

const (
	// readHeaderTimeout stops slow or stuck clients from holding connections
	// open indefinitely; probes send tiny requests.
	readHeaderTimeout = 10 * time.Second
	// shutdownGrace lets in-flight probes finish when the server stops.
	shutdownGrace = 5 * time.Second
)

// serveUntilDone runs srv on ln and shuts it down once ctx is done. It waits
// for the shutdown so the port is released when it returns.
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
			klog.V(2).InfoS("Health server shutdown incomplete", "err", err)
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
