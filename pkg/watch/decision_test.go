package watch

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestDecide: the shared per-port decision for the cases where the fate of
// a packet differs (the planners of both modes render it; their golden
// files show the rules).
func TestDecide(t *testing.T) {
	remote, local := epSpec{ip: "10.0.0.1"}.endpoint(), epSpec{ip: "10.0.0.2", local: true}.endpoint()
	nodePort := func(mut func(*ServicePort)) *ServicePort {
		p := &ServicePort{NodePort: 30080}
		if mut != nil {
			mut(p)
		}
		return p
	}
	cases := []struct {
		name           string
		port           *ServicePort
		eps            []*Endpoint
		internal, ext  int
		inF, extF      Filter
		serves, fw     bool
		noLocalIn, out bool
	}{
		{name: "no endpoints rejects everywhere", port: nodePort(nil), inF: FilterReject, extF: FilterReject},
		{name: "cluster policies use every endpoint", port: nodePort(nil), eps: []*Endpoint{remote, local}, internal: 2, ext: 2, serves: true},
		{name: "eTP Local without a local endpoint drops external traffic", port: nodePort(func(p *ServicePort) { p.ExternalPolicyLocal = true }),
			eps: []*Endpoint{remote}, internal: 1, extF: FilterDrop, serves: true, out: true},
		{name: "iTP Local without a local endpoint drops internal traffic", port: &ServicePort{InternalPolicyLocal: true},
			eps: []*Endpoint{remote}, inF: FilterDrop, extF: FilterDrop, noLocalIn: true},
		{name: "source ranges make a firewall", port: nodePort(func(p *ServicePort) {
			p.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.4")}
			p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
		}), eps: []*Endpoint{local}, internal: 1, ext: 1, serves: true, fw: true},
		{name: "source ranges without endpoints: no firewall, reject", port: nodePort(func(p *ServicePort) {
			p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
		}), inF: FilterReject, extF: FilterReject},
	}
	for _, c := range cases {
		d := Decide(c.port, c.eps, NodeInfo{Name: selNode})
		if len(d.Internal) != c.internal || len(d.External) != c.ext || d.InternalFilter != c.inF || d.ExternalFilter != c.extF ||
			d.ServesExternal != c.serves || d.Firewall != c.fw || d.NoLocalInternal() != c.noLocalIn || d.NoLocalExternal(c.port) != c.out {
			t.Errorf("%s: internal %d external %d filters %q/%q serves %t firewall %t no-local %t/%t", c.name,
				len(d.Internal), len(d.External), d.InternalFilter, d.ExternalFilter, d.ServesExternal, d.Firewall, d.NoLocalInternal(), d.NoLocalExternal(c.port))
		}
	}
}

// TestAllowedSources: ranges of the family only; load balancer IPs are
// admitted as sources when a range holds the node's IP.
func TestAllowedSources(t *testing.T) {
	p := &ServicePort{LoadBalancerSourceRanges: []netip.Prefix{
		netip.MustParsePrefix("203.0.113.0/25"), netip.MustParsePrefix("2001:db8::/48"), netip.MustParsePrefix("192.168.0.0/24")}}
	s := p.AllowedSources(v1.IPv4Protocol, netip.MustParseAddr("192.168.0.2"))
	if len(s.Ranges) != 2 || s.Ranges[1].String() != "192.168.0.0/24" || !s.FromLoadBalancerIPs {
		t.Errorf("IPv4, node inside a range: %+v", s)
	}
	if s := p.AllowedSources(v1.IPv4Protocol, netip.MustParseAddr("10.1.0.2")); s.FromLoadBalancerIPs {
		t.Errorf("node outside every range, yet load balancer IPs admitted: %+v", s)
	}
	if s := p.AllowedSources(v1.IPv6Protocol, netip.Addr{}); len(s.Ranges) != 1 || s.FromLoadBalancerIPs {
		t.Errorf("IPv6 without a node IP: %+v", s)
	}
}

// TestReachable: the endpoints some traffic goes to, each once, cluster
// ones first; under iTP Local alone only the local ones.
func TestReachable(t *testing.T) {
	remote, local := epSpec{ip: "10.0.0.1"}.endpoint(), epSpec{ip: "10.0.0.2", local: true}.endpoint()
	eps := []*Endpoint{remote, local}
	etpLocal := &ServicePort{NodePort: 30080, ExternalPolicyLocal: true}
	if got := Decide(etpLocal, eps, NodeInfo{}).Reachable(); len(got) != 2 || got[0] != remote || got[1] != local {
		t.Errorf("eTP Local NodePort: %v, want the remote then the local endpoint, once each", got)
	}
	itpLocal := &ServicePort{InternalPolicyLocal: true}
	if got := Decide(itpLocal, eps, NodeInfo{}).Reachable(); len(got) != 1 || got[0] != local {
		t.Errorf("iTP Local ClusterIP: %v, want the local endpoint only", got)
	}
}
