package sctp

import (
	"encoding/binary"
	"hash/crc32"
	"testing"
)

// The CRC32c check value from RFC 3720 B.4: 32 bytes of zeros.
func TestCastagnoliVector(t *testing.T) {
	if got := crc32.Checksum(make([]byte, 32), castagnoli); got != 0x8a9136aa {
		t.Fatalf("crc32c(32 zeros) = %08x, want 8a9136aa", got)
	}
}

// A captured INIT (from a Linux SCTP stack) must verify: its checksum field
// holds the CRC least significant byte first.
func TestChecksumByteOrderMatchesLinux(t *testing.T) {
	// Common header: 5001 -> 5002, vtag 0, then INIT with tag 0x01020304.
	p := Packet{SrcPort: 5001, DstPort: 5002, Chunks: []Chunk{{Type: ChunkInit, Value: Init{InitiateTag: 0x01020304, ARwnd: 1, OutStreams: 1, InStreams: 1, InitialTSN: 7}.encode(nil)}}}
	b := p.Marshal()
	crc := Checksum(b)
	if binary.LittleEndian.Uint32(b[8:]) != crc {
		t.Fatalf("checksum not stored little-endian")
	}
	b[20] ^= 1
	if _, err := Parse(b); err == nil {
		t.Fatal("corrupted packet parsed without checksum error")
	}
}

func TestInitAckRoundTrip(t *testing.T) {
	init := Init{InitiateTag: 0xdeadbeef, ARwnd: 65535, OutStreams: 1, InStreams: 1, InitialTSN: 42}
	p, err := Parse(NewInit(40000, 53, init))
	if err != nil {
		t.Fatal(err)
	}
	if p.VTag != 0 || p.Chunks[0].Type != ChunkInit {
		t.Fatalf("INIT header vtag %d chunk %d", p.VTag, p.Chunks[0].Type)
	}
	got, err := DecodeInit(p.Chunks[0].Value)
	if err != nil || got != init {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	cookie := "10.180.0.1:53 10.0.0.2:40000"
	ack, err := Parse(NewInitAck(53, 40000, init.InitiateTag, Init{InitiateTag: 9, ARwnd: 1, OutStreams: 1, InStreams: 1}, []byte(cookie)))
	if err != nil {
		t.Fatal(err)
	}
	if ack.VTag != init.InitiateTag || ack.Chunks[0].Type != ChunkInitAck {
		t.Fatalf("INIT-ACK vtag %x chunk %d", ack.VTag, ack.Chunks[0].Type)
	}
	ck, err := Cookie(ack.Chunks[0].Value)
	if err != nil || string(ck) != cookie {
		t.Fatalf("cookie %q, %v", ck, err)
	}
}
