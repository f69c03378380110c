// Package responder answers TCP connections, UDP datagrams and SCTP INITs
// with one line naming the responder's own address and the peer address it
// saw. The acceptance runner uses the reply to learn which backend a
// connection reached and whether its source was masqueraded. The same code
// serves the node's "LOCAL" sentinel with a different reply text.
package responder

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"svcproxy.dev/svcproxy/e2e/sctp"
)

// ReplyFunc makes the reply text for a connection from peer to local.
type ReplyFunc func(local, peer netip.AddrPort) string

// Backend is the reply of an endpoint: "<own ip:port> <peer ip:port>".
func Backend(local, peer netip.AddrPort) string {
	return local.String() + " " + peer.String()
}

// LocalPrefix starts every sentinel reply.
const LocalPrefix = "LOCAL"

// Local is the reply of the node's sentinel listener.
func Local(local, peer netip.AddrPort) string {
	return LocalPrefix + " " + local.String() + " " + peer.String()
}

// Ports lists, per protocol, the ports to serve.
type Ports struct {
	TCP, UDP, SCTP []uint16
}

// Server holds the open sockets of one address.
type Server struct {
	mu      sync.Mutex
	closers []interface{ Close() error }
}

// Listen opens every socket for addr in the calling thread's namespace and
// serves them in the background. Run it inside nsutil.Do to listen in another
// namespace. On error the sockets opened so far are closed.
func Listen(addr netip.Addr, ports Ports, reply ReplyFunc) (*Server, error) {
	s := &Server{}
	for _, p := range ports.TCP {
		if err := s.ListenTCP(netip.AddrPortFrom(addr, p), reply); err != nil {
			s.Close()
			return nil, err
		}
	}
	for _, p := range ports.UDP {
		if err := s.ListenUDP(netip.AddrPortFrom(addr, p), reply); err != nil {
			s.Close()
			return nil, err
		}
	}
	if len(ports.SCTP) > 0 {
		if err := s.ListenSCTP(addr, ports.SCTP, reply); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// ListenTCP serves one TCP address.
func (s *Server) ListenTCP(ap netip.AddrPort, reply ReplyFunc) error {
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	s.add(l)
	go serveTCP(l, reply)
	return nil
}

// ListenUDP serves one UDP address.
func (s *Server) ListenUDP(ap netip.AddrPort, reply ReplyFunc) error {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	s.add(c)
	go serveUDP(c, reply)
	return nil
}

// ListenSCTP serves SCTP INITs to the given ports of addr over a raw socket.
func (s *Server) ListenSCTP(addr netip.Addr, ports []uint16, reply ReplyFunc) error {
	c, err := sctp.Listen(addr)
	if err != nil {
		return fmt.Errorf("raw sctp socket on %s: %w", addr, err)
	}
	s.add(c)
	set := map[uint16]bool{}
	for _, p := range ports {
		set[p] = true
	}
	srv := &sctp.Server{Conn: c, Ports: set, Reply: reply}
	go func() { _ = srv.Serve() }()
	return nil
}

func (s *Server) add(c interface{ Close() error }) {
	s.mu.Lock()
	s.closers = append(s.closers, c)
	s.mu.Unlock()
}

// Close closes every socket.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.closers {
		_ = c.Close()
	}
	s.closers = nil
}

func serveTCP(l *net.TCPListener, reply ReplyFunc) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte(reply(unmap(local), unmap(peer)) + "\n"))
		}()
	}
}

func serveUDP(c *net.UDPConn, reply ReplyFunc) {
	local := unmap(c.LocalAddr().(*net.UDPAddr).AddrPort())
	buf := make([]byte, 2048)
	for {
		_, peer, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = c.WriteToUDPAddrPort([]byte(reply(local, unmap(peer))+"\n"), peer)
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ParseReply splits a reply line into the responder's address and the peer
// it saw. local reports a sentinel ("LOCAL ...") reply.
func ParseReply(line string) (own, peer netip.AddrPort, local bool, err error) {
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) > 0 && f[0] == LocalPrefix {
		local = true
		f = f[1:]
	}
	if len(f) != 2 {
		return own, peer, local, fmt.Errorf("malformed reply %q", line)
	}
	if own, err = netip.ParseAddrPort(f[0]); err != nil {
		return own, peer, local, fmt.Errorf("malformed reply %q: %w", line, err)
	}
	if peer, err = netip.ParseAddrPort(f[1]); err != nil {
		return own, peer, local, fmt.Errorf("malformed reply %q: %w", line, err)
	}
	return own, peer, local, nil
}
