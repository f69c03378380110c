package nftables

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Term is one part of a rule: a match, or the statement or verdict that
// ends it. String is how nft would write it (what `proxy explain` shows and
// what the planner compares); exprs is the netlink form for a family.
type Term interface {
	String() string
	exprs(f *family) []expr.Any
}

// Rule is a rule's terms in order.
type Rule []Term

func (r Rule) String() string {
	parts := make([]string, len(r))
	for i, t := range r {
		parts[i] = t.String()
	}
	return strings.Join(parts, " ")
}

func (r Rule) exprs(f *family) []expr.Any {
	var out []expr.Any
	for _, t := range r {
		out = append(out, t.exprs(f)...)
	}
	return out
}

// Registers: the first field of a key loads into register 1 (the first
// 16 bytes); later fields of a concatenation follow in 4-byte registers,
// numbered from NFT_REG32_00 (8), as nft lays them out.
const reg1 = unix.NFT_REG_1

func reg32(slot uint32) uint32 { return unix.NFT_REG32_00 + slot }

// Key says which packet fields a set or map is keyed by.
type Key int

const (
	// KeyDestPort is "ip daddr . meta l4proto . th dport".
	KeyDestPort Key = iota
	// KeyProtoPort is "meta l4proto . th dport".
	KeyProtoPort
	// KeyDaddr is "ip daddr".
	KeyDaddr
	// KeySaddr is "ip saddr".
	KeySaddr
	// KeyHairpin is "ip saddr . ip daddr": after DNAT, a connection whose
	// source is the endpoint it was sent to.
	KeyHairpin
	// KeyPick is "ip daddr . meta l4proto . th dport . numgen": a Service
	// port and the number numgen drew for the packet (DNATPick).
	KeyPick
)

// fields names the key's fields as nft names their types.
func (k Key) fields() string {
	switch k {
	case KeyDestPort:
		return "addr . inet_proto . inet_service"
	case KeyProtoPort:
		return "inet_proto . inet_service"
	case KeyHairpin:
		return "addr . addr"
	case KeyPick:
		return "addr . inet_proto . inet_service . mark"
	}
	return "addr"
}

func (k Key) text(f *family) string {
	switch k {
	case KeyDestPort:
		return f.name + " daddr . meta l4proto . th dport"
	case KeyProtoPort:
		return "meta l4proto . th dport"
	case KeySaddr:
		return f.name + " saddr"
	case KeyHairpin:
		return f.name + " saddr . " + f.name + " daddr"
	case KeyPick:
		return f.name + " daddr . meta l4proto . th dport . numgen"
	}
	return f.name + " daddr"
}

// load puts the key's fields in registers, starting at register 1.
func (k Key) load(f *family) []expr.Any {
	proto := func(slot uint32) expr.Any { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regAt(slot)} }
	dport := func(slot uint32) expr.Any {
		return &expr.Payload{DestRegister: regAt(slot), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	}
	switch k {
	case KeyDestPort:
		return []expr.Any{loadAddr(f, f.daddrOff), proto(f.addrLen / 4), dport(f.addrLen/4 + 1)}
	case KeyProtoPort:
		return []expr.Any{proto(0), dport(1)}
	case KeySaddr:
		return []expr.Any{loadAddr(f, f.saddrOff)}
	case KeyHairpin:
		return []expr.Any{loadAddr(f, f.saddrOff),
			&expr.Payload{DestRegister: regAt(f.addrLen / 4), Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen}}
	}
	return []expr.Any{loadAddr(f, f.daddrOff)}
}

func regAt(slot uint32) uint32 {
	if slot == 0 {
		return reg1
	}
	return reg32(slot)
}

func loadAddr(f *family, off uint32) expr.Any {
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.addrLen}
}

// Addr matches the destination (or source) address against a prefix.
type Addr struct {
	Source bool
	Not    bool
	Prefix netip.Prefix
}

func (t Addr) String() string {
	dir, op := "daddr", ""
	if t.Source {
		dir = "saddr"
	}
	if t.Not {
		op = "!= "
	}
	fam := "ip"
	if t.Prefix.Addr().Is6() {
		fam = "ip6"
	}
	return fmt.Sprintf("%s %s %s%s", fam, dir, op, prefixText(t.Prefix))
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.Masked().String()
}

func (t Addr) exprs(f *family) []expr.Any {
	off := f.daddrOff
	if t.Source {
		off = f.saddrOff
	}
	out := []expr.Any{loadAddr(f, off)}
	if !t.Prefix.IsSingleIP() {
		out = append(out, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen,
			Mask: prefixMask(t.Prefix), Xor: make([]byte, f.addrLen)})
	}
	return append(out, &expr.Cmp{Op: cmpOp(t.Not), Register: reg1, Data: t.Prefix.Masked().Addr().AsSlice()})
}

func prefixMask(p netip.Prefix) []byte {
	n := p.Addr().BitLen() / 8
	mask := make([]byte, n)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return mask
}

func cmpOp(not bool) expr.CmpOp {
	if not {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// Proto matches the transport protocol ("meta l4proto tcp").
type Proto string

func (t Proto) String() string { return "meta l4proto " + string(t) }

func (t Proto) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{protoNumber(string(t))}}}
}

func protoNumber(p string) byte {
	switch p {
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// DestPort matches the transport destination port ("th dport 80").
type DestPort uint16

func (t DestPort) String() string { return fmt.Sprintf("th dport %d", uint16(t)) }

func (t DestPort) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(uint16(t))}}
}

// LocalAddr matches packets whose destination (or source) is an address
// of this host ("fib daddr type local").
type LocalAddr struct{ Source bool }

func (t LocalAddr) String() string {
	if t.Source {
		return "fib saddr type local"
	}
	return "fib daddr type local"
}

func (t LocalAddr) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Fib{Register: reg1, FlagSADDR: t.Source, FlagDADDR: !t.Source, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}}
}

// InputInterface matches the input interface by name, or by prefix when the
// name ends in "+" ("iifname "veth*"").
type InputInterface struct {
	Name string
	Not  bool
}

func (t InputInterface) String() string {
	op := ""
	if t.Not {
		op = "!= "
	}
	return fmt.Sprintf("iifname %s%q", op, strings.Replace(t.Name, "+", "*", 1))
}

func (t InputInterface) exprs(*family) []expr.Any {
	data := []byte(t.Name + "\x00")
	if prefix, ok := strings.CutSuffix(t.Name, "+"); ok {
		data = []byte(prefix)
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1}, &expr.Cmp{Op: cmpOp(t.Not), Register: reg1, Data: data}}
}

// NewConnection matches a connection's first packet ("ct state new").
type NewConnection struct{}

func (NewConnection) String() string { return "ct state new" }

func (NewConnection) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)}}
}

// DestNATed matches a connection whose destination was rewritten ("ct
// status dnat").
type DestNATed struct{}

func (DestNATed) String() string { return "ct status dnat" }

// ipsDstNAT is IPS_DST_NAT of a conntrack entry's status.
const ipsDstNAT = 1 << 5

func (DestNATed) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)}}
}

// Random matches one packet in Mod ("numgen random mod 3 0"): a chain
// of them, with Mod n, n-1, ..., 2, picks each of n endpoints equally.
type Random uint32

func (t Random) String() string { return fmt.Sprintf("numgen random mod %d 0", uint32(t)) }

func (t Random) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Numgen{Register: reg1, Modulus: uint32(t), Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)}}
}

// MarkClear matches packets whose mark lacks Bit ("meta mark & 0x4000 == 0").
type MarkClear uint32

func (t MarkClear) String() string { return fmt.Sprintf("meta mark & 0x%x == 0", uint32(t)) }

func (t MarkClear) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(uint32(t)), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)}}
}

// InSet matches when the packet's key is (or, with Not, is not) in a set.
type InSet struct {
	fam *family
	Key Key
	Set string
	Not bool
}

func (t InSet) String() string {
	op := ""
	if t.Not {
		op = "!= "
	}
	return fmt.Sprintf("%s %s@%s", t.Key.text(t.fam), op, t.Set)
}

func (t InSet) exprs(f *family) []expr.Any {
	return append(t.Key.load(f), &expr.Lookup{SourceRegister: reg1, SetName: t.Set, Invert: t.Not})
}

// VMap ends a rule with a verdict map lookup ("... vmap @service-ips").
type VMap struct {
	fam *family
	Key Key
	Map string
}

func (t VMap) String() string { return fmt.Sprintf("%s vmap @%s", t.Key.text(t.fam), t.Map) }

func (t VMap) exprs(f *family) []expr.Any {
	return append(t.Key.load(f), &expr.Lookup{SourceRegister: reg1, SetName: t.Map, IsDestRegSet: true, DestRegister: 0})
}

// SetMark ORs (or, with Toggle, XORs) Bit into the packet mark.
type SetMark struct {
	Bit    uint32
	Toggle bool
}

func (t SetMark) String() string {
	op := "|"
	if t.Toggle {
		op = "^"
	}
	return fmt.Sprintf("meta mark set meta mark %s 0x%x", op, t.Bit)
}

func (t SetMark) exprs(*family) []expr.Any {
	mask, xor := ^t.Bit, t.Bit
	if t.Toggle {
		mask = 0xffffffff
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1}}
}

// Masquerade rewrites the source to the outgoing interface's address.
type Masquerade struct{}

func (Masquerade) String() string { return "masquerade fully-random" }

func (Masquerade) exprs(*family) []expr.Any { return []expr.Any{&expr.Masq{FullyRandom: true}} }

// DNAT rewrites the destination to an endpoint.
type DNAT netip.AddrPort

func (t DNAT) String() string { return "dnat to " + netip.AddrPort(t).String() }

func (t DNAT) exprs(f *family) []expr.Any {
	ap := netip.AddrPort(t)
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: ap.Addr().AsSlice()},
		&expr.Immediate{Register: unix.NFT_REG_2, Data: binaryutil.BigEndian.PutUint16(ap.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegAddrMin: reg1, RegProtoMin: unix.NFT_REG_2, Specified: true},
	}
}

// DNATPick draws one of N endpoints at random and DNATs to it: numgen
// completes the key of Map (KeyPick), whose value is the endpoint's
// address and port. It serves every Service port with N endpoints, so
// such ports need no chain of their own: a change of endpoints is a
// change of map elements, and the chain count (which every commit walks)
// does not grow with the Services.
type DNATPick struct {
	fam *family
	Map string
	N   uint32
}

func (t DNATPick) String() string {
	return fmt.Sprintf("dnat %s addr . port to %s daddr . meta l4proto . th dport . numgen random mod %d map @%s", t.fam.name, t.fam.name, t.N, t.Map)
}

func (t DNATPick) exprs(f *family) []expr.Any {
	fields := f.addrLen / 4
	return append(KeyDestPort.load(f),
		&expr.Numgen{Register: regAt(fields + 2), Modulus: t.N, Type: unix.NFT_NG_RANDOM},
		// The value (address, then port) lands where the key began.
		&expr.Lookup{SourceRegister: reg1, SetName: t.Map, IsDestRegSet: true, DestRegister: reg1},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegAddrMin: reg1, RegProtoMin: regAt(fields), Specified: true})
}

// UpdateSource adds (or refreshes) the packet's source address in a
// timed set: session affinity remembers the client.
type UpdateSource struct {
	fam     *family
	Set     string
	Timeout time.Duration
}

func (t UpdateSource) String() string {
	return fmt.Sprintf("update @%s { %s saddr }", t.Set, t.fam.name)
}

func (t UpdateSource) exprs(f *family) []expr.Any {
	return []expr.Any{loadAddr(f, f.saddrOff),
		&expr.Dynset{SrcRegKey: reg1, SetName: t.Set, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: t.Timeout}}
}

// Reject answers with ICMP port unreachable.
type Reject struct{}

func (Reject) String() string { return "reject" }

func (Reject) exprs(f *family) []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.rejectCode}}
}

// Verdict ends a rule: accept, drop, return, or jump/goto a chain.
type Verdict struct {
	Kind  expr.VerdictKind
	Chain string
}

var (
	Drop   = Verdict{Kind: expr.VerdictDrop}
	Return = Verdict{Kind: expr.VerdictReturn}
)

// Jump and Goto are the verdicts that enter a chain.
func Jump(chain string) Verdict { return Verdict{Kind: expr.VerdictJump, Chain: chain} }
func Goto(chain string) Verdict { return Verdict{Kind: expr.VerdictGoto, Chain: chain} }

func (t Verdict) String() string {
	switch t.Kind {
	case expr.VerdictJump:
		return "jump " + t.Chain
	case expr.VerdictGoto:
		return "goto " + t.Chain
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictAccept:
		return "accept"
	}
	return fmt.Sprintf("verdict(%d)", t.Kind)
}

func (t Verdict) exprs(*family) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: t.Kind, Chain: t.Chain}}
}
