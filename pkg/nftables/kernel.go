package nftables

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Interface is the kernel as this mode sees it: transactions in, this
// mode's tables and chains out. Kernel speaks netlink; Fake validates as
// the kernel does.
type Interface interface {
	// Apply commits tx in one netlink batch: all of it or nothing.
	Apply(tx *Transaction) error
	// Chains lists the chains of every table this mode owns, by table
	// (a table without chains is listed with none).
	Chains() (map[string][]string, error)
	// Read reads tables back; one the kernel lacks is absent. With nil
	// tables it reads every table this mode owns.
	Read(tables []string) (map[string]*Contents, error)
}

// Kernel is Interface over netlink for one IP family of a network
// namespace (the current one unless NewKernelAt names another). It keeps
// two sockets open (see socket): one for transactions, one for reads, so
// that a long read (a drift check) does not hold up a sync.
type Kernel struct {
	fam   *family
	netns int // a namespace file descriptor, or -1

	write, read socket
}

// NewKernel returns the netlink Interface of family in the current network
// namespace.
func NewKernel(f v1.IPFamily) *Kernel { return &Kernel{fam: familyOf(f), netns: -1} }

// Close closes the Kernel's sockets; a later call opens new ones.
func (k *Kernel) Close() error { return errors.Join(k.write.close(), k.read.close()) }

// NewKernelAt returns the netlink Interface of family in the network
// namespace open as netnsFd (which the caller keeps open).
func NewKernelAt(f v1.IPFamily, netnsFd int) *Kernel {
	return &Kernel{fam: familyOf(f), netns: netnsFd}
}

func (k *Kernel) connOptions() []nftables.ConnOption {
	opts := []nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}
	if k.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(k.netns))
	}
	return opts
}

// The socket's buffer limits. A batch goes to the kernel in one sendmsg,
// which fails (EMSGSIZE) if larger than the send buffer; the kernel
// acknowledges every message of the batch (each rule, each set's
// elements) before the answers are read, which overflows a default
// receive buffer (ENOBUFS). A full sync of thousands of Services needs
// both raised past wmem_max and rmem_max, as nft does; memory is taken
// only as the batch and its answers need it.
const (
	sendBuffer    = 1 << 30
	receiveBuffer = 256 << 20
)

func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		sockErr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, receiveBuffer),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer))
	})
	return errors.Join(err, sockErr)
}

// Apply commits tx in one netlink batch.
func (k *Kernel) Apply(tx *Transaction) (err error) {
	c, err := k.write.open(k)
	if err != nil {
		return err
	}
	defer func() { k.write.release(err) }()
	w := &batchWriter{c: c, fam: k.fam}
	for i := 0; i < len(tx.Ops); i++ {
		if n := w.elems(tx.Ops[i:]); n > 0 {
			i += n - 1
			continue
		}
		w.op(tx.Ops[i])
	}
	if w.err != nil {
		return w.err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables %s transaction of %d changes %v: %w", k.fam.name, len(tx.Ops), tx.Count(), err)
	}
	return nil
}

// Chains lists this mode's tables and their chains.
func (k *Kernel) Chains() (_ map[string][]string, err error) {
	c, err := k.read.open(k)
	if err != nil {
		return nil, err
	}
	defer func() { k.read.release(err) }()
	tables, err := c.ListTablesOfFamily(k.fam.table)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, t := range tables {
		if Owned(t.Name) {
			out[t.Name] = nil
		}
	}
	chains, err := c.ListChainsOfTableFamily(k.fam.table)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if Owned(ch.Table.Name) {
			out[ch.Table.Name] = append(out[ch.Table.Name], ch.Name)
		}
	}
	return out, nil
}

// batchWriter turns ops into netlink messages on one connection.
type batchWriter struct {
	c   *nftables.Conn
	fam *family
	err error
}

func (w *batchWriter) table(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: w.fam.table}
}

func (w *batchWriter) chain(c *Chain) *nftables.Chain {
	ch := &nftables.Chain{Name: c.Name, Table: w.table(c.Table)}
	if h := c.Hook; h != nil {
		ch.Type, ch.Hooknum, ch.Priority = h.Type, h.Hook, nftables.ChainPriorityRef(nftables.ChainPriority(h.Priority))
	}
	return ch
}

func (w *batchWriter) op(op Op) {
	switch op.Kind {
	case ResetTable:
		t := w.table(op.Table)
		w.c.AddTable(t)
		w.c.DelTable(t)
		w.c.AddTable(t)
	case DropTable:
		w.c.DelTable(w.table(op.Table))
	case AddSet:
		w.setErr(w.c.AddSet(w.set(op.Set), nil))
	case AddChain:
		w.c.AddChain(w.chain(op.Chain))
	case FlushChain:
		w.c.FlushChain(w.chain(op.Chain))
	case AddRules:
		ch := w.chain(op.Chain)
		for _, r := range op.Chain.Rules {
			w.c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r.exprs(w.fam), UserData: r.userData()})
		}
	case InsertRules:
		// Each one goes to the head of the chain: last rule first.
		ch := w.chain(op.Chain)
		for i := len(op.Chain.Rules) - 1; i >= 0; i-- {
			r := op.Chain.Rules[i]
			w.c.InsertRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r.exprs(w.fam), UserData: r.userData()})
		}
	case DelChain:
		w.c.DelChain(w.chain(op.Chain))
	case DelSet:
		w.c.DelSet(w.set(op.Set))
	}
}

// maxElemsPerMessage keeps an element list attribute well below the 64
// KiB a netlink attribute can hold (an IPv6 map element with its verdict
// is under 100 bytes).
const maxElemsPerMessage = 500

// elems writes a run of element ops of one kind and set as one message;
// it returns how many ops it took (0 if ops[0] is not an element op).
func (w *batchWriter) elems(ops []Op) int {
	first := ops[0]
	if first.Kind != AddElem && first.Kind != DelElem {
		return 0
	}
	n := 0
	var elems []nftables.SetElement
	for _, op := range ops {
		if op.Kind != first.Kind || op.Elem.Table != first.Elem.Table || op.Elem.Set != first.Elem.Set || n == maxElemsPerMessage {
			break
		}
		e := nftables.SetElement{Key: w.key(op.Elem.Key)}
		if v := op.Elem.Verdict; v != nil {
			e.VerdictData = &expr.Verdict{Kind: v.Kind, Chain: v.Chain}
		}
		if t := op.Elem.Target; t.IsValid() {
			e.Val = targetBytes(t)
		}
		elems = append(elems, e)
		n++
	}
	set := &nftables.Set{Table: w.table(first.Elem.Table), Name: first.Elem.Set}
	if first.Kind == AddElem {
		w.setErr(w.c.SetAddElements(set, elems))
	} else {
		w.setErr(w.c.SetDeleteElements(set, elems))
	}
	return n
}

func (w *batchWriter) setErr(err error) {
	if err != nil && w.err == nil {
		w.err = err
	}
}

func (w *batchWriter) set(s *Set) *nftables.Set {
	// Concatenated keys are not flagged as such (NFT_SET_CONCAT): the flag
	// makes the kernel choose its interval backend (pipapo), whose commit
	// copies the whole set, so that adding one element to a set of 50,000
	// cost milliseconds. Without it the set is a hash, as nft makes
	// concatenated sets without intervals; the key type still names each
	// field, which is all `nft list` needs.
	out := &nftables.Set{Table: w.table(s.Table), Name: s.Name, KeyType: w.keyType(s.Key)}
	switch {
	case s.Map:
		out.IsMap, out.DataType = true, nftables.TypeVerdict
	case s.Targets:
		out.IsMap, out.DataType = true, nftables.MustConcatSetType(w.fam.addrType, nftables.TypeInetService)
	}
	if s.Timeout > 0 {
		out.HasTimeout, out.Timeout, out.Dynamic = true, s.Timeout, true
	}
	return out
}

func (w *batchWriter) keyType(k Key) nftables.SetDatatype {
	switch k {
	case KeyDestPort:
		return nftables.MustConcatSetType(w.fam.addrType, nftables.TypeInetProto, nftables.TypeInetService)
	case KeyProtoPort:
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	case KeyHairpin:
		return nftables.MustConcatSetType(w.fam.addrType, w.fam.addrType)
	case KeyPick:
		// The drawn number is a host-order u32, which nft knows as a mark
		// (its "integer" has no length, and nft could not parse the keys).
		return nftables.MustConcatSetType(w.fam.addrType, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
	}
	return w.fam.addrType
}

// key encodes an element key as the kernel compares it: each field of a
// concatenation padded to 4 bytes, ports in network order, numgen's
// number in the host's (as numgen writes its register).
func (w *batchWriter) key(k ElemKey) []byte {
	var out []byte
	if k.Addr.IsValid() {
		out = append(out, k.Addr.AsSlice()...)
	}
	if k.Twice {
		out = append(out, k.Addr.AsSlice()...)
	}
	if k.Proto != "" {
		out = append(out, protoNumber(k.Proto), 0, 0, 0)
		out = append(out, binaryutil.BigEndian.PutUint16(k.Port)...)
		out = append(out, 0, 0)
	}
	if k.Picked {
		out = append(out, binaryutil.NativeEndian.PutUint32(k.Pick)...)
	}
	return out
}

// targetBytes encodes an endpoint as a map value of addr . inet_service.
func targetBytes(t netip.AddrPort) []byte {
	out := append(t.Addr().AsSlice(), binaryutil.BigEndian.PutUint16(t.Port())...)
	return append(out, 0, 0)
}
