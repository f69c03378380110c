package ipvs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/hostaddr"
)

// IPVS is the kernel's virtual server table of this network namespace.
// Errors wrap the kernel's errno (syscall.EEXIST, syscall.ENOENT, ...).
type IPVS interface {
	// Services lists every virtual server (one dump).
	Services() ([]Service, error)
	// Destinations lists one virtual server's real servers with their
	// connection counts.
	Destinations(k VSKey) ([]Destination, error)
	AddService(s Service) error
	UpdateService(s Service) error
	DeleteService(k VSKey) error
	AddDestination(k VSKey, rs netip.AddrPort, weight int) error
	UpdateDestination(k VSKey, rs netip.AddrPort, weight int) error
	DeleteDestination(k VSKey, rs netip.AddrPort) error
	// SetTimeouts sets the IPVS TCP, TCP FIN and UDP timeouts like
	// `ipvsadm --set`; a zero keeps the kernel's value.
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
}

// Link is kube-ipvs0, the dummy interface holding the service IPs, and the
// node's other addresses.
type Link interface {
	// EnsureDummy creates kube-ipvs0 when it is missing.
	EnsureDummy() error
	// Addrs lists kube-ipvs0's addresses of one family.
	Addrs(family v1.IPFamily) ([]netip.Addr, error)
	AddAddr(a netip.Addr) error
	DelAddr(a netip.Addr) error
	// HostAddrs lists the node's addresses of one family on every
	// interface but kube-ipvs0. The kernel answers with every address,
	// kube-ipvs0's service IPs included, so its cost grows with the
	// number of Services.
	HostAddrs(family v1.IPFamily) ([]netip.Addr, error)
	// HostAddrsVersion returns a number that changes whenever an address
	// on an interface other than kube-ipvs0 may have come or gone, and
	// whether such changes are watched at all. While watched and the
	// version stays, HostAddrs would answer as before and need not be
	// called.
	HostAddrsVersion() (version uint64, watched bool)
}

// IPSets is the kernel's ipset table.
type IPSets interface {
	// Save returns `ipset save` output.
	Save() ([]byte, error)
	// Restore writes the payload with `ipset restore -exist`'s meaning
	// (the real kernel's writes members over netlink, see netlinkIPSets).
	Restore(payload []byte) error
}

// Sysctl writes per-network-namespace sysctls ("net/ipv4/vs/conntrack").
type Sysctl interface {
	Get(path string) (string, error)
	Set(path, value string) error
}

// Kernel bundles the kernel interfaces IPVS mode uses.
type Kernel struct {
	IPVS   IPVS
	Link   Link
	IPSets IPSets
	Sysctl Sysctl
}

// DefaultCallTimeout bounds each netlink call: a kernel that does not answer
// fails the sync (which is retried) instead of hanging the proxy.
const DefaultCallTimeout = 5 * time.Second

// NewKernel returns the real kernel interfaces for the calling process's
// network namespace.
func NewKernel() Kernel {
	b := &bounded{timeout: DefaultCallTimeout}
	return Kernel{
		IPVS:   &netlinkIPVS{b: b},
		Link:   &netlinkLink{b: b, watch: hostaddr.Node()},
		IPSets: &netlinkIPSets{tool: execIPSets{}, ns: netns.None(), b: b},
		Sysctl: procSysctl{root: "/proc/sys"},
	}
}

// bounded serialises kernel calls and gives each a deadline: the call runs
// in a goroutine and is abandoned (its socket closed) when the timer fires.
type bounded struct {
	mu      sync.Mutex
	timeout time.Duration
}

var errTimeout = errors.New("no answer from the kernel")

// do runs fn under the lock with the deadline; a call that does not return
// in time is abandoned (each rtnetlink call has its own socket).
func (b *bounded) do(op string, fn func() error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%s: %w within %s", op, errTimeout, b.timeout)
	}
}

// netlinkIPVS drives the kernel through moby/ipvs. Calls share the bounded
// lock with the link calls; the handle is recreated after any unexpected
// error, a timeout included.
type netlinkIPVS struct {
	b *bounded
	h *ipvs.Handle
}

func (n *netlinkIPVS) call(op string, fn func(h *ipvs.Handle) error) error {
	n.b.mu.Lock()
	defer n.b.mu.Unlock()
	type result struct {
		h   *ipvs.Handle
		err error
	}
	h := n.h
	done := make(chan result, 1)
	go func() {
		if h == nil {
			nh, err := ipvs.New("")
			if err != nil {
				done <- result{err: fmt.Errorf("opening the IPVS netlink socket: %w", err)}
				return
			}
			h = nh
		}
		done <- result{h, fn(h)}
	}()
	t := time.NewTimer(n.b.timeout)
	defer t.Stop()
	select {
	case r := <-done:
		n.h = r.h
		if r.err != nil && !expected(r.err) && r.h != nil {
			// The socket may hold a half-read answer: start afresh.
			r.h.Close()
			n.h = nil
		}
		if r.err != nil {
			return fmt.Errorf("ipvs %s: %w", op, r.err)
		}
		return nil
	case <-t.C:
		// Closing the socket ends moby's receive loop; a handle the
		// goroutine was still opening is closed when it arrives.
		if n.h != nil {
			n.h.Close()
			n.h = nil
		}
		go func() {
			if r := <-done; r.h != nil {
				r.h.Close()
			}
		}()
		return fmt.Errorf("ipvs %s: %w within %s", op, errTimeout, n.b.timeout)
	}
}

// expected reports kernel answers that leave the socket usable.
func expected(err error) bool {
	return errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

func protoNumber(p v1.Protocol) uint16 {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func protoFromNumber(n uint16) (v1.Protocol, bool) {
	switch n {
	case unix.IPPROTO_TCP:
		return v1.ProtocolTCP, true
	case unix.IPPROTO_UDP:
		return v1.ProtocolUDP, true
	case unix.IPPROTO_SCTP:
		return v1.ProtocolSCTP, true
	}
	return "", false
}

func addrFamily(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

const flagPersistent = 0x1 // IP_VS_SVC_F_PERSISTENT

func toMobyService(s Service) *ipvs.Service {
	ms := &ipvs.Service{
		Address:       net.IP(s.Key.Addr.AsSlice()),
		Protocol:      protoNumber(s.Key.Protocol),
		Port:          s.Key.Port,
		SchedName:     s.Scheduler,
		AddressFamily: addrFamily(s.Key.Addr),
		Netmask:       0xffffffff,
	}
	if s.Key.Addr.Is6() {
		ms.Netmask = 128
	}
	if s.Timeout > 0 {
		ms.Flags = flagPersistent
		ms.Timeout = s.Timeout
	}
	return ms
}

func keyService(k VSKey) *ipvs.Service { return toMobyService(Service{Key: k}) }

func toMobyDest(rs netip.AddrPort, weight int) *ipvs.Destination {
	return &ipvs.Destination{
		Address:         net.IP(rs.Addr().AsSlice()),
		Port:            rs.Port(),
		Weight:          weight,
		ConnectionFlags: ipvs.ConnectionFlagMasq,
		AddressFamily:   addrFamily(rs.Addr()),
	}
}

func (n *netlinkIPVS) Services() ([]Service, error) {
	var list []*ipvs.Service
	err := n.call("list virtual servers", func(h *ipvs.Handle) error {
		var err error
		list, err = h.GetServices()
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []Service
	for _, s := range list {
		proto, ok := protoFromNumber(s.Protocol)
		addr, ok2 := netip.AddrFromSlice(s.Address)
		if !ok || !ok2 || s.FWMark != 0 {
			continue // fwmark or other services are never ours
		}
		svc := Service{Key: VSKey{Protocol: proto, Addr: addr.Unmap(), Port: s.Port}, Scheduler: s.SchedName}
		if s.Flags&flagPersistent != 0 {
			svc.Timeout = s.Timeout
		}
		out = append(out, svc)
	}
	return out, nil
}

func (n *netlinkIPVS) Destinations(k VSKey) ([]Destination, error) {
	var list []*ipvs.Destination
	err := n.call("list real servers of "+k.String(), func(h *ipvs.Handle) error {
		var err error
		list, err = h.GetDestinations(keyService(k))
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Destination, 0, len(list))
	for _, d := range list {
		addr, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			continue
		}
		out = append(out, Destination{Addr: netip.AddrPortFrom(addr.Unmap(), d.Port), Weight: d.Weight, ActiveConn: d.ActiveConnections, InactiveConn: d.InactiveConnections})
	}
	return out, nil
}

func (n *netlinkIPVS) AddService(s Service) error {
	return n.call("add "+s.Key.String(), func(h *ipvs.Handle) error { return h.NewService(toMobyService(s)) })
}

func (n *netlinkIPVS) UpdateService(s Service) error {
	return n.call("update "+s.Key.String(), func(h *ipvs.Handle) error { return h.UpdateService(toMobyService(s)) })
}

func (n *netlinkIPVS) DeleteService(k VSKey) error {
	return n.call("delete "+k.String(), func(h *ipvs.Handle) error { return h.DelService(keyService(k)) })
}

func (n *netlinkIPVS) AddDestination(k VSKey, rs netip.AddrPort, w int) error {
	return n.call("add "+rs.String()+" to "+k.String(), func(h *ipvs.Handle) error { return h.NewDestination(keyService(k), toMobyDest(rs, w)) })
}

func (n *netlinkIPVS) UpdateDestination(k VSKey, rs netip.AddrPort, w int) error {
	return n.call("update "+rs.String()+" of "+k.String(), func(h *ipvs.Handle) error { return h.UpdateDestination(keyService(k), toMobyDest(rs, w)) })
}

func (n *netlinkIPVS) DeleteDestination(k VSKey, rs netip.AddrPort) error {
	return n.call("delete "+rs.String()+" from "+k.String(), func(h *ipvs.Handle) error { return h.DelDestination(keyService(k), toMobyDest(rs, 0)) })
}

func (n *netlinkIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	return n.call("set timeouts", func(h *ipvs.Handle) error {
		return h.SetConfig(&ipvs.Config{TimeoutTCP: tcp, TimeoutTCPFin: tcpFin, TimeoutUDP: udp})
	})
}

// netlinkLink manages kube-ipvs0 over rtnetlink.
type netlinkLink struct {
	b     *bounded
	watch *hostaddr.Watch // ignores kube-ipvs0 once dummy has found it
}

func nlFamily(f v1.IPFamily) int {
	if f == v1.IPv6Protocol {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func (l *netlinkLink) dummy() (netlink.Link, error) {
	link, err := netlink.LinkByName(DummyInterface)
	if err == nil {
		l.watch.Ignore(link.Attrs().Index)
	}
	return link, err
}

func (l *netlinkLink) EnsureDummy() error {
	return l.b.do("ensure "+DummyInterface, func() error {
		if _, err := l.dummy(); err == nil {
			return nil
		}
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: DummyInterface}})
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("creating %s: %w", DummyInterface, err)
		}
		klog.InfoS("Created the IPVS dummy interface", "interface", DummyInterface)
		return nil
	})
}

func (l *netlinkLink) Addrs(f v1.IPFamily) ([]netip.Addr, error) {
	var out []netip.Addr
	err := l.b.do("list "+DummyInterface+" addresses", func() error {
		link, err := l.dummy()
		if err != nil {
			return fmt.Errorf("%s: %w", DummyInterface, err)
		}
		list, err := netlink.AddrList(link, nlFamily(f))
		if err != nil {
			return err
		}
		for _, a := range list {
			// An up kube-ipvs0 gets an IPv6 link-local address of its
			// own: not a service IP, not ours to manage.
			if ip, ok := netip.AddrFromSlice(a.IP); ok && !(ip.Is6() && ip.IsLinkLocalUnicast()) {
				out = append(out, ip.Unmap())
			}
		}
		return nil
	})
	return out, err
}

func (l *netlinkLink) addr(a netip.Addr) *netlink.Addr {
	na := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if a.Is6() {
		// No duplicate address detection: the address must be usable at
		// once, and it is never announced anyway.
		na.Flags = unix.IFA_F_NODAD
	}
	return na
}

func (l *netlinkLink) AddAddr(a netip.Addr) error {
	return l.b.do("add "+a.String()+" to "+DummyInterface, func() error {
		link, err := l.dummy()
		if err != nil {
			return err
		}
		return netlink.AddrAdd(link, l.addr(a))
	})
}

func (l *netlinkLink) DelAddr(a netip.Addr) error {
	return l.b.do("delete "+a.String()+" from "+DummyInterface, func() error {
		link, err := l.dummy()
		if err != nil {
			return err
		}
		return netlink.AddrDel(link, l.addr(a))
	})
}

func (l *netlinkLink) HostAddrs(f v1.IPFamily) ([]netip.Addr, error) {
	var out []netip.Addr
	err := l.b.do("list node addresses", func() error {
		_, _ = l.dummy() // so that the listing leaves out its addresses
		var err error
		out, err = l.watch.List(nlFamily(f))
		return err
	})
	return out, err
}

// HostAddrsVersion is the address watch's version (see hostaddr.Watch).
func (l *netlinkLink) HostAddrsVersion() (uint64, bool) { return l.watch.Version() }

// execIPSets runs the ipset tool.
type execIPSets struct{}

const ipsetTimeout = 30 * time.Second

func (execIPSets) Save() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ipsetTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ipset", "save")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ipset save: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (execIPSets) Restore(payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), ipsetTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ipset", "restore", "-exist")
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ipset restore: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// procSysctl reads and writes /proc/sys, which for net/* is the calling
// process's network namespace.
type procSysctl struct{ root string }

func (p procSysctl) Get(path string) (string, error) {
	b, err := os.ReadFile(filepath.Join(p.root, path))
	return strings.TrimSpace(string(b)), err
}

func (p procSysctl) Set(path, value string) error {
	return os.WriteFile(filepath.Join(p.root, path), []byte(value), 0o644)
}
