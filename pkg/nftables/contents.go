package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Contents is a table read back, by the identities the planner uses:
// what `proxy explain` compares, and what a full sync compares before it
// rewrites a table.
type Contents struct {
	Rules map[string]int    // chain name -> rule count
	Elems map[string]string // Elem.id() -> verdict text ("" in a set)
	// Stamps are each chain's rule stamps, in order (Rule.stamp; 0 for a
	// rule without one).
	Stamps map[string][]uint64
	// Hooks are the chains' hooks (Hook.String; "" for a regular chain).
	Hooks map[string]string
	// Sets are the sets' and maps' shapes (Set.shape).
	Sets map[string]string
}

// setKeys are the key shapes of the layout's sets and maps.
var setKeys = map[string]Key{
	mapServiceIPs: KeyDestPort, mapNoEndpointServices: KeyDestPort, mapFirewallIPs: KeyDestPort,
	mapServiceNodePorts: KeyProtoPort, mapNoEndpointNodePort: KeyProtoPort,
	setClusterIPs: KeyDaddr, setNodePortIPs: KeyDaddr, setHairpin: KeyHairpin, mapEndpointPicks: KeyPick,
}

// Contents reads one table back; a table the kernel lacks reads as
// empty.
func (k *Kernel) Contents(table string) (*Contents, error) {
	all, err := k.Read([]string{table})
	if err != nil {
		return nil, err
	}
	if c := all[table]; c != nil {
		return c, nil
	}
	return newContents(), nil
}

// readSets reads a table's sets' shapes and the elements of its dispatch
// sets and maps.
func (k *Kernel) readSets(c *nftables.Conn, table string, out *Contents) error {
	sets, err := c.GetSets(&nftables.Table{Name: table, Family: k.fam.table})
	if err != nil {
		return fmt.Errorf("sets of table %s: %w", table, err)
	}
	for _, s := range sets {
		out.Sets[s.Name] = k.fam.kernelShape(s)
		key, ok := setKeys[s.Name]
		if !ok {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("elements of %s: %w", s.Name, err)
		}
		for _, e := range elems {
			el := &Elem{Table: table, Set: s.Name, Key: decodeKey(k.fam, key, e.Key)}
			v := ""
			switch {
			case key == KeyPick:
				v = decodeTarget(k.fam, e.Val)
			case s.IsMap && len(e.Val) > 0:
				v = decodeVerdict(e.Val)
			}
			out.Elems[el.id()] = v
		}
	}
	return nil
}

// decodeVerdict reads a map element's verdict as the library leaves it:
// the attributes inside NFTA_DATA_VERDICT (a code, and the chain of a
// jump or goto).
func decodeVerdict(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return fmt.Sprintf("undecodable verdict: %v", err)
	}
	ad.ByteOrder = binary.BigEndian
	var v Verdict
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			v.Kind = expr.VerdictKind(int32(ad.Uint32()))
		case unix.NFTA_VERDICT_CHAIN:
			v.Chain = ad.String()
		}
	}
	if err := ad.Err(); err != nil {
		return fmt.Sprintf("undecodable verdict: %v", err)
	}
	return v.String()
}

// decodeKey is the inverse of batchWriter.key.
func decodeKey(f *family, k Key, b []byte) ElemKey {
	var out ElemKey
	if k != KeyProtoPort && len(b) >= int(f.addrLen) {
		out.Addr, _ = netip.AddrFromSlice(b[:f.addrLen])
		b = b[f.addrLen:]
	}
	out.Twice = k == KeyHairpin
	if (k == KeyDestPort || k == KeyProtoPort || k == KeyPick) && len(b) >= 8 {
		out.Proto = protoName(b[0])
		out.Port = binaryutil.BigEndian.Uint16(b[4:6])
		b = b[8:]
	}
	if k == KeyPick && len(b) >= 4 {
		out.Picked, out.Pick = true, binaryutil.NativeEndian.Uint32(b[:4])
	}
	return out
}

// decodeTarget is the inverse of targetBytes, as Elem.body writes it.
func decodeTarget(f *family, b []byte) string {
	if len(b) < int(f.addrLen)+2 {
		return fmt.Sprintf("undecodable endpoint %x", b)
	}
	a, _ := netip.AddrFromSlice(b[:f.addrLen])
	return targetText(netip.AddrPortFrom(a, binaryutil.BigEndian.Uint16(b[f.addrLen:f.addrLen+2])))
}

func protoName(p byte) string {
	for _, name := range []string{"tcp", "udp", "sctp"} {
		if protoNumber(name) == p {
			return name
		}
	}
	return fmt.Sprint(p)
}

// PortObjects plans one Service port alone, as a sync plans it: the
// chains, sets and elements it adds to its shard and the shared table.
func PortObjects(name types.NamespacedName, port *watch.ServicePort, eps []*watch.Endpoint, node watch.NodeInfo, opts PlanOptions) *Objects {
	if opts.Shards <= 0 {
		opts.Shards = DefaultShards
	}
	objs := &Objects{}
	p := newPortPlan(port, watch.FamilyEndpoints(eps, opts.Family), node, opts)
	p.shard = ShardTable(ShardOf(name, opts.Shards))
	p.plan(objs)
	if p.picked() {
		// The shard's pick chain is part of the base, not of the Service,
		// but it is what serves the port: explain shows and checks it.
		n := len(p.Internal)
		objs.Chains = append(objs.Chains, &Chain{Table: p.shard, Name: pickChain(n), Rules: pickRules(p.fam, opts, n)})
	}
	return objs
}

// Shard is the table a Service's own chains live in.
func Shard(name types.NamespacedName, opts PlanOptions) string {
	if opts.Shards <= 0 {
		opts.Shards = DefaultShards
	}
	return ShardTable(ShardOf(name, opts.Shards))
}

// Lines renders objects as nft-like text, one chain or element per entry:
// what `proxy explain` shows as planned.
func (o *Objects) Lines() []string {
	var out []string
	for _, c := range o.Chains {
		out = append(out, fmt.Sprintf("table %s chain %s (%d rules)", c.Table, c.Name, len(c.Rules)))
		for _, r := range c.Rules {
			out = append(out, "    "+r.String())
		}
	}
	for _, e := range o.Elems {
		line := fmt.Sprintf("table %s %s element %s", e.Table, e.Set, e.Key)
		if body := e.body(); body != "" {
			line += " : " + body
		}
		out = append(out, line)
	}
	return out
}

// Differences lists what of objs the tables lack or hold otherwise: a
// missing chain, a chain with another rule count, a missing element or
// one with another verdict. A table that could not be read is one entry.
func Differences(objs *Objects, tables map[string]*Contents) []string {
	var out []string
	for _, c := range objs.Chains {
		t := tables[c.Table]
		switch n, ok := t.rules(c.Name); {
		case t == nil:
			out = append(out, fmt.Sprintf("table %s was not read", c.Table))
		case !ok:
			out = append(out, fmt.Sprintf("chain %s is missing from table %s", c.Name, c.Table))
		case n != len(c.Rules):
			out = append(out, fmt.Sprintf("chain %s of table %s has %d rules, planned %d", c.Name, c.Table, n, len(c.Rules)))
		default:
			if i := firstOther(t.Stamps[c.Name], stamps(c.Rules)); i >= 0 {
				out = append(out, fmt.Sprintf("rule %d of chain %s in table %s is not the planned %q", i+1, c.Name, c.Table, c.Rules[i]))
			}
		}
	}
	for _, e := range objs.Elems {
		t := tables[e.Table]
		if t == nil {
			continue
		}
		switch v, ok := t.Elems[e.id()]; {
		case !ok:
			out = append(out, fmt.Sprintf("element %s is missing from %s of table %s", e.Key, e.Set, e.Table))
		case v != e.body():
			out = append(out, fmt.Sprintf("element %s of %s in table %s: %q, planned %q", e.Key, e.Set, e.Table, v, e.body()))
		}
	}
	return out
}

func (c *Contents) rules(chain string) (int, bool) {
	if c == nil {
		return 0, false
	}
	n, ok := c.Rules[chain]
	return n, ok
}

// firstOther is the first index where got and want differ, or -1.
func firstOther(got, want []uint64) int {
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			return i
		}
	}
	return -1
}
