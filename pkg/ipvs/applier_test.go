package ipvs

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/pkg/iptables"
)

var (
	webSvc = svcSpec{Namespace: "ns1", Name: "web", ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 0)}}
	vip    = VSKey{v1.ProtocolTCP, netip.MustParseAddr("172.30.0.41"), 80}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func webSlice(eps ...ep) *discovery.EndpointSlice {
	return slice("ns1", "web", "web-1", 8080, "http", eps...)
}

// others returns n ClusterIP Services with two endpoints each, so that tests
// can check that a change's cost does not grow with the number of Services.
func others(n int) ([]svcSpec, []*discovery.EndpointSlice) {
	var svcs []svcSpec
	var slices []*discovery.EndpointSlice
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("s%03d", i)
		svcs = append(svcs, svcSpec{Namespace: "bulk", Name: name, Type: v1.ServiceTypeNodePort, ClusterIPs: []string{fmt.Sprintf("172.30.%d.%d", 10+i/250, 1+i%250)},
			Ports: []v1.ServicePort{tcpPort("p", 80, int32(4000+i))}})
		slices = append(slices, slice("bulk", name, name+"-1", 80, "p", ep{IP: fmt.Sprintf("10.181.%d.%d", i/250, 1+i%250), Node: testNode}, ep{IP: fmt.Sprintf("10.182.%d.%d", i/250, 1+i%250), Node: "n2"}))
	}
	return svcs, slices
}

// TestDeltaOneEndpointOneCall: with 300 other Services in place, adding an
// endpoint to one Service is one real server call, removing one is one
// weight change, and neither reads the IPVS table, kube-ipvs0 or the
// ipsets again.
func TestDeltaOneEndpointOneCall(t *testing.T) {
	svcs, slices := others(300)
	tr := newTracker(append(svcs, webSvc), append(slices, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	restores := e.sets.Restores

	e.ipvs.ResetCalls()
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}, ep{IP: "10.180.2.2", Node: "node2"}), false)
	res := e.sync(t, tr.Snapshot())
	if res.Full {
		t.Errorf("an endpoint change made a full sync")
	}
	if got := e.ipvs.Calls; got["AddDestination"] != 1 || e.ipvs.Mutations() != 1 || got["Services"] != 0 || got["Destinations"] != 0 {
		t.Errorf("adding an endpoint: calls %v, want one AddDestination and no dump", got)
	}
	if e.sets.Restores != restores {
		t.Errorf("adding a remote endpoint ran ipset restore")
	}

	e.ipvs.SetConns(vip, ap("10.180.2.1:8080"), 1, 0)
	e.ipvs.ResetCalls()
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.2", Node: "node2"}), false)
	e.sync(t, tr.Snapshot())
	// One weight change, and one read of that virtual server's real
	// servers to see whether the drained one can go yet.
	if got := e.ipvs.Calls; got["UpdateDestination"] != 1 || e.ipvs.Mutations() != 1 || got["Services"] != 0 || got["Destinations"] != 1 {
		t.Errorf("removing an endpoint: calls %v, want one UpdateDestination (drain at weight 0)", got)
	}
	if !strings.Contains(e.ipvs.Dump(), "TCP/172.30.0.41:80 rr -> 10.180.0.1:8080 w1 -> 10.180.2.1:8080 w0 -> 10.180.2.2:8080 w1\n") {
		t.Errorf("IPVS table:\n%s", e.ipvs.Dump())
	}
}

// TestDeltaLocalEndpointTouchesLoopbackSet: a new local endpoint adds one
// hairpin member with one ipset restore.
func TestDeltaLocalEndpointTouchesLoopbackSet(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	restores := e.sets.Restores
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.0.3", Node: testNode}), false)
	e.sync(t, tr.Snapshot())
	if e.sets.Restores != restores+1 {
		t.Errorf("ipset restores: %d, want %d", e.sets.Restores, restores+1)
	}
	if got := e.sets.Members(SetLoopBack); !slices.Equal(got, []string{"10.180.0.1,tcp:8080,10.180.0.1", "10.180.0.3,tcp:8080,10.180.0.3"}) {
		t.Errorf("KUBE-LOOP-BACK = %v", got)
	}
}

// TestGracefulTermination: a removed TCP real server drains at weight 0 and
// goes when its connections reach 0, or when its grace period ends.
func TestGracefulTermination(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	gone := ap("10.180.2.1:8080")
	e.ipvs.SetConns(vip, gone, 1, 2)

	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}), false)
	e.sync(t, tr.Snapshot())
	if w, ok := weight(e, vip, gone); !ok || w != 0 {
		t.Fatalf("removed real server: weight %d present %v, want draining at 0", w, ok)
	}
	e.clock.step(10 * time.Second)
	if err := e.p.Reap(); err != nil {
		t.Fatal(err)
	}
	if _, ok := weight(e, vip, gone); !ok {
		t.Fatalf("real server with connections deleted before its grace period ended")
	}
	e.ipvs.SetConns(vip, gone, 0, 0)
	if err := e.p.Reap(); err != nil {
		t.Fatal(err)
	}
	if _, ok := weight(e, vip, gone); ok {
		t.Fatalf("drained real server not deleted:\n%s", e.ipvs.Dump())
	}

	// A second one keeps its connections past the bound.
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.9", Node: "node2"}), false)
	e.sync(t, tr.Snapshot())
	busy := ap("10.180.2.9:8080")
	e.ipvs.SetConns(vip, busy, 5, 0)
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}), false)
	e.sync(t, tr.Snapshot())
	e.clock.step(DefaultGracePeriod - time.Second)
	_ = e.p.Reap()
	if _, ok := weight(e, vip, busy); !ok {
		t.Fatalf("busy real server deleted early")
	}
	e.clock.step(2 * time.Second)
	_ = e.p.Reap()
	if _, ok := weight(e, vip, busy); ok {
		t.Fatalf("busy real server kept past the grace period")
	}
}

// TestGracefulTerminationRevived: an endpoint that comes back while
// draining gets its weight back.
func TestGracefulTerminationRevived(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	rs := ap("10.180.2.1:8080")
	e.ipvs.SetConns(vip, rs, 1, 0)
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}), false)
	e.sync(t, tr.Snapshot())
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}), false)
	e.sync(t, tr.Snapshot())
	if w, _ := weight(e, vip, rs); w != 1 || e.p.Applier().Draining() != 0 {
		t.Errorf("revived real server: weight %d, %d draining", w, e.p.Applier().Draining())
	}
}

// TestUDPRealServerGoesAtOnce: UDP and SCTP real servers are not drained.
func TestUDPRealServerGoesAtOnce(t *testing.T) {
	dns := svcSpec{Namespace: "ns1", Name: "dns", ClusterIPs: []string{"172.30.0.53"}, Ports: []v1.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}}}
	mk := func(eps ...ep) *discovery.EndpointSlice {
		s := slice("ns1", "dns", "dns-1", 53, "dns", eps...)
		s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
		return s
	}
	tr := newTracker([]svcSpec{dns}, mk(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "n2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	tr.OnEndpointSlice(mk(ep{IP: "10.180.0.1", Node: testNode}), false)
	e.sync(t, tr.Snapshot())
	if got, want := e.ipvs.Dump(), "UDP/172.30.0.53:53 rr -> 10.180.0.1:53 w1\n"; got != want {
		t.Errorf("IPVS table:\n%s\nwant:\n%s", got, want)
	}
}

// TestDeletedServiceDrains: a deleted Service's virtual server and address
// stay while its real servers drain, then go.
func TestDeletedServiceDrains(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.2.1", Node: "node2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	e.ipvs.SetConns(vip, ap("10.180.2.1:8080"), 1, 0)
	tr.deleteService("ns1", "web")
	e.sync(t, tr.Snapshot())
	if !strings.Contains(e.ipvs.Dump(), "10.180.2.1:8080 w0") || !slices.Contains(addrs(t, e), vip.Addr) {
		t.Fatalf("deleted Service: table\n%s addresses %v; want draining", e.ipvs.Dump(), addrs(t, e))
	}
	if got := e.sets.Members(SetClusterIP); len(got) != 0 {
		t.Errorf("KUBE-CLUSTER-IP still holds %v", got)
	}
	e.ipvs.SetConns(vip, ap("10.180.2.1:8080"), 0, 0)
	if err := e.p.Reap(); err != nil {
		t.Fatal(err)
	}
	if e.ipvs.Dump() != "" || len(addrs(t, e)) != 0 {
		t.Errorf("after draining: table\n%s addresses %v; want both empty", e.ipvs.Dump(), addrs(t, e))
	}
}

func weight(e *env, k VSKey, rs netip.AddrPort) (int, bool) {
	dests, err := e.ipvs.Destinations(k)
	if err != nil {
		return 0, false
	}
	for _, d := range dests {
		if d.Addr == rs {
			return d.Weight, true
		}
	}
	return 0, false
}

func addrs(t *testing.T, e *env) []netip.Addr {
	t.Helper()
	a, err := e.link.Addrs(v1.IPv4Protocol)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestDriftRepair: what someone removes by hand (a virtual server, a real
// server, an address, an ipset's members, a chain's rules) is found by
// Verify and put back by the full sync that follows.
func TestDriftRepair(t *testing.T) {
	lb := svcSpec{Namespace: "ns1", Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 3001)}, LBIPs: []string{"198.51.100.4"}}
	tr := newTracker([]svcSpec{lb}, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))
	for _, tc := range []struct {
		name, reason string
		break_       func(e *env)
	}{
		{"virtual server", "ipvs", func(e *env) { _ = e.ipvs.DeleteService(vip) }},
		{"nodeport virtual server", "ipvs", func(e *env) { _ = e.ipvs.DeleteService(VSKey{v1.ProtocolTCP, nodeIP4, 3001}) }},
		{"real server", "realserver", func(e *env) { _ = e.ipvs.DeleteDestination(vip, ap("10.180.2.1:8080")) }},
		{"weight", "realserver", func(e *env) { _ = e.ipvs.UpdateDestination(vip, ap("10.180.2.1:8080"), 7) }},
		{"scheduler", "ipvs", func(e *env) { _ = e.ipvs.UpdateService(Service{Key: vip, Scheduler: "wlc"}) }},
		{"address", "address", func(e *env) { _ = e.link.DelAddr(netip.MustParseAddr("198.51.100.4")) }},
		{"dummy interface", "address", func(e *env) { e.link.DeleteDummy() }},
		{"ipset", "ipset", func(e *env) { e.sets.Flush(SetClusterIP) }},
		{"helper rules", "iptables-rules", func(e *env) { e.ipt.Flush(iptables.TableNAT, "KUBE-LOAD-BALANCER") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, iptOpts(), ipvsOpts())
			e.sync(t, tr.Snapshot())
			want, wantSets := e.ipvs.Dump(), e.sets.Members(SetClusterIP)
			if d, err := e.p.Verify(); err != nil || d != nil {
				t.Fatalf("Verify before drift: %v %v", d, err)
			}
			tc.break_(e)
			d, err := e.p.Verify()
			if err != nil || d == nil || d.Reason != tc.reason {
				t.Fatalf("Verify after breaking the %s: %+v %v, want reason %s", tc.name, d, err, tc.reason)
			}
			e.p.ForceFull()
			e.sync(t, tr.Snapshot())
			if d, err := e.p.Verify(); err != nil || d != nil {
				t.Errorf("Verify after repair: %+v %v", d, err)
			}
			if got := e.ipvs.Dump(); got != want {
				t.Errorf("table after repair:\n%s\nwant:\n%s", got, want)
			}
			if got := e.sets.Members(SetClusterIP); !slices.Equal(got, wantSets) {
				t.Errorf("KUBE-CLUSTER-IP after repair: %v, want %v", got, wantSets)
			}
			if !slices.Contains(addrs(t, e), netip.MustParseAddr("198.51.100.4")) {
				t.Errorf("LB IP not back on %s", DummyInterface)
			}
		})
	}
}

// TestAdoptionAndForeign: at start-up, virtual servers on kube-ipvs0 are
// adopted (stale ones drained away, wanted ones corrected), a NodePort an
// earlier run left on a node IP is recognised by the NodePort ipset, and
// every other virtual server (and one in excludeCIDRs) is left alone.
func TestAdoptionAndForeign(t *testing.T) {
	k, fi, fl, fs, _ := NewFakeKernel(hostAddrs...)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	stale := VSKey{v1.ProtocolTCP, netip.MustParseAddr("172.30.0.99"), 80}
	excluded := VSKey{v1.ProtocolTCP, netip.MustParseAddr("172.31.0.9"), 80}
	foreign := VSKey{v1.ProtocolTCP, netip.MustParseAddr("10.9.9.9"), 80}
	foreignNode := VSKey{v1.ProtocolTCP, nodeIP4, 22}
	staleNP := VSKey{v1.ProtocolTCP, nodeIP4, 3999}
	must(fl.EnsureDummy())
	for _, a := range []netip.Addr{vip.Addr, stale.Addr, excluded.Addr} {
		must(fl.AddAddr(a))
	}
	for _, key := range []VSKey{vip, stale, excluded, foreign, foreignNode, staleNP} {
		must(fi.AddService(Service{Key: key, Scheduler: "rr"}))
		must(fi.AddDestination(key, ap("10.99.0.1:80"), 1))
	}
	must(fs.Create(setDef{Name: SetNodePortTCP, Type: typeBitmapPort}.createLine()))
	must(fs.Create("add " + SetNodePortTCP + " 3999"))

	ipt := iptables.NewFake()
	o := ipvsOpts()
	o.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("172.31.0.0/16")}
	p := NewProxier(k, ipt, iptOpts(), o)
	if _, err := p.Sync(snapshot(t, []svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}))); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"TCP/10.9.9.9:80 rr -> 10.99.0.1:80 w1",
		"TCP/172.30.0.41:80 rr -> 10.180.0.1:8080 w1",
		"TCP/172.31.0.9:80 rr -> 10.99.0.1:80 w1",
		"TCP/192.168.0.2:22 rr -> 10.99.0.1:80 w1",
	}, "\n") + "\n"
	if got := fi.Dump(); got != want {
		t.Errorf("after start-up:\n%s\nwant:\n%s", got, want)
	}
	got, _ := fl.Addrs(v1.IPv4Protocol)
	if want := []netip.Addr{vip.Addr, excluded.Addr}; !slices.Equal(got, want) {
		t.Errorf("%s addresses %v, want %v (stale one gone, excluded one kept)", DummyInterface, got, want)
	}
}

// TestIPSetTypeMismatch: a set of our name but another type is reported by
// name, not replaced (someone's rules may use it).
func TestIPSetTypeMismatch(t *testing.T) {
	e := newEnv(t, iptOpts(), ipvsOpts())
	if err := e.sets.Create("create KUBE-CLUSTER-IP hash:ip family inet"); err != nil {
		t.Fatal(err)
	}
	_, err := e.p.Sync(snapshot(t, []svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode})))
	if err == nil || !strings.Contains(err.Error(), "KUBE-CLUSTER-IP") {
		t.Errorf("sync with a mismatched ipset: %v", err)
	}
}

// TestNodeAddressChange: NodePort virtual servers follow the node's
// addresses.
func TestNodeAddressChange(t *testing.T) {
	np := svcSpec{Namespace: "ns1", Name: "np", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 3001)}}
	snap := snapshot(t, []svcSpec{np}, slice("ns1", "np", "np-1", 80, "http", ep{IP: "10.180.2.1", Node: "n2"}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, snap)
	e.link.SetHost(nodeIP4, netip.MustParseAddr("192.168.7.7"))
	e.sync(t, snap)
	// The NodePort on the address that went had no connections: drained
	// and deleted within the sync.
	want := "TCP/172.30.0.41:80 rr -> 10.180.2.1:80 w1\nTCP/192.168.0.2:3001 rr -> 10.180.2.1:80 w1\nTCP/192.168.7.7:3001 rr -> 10.180.2.1:80 w1\n"
	if got := e.ipvs.Dump(); got != want {
		t.Errorf("after the node's addresses changed:\n%s\nwant:\n%s", got, want)
	}
}

// TestSetup: the per-namespace sysctls, strictARP and the IPVS timeouts are
// written once.
func TestSetup(t *testing.T) {
	o := ipvsOpts()
	o.StrictARP, o.TCPTimeout, o.UDPTimeout = true, 900*time.Second, 30*time.Second
	e := newEnv(t, iptOpts(), o)
	snap := snapshot(t, nil)
	e.sync(t, snap)
	e.sync(t, snap)
	for k, v := range map[string]string{"net/ipv4/vs/conntrack": "1", "net/ipv4/vs/expire_nodest_conn": "1", "net/ipv4/vs/expire_quiescent_template": "1",
		"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"} {
		if e.sys.Values[k] != v {
			t.Errorf("sysctl %s = %q, want %q", k, e.sys.Values[k], v)
		}
	}
	if e.sys.Writes != 6 {
		t.Errorf("%d sysctl writes, want 6 (once each)", e.sys.Writes)
	}
	if e.ipvs.Timeouts != [3]time.Duration{900 * time.Second, 0, 30 * time.Second} {
		t.Errorf("IPVS timeouts %v", e.ipvs.Timeouts)
	}
}

// TestSwitchFromIPTablesMode: the first IPVS-mode sync over iptables mode's
// rules leaves none of iptables mode's Service chains or fixed chains.
func TestSwitchFromIPTablesMode(t *testing.T) {
	lb := svcSpec{Namespace: "ns1", Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"172.30.0.41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 3001)}, LBIPs: []string{"198.51.100.4"}}
	snap := snapshot(t, []svcSpec{lb}, webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.1", Node: "node2"}))
	ipt := iptables.NewFake()
	io := iptOpts()
	io.LocalhostNodePorts = true
	if _, err := iptables.NewProxier(ipt, io).Sync(snap); err != nil {
		t.Fatal(err)
	}
	k, _, _, _, _ := NewFakeKernel(hostAddrs...)
	if _, err := NewProxier(k, ipt, iptOpts(), ipvsOpts()).Sync(snap); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{iptables.TableNAT, iptables.TableFilter} {
		for _, c := range ipt.Chains(table) {
			if strings.HasPrefix(c, "KUBE-SVC-") || strings.HasPrefix(c, "KUBE-SEP-") || c == iptables.ChainFirewall {
				t.Errorf("%s %s left from iptables mode", table, c)
			}
		}
	}
	for _, r := range ipt.Rules(iptables.TableFilter, "INPUT") {
		if strings.Contains(r, iptables.ChainFirewall+" ") || strings.HasSuffix(r, iptables.ChainFirewall) {
			t.Errorf("INPUT still jumps to %s: %s", iptables.ChainFirewall, r)
		}
	}
}

// TestPodVethAddressesKeepDeltas: an IPv6 link-local address appearing on
// the node (every new pod veth has one) does not turn syncs into full ones.
func TestPodVethAddressesKeepDeltas(t *testing.T) {
	web6 := svcSpec{Namespace: "ns1", Name: "web", ClusterIPs: []string{"fd00:172:30::41"}, Ports: []v1.ServicePort{tcpPort("http", 80, 0)}}
	tr := newTracker([]svcSpec{web6}, webSlice(ep{IP: "fd00:10:180::1", Node: testNode}))
	io := iptOpts()
	io.Family, io.LocalDetector, io.NodeIP = v1.IPv6Protocol, iptables.ClusterCIDRDetector(netip.MustParsePrefix("fd00:10::/64")), nodeIP6
	e := newEnv(t, io, Options{Family: v1.IPv6Protocol, NodeIP: nodeIP6})
	e.sync(t, tr.Snapshot())
	e.link.SetHost(append(e.link.Host(), netip.MustParseAddr("fe80::1234"))...)
	e.ipvs.ResetCalls()
	tr.OnEndpointSlice(webSlice(ep{IP: "fd00:10:180::1", Node: testNode}, ep{IP: "fd00:10:180::2:1", Node: "node2"}), false)
	if res := e.sync(t, tr.Snapshot()); res.Full || e.ipvs.Calls["Services"] != 0 || e.ipvs.Mutations() != 1 {
		t.Errorf("a new link-local address made a full sync (calls %v)", e.ipvs.Calls)
	}
}

// TestVerifyStepsAroundASync: the drift check frees the lock between its
// steps; a sync there (an endpoint added, a Service deleted) is not
// reported as drift, and real drift after it still is.
func TestVerifyStepsAroundASync(t *testing.T) {
	svcs, slices := others(3)
	tr := newTracker(append(svcs, webSvc), append(slices, webSlice(ep{IP: "10.180.0.1", Node: testNode}))...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	steps := 0
	e.p.betweenSteps = func() {
		steps++
		if !e.p.mu.TryLock() {
			t.Fatalf("the lock is held after step %d of the drift check", steps)
		}
		e.p.mu.Unlock()
		if steps == 1 { // the virtual servers are listed; their real servers not yet read
			tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.9", Node: "n2"}), false)
			tr.deleteService("bulk", "s001")
			e.sync(t, tr.Snapshot())
		}
	}
	if d, err := e.p.Verify(); err != nil || d != nil {
		t.Errorf("a sync between the drift check's steps: drift %v, err %v", d, err)
	}
	if steps < 3 {
		t.Errorf("the drift check ran %d steps; want the listing, each virtual server and the addresses", steps)
	}
	e.p.betweenSteps = nil
	if err := e.ipvs.DeleteDestination(vip, ap("10.180.2.9:8080")); err != nil {
		t.Fatal(err)
	}
	if d, err := e.p.Verify(); err != nil || d == nil || d.Reason != "realserver" {
		t.Errorf("a deleted real server: drift %v, err %v", d, err)
	}
}

// TestFailedSyncMakesNextSyncFull: a sync that fails before writing
// anything (reading the node's addresses) still consumed its snapshot's
// change set, so the next sync must be a full one that applies it.
func TestFailedSyncMakesNextSyncFull(t *testing.T) {
	tr := newTracker([]svcSpec{webSvc}, webSlice(ep{IP: "10.180.0.1", Node: testNode}))
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.7", Node: "n2"}), false)
	e.link.SetHost(e.link.Host()...) // an address notification: the next sync reads them
	e.link.Fail = errors.New("netlink: no buffer space")
	if _, err := e.p.Sync(tr.Snapshot()); err == nil {
		t.Fatal("the sync succeeded though the node's addresses could not be read")
	}
	e.link.Fail = nil
	res := e.sync(t, tr.Snapshot()) // nothing changed since
	if !res.Full {
		t.Errorf("the sync after a failed one was partial")
	}
	if _, ok := weight(e, vip, ap("10.180.2.7:8080")); !ok {
		t.Errorf("the endpoint added before the failed sync is missing:\n%s", e.ipvs.Dump())
	}
}

// TestSyncLeavesEarlierDrainsToTheTimer: a sync reaps only the virtual
// servers it touched; those still draining from earlier deletions are the
// periodic Reap's, so an unrelated change reads none of them.
func TestSyncLeavesEarlierDrainsToTheTimer(t *testing.T) {
	svcs, slices := others(5)
	tr := newTracker(append(svcs, webSvc), append(slices, webSlice(ep{IP: "10.180.0.1", Node: testNode}))...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	for i := range 5 {
		k := VSKey{v1.ProtocolTCP, netip.MustParseAddr(fmt.Sprintf("172.30.10.%d", 1+i)), 80}
		e.ipvs.SetConns(k, ap(fmt.Sprintf("10.181.0.%d:80", 1+i)), 1, 0)
		tr.deleteService("bulk", fmt.Sprintf("s%03d", i))
	}
	e.sync(t, tr.Snapshot())
	if n := e.p.Applier().Draining(); n == 0 {
		t.Fatalf("nothing drains after deleting Services with connections")
	}
	cost := e.measure(func() {
		tr.OnEndpointSlice(webSlice(ep{IP: "10.180.0.1", Node: testNode}, ep{IP: "10.180.2.4", Node: "n2"}), false)
		e.sync(t, tr.Snapshot())
	})
	if cost["ipvs.Destinations"] != 0 || cost["ipvs.AddDestination"] != 1 {
		t.Errorf("an unrelated change with 5 Services draining: %s", cost)
	}
	e.clock.step(DefaultGracePeriod + time.Second)
	cost = e.measure(func() {
		if err := e.p.Reap(); err != nil {
			t.Fatal(err)
		}
	})
	if cost["ipvs.Destinations"] == 0 || e.p.Applier().Draining() != 0 {
		t.Errorf("the periodic Reap after the grace period: %s, %d still draining", cost, e.p.Applier().Draining())
	}
}

// TestVerifyRealServersInTurns: above realServerChecks virtual servers a
// drift check reads the real servers of that many, the next check the
// next ones, so that every virtual server's are read once in
// ceil(N / realServerChecks) checks and a real server deleted by hand is
// found within as many, wherever it is.
func TestVerifyRealServersInTurns(t *testing.T) {
	svcs, eps := others(7)
	tr := newTracker(append(svcs, webSvc), append(eps, webSlice(ep{IP: "10.180.0.1", Node: testNode}))...)
	e := newEnv(t, iptOpts(), ipvsOpts())
	e.sync(t, tr.Snapshot())
	e.p.realServerChecks = 3
	keys := slices.SortedFunc(maps.Keys(e.p.Applier().vs), compareKeys)
	checks := (len(keys) + 2) / 3

	read := map[VSKey]int{}
	for range checks {
		for _, k := range e.p.rotation(keys) {
			read[k]++
		}
	}
	if len(read) != len(keys) {
		t.Errorf("%d turns read %d of %d virtual servers' real servers", checks, len(read), len(keys))
	}

	for range checks {
		e.ipvs.ResetCalls()
		if d, err := e.p.Verify(); err != nil || d != nil {
			t.Fatalf("no drift yet: drift %v, err %v", d, err)
		}
		if got := e.ipvs.Calls["Destinations"]; got != 3 {
			t.Errorf("one check read the real servers of %d virtual servers, want 3", got)
		}
	}
	if err := e.ipvs.DeleteDestination(vip, ap("10.180.0.1:8080")); err != nil {
		t.Fatal(err)
	}
	for i := range checks {
		d, err := e.p.Verify()
		if err != nil {
			t.Fatal(err)
		}
		if d != nil {
			if d.Reason != "realserver" {
				t.Errorf("drift %v, want a real server", d)
			}
			return
		}
		t.Logf("check %d: not found yet", i+1)
	}
	t.Errorf("a deleted real server was not found in %d checks of 3 of %d virtual servers", checks, len(keys))
}
