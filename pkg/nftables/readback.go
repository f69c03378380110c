package nftables

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A rule carries a stamp in its user data: a hash of its text as the
// planner wrote it, so that reading a table back tells whether each rule
// is the planned one without decoding expressions. The stamp is a TLV of
// a type nft does not know, which nft skips when it lists the rule.
const stampTLV = 0x53

// stampVersion goes into every stamp: change it with any change to how a
// term is encoded for the kernel that leaves its text as it was, so that
// a new binary rewrites the rules an older one wrote.
const stampVersion = "1\n"

// stamp is the hash of the rule's text.
func (r Rule) stamp() uint64 {
	h := fnv.New64a()
	h.Write([]byte(stampVersion))
	h.Write([]byte(r.String()))
	return h.Sum64()
}

func (r Rule) userData() []byte {
	return binary.BigEndian.AppendUint64([]byte{stampTLV, 8}, r.stamp())
}

func stamps(rules []Rule) []uint64 {
	out := make([]uint64, len(rules))
	for i, r := range rules {
		out[i] = r.stamp()
	}
	return out
}

// stampOf finds the stamp in a rule's user data (0 when it has none).
func stampOf(udata []byte) uint64 {
	for len(udata) >= 2 {
		t, l := udata[0], int(udata[1])
		if 2+l > len(udata) {
			break
		}
		if t == stampTLV && l == 8 {
			return binary.BigEndian.Uint64(udata[2:10])
		}
		udata = udata[2+l:]
	}
	return 0
}

// shape renders what of a set must match for the kernel's set to be this
// one: map or set, the key's fields (for sets; the library does not read
// a map's key type back), the timeout.
func (s *Set) shape() string {
	key := s.Key.fields()
	if s.Map || s.Targets {
		key = ""
	}
	out := fmt.Sprintf("map=%v key=%q timeout=%s", s.Map || s.Targets, key, s.Timeout)
	if s.Targets {
		out += " targets"
	}
	return out
}

// kernelShape is shape for a set read from the kernel; an interval or
// concatenation flag, which the planner never sets, makes it differ.
func (f *family) kernelShape(s *nftables.Set) string {
	key := ""
	if !s.IsMap {
		key = f.fieldsOfLength(s.KeyType.Bytes)
	}
	var timeout Set
	if s.HasTimeout {
		timeout.Timeout = s.Timeout
	}
	out := fmt.Sprintf("map=%v key=%q timeout=%s", s.IsMap, key, timeout.Timeout)
	if s.IsMap && s.DataType.Name != "" {
		// The library reads a verdict map's data type into KeyType.
		out += " targets"
	}
	if s.Interval || s.Concatenation {
		out += " interval"
	}
	return out
}

// fieldsOfLength names a plain set's key fields by the key's length.
func (f *family) fieldsOfLength(n uint32) string {
	for _, k := range []Key{KeyDaddr, KeyHairpin, KeyDestPort} {
		if f.keyLength(k) == n {
			return k.fields()
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// keyLength is a key's length in the kernel, each field padded to 4
// bytes.
func (f *family) keyLength(k Key) uint32 {
	switch k {
	case KeyHairpin:
		return 2 * f.addrLen
	case KeyDestPort:
		return f.addrLen + 8
	case KeyProtoPort:
		return 8
	}
	return f.addrLen
}

// tableMatches reports whether a table read back (nil: missing) holds
// exactly what ops, a full sync's writes of that table, would put there.
func tableMatches(ops []Op, c *Contents) bool {
	if c == nil {
		return false
	}
	var chains, sets int
	elems := map[string]bool{} // two Services may plan the same element
	for _, op := range ops {
		switch op.Kind {
		case ResetTable, AddRules: // AddChain compares the rules
		case AddSet:
			sets++
			if got, ok := c.Sets[op.Set.Name]; !ok || got != op.Set.shape() {
				return false
			}
		case AddChain:
			chains++
			if got, ok := c.Hooks[op.Chain.Name]; !ok || got != op.Chain.Hook.String() || !slices.Equal(c.Stamps[op.Chain.Name], stamps(op.Chain.Rules)) {
				return false
			}
		case AddElem:
			elems[op.Elem.id()] = true
			if got, ok := c.Elems[op.Elem.id()]; !ok || got != op.Elem.body() {
				return false
			}
		default:
			return false
		}
	}
	return chains == len(c.Hooks) && sets == len(c.Sets) && len(elems) == len(c.Elems)
}

// Read reads tables back (a table the kernel lacks is absent from the
// result; nil tables: every table this mode owns): every chain with its
// hook and rule stamps, every set's shape, and the elements of the
// dispatch sets and maps. Of kube-proxy's table it reads only the chains:
// it is listed to be removed, never compared.
func (k *Kernel) Read(tables []string) (_ map[string]*Contents, err error) {
	c, err := k.read.open(k)
	if err != nil {
		return nil, err
	}
	defer func() { k.read.release(err) }()
	wanted := func(t string) bool { return slices.Contains(tables, t) }
	out := map[string]*Contents{}
	if tables == nil {
		wanted = Owned
		// An owned table without chains is listed too, to be dropped.
		all, err := c.ListTablesOfFamily(k.fam.table)
		if err != nil {
			return nil, err
		}
		for _, t := range all {
			if Owned(t.Name) {
				out[t.Name] = newContents()
			}
		}
	}
	chains, err := c.ListChainsOfTableFamily(k.fam.table)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if !wanted(ch.Table.Name) {
			continue
		}
		ct := out[ch.Table.Name]
		if ct == nil {
			ct = newContents()
			out[ch.Table.Name] = ct
		}
		ct.Hooks[ch.Name] = hookOf(ch).String()
		ct.Rules[ch.Name] = 0
	}
	for name, ct := range out {
		if name == KubeProxyTable {
			continue
		}
		if err := k.readRules(name, ct); err != nil {
			return nil, fmt.Errorf("rules of table %s: %w", name, err)
		}
		if err := k.readSets(c, name, ct); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func newContents() *Contents {
	return &Contents{Rules: map[string]int{}, Elems: map[string]string{}, Stamps: map[string][]uint64{},
		Hooks: map[string]string{}, Sets: map[string]string{}}
}

func hookOf(ch *nftables.Chain) *Hook {
	if ch.Hooknum == nil || ch.Priority == nil {
		return nil
	}
	return &Hook{Type: ch.Type, Hook: ch.Hooknum, Priority: int32(*ch.Priority)}
}

// readRules dumps every rule of a table in one request, keeping only each
// rule's chain and stamp (the library's GetRules asks per chain and
// decodes every expression). The caller holds k.read.
func (k *Kernel) readRules(table string, ct *Contents) error {
	conn, err := k.read.rawConn(k)
	if err != nil {
		return err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(k.fam.table), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return err
		}
		var chain string
		var stamp uint64
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				stamp = stampOf(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return err
		}
		ct.Stamps[chain] = append(ct.Stamps[chain], stamp)
		ct.Rules[chain]++
	}
	return nil
}
