package nsutil

import (
	"context"
	"net"
	"net/http"
	"time"
)

// HTTPClient returns a client whose connections are opened inside the named
// namespace (each dial bounded by timeout, as is the whole request). It
// keeps no idle connections, so nothing outlives the call that used it.
func HTTPClient(ns string, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := Do(ns, func() error {
				var err error
				c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}
