// Package sctp speaks just enough SCTP over raw IP sockets to test a proxy's
// SCTP handling on kernels without SCTP socket support (CONFIG_IP_SCTP unset)
// while netfilter still tracks and NATs SCTP. A client sends a real INIT
// chunk; a responder answers with an INIT-ACK whose State Cookie carries a
// text payload (the responder's address and the peer it saw). No association
// is ever completed: the INIT/INIT-ACK exchange is what conntrack, DNAT and
// SNAT act on.
package sctp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Chunk types used here (RFC 9260 section 3.2).
const (
	ChunkInit    = 1
	ChunkInitAck = 2
	ChunkAbort   = 6
)

// paramStateCookie is the INIT-ACK parameter type carrying the cookie.
const paramStateCookie = 7

// Protocol is SCTP's IP protocol number.
const Protocol = 132

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Packet is a parsed SCTP packet: the common header and its chunks.
type Packet struct {
	SrcPort, DstPort uint16
	VTag             uint32
	Chunks           []Chunk
}

// Chunk is one SCTP chunk; Value excludes the 4-byte chunk header.
type Chunk struct {
	Type, Flags uint8
	Value       []byte
}

// Checksum returns the CRC32c of an SCTP packet computed with the checksum
// field taken as zero, as RFC 9260 appendix A defines it.
func Checksum(pkt []byte) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, pkt[:8])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, pkt[12:])
}

// Marshal encodes the packet and fills in its checksum. The CRC goes on the
// wire least significant byte first, as Linux (cpu_to_le32) writes it.
func (p *Packet) Marshal() []byte {
	b := make([]byte, 12, 64)
	binary.BigEndian.PutUint16(b[0:], p.SrcPort)
	binary.BigEndian.PutUint16(b[2:], p.DstPort)
	binary.BigEndian.PutUint32(b[4:], p.VTag)
	for _, c := range p.Chunks {
		l := 4 + len(c.Value)
		b = append(b, c.Type, c.Flags, byte(l>>8), byte(l))
		b = append(b, c.Value...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	binary.LittleEndian.PutUint32(b[8:], Checksum(b))
	return b
}

// Parse decodes an SCTP packet (starting at the common header) and checks
// its checksum.
func Parse(b []byte) (*Packet, error) {
	if len(b) < 12 {
		return nil, errors.New("sctp: short packet")
	}
	if got, want := binary.LittleEndian.Uint32(b[8:]), Checksum(b); got != want {
		return nil, fmt.Errorf("sctp: bad checksum %08x, want %08x", got, want)
	}
	p := &Packet{
		SrcPort: binary.BigEndian.Uint16(b[0:]),
		DstPort: binary.BigEndian.Uint16(b[2:]),
		VTag:    binary.BigEndian.Uint32(b[4:]),
	}
	for rest := b[12:]; len(rest) >= 4; {
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if l < 4 || l > len(rest) {
			return nil, errors.New("sctp: bad chunk length")
		}
		p.Chunks = append(p.Chunks, Chunk{Type: rest[0], Flags: rest[1], Value: rest[4:l]})
		l = (l + 3) &^ 3
		if l > len(rest) {
			break
		}
		rest = rest[l:]
	}
	return p, nil
}

// Init is the fixed part of INIT and INIT-ACK chunks.
type Init struct {
	InitiateTag uint32
	ARwnd       uint32
	OutStreams  uint16
	InStreams   uint16
	InitialTSN  uint32
}

func (i Init) encode(params []byte) []byte {
	b := make([]byte, 16, 16+len(params))
	binary.BigEndian.PutUint32(b[0:], i.InitiateTag)
	binary.BigEndian.PutUint32(b[4:], i.ARwnd)
	binary.BigEndian.PutUint16(b[8:], i.OutStreams)
	binary.BigEndian.PutUint16(b[10:], i.InStreams)
	binary.BigEndian.PutUint32(b[12:], i.InitialTSN)
	return append(b, params...)
}

// DecodeInit reads the fixed part of an INIT or INIT-ACK chunk value.
func DecodeInit(v []byte) (Init, error) {
	if len(v) < 16 {
		return Init{}, errors.New("sctp: short INIT")
	}
	return Init{
		InitiateTag: binary.BigEndian.Uint32(v[0:]),
		ARwnd:       binary.BigEndian.Uint32(v[4:]),
		OutStreams:  binary.BigEndian.Uint16(v[8:]),
		InStreams:   binary.BigEndian.Uint16(v[10:]),
		InitialTSN:  binary.BigEndian.Uint32(v[12:]),
	}, nil
}

// NewInit builds an INIT packet; the common header's tag is 0 as required.
func NewInit(src, dst uint16, init Init) []byte {
	p := Packet{SrcPort: src, DstPort: dst, Chunks: []Chunk{{Type: ChunkInit, Value: init.encode(nil)}}}
	return p.Marshal()
}

// NewInitAck builds the INIT-ACK answering an INIT whose initiate tag was
// peerTag, with cookie as its State Cookie parameter.
func NewInitAck(src, dst uint16, peerTag uint32, own Init, cookie []byte) []byte {
	l := 4 + len(cookie)
	param := []byte{0, paramStateCookie, byte(l >> 8), byte(l)}
	param = append(param, cookie...)
	for len(param)%4 != 0 {
		param = append(param, 0)
	}
	p := Packet{SrcPort: src, DstPort: dst, VTag: peerTag, Chunks: []Chunk{{Type: ChunkInitAck, Value: own.encode(param)}}}
	return p.Marshal()
}

// Cookie returns the State Cookie of an INIT-ACK chunk value.
func Cookie(initAck []byte) ([]byte, error) {
	if len(initAck) < 16 {
		return nil, errors.New("sctp: short INIT-ACK")
	}
	for rest := initAck[16:]; len(rest) >= 4; {
		typ := binary.BigEndian.Uint16(rest[0:])
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if l < 4 || l > len(rest) {
			return nil, errors.New("sctp: bad parameter length")
		}
		if typ == paramStateCookie {
			return rest[4:l], nil
		}
		l = (l + 3) &^ 3
		if l > len(rest) {
			break
		}
		rest = rest[l:]
	}
	return nil, errors.New("sctp: INIT-ACK without State Cookie")
}
