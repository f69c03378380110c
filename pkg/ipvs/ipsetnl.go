package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// netlinkIPSets writes set members over netlink and leaves everything else
// (creating sets, `ipset save`) to the ipset tool. A partial sync changes
// a member or two (a new Service's ClusterIP): a netlink request each is
// far cheaper than starting the tool, which on a slow machine cost more
// than the rest of the sync together.
type netlinkIPSets struct {
	tool IPSets // the ipset tool
	// ns is the network namespace whose sets these are; netns.None() is
	// the calling process's.
	ns netns.NsHandle
	b  *bounded
}

// Save runs `ipset save`.
func (s *netlinkIPSets) Save() ([]byte, error) { return s.tool.Save() }

// Restore writes a payload of only "add" and "del" lines of our sets over
// netlink, with `ipset restore -exist`'s meaning (adding a member that is
// there, or deleting one that is not, is no error), and any other payload
// with the tool. As with the tool, the lines before a failed one landed.
func (s *netlinkIPSets) Restore(payload []byte) error {
	ops, ok := memberOps(payload)
	if !ok {
		return s.tool.Restore(payload)
	}
	return s.b.do("ipset members", func() error { return s.write(ops) })
}

func (s *netlinkIPSets) write(ops []memberOp) (err error) {
	h, err := s.handle()
	if err != nil {
		return fmt.Errorf("ipset netlink socket: %w", err)
	}
	defer h.Close()
	for _, op := range ops {
		if err := op.run(h); err != nil {
			return fmt.Errorf("ipset %s %s %s: %w", op.verb, op.set, op.member, err)
		}
	}
	return nil
}

// handle opens a socket of its own for each payload: a call abandoned at
// its deadline (bounded) keeps its socket and closes it when it returns.
func (s *netlinkIPSets) handle() (*netlink.Handle, error) {
	if !s.ns.IsOpen() {
		return netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	return netlink.NewHandleAt(s.ns, unix.NETLINK_NETFILTER)
}

// memberOp is one "add" or "del" line of a payload.
type memberOp struct {
	verb, set, member string
	entry             netlink.IPSetEntry
}

func (op memberOp) run(h *netlink.Handle) (err error) {
	// netlink's ipset error decoding asserts the error's type; a panic
	// there must fail the sync, not end the proxy.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("netlink: %v", r)
		}
	}()
	e := op.entry
	if op.verb == "add" {
		return h.IpsetAdd(op.set, &e)
	}
	return h.IpsetDel(op.set, &e)
}

// maxNetlinkMembers bounds the members one payload writes over netlink.
// A partial sync changes a few; a full sync that refills emptied sets may
// change every Service's, which the tool writes in one run, and which one
// bounded call might not finish before its deadline.
const maxNetlinkMembers = 256

// memberOps parses a payload made only of "add" and "del" lines of our
// hash sets, at most maxNetlinkMembers. ok is false for anything else (a
// "create" line, a bitmap:port set, which netlink's encoder would give a
// protocol it does not take, a member that does not parse, a longer
// payload): the tool writes those and reports their errors in its own
// words.
func memberOps(payload []byte) (ops []memberOp, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(payload))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 || (f[0] != "add" && f[0] != "del") || len(ops) == maxNetlinkMembers {
			return nil, false
		}
		typ, known := setTypes[f[1]]
		if !known || typ == typeBitmapPort {
			return nil, false
		}
		entry, err := parseMember(typ, f[2])
		if err != nil {
			return nil, false
		}
		ops = append(ops, memberOp{verb: f[0], set: f[1], member: f[2], entry: entry})
	}
	return ops, len(ops) > 0
}

// setTypes maps each of our set names, both families, to its type.
var setTypes = func() map[string]string {
	m := map[string]string{}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, d := range setDefs(fam) {
			m[d.Name] = d.Type
		}
	}
	return m
}()

// parseMember turns a member as the ipset tool writes it ("10.96.0.1",
// "10.96.0.1,tcp:80", "...,10.0.0.1", "...,10.0.0.0/24") into a netlink
// entry of a set of type typ.
func parseMember(typ, m string) (netlink.IPSetEntry, error) {
	parts := strings.Split(m, ",")
	want := map[string]int{typeHashIP: 1, typeHashIPPort: 2, typeHashIPPortIP: 3, typeHashIPPortNet: 3}[typ]
	if want == 0 || len(parts) != want {
		return netlink.IPSetEntry{}, fmt.Errorf("member %q of a %s set", m, typ)
	}
	ip, err := netip.ParseAddr(parts[0])
	if err != nil {
		return netlink.IPSetEntry{}, err
	}
	e := netlink.IPSetEntry{IP: ip.AsSlice(), Replace: true}
	if want >= 2 {
		proto, port, err := parseProtoPort(parts[1])
		if err != nil {
			return netlink.IPSetEntry{}, err
		}
		e.Protocol, e.Port = &proto, &port
	}
	if want == 3 {
		net, err := parseNet(parts[2])
		if err != nil {
			return netlink.IPSetEntry{}, err
		}
		e.IP2 = net.Addr().AsSlice()
		if typ == typeHashIPPortNet {
			e.CIDR2 = uint8(net.Bits())
		} else if !net.IsSingleIP() {
			return netlink.IPSetEntry{}, fmt.Errorf("member %q: a network in a %s set", m, typ)
		}
	}
	return e, nil
}

var protoNumbers = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

func parseProtoPort(s string) (uint8, uint16, error) {
	name, portStr, found := strings.Cut(s, ":")
	proto, known := protoNumbers[name]
	if !found || !known {
		return 0, 0, fmt.Errorf("protocol and port %q", s)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("port in %q: %w", s, err)
	}
	return proto, uint16(port), nil
}

// parseNet reads an address or a network; an address is a network of
// one.
func parseNet(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
