package nftables

import (
	"errors"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socket is a pair of lasting netlink connections (the library's, and a
// raw one for the dumps it lacks) that one user at a time holds.
//
// The Kernel keeps its sockets open because closing one is not free:
// when a netfilter netlink socket closes, the kernel (nft_rcv_nl_event)
// takes the commit mutex and waits for the work that frees what earlier
// transactions deleted, which waits for an RCU grace period. With a
// socket per transaction, as the library does by default, every
// transaction that deleted anything took that wait on its return (7 to
// 16 ms on kernel 6.18), and every close beside a sync held up its
// commit.
type socket struct {
	mu  sync.Mutex
	nft *nftables.Conn
	raw *netlink.Conn
}

// open locks s and returns its library connection, dialled on first use.
// The caller ends the use with release.
func (s *socket) open(k *Kernel) (*nftables.Conn, error) {
	s.mu.Lock()
	if s.nft == nil {
		c, err := nftables.New(append(k.connOptions(), nftables.AsLasting())...)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		s.nft = c
	}
	return s.nft, nil
}

// rawConn is the raw connection of a socket open by the caller.
func (s *socket) rawConn(k *Kernel) (*netlink.Conn, error) {
	if s.raw == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: max(k.netns, 0)})
		if err != nil {
			return nil, err
		}
		if err := bigBuffers(c); err != nil {
			_ = c.Close()
			return nil, err
		}
		s.raw = c
	}
	return s.raw, nil
}

// release ends a use begun by open. After an error it closes the
// connections, which may hold messages not sent or answers not read; the
// next use dials new ones.
func (s *socket) release(err error) {
	if err != nil {
		_ = s.closeLocked()
	}
	s.mu.Unlock()
}

func (s *socket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *socket) closeLocked() error {
	var errs []error
	if s.nft != nil {
		errs = append(errs, s.nft.CloseLasting())
		s.nft = nil
	}
	if s.raw != nil {
		errs = append(errs, s.raw.Close())
		s.raw = nil
	}
	return errors.Join(errs...)
}
