package ipvs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// SetMatch reports whether a new connection matches `-m set --match-set
// set dirs` when the sets hold the aggregate's members, for tracing the
// helper rules (`proxy explain --from`). Ports are the destination port
// (the helper rules match on nothing else).
func (a *Aggregate) SetMatch(set, dirs string, src, dst netip.Addr, proto string, dport int) bool {
	members := a.Sets[set]
	if len(members) == 0 {
		return false
	}
	d := strings.Split(dirs, ",")
	addr := func(i int) netip.Addr {
		if i < len(d) && d[i] == "src" {
			return src
		}
		return dst
	}
	ipPort := fmt.Sprintf("%s,%s:%d", addr(0), proto, dport)
	switch setType(set) {
	case typeHashIP:
		return members[addr(0).String()]
	case typeBitmapPort:
		return members[strconv.Itoa(dport)]
	case typeHashIPPort:
		return members[ipPort]
	case typeHashIPPortIP:
		return members[ipPort+","+addr(2).String()]
	case typeHashIPPortNet:
		for m := range members {
			rest, ok := strings.CutPrefix(m, ipPort+",")
			if !ok {
				continue
			}
			if p, err := netip.ParsePrefix(rest); err == nil && p.Contains(addr(2)) {
				return true
			}
			if ip, err := netip.ParseAddr(rest); err == nil && ip == addr(2) {
				return true
			}
		}
	}
	return false
}

// setType returns the type of one of our sets by name ("" when unknown).
func setType(name string) string {
	for _, s := range baseSets {
		if s.name == name || SetName(s.name, v1.IPv6Protocol) == name {
			return s.typ
		}
	}
	return ""
}

// MarshalText renders the key as String does (for JSON).
func (k VSKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads what MarshalText writes ("TCP/172.30.0.41:80").
func (k *VSKey) UnmarshalText(b []byte) error {
	proto, addr, ok := strings.Cut(string(b), "/")
	ap, err := netip.ParseAddrPort(addr)
	if !ok || err != nil {
		return fmt.Errorf("virtual server %q is not PROTOCOL/IP:PORT", b)
	}
	*k = VSKey{Protocol: v1.Protocol(proto), Addr: ap.Addr(), Port: ap.Port()}
	return nil
}
