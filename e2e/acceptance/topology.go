package acceptance

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/responder"
)

// Link-scoped gateway addresses. They are never picked as a source for
// real traffic (scope link), so MASQUERADE on the node still chooses a node
// IP, as on a real node.
const (
	routerGW4 = "169.254.0.1" // on the router's lo: gateway of remote pods, externals and the node
	nodeGW4   = "169.254.0.2" // on the node's lo: gateway of local pods, next hop of the router
	routerGW6 = "fe80::1"     // on every router-side veth
	nodeGW6   = "fe80::2"     // on every node-side veth
	// rtFromNode is the router's table for packets arriving from the node:
	// only remote pods and external clients, and a blackhole for the rest,
	// so traffic the proxy left alone is dropped silently instead of looping
	// back to the node or drawing an ICMP error that would pass as REJECT.
	rtFromNode = "100"
)

// Topology is one scenario's network: a node namespace with an uplink veth to
// a router namespace, which doubles as the remote node (remote pods hang off
// it) and as the outside (external clients hang off it). Nothing is linked
// to the host.
type Topology struct {
	Node, Router string
	NodeIPs      []netip.Addr
	dir          string
	responderBin string
	namespaces   []string
	pods         map[netip.Addr]*Pod
	externals    map[netip.Addr]string
	toNode       map[netip.Prefix]bool
	ifSeq        int
	sentinel     *responder.Server
	sctpSentinel map[netip.Addr][]uint16
	logf         func(string, ...any)
}

// Pod is a namespace holding one address: an endpoint, a client pod, or
// both. Local pods hang off the node, others off the router.
type Pod struct {
	Addr      netip.Addr
	Netns     string
	Local     bool
	Ports     responder.Ports
	responder *nsutil.Proc
}

var baseSysctls = [][2]string{
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv4.conf.lo.rp_filter", "0"},
	{"net.ipv4.conf.all.send_redirects", "0"},
	{"net.ipv4.conf.default.send_redirects", "0"},
	{"net.ipv6.conf.all.disable_ipv6", "0"},
	{"net.ipv6.conf.default.disable_ipv6", "0"},
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	{"net.ipv6.conf.all.accept_ra", "0"},
	{"net.ipv6.conf.default.accept_ra", "0"},
	// The kernel limits ICMP errors per peer (burst 6, then 1/s); several
	// REJECTed attempts in a row would otherwise partly pass as DROP.
	{"net.ipv4.icmp_ratelimit", "0"},
	{"net.ipv6.icmp.ratelimit", "0"},
	// The namespace-wide ICMP budget (1000/s, burst 50) also turns rejects
	// into silence once a scenario has sent ~50 of them in a row.
	{"net.ipv4.icmp_msgs_per_sec", "100000"},
	{"net.ipv4.icmp_msgs_burst", "100000"},
}

var routingSysctls = [][2]string{
	{"net.ipv4.conf.all.forwarding", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
}

// NewTopology creates the node and router namespaces and the uplink.
func NewTopology(nodeIPs []netip.Addr, responderBin, dir string, logf func(string, ...any)) (t *Topology, err error) {
	t = &Topology{
		NodeIPs:      nodeIPs,
		dir:          dir,
		responderBin: responderBin,
		pods:         map[netip.Addr]*Pod{},
		externals:    map[netip.Addr]string{},
		toNode:       map[netip.Prefix]bool{},
		sentinel:     &responder.Server{},
		sctpSentinel: map[netip.Addr][]uint16{},
		logf:         logf,
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.Router, err = t.newNetns("rt", true); err != nil {
		return t, err
	}
	if t.Node, err = t.newNetns("node", true); err != nil {
		return t, err
	}
	n, r := t.Node, t.Router
	cmds := [][]string{
		{"-n", n, "link", "add", "name", "up0", "type", "veth", "peer", "name", "rn0", "netns", r},
		{"-n", n, "addr", "add", nodeGW4 + "/32", "scope", "link", "dev", "lo"},
		{"-n", r, "addr", "add", routerGW4 + "/32", "scope", "link", "dev", "lo"},
	}
	// The first address added is the one MASQUERADE picks on the uplink, so
	// the node IPs go on in the scenario's order.
	for _, ip := range nodeIPs {
		cmds = append(cmds, append([]string{"-n", n, "addr", "add", hostPrefix(ip).String(), "dev", "up0"}, nodad(ip)...))
	}
	cmds = append(cmds,
		[]string{"-n", n, "addr", "add", nodeGW6 + "/64", "dev", "up0", "nodad"},
		[]string{"-n", r, "addr", "add", routerGW6 + "/64", "dev", "rn0", "nodad"},
		[]string{"-n", n, "link", "set", "up0", "up"},
		[]string{"-n", r, "link", "set", "rn0", "up"},
		[]string{"-n", n, "-4", "route", "add", "default", "via", routerGW4, "dev", "up0", "onlink"},
		[]string{"-n", n, "-6", "route", "add", "default", "via", routerGW6, "dev", "up0"},
		[]string{"-n", r, "-4", "route", "add", "blackhole", "default"},
		[]string{"-n", r, "-6", "route", "add", "blackhole", "default"},
		[]string{"-n", r, "-4", "route", "add", "blackhole", "default", "table", rtFromNode},
		[]string{"-n", r, "-6", "route", "add", "blackhole", "default", "table", rtFromNode},
		[]string{"-n", r, "-4", "rule", "add", "iif", "rn0", "lookup", rtFromNode, "pref", "100"},
		[]string{"-n", r, "-6", "rule", "add", "iif", "rn0", "lookup", rtFromNode, "pref", "100"},
	)
	if err := ipAll(cmds); err != nil {
		return t, err
	}
	for _, ip := range nodeIPs {
		if err := t.RouteToNode(hostPrefix(ip)); err != nil {
			return t, err
		}
	}
	return t, nil
}

// newNetns creates a namespace with the base sysctls (and forwarding for
// routing namespaces) and records it for Close.
func (t *Topology) newNetns(role string, routing bool) (string, error) {
	ns := nsutil.Name(role)
	if err := nsutil.Add(ns); err != nil {
		return "", err
	}
	t.namespaces = append(t.namespaces, ns)
	kv := baseSysctls
	if routing {
		kv = append(slices.Clone(kv), routingSysctls...)
	}
	return ns, nsutil.Sysctls(ns, kv)
}

func hostPrefix(ip netip.Addr) netip.Prefix {
	return netip.PrefixFrom(ip, ip.BitLen())
}

func nodad(ip netip.Addr) []string {
	if ip.Is6() {
		return []string{"nodad"}
	}
	return nil
}

func family(ip netip.Addr) string {
	if ip.Is4() {
		return "-4"
	}
	return "-6"
}

func ipAll(cmds [][]string) error {
	for _, c := range cmds {
		if err := nsutil.IP(c...); err != nil {
			return err
		}
	}
	return nil
}

// RouteToNode makes the router send a prefix (service CIDR, LB IP, external
// IP, node IP) to the node. Prefixes already served by a pod or external
// client on the router side are left alone.
func (t *Topology) RouteToNode(p netip.Prefix) error {
	p = p.Masked()
	if t.toNode[p] {
		return nil
	}
	if p.IsSingleIP() {
		if _, ok := t.externals[p.Addr()]; ok {
			return nil
		}
		if pod, ok := t.pods[p.Addr()]; ok && !pod.Local {
			return nil
		}
	}
	via := []string{"via", nodeGW4, "dev", "rn0", "onlink"}
	if p.Addr().Is6() {
		via = []string{"via", nodeGW6, "dev", "rn0"}
	}
	if err := nsutil.IP(append([]string{"-n", t.Router, family(p.Addr()), "route", "replace", p.String()}, via...)...); err != nil {
		return err
	}
	t.toNode[p] = true
	return nil
}

// attach links a new single-address namespace to the node (local) or to the
// router and routes the address to it.
func (t *Topology) attach(ns string, addr netip.Addr, local bool) error {
	peer, gw4, gw6 := t.Router, routerGW4, routerGW6
	if local {
		peer, gw4, gw6 = t.Node, nodeGW4, nodeGW6
	}
	t.ifSeq++
	veth := fmt.Sprintf("v%d", t.ifSeq)
	cmds := [][]string{
		{"-n", peer, "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		append([]string{"-n", ns, "addr", "add", hostPrefix(addr).String(), "dev", "eth0"}, nodad(addr)...),
		{"-n", peer, "addr", "add", gw6 + "/64", "dev", veth, "nodad"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", peer, "link", "set", veth, "up"},
		{"-n", peer, family(addr), "route", "replace", hostPrefix(addr).String(), "dev", veth},
	}
	if addr.Is4() {
		cmds = append(cmds, []string{"-n", ns, "-4", "route", "add", "default", "via", gw4, "dev", "eth0", "onlink"})
	} else {
		cmds = append(cmds, []string{"-n", ns, "-6", "route", "add", "default", "via", gw6, "dev", "eth0"})
	}
	if local {
		// Replies from remote pods and outside clients to a local pod.
		if err := ipAll(cmds); err != nil {
			return err
		}
		return t.RouteToNode(hostPrefix(addr))
	}
	cmds = append(cmds, []string{"-n", peer, family(addr), "route", "replace", hostPrefix(addr).String(), "dev", veth, "table", rtFromNode})
	return ipAll(cmds)
}

// EnsurePod returns the pod namespace holding addr, creating it on the node
// (local) or behind the router.
func (t *Topology) EnsurePod(addr netip.Addr, local bool) (*Pod, error) {
	if p, ok := t.pods[addr]; ok {
		if p.Local != local {
			return p, fmt.Errorf("address %s is used both as a local and a remote pod", addr)
		}
		return p, nil
	}
	ns, err := t.newNetns("pod", false)
	if err != nil {
		return nil, err
	}
	p := &Pod{Addr: addr, Netns: ns, Local: local}
	t.pods[addr] = p
	if !local {
		delete(t.toNode, hostPrefix(addr))
	}
	return p, t.attach(ns, addr, local)
}

// Pod returns the pod holding addr, if any.
func (t *Topology) Pod(addr netip.Addr) *Pod { return t.pods[addr] }

// EnsureExternal returns the namespace of the outside client with addr.
func (t *Topology) EnsureExternal(addr netip.Addr) (string, error) {
	if ns, ok := t.externals[addr]; ok {
		return ns, nil
	}
	if _, ok := t.pods[addr]; ok {
		return "", fmt.Errorf("external client address %s is also a pod address", addr)
	}
	ns, err := t.newNetns("ext", false)
	if err != nil {
		return "", err
	}
	t.externals[addr] = ns
	return ns, t.attach(ns, addr, false)
}

// StartResponder (re)starts the pod's responder on its Ports and waits until
// it listens.
func (t *Topology) StartResponder(p *Pod) error {
	if p.responder != nil {
		p.responder.Kill()
		p.responder = nil
	}
	args := []string{"--addr", p.Addr.String(), "--tcp", joinPorts(p.Ports.TCP), "--udp", joinPorts(p.Ports.UDP), "--sctp", joinPorts(p.Ports.SCTP)}
	logPath := filepath.Join(t.dir, "responder-"+strings.NewReplacer(":", "_", ".", "_").Replace(p.Addr.String())+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := nsutil.Exec(p.Netns, t.responderBin, args...)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	proc, err := nsutil.Start(cmd)
	if err != nil {
		return err
	}
	p.responder = proc
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("timeout")
	}
	if err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("responder for %s did not start (%v): %s", p.Addr, err, strings.TrimSpace(string(b)))
	}
	return nil
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

// AddSentinel opens the node's LOCAL listener on ap for protocol. A port
// already taken (for instance by the proxy) is reported and skipped by the
// caller. SCTP sentinels are collected and opened by OpenSCTPSentinels.
func (t *Topology) AddSentinel(protocol string, ap netip.AddrPort) error {
	switch protocol {
	case "SCTP":
		if !slices.Contains(t.sctpSentinel[ap.Addr()], ap.Port()) {
			t.sctpSentinel[ap.Addr()] = append(t.sctpSentinel[ap.Addr()], ap.Port())
		}
		return nil
	case "UDP":
		return nsutil.Do(t.Node, func() error { return t.sentinel.ListenUDP(ap, responder.Local) })
	default:
		return nsutil.Do(t.Node, func() error { return t.sentinel.ListenTCP(ap, responder.Local) })
	}
}

// OpenSCTPSentinels opens one raw socket per address collected by
// AddSentinel.
func (t *Topology) OpenSCTPSentinels() error {
	for addr, ports := range t.sctpSentinel {
		if err := nsutil.Do(t.Node, func() error { return t.sentinel.ListenSCTP(addr, ports, responder.Local) }); err != nil {
			return err
		}
	}
	return nil
}

// Close stops responders and sentinels and deletes every namespace.
func (t *Topology) Close() {
	t.sentinel.Close()
	for _, p := range t.pods {
		if p.responder != nil {
			p.responder.Kill()
		}
	}
	for i := len(t.namespaces) - 1; i >= 0; i-- {
		if err := nsutil.Delete(t.namespaces[i]); err != nil && t.logf != nil {
			t.logf("cleanup: %v", err)
		}
	}
	t.namespaces = nil
}
