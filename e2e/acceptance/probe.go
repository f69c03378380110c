package acceptance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/responder"
	"svcproxy.dev/svcproxy/e2e/sctp"
)

// Client is where a flow's connections come from: a namespace and the
// address its sockets bind to.
type Client struct {
	Netns string
	Bind  netip.Addr
	// HTTPPorts are destination ports served by an HTTP server (the proxy's
	// health checks): a TCP probe there sends a request and an HTTP answer
	// counts as LOCAL.
	HTTPPorts map[netip.AddrPort]bool
}

// Attempt opens one new connection (fresh source port) to dst and
// classifies the outcome.
func (c Client) Attempt(protocol string, dst netip.AddrPort, timeout time.Duration) Attempt {
	switch protocol {
	case "UDP":
		return c.attemptUDP(dst, timeout)
	case "SCTP":
		return c.attemptSCTP(dst, timeout)
	}
	return c.attemptTCP(dst, timeout)
}

func (c Client) dial(network string, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if c.Bind.IsValid() {
		switch network {
		case "udp":
			d.LocalAddr = &net.UDPAddr{IP: c.Bind.AsSlice()}
			// IP_RECVERR makes every ICMP error (not only port unreachable)
			// fail the next read on the connected socket.
			d.Control = setRecvErr
		default:
			d.LocalAddr = &net.TCPAddr{IP: c.Bind.AsSlice()}
		}
	} else if network == "udp" {
		d.Control = setRecvErr
	}
	var conn net.Conn
	err := nsutil.Do(c.Netns, func() error {
		var err error
		conn, err = d.Dial(network, dst.String())
		return err
	})
	return conn, err
}

func setRecvErr(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (c Client) attemptTCP(dst netip.AddrPort, timeout time.Duration) Attempt {
	conn, err := c.dial("tcp", dst, timeout)
	if err != nil {
		return errAttempt(err)
	}
	defer conn.Close()
	a := Attempt{Local: addrPortOf(conn.LocalAddr())}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if c.HTTPPorts[dst] {
		_, _ = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if strings.HasPrefix(line, "HTTP/") {
		a.Class, a.Detail = ClassLocal, "health server: "+strings.TrimSpace(line)
		return a
	}
	if err != nil && line == "" {
		e := errAttempt(err)
		if e.Class == ClassDrop {
			e.Class, e.Detail = ClassError, "connected but no reply"
		}
		e.Local = a.Local
		return e
	}
	return a.withReply(line)
}

func (c Client) attemptUDP(dst netip.AddrPort, timeout time.Duration) Attempt {
	conn, err := c.dial("udp", dst, timeout)
	if err != nil {
		return errAttempt(err)
	}
	defer conn.Close()
	a := Attempt{Local: addrPortOf(conn.LocalAddr())}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("probe\n")); err != nil {
		e := errAttempt(err)
		e.Local = a.Local
		return e
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		e := errAttempt(err)
		e.Local = a.Local
		return e
	}
	return a.withReply(string(buf[:n]))
}

func (c Client) attemptSCTP(dst netip.AddrPort, timeout time.Duration) Attempt {
	var conn *net.IPConn
	err := nsutil.Do(c.Netns, func() error {
		var err error
		conn, err = sctp.Dial(c.Bind, dst.Addr())
		return err
	})
	if err != nil {
		return errAttempt(err)
	}
	defer conn.Close()
	cookie, sport, err := sctp.Probe(conn, dst.Port(), timeout)
	a := Attempt{Local: netip.AddrPortFrom(c.Bind, sport)}
	if err != nil {
		e := errAttempt(err)
		e.Local = a.Local
		return e
	}
	return a.withReply(string(cookie))
}

// withReply classifies a reply line: the sentinel's LOCAL or a backend's
// "<own> <peer>".
func (a Attempt) withReply(line string) Attempt {
	own, peer, local, err := responder.ParseReply(line)
	if err != nil {
		a.Class, a.Detail = ClassError, err.Error()
		return a
	}
	a.Peer = peer
	if local {
		a.Class = ClassLocal
		return a
	}
	a.Class, a.Backend = ClassBackend, own
	return a
}

// errAttempt classifies a connection error. The topology never produces
// ICMP errors itself (the router blackholes what it cannot route), so
// any unreachable or refusal comes from the proxy's rules or a real closed
// port.
func errAttempt(err error) Attempt {
	var ne net.Error
	switch {
	case errors.Is(err, sctp.ErrAbort):
		return Attempt{Class: ClassReject, Detail: "ABORT"}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Attempt{Class: ClassDrop, Detail: "timeout"}
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EACCES):
		return Attempt{Class: ClassReject, Detail: err.Error()}
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ETIMEDOUT):
		// EPERM: a firewall in the client's own namespace dropped the packet.
		return Attempt{Class: ClassDrop, Detail: err.Error()}
	}
	return Attempt{Class: ClassError, Detail: shortErr(err)}
}

func shortErr(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// HTTPResponse is what one HTTP GET returned.
type HTTPResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// HTTPGet does one HTTP GET of path on dst from the client.
func (c Client) HTTPGet(ctx context.Context, dst netip.AddrPort, path string, timeout time.Duration) (HTTPResponse, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.dial("tcp", dst, timeout)
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: timeout}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dst.String()+path, nil)
	if err != nil {
		return HTTPResponse{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return HTTPResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return HTTPResponse{}, err
	}
	return HTTPResponse{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// Conntrack reads connection tracking entries of one namespace, to tell
// whether a node-originated connection was SNATed.
type Conntrack struct {
	h *netlink.Handle
}

// OpenConntrack opens a netlink handle in the namespace.
func OpenConntrack(ns string) (*Conntrack, error) {
	nh, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		return nil, err
	}
	return &Conntrack{h: h}, nil
}

// Close releases the handle.
func (c *Conntrack) Close() { c.h.Close() }

// protoNum maps a flow protocol to its IP protocol number.
func protoNum(protocol string) uint8 {
	switch protocol {
	case "UDP":
		return unix.IPPROTO_UDP
	case "SCTP":
		return sctp.Protocol
	}
	return unix.IPPROTO_TCP
}

// SNAT looks up the entry whose original tuple is src -> dst and returns
// the reply tuple's destination: the connection was source-NATed when that
// differs from src. A MASQUERADE that keeps the address (the node IP is
// already the source) still shows, as a changed port, when the proxy uses
// --random-fully as kube-proxy does; one that changes neither leaves no
// trace on the wire either. ok is false when no entry matches.
func (c *Conntrack) SNAT(protocol string, src, dst netip.AddrPort) (replyDst netip.AddrPort, ok bool, err error) {
	fam := netlink.InetFamily(unix.AF_INET)
	if src.Addr().Is6() {
		fam = netlink.InetFamily(unix.AF_INET6)
	}
	flows, err := c.h.ConntrackTableList(netlink.ConntrackTable, fam)
	if err != nil {
		return replyDst, false, err
	}
	proto := protoNum(protocol)
	for _, f := range flows {
		o := f.Forward
		if o.Protocol != proto || o.SrcPort != src.Port() || o.DstPort != dst.Port() ||
			!ipEq(o.SrcIP, src.Addr()) || !ipEq(o.DstIP, dst.Addr()) {
			continue
		}
		ip, _ := netip.AddrFromSlice(f.Reverse.DstIP)
		return netip.AddrPortFrom(ip.Unmap(), f.Reverse.DstPort), true, nil
	}
	return replyDst, false, nil
}

func ipEq(ip net.IP, a netip.Addr) bool {
	b, ok := netip.AddrFromSlice(ip)
	return ok && b.Unmap() == a
}

// String describes the client for logs.
func (c Client) String() string { return fmt.Sprintf("%s bind %s", c.Netns, c.Bind) }
