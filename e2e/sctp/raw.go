package sctp

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// network returns the raw-socket network name for an address family.
func network(a netip.Addr) string {
	if a.Unmap().Is4() {
		return fmt.Sprintf("ip4:%d", Protocol)
	}
	return fmt.Sprintf("ip6:%d", Protocol)
}

// Dial opens a raw SCTP socket bound to local (if valid) and connected to
// remote. Connecting makes the kernel filter replies by source address and
// report ICMP errors (port unreachable -> ECONNREFUSED) on read. Call it in
// the namespace the probe should come from; the socket stays there.
func Dial(local, remote netip.Addr) (*net.IPConn, error) {
	var laddr *net.IPAddr
	if local.IsValid() {
		laddr = &net.IPAddr{IP: local.AsSlice()}
	}
	return net.DialIP(network(remote), laddr, &net.IPAddr{IP: remote.AsSlice()})
}

// ErrAbort is returned when the peer answered the INIT with an ABORT.
var ErrAbort = errors.New("sctp: ABORT received")

// Probe sends an INIT from a random source port to port on c's remote
// address and waits until timeout for the matching INIT-ACK, whose cookie it
// returns. It also returns the source port used. Read errors (ICMP errors on
// the connected socket) and deadline expiry are returned as they are.
func Probe(c *net.IPConn, port uint16, timeout time.Duration) (cookie []byte, srcPort uint16, err error) {
	var rnd [10]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, 0, err
	}
	srcPort = 32768 + binary.BigEndian.Uint16(rnd[0:])%28000
	tag := binary.BigEndian.Uint32(rnd[2:]) | 1 // never 0
	init := Init{InitiateTag: tag, ARwnd: 65535, OutStreams: 1, InStreams: 1, InitialTSN: binary.BigEndian.Uint32(rnd[6:])}
	if _, err := c.Write(NewInit(srcPort, port, init)); err != nil {
		return nil, srcPort, err
	}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, srcPort, err
	}
	buf := make([]byte, 2048)
	for {
		// ReadFromIP, unlike Read, strips the IPv4 header.
		n, _, err := c.ReadFromIP(buf)
		if err != nil {
			return nil, srcPort, err
		}
		p, err := Parse(buf[:n])
		if err != nil || p.SrcPort != port || p.DstPort != srcPort || p.VTag != tag || len(p.Chunks) == 0 {
			continue // another probe's packet, or noise
		}
		switch p.Chunks[0].Type {
		case ChunkInitAck:
			ck, err := Cookie(p.Chunks[0].Value)
			return ck, srcPort, err
		case ChunkAbort:
			return nil, srcPort, ErrAbort
		}
	}
}

// Server answers INIT chunks on a raw socket with INIT-ACKs whose cookie is
// made by Reply. Only INITs to one of Ports are answered; anything else is
// ignored (the equivalent of DROP, since this kernel has no SCTP stack that
// would send an ABORT).
type Server struct {
	Conn  *net.IPConn
	Ports map[uint16]bool
	Reply func(local, peer netip.AddrPort) string
}

// Listen opens a raw SCTP socket bound to addr, in the caller's namespace.
func Listen(addr netip.Addr) (*net.IPConn, error) {
	return net.ListenIP(network(addr), &net.IPAddr{IP: addr.AsSlice()})
}

// Serve answers until the socket is closed.
func (s *Server) Serve() error {
	local, _ := netip.ParseAddr(s.Conn.LocalAddr().(*net.IPAddr).IP.String())
	buf := make([]byte, 2048)
	for {
		n, from, err := s.Conn.ReadFromIP(buf)
		if err != nil {
			return err
		}
		p, err := Parse(buf[:n])
		if err != nil || !s.Ports[p.DstPort] || len(p.Chunks) == 0 || p.Chunks[0].Type != ChunkInit || p.VTag != 0 {
			continue
		}
		in, err := DecodeInit(p.Chunks[0].Value)
		if err != nil || in.InitiateTag == 0 {
			continue
		}
		peerIP, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		peer := netip.AddrPortFrom(peerIP.Unmap(), p.SrcPort)
		cookie := s.Reply(netip.AddrPortFrom(local.Unmap(), p.DstPort), peer)
		var rnd [8]byte
		_, _ = rand.Read(rnd[:])
		own := Init{InitiateTag: binary.BigEndian.Uint32(rnd[:]) | 1, ARwnd: 65535, OutStreams: 1, InStreams: 1, InitialTSN: binary.BigEndian.Uint32(rnd[4:])}
		ack := NewInitAck(p.DstPort, p.SrcPort, in.InitiateTag, own, []byte(cookie))
		_, _ = s.Conn.WriteToIP(ack, from)
	}
}
