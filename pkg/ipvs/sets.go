package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// ipset names, as kube-proxy's IPVS mode calls them (IPv4; IPv6 sets are
// named "KUBE-6-..." like kube-proxy's, see SetName).
const (
	SetClusterIP           = "KUBE-CLUSTER-IP"
	SetLoopBack            = "KUBE-LOOP-BACK"
	SetExternalIP          = "KUBE-EXTERNAL-IP"
	SetExternalIPLocal     = "KUBE-EXTERNAL-IP-LOCAL"
	SetLoadBalancer        = "KUBE-LOAD-BALANCER"
	SetLoadBalancerLocal   = "KUBE-LOAD-BALANCER-LOCAL"
	SetLoadBalancerFW      = "KUBE-LOAD-BALANCER-FW"
	SetLBSourceIP          = "KUBE-LOAD-BALANCER-SOURCE-IP"
	SetLBSourceCIDR        = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
	SetNodePortTCP         = "KUBE-NODE-PORT-TCP"
	SetNodePortLocalTCP    = "KUBE-NODE-PORT-LOCAL-TCP"
	SetNodePortUDP         = "KUBE-NODE-PORT-UDP"
	SetNodePortLocalUDP    = "KUBE-NODE-PORT-LOCAL-UDP"
	SetNodePortSCTP        = "KUBE-NODE-PORT-SCTP-HASH"
	SetNodePortLocalSCTP   = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
	SetHealthCheckNodePort = "KUBE-HEALTH-CHECK-NODE-PORT"
	SetIPVSIPs             = "KUBE-IPVS-IPS"
)

// ipset types.
const (
	typeHashIP        = "hash:ip"
	typeHashIPPort    = "hash:ip,port"
	typeHashIPPortIP  = "hash:ip,port,ip"
	typeHashIPPortNet = "hash:ip,port,net"
	typeBitmapPort    = "bitmap:port"
)

// setDef describes one ipset: its kube-proxy name (family-adjusted) and type.
type setDef struct {
	Name   string
	Type   string
	Family v1.IPFamily
}

var baseSets = []struct{ name, typ string }{
	{SetClusterIP, typeHashIPPort},
	{SetLoopBack, typeHashIPPortIP},
	{SetExternalIP, typeHashIPPort},
	{SetExternalIPLocal, typeHashIPPort},
	{SetLoadBalancer, typeHashIPPort},
	{SetLoadBalancerLocal, typeHashIPPort},
	{SetLoadBalancerFW, typeHashIPPort},
	{SetLBSourceIP, typeHashIPPortIP},
	{SetLBSourceCIDR, typeHashIPPortNet},
	{SetNodePortTCP, typeBitmapPort},
	{SetNodePortLocalTCP, typeBitmapPort},
	{SetNodePortUDP, typeBitmapPort},
	{SetNodePortLocalUDP, typeBitmapPort},
	{SetNodePortSCTP, typeHashIPPort},
	{SetNodePortLocalSCTP, typeHashIPPort},
	{SetHealthCheckNodePort, typeBitmapPort},
	{SetIPVSIPs, typeHashIP},
}

// SetName returns the name of an ipset for a family: kube-proxy's name for
// IPv4, and "KUBE-6-..." (at most 31 characters) for IPv6, so both families
// of a dual-stack node keep their own sets.
func SetName(base string, family v1.IPFamily) string {
	if family != v1.IPv6Protocol {
		return base
	}
	name := "KUBE-6-" + strings.TrimPrefix(base, "KUBE-")
	if len(name) > 31 {
		name = name[:31]
	}
	return name
}

// setDefs returns every ipset IPVS mode keeps for a family.
func setDefs(family v1.IPFamily) []setDef {
	out := make([]setDef, 0, len(baseSets))
	for _, s := range baseSets {
		out = append(out, setDef{Name: SetName(s.name, family), Type: s.typ, Family: family})
	}
	return out
}

// allSetNames returns the names of our ipsets in both families.
func allSetNames() []string {
	var out []string
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, d := range setDefs(fam) {
			out = append(out, d.Name)
		}
	}
	return out
}

// createLine is the ipset restore line that creates the set.
func (d setDef) createLine() string {
	if d.Type == typeBitmapPort {
		return "create " + d.Name + " " + d.Type + " range 0-65535"
	}
	fam := "inet"
	if d.Family == v1.IPv6Protocol {
		fam = "inet6"
	}
	return "create " + d.Name + " " + d.Type + " family " + fam + " hashsize 1024 maxelem 65536"
}

// matches reports whether a set found in the kernel (ipset save's create
// line) has the type and family this definition needs.
func (d setDef) matches(typ, family string) bool {
	if typ != d.Type {
		return false
	}
	if d.Type == typeBitmapPort {
		return true
	}
	want := "inet"
	if d.Family == v1.IPv6Protocol {
		want = "inet6"
	}
	return family == want
}

// Entry renderers. They print exactly what `ipset save` prints, so that
// desired and kernel members compare as strings.

func protoName(p v1.Protocol) string { return strings.ToLower(string(p)) }

func ipPortEntry(ip netip.Addr, proto v1.Protocol, port int32) string {
	return fmt.Sprintf("%s,%s:%d", ip, protoName(proto), port)
}

func ipPortIPEntry(ip netip.Addr, proto v1.Protocol, port int32, ip2 netip.Addr) string {
	return ipPortEntry(ip, proto, port) + "," + ip2.String()
}

func ipPortNetEntry(ip netip.Addr, proto v1.Protocol, port int32, net netip.Prefix) string {
	net = net.Masked()
	if net.IsSingleIP() {
		return ipPortEntry(ip, proto, port) + "," + net.Addr().String()
	}
	return ipPortEntry(ip, proto, port) + "," + net.String()
}

func portEntry(port int32) string { return strconv.Itoa(int(port)) }

// kernelSet is one of our ipsets as `ipset save` shows it.
type kernelSet struct {
	Type, Family string
	Members      map[string]bool
}

// parseSave reads `ipset save` output, keeping only the named sets.
func parseSave(save []byte, want map[string]bool) (map[string]*kernelSet, error) {
	out := map[string]*kernelSet{}
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !want[f[1]] {
			continue
		}
		switch f[0] {
		case "create":
			ks := &kernelSet{Type: f[2], Members: map[string]bool{}}
			if i := slices.Index(f, "family"); i > 0 && i+1 < len(f) {
				ks.Family = f[i+1]
			}
			out[f[1]] = ks
		case "add":
			ks := out[f[1]]
			if ks == nil {
				return nil, fmt.Errorf("ipset save: member of %s before its create line", f[1])
			}
			ks.Members[f[2]] = true
		}
	}
	return out, sc.Err()
}

// restorePayload collects the lines of one `ipset restore -exist`.
type restorePayload struct {
	creates, adds, dels []string
}

func (p *restorePayload) empty() bool { return len(p.creates)+len(p.adds)+len(p.dels) == 0 }

// bytes renders creations, then additions, then deletions, each sorted
// for a deterministic payload.
func (p *restorePayload) bytes() []byte {
	var b bytes.Buffer
	for _, group := range [][]string{p.creates, p.adds, p.dels} {
		slices.Sort(group)
		for _, l := range group {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
