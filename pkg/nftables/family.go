package nftables

import (
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// family is what differs between the IPv4 and IPv6 tables: the netfilter
// family, where the addresses sit in the header, and how ICMP says "port
// unreachable".
type family struct {
	ip       v1.IPFamily
	table    nftables.TableFamily
	nfproto  uint32
	name     string // "ip" or "ip6", as nft writes it
	addrLen  uint32
	saddrOff uint32
	daddrOff uint32
	// rejectCode is port-unreachable in ICMP (3) or ICMPv6 (4).
	rejectCode uint8
	addrType   nftables.SetDatatype
	loopback   netip.Prefix
}

var (
	ipv4 = &family{ip: v1.IPv4Protocol, table: nftables.TableFamilyIPv4, nfproto: unix.NFPROTO_IPV4, name: "ip",
		addrLen: 4, saddrOff: 12, daddrOff: 16, rejectCode: 3, addrType: nftables.TypeIPAddr,
		loopback: netip.MustParsePrefix("127.0.0.0/8")}
	ipv6 = &family{ip: v1.IPv6Protocol, table: nftables.TableFamilyIPv6, nfproto: unix.NFPROTO_IPV6, name: "ip6",
		addrLen: 16, saddrOff: 8, daddrOff: 24, rejectCode: 4, addrType: nftables.TypeIP6Addr,
		loopback: netip.MustParsePrefix("::1/128")}
)

func familyOf(f v1.IPFamily) *family {
	if f == v1.IPv6Protocol {
		return ipv6
	}
	return ipv4
}
