package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/cowmap"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// PlanOptions is the node configuration a plan depends on.
type PlanOptions struct {
	Family v1.IPFamily
	// Shards is the number of shard tables Services are spread over.
	Shards        int
	MasqueradeBit int
	MasqueradeAll bool
	// LocalDetector tells pod traffic from other traffic; nil when none.
	LocalDetector *LocalDetector
	// NodePortAddresses are the addresses NodePorts are served on; nil
	// means every local address but loopback.
	NodePortAddresses []netip.Addr
	// NodeIP is the node's primary IP of this family.
	NodeIP netip.Addr
	// ServiceCIDRs are the family's Service ranges: traffic to an address
	// in them that no Service has is dropped.
	ServiceCIDRs []netip.Prefix
}

// LocalDetector matches traffic from pods on this node: by source range,
// or by input interface (a trailing "+" matches a prefix).
type LocalDetector struct {
	CIDR      netip.Prefix
	Interface string
}

func (d *LocalDetector) match(local bool) Term {
	if d.Interface != "" {
		return InputInterface{Name: d.Interface, Not: !local}
	}
	return Addr{Source: true, Not: !local, Prefix: d.CIDR}
}

// DefaultShards is the number of shard tables when the config does not say.
const DefaultShards = 64

// ShardOf is the shard a Service's chains and map elements live in: a
// stable hash of its name, so a restart finds them where they were.
func ShardOf(name types.NamespacedName, shards int) int {
	h := fnv.New32a()
	h.Write([]byte(name.String()))
	return int(h.Sum32() % uint32(shards))
}

// Plan computes the Ruleset of one IP family.
func Plan(snap *watch.Snapshot, opts PlanOptions) *Ruleset { return PlanFrom(nil, snap, opts) }

// PlanFrom is Plan for a snapshot that follows the one prev was planned
// from: only the Services snapshot marks as changed are planned again (all
// of them when prev is nil, its options differ, or the node changed).
func PlanFrom(prev *Ruleset, snap *watch.Snapshot, opts PlanOptions) *Ruleset {
	if opts.Shards <= 0 {
		opts.Shards = DefaultShards
	}
	rs := &Ruleset{Family: opts.Family, Shards: opts.Shards, options: fmt.Sprintf("%+v", opts)}
	if prev != nil && prev.options == rs.options {
		// The base is a function of the options alone: reuse it rather
		// than build and compare every shard's at each sync.
		rs.Base, rs.baseText = prev.Base, prev.baseText
	} else {
		rs.Base = baseObjects(opts)
	}
	if prev != nil && (snap.NodeChanged || prev.BaseText() != rs.BaseText() || prev.Shards != rs.Shards) {
		prev = nil
	}
	var services *cowmap.Editor[string, *Objects]
	toPlan := map[types.NamespacedName][]*watch.ServicePort{}
	ports := snap.ServicePorts()
	hp := newHairpinCount(prev)
	if prev != nil {
		rs.totals = prev.totals
	}
	if prev == nil {
		services = cowmap.Map[string, *Objects]{}.Edit()
		for name, ps := range ports.All() {
			toPlan[name] = ps
		}
	} else {
		services = prev.Services.Edit()
		for name := range snap.Changed {
			old := services.Get(name.String())
			hp.remove(old)
			rs.totals.add(old, -1)
			services.Delete(name.String())
			toPlan[name] = ports.Get(name)
		}
	}
	for name, ps := range toPlan {
		if objs := planService(name, ps, snap, opts); objs != nil {
			services.Set(name.String(), objs)
			hp.add(objs)
			rs.totals.add(objs, 1)
		}
	}
	rs.Services = services.Map()
	rs.hairpinUses, rs.hairpinAdded, rs.hairpinRemoved = hp.finish()
	return rs
}

// hairpinCount keeps, per endpoint address, how many Services DNAT to it,
// and which addresses an update brought to or from zero: the elements of
// the shared hairpin set to add and to delete.
type hairpinCount struct {
	uses  *cowmap.Editor[netip.Addr, int]
	delta map[netip.Addr]int
}

func newHairpinCount(prev *Ruleset) *hairpinCount {
	uses := cowmap.Map[netip.Addr, int]{}
	if prev != nil {
		uses = prev.hairpinUses
	}
	return &hairpinCount{uses: uses.Edit(), delta: map[netip.Addr]int{}}
}

func (h *hairpinCount) remove(o *Objects) {
	if o != nil {
		for _, a := range o.Hairpin {
			h.delta[a]--
		}
	}
}

func (h *hairpinCount) add(o *Objects) {
	for _, a := range o.Hairpin {
		h.delta[a]++
	}
}

func (h *hairpinCount) finish() (uses cowmap.Map[netip.Addr, int], added, removed []netip.Addr) {
	for a, d := range h.delta {
		before := h.uses.Get(a)
		after := before + d
		switch {
		case after > 0:
			h.uses.Set(a, after)
		default:
			h.uses.Delete(a)
		}
		if before == 0 && after > 0 {
			added = append(added, a)
		}
		if before > 0 && after <= 0 {
			removed = append(removed, a)
		}
	}
	slices.SortFunc(added, netip.Addr.Compare)
	slices.SortFunc(removed, netip.Addr.Compare)
	return h.uses.Map(), added, removed
}

// body is the text of every object, for telling whether two bases match.
func (o *Objects) body() string {
	var b strings.Builder
	ix := indexOf(o)
	for _, id := range sortedKeys(ix.chains) {
		fmt.Fprintf(&b, "chain %s %s\n", id, ix.chains[id].body())
	}
	for _, id := range sortedKeys(ix.sets) {
		fmt.Fprintf(&b, "set %s %s\n", id, ix.sets[id].body())
	}
	for _, id := range sortedKeys(ix.elems) {
		fmt.Fprintf(&b, "elem %s %s\n", id, ix.elems[id].body())
	}
	return b.String()
}

func planService(name types.NamespacedName, ports []*watch.ServicePort, snap *watch.Snapshot, opts PlanOptions) *Objects {
	var objs *Objects
	for _, port := range ports {
		if _, ok := port.ClusterIP(opts.Family); !ok {
			continue
		}
		if objs == nil {
			objs = &Objects{}
		}
		p := newPortPlan(port, watch.FamilyEndpoints(snap.Endpoints.Get(port.Name), opts.Family), snap.Node, opts)
		p.shard = ShardTable(ShardOf(name, opts.Shards))
		p.plan(objs)
	}
	return objs
}

// chainHash names a chain uniquely in few characters, as kube-proxy does.
func chainHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:8]
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
