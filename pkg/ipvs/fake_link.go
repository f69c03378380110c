package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	v1 "k8s.io/api/core/v1"
)

// FakeLink is an in-memory kube-ipvs0 and node address list: adding an
// address that is there is EEXIST, deleting one that is not is
// EADDRNOTAVAIL, and any address call without the dummy interface is
// ENODEV.
type FakeLink struct {
	mu     sync.Mutex
	exists bool
	addrs  map[netip.Addr]bool
	host   []netip.Addr
	// version counts host address changes (HostAddrsVersion); Unwatched
	// makes HostAddrsVersion report that changes are not watched, like a
	// kernel whose address notifications failed.
	version   uint64
	Unwatched bool
	Created   int
	// Calls counts every call by method; Read counts the addresses the
	// kernel would send back: HostAddrs is a dump of every address,
	// kube-ipvs0's included.
	Calls map[string]int
	Read  int
	// Fail, when set, fails HostAddrs with it.
	Fail error
}

// NewFakeLink returns a node with the given host addresses and no kube-ipvs0.
func NewFakeLink(host ...netip.Addr) *FakeLink {
	return &FakeLink{addrs: map[netip.Addr]bool{}, host: host, Calls: map[string]int{}}
}

// SetHost replaces the node's addresses outside kube-ipvs0, as an
// administrator or a new pod's veth would.
func (l *FakeLink) SetHost(host ...netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.host = host
	l.version++
}

// Host returns the node's addresses outside kube-ipvs0.
func (l *FakeLink) Host() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.host)
}

// ResetCalls zeroes the call and read counters.
func (l *FakeLink) ResetCalls() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls, l.Read = map[string]int{}, 0
}

func (l *FakeLink) EnsureDummy() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["EnsureDummy"]++
	if !l.exists {
		l.exists = true
		l.Created++
	}
	return nil
}

// DeleteDummy removes kube-ipvs0 and its addresses (for drift tests).
func (l *FakeLink) DeleteDummy() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.exists = false
	l.addrs = map[netip.Addr]bool{}
}

func (l *FakeLink) Addrs(f v1.IPFamily) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["Addrs"]++
	l.Read += len(l.addrs)
	if !l.exists {
		return nil, fmt.Errorf("%s: %w", DummyInterface, syscall.ENODEV)
	}
	var out []netip.Addr
	for _, a := range slices.SortedFunc(maps.Keys(l.addrs), netip.Addr.Compare) {
		if (f == v1.IPv6Protocol) == a.Is6() {
			out = append(out, a)
		}
	}
	return out, nil
}

func (l *FakeLink) AddAddr(a netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["AddAddr"]++
	if !l.exists {
		return fmt.Errorf("%s: %w", DummyInterface, syscall.ENODEV)
	}
	if l.addrs[a] {
		return fmt.Errorf("%s: %w", a, syscall.EEXIST)
	}
	l.addrs[a] = true
	return nil
}

func (l *FakeLink) DelAddr(a netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["DelAddr"]++
	if !l.exists {
		return fmt.Errorf("%s: %w", DummyInterface, syscall.ENODEV)
	}
	if !l.addrs[a] {
		return fmt.Errorf("%s: %w", a, syscall.EADDRNOTAVAIL)
	}
	delete(l.addrs, a)
	return nil
}

func (l *FakeLink) HostAddrs(f v1.IPFamily) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["HostAddrs"]++
	if l.Fail != nil {
		return nil, l.Fail
	}
	l.Read += len(l.host) + len(l.addrs)
	var out []netip.Addr
	for _, a := range l.host {
		if (f == v1.IPv6Protocol) == a.Is6() {
			out = append(out, a)
		}
	}
	return out, nil
}

func (l *FakeLink) HostAddrsVersion() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.version, !l.Unwatched
}
