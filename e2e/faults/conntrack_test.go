package faults

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/responder"
)

// TestStaleUDPConntrack holds one UDP flow (a connected socket: the same
// source port throughout, as a DNS client's) across Service changes and
// checks that the proxy clears the conntrack entries that would otherwise
// pin it to the wrong place. The kernel refreshes a UDP entry with every
// packet, so without the clean-up the flow never moves:
//
//   - packets sent before the Service had any rules create an entry
//     without DNAT; once an endpoint appears they must reach it;
//   - an endpoint removed from the slice (its pod still answering, so a
//     stale entry would be visible) must stop receiving the flow, which
//     moves to the remaining endpoint.
func TestStaleUDPConntrack(t *testing.T) {
	b := newBed(t, "ctudp", bedOptions{})
	const vip = "172.30.41.53"
	const dnsPort = 53
	for _, addr := range []netip.Addr{backendA, backendB} {
		p, err := b.topo.EnsurePod(addr, false)
		if err != nil {
			t.Fatal(err)
		}
		p.Ports.UDP = []uint16{dnsPort}
		if err := b.topo.StartResponder(p); err != nil {
			t.Fatal(err)
		}
	}
	c := b.client(clientIP)
	b.startProxy()

	flow := dialUDP(t, c, vip, dnsPort)
	defer flow.Close()
	// Before the Service exists the packets leave through the node's
	// uplink and go unanswered, but their conntrack entry is confirmed.
	for range 3 {
		if got, ok := flow.ask(300 * time.Millisecond); ok {
			t.Fatalf("answer from %s before the Service exists", got)
		}
	}

	svc := acceptance.Service{Namespace: b.ns, Name: "dns", ClusterIP: vip, Ports: []acceptance.ServicePort{
		{Name: "dns", Protocol: "UDP", Port: dnsPort, TargetPort: intstr.FromInt32(dnsPort)}}}
	if err := b.api.ApplyService(b.ctx, svc); err != nil {
		t.Fatal(err)
	}
	b.applyUDPSlice("dns", dnsPort, backendA)
	start := time.Now()
	within(t, "flow started before the Service reaches endpoint A", flow.waitFor(t, backendA, 20*time.Second).Sub(start), 10*time.Second)

	b.applyUDPSlice("dns", dnsPort, backendB)
	start = time.Now()
	within(t, "flow moves from removed endpoint A to B", flow.waitFor(t, backendB, 20*time.Second).Sub(start), 10*time.Second)
	for range 10 {
		if got, ok := flow.ask(time.Second); !ok || got != backendB {
			t.Fatalf("after the move the flow got %v (answered %v), want %s", got, ok, backendB)
		}
	}
	if n := b.conntrackTo(backendA); n != 0 {
		t.Errorf("%d conntrack entries still DNAT to the removed endpoint %s", n, backendA)
	}
}

// applyUDPSlice replaces the Service's slice with one holding eps.
func (b *bed) applyUDPSlice(svc string, port int32, eps ...netip.Addr) {
	b.t.Helper()
	es := acceptance.EndpointSlice{Namespace: b.ns, Service: svc, Name: svc + "-1", AddressType: "IPv4",
		Ports: []acceptance.SlicePort{{Name: ptr.To(svc), Protocol: "UDP", Port: ptr.To(port)}}}
	for _, ep := range eps {
		es.Endpoints = append(es.Endpoints, acceptance.Endpoint{Addresses: []string{ep.String()}})
	}
	if err := b.api.ApplySlice(b.ctx, es); err != nil {
		b.t.Fatal(err)
	}
}

// conntrackTo counts the node's conntrack entries whose reply comes from
// addr.
func (b *bed) conntrackTo(addr netip.Addr) int {
	out, err := b.run("conntrack", "-L", "-p", "udp", "--reply-src", addr.String())
	if err != nil && !strings.Contains(out, "0 flow entries") {
		b.t.Fatalf("conntrack -L: %v: %s", err, out)
	}
	n := 0
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "udp") {
			n++
		}
	}
	return n
}

// udpFlow is a connected UDP socket in a client's namespace.
type udpFlow struct{ *net.UDPConn }

func dialUDP(t *testing.T, c acceptance.Client, ip string, port int) udpFlow {
	t.Helper()
	var conn *net.UDPConn
	err := nsutil.Do(c.Netns, func() error {
		var err error
		conn, err = net.DialUDP("udp", &net.UDPAddr{IP: c.Bind.AsSlice(), Port: 40053},
			&net.UDPAddr{IP: net.ParseIP(ip), Port: port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return udpFlow{conn}
}

// ask sends one datagram and returns the responder that answered. An
// answer to an earlier query that came after its timeout is discarded
// first, so it is not taken for this one's.
func (f udpFlow) ask(timeout time.Duration) (netip.Addr, bool) {
	buf := make([]byte, 512)
	_ = f.SetReadDeadline(time.Now())
	for {
		if _, err := f.Read(buf); err != nil {
			break
		}
	}
	_ = f.SetDeadline(time.Now().Add(timeout))
	if _, err := f.Write([]byte("query\n")); err != nil {
		return netip.Addr{}, false
	}
	n, err := f.Read(buf)
	if err != nil {
		return netip.Addr{}, false
	}
	own, _, _, err := responder.ParseReply(string(buf[:n]))
	if err != nil {
		return netip.Addr{}, false
	}
	return own.Addr(), true
}

// waitFor asks every 200 ms until want answers, and returns when it did.
func (f udpFlow) waitFor(t *testing.T, want netip.Addr, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last []string
	for time.Now().Before(deadline) {
		got, ok := f.ask(200 * time.Millisecond)
		if ok && got == want {
			return time.Now()
		}
		if ok {
			last = append(last, got.String())
		} else {
			last = append(last, "no answer")
		}
	}
	if len(last) > 5 {
		last = last[len(last)-5:]
	}
	t.Fatalf("the flow never reached %s in %s; last answers: %v", want, timeout, last)
	return time.Time{}
}
