// Command responder is the backend of the acceptance runner: started inside
// an endpoint's network namespace, it answers every TCP connection, UDP
// datagram and SCTP INIT on the given ports of its address with one line
// "<own ip:port> <peer ip:port>". It prints "ready" once all sockets listen.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"svcproxy.dev/svcproxy/e2e/responder"
)

func main() {
	addr := flag.String("addr", "", "address to serve (required)")
	tcp := flag.String("tcp", "", "comma-separated TCP ports")
	udp := flag.String("udp", "", "comma-separated UDP ports")
	sctpPorts := flag.String("sctp", "", "comma-separated SCTP ports (raw sockets)")
	flag.Parse()
	a, err := netip.ParseAddr(*addr)
	if err != nil {
		fail(fmt.Errorf("--addr: %w", err))
	}
	var ports responder.Ports
	for _, x := range []struct {
		s   string
		dst *[]uint16
	}{{*tcp, &ports.TCP}, {*udp, &ports.UDP}, {*sctpPorts, &ports.SCTP}} {
		if *x.dst, err = parsePorts(x.s); err != nil {
			fail(err)
		}
	}
	srv, err := responder.Listen(a, ports, responder.Backend)
	if err != nil {
		fail(err)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Close()
}

func parsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "responder:", err)
	os.Exit(1)
}
