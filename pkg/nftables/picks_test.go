package nftables

import (
	"net"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/pkg/watch/watchtest"
)

// TestKernelPicksEndpoints: on the real kernel, in each family, TCP
// connections to the ClusterIP of a Service served by a pick chain reach
// each of its three endpoints and no other address: numgen's number, the
// map's key and value and the NAT's registers agree. The endpoints are
// addresses of the namespace's loopback, where the test listens.
func TestKernelPicksEndpoints(t *testing.T) {
	cases := []struct {
		fam       v1.IPFamily
		clusterIP string
		route     string
		endpoints []string
	}{
		{v1.IPv4Protocol, "172.30.0.1", "172.30.0.0/16", []string{"10.128.0.1", "10.128.0.2", "10.128.0.3"}},
		{v1.IPv6Protocol, "fd00:30::1", "fd00:30::/64", []string{"fd00:128::1", "fd00:128::2", "fd00:128::3"}},
	}
	for _, c := range cases {
		t.Run(string(c.fam), func(t *testing.T) {
			kernel, ns := kernelIn(t, c.fam)
			prefix := "/32"
			if c.fam == v1.IPv6Protocol {
				prefix = "/128"
			}
			cmds := [][]string{{"link", "set", "lo", "up"}, {"link", "add", "svc0", "type", "veth", "peer", "name", "svc1"},
				{"link", "set", "svc0", "up"}, {"link", "set", "svc1", "up"}, {"route", "add", c.route, "dev", "svc0"}}
			for _, ep := range c.endpoints {
				cmds = append(cmds, []string{"addr", "add", ep + prefix, "dev", "lo", "nodad"})
			}
			for _, args := range cmds {
				if c.fam == v1.IPv6Protocol && args[0] != "link" {
					args = append([]string{"-6"}, args...)
				}
				if out, err := nsutil.Exec(ns, "ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, out)
				}
			}
			reached := listen(t, ns, c.endpoints)
			tr := watchtest.Tracker([]watchtest.Service{{Namespace: "ns", Name: "picked", ClusterIPs: []string{c.clusterIP},
				Ports: []v1.ServicePort{watchtest.TCPPort("p", 80, 0)}}})
			var eps []watchtest.Endpoint
			for _, ep := range c.endpoints {
				eps = append(eps, watchtest.Endpoint{IP: ep, Node: "other"})
			}
			tr.OnEndpointSlice(watchtest.Slice("ns", "picked", "picked-1", 8080, "p", eps...), false)
			p := NewProvider(kernel, PlanOptions{Family: c.fam, Shards: 4, MasqueradeBit: 14, NodePortAddresses: []netip.Addr{}})
			if _, err := p.Sync(tr.Snapshot()); err != nil {
				t.Fatal(err)
			}
			if objs := p.Applied().Services.Get("ns/picked"); len(objs.Chains) != 0 {
				t.Fatalf("the Service has chains %v; want it served by a pick chain", objs.Chains)
			}
			seen := map[string]int{}
			for range 60 {
				seen[connect(t, ns, reached, netip.AddrPortFrom(netip.MustParseAddr(c.clusterIP), 80))]++
			}
			for _, ep := range c.endpoints {
				if seen[ep] == 0 {
					t.Errorf("60 connections reached %v, never %s", seen, ep)
				}
			}
			if len(seen) != len(c.endpoints) {
				t.Errorf("60 connections reached %v, want only %v", seen, c.endpoints)
			}
		})
	}
}

// listen accepts TCP connections on port 8080 of each address in ns and
// reports, for each one, the address it was accepted on.
func listen(t *testing.T, ns string, addrs []string) <-chan string {
	t.Helper()
	reached := make(chan string, 100)
	for _, a := range addrs {
		ln, err := nsutil.Listen(ns, "tcp", net.JoinHostPort(a, "8080"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				reached <- c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
				c.Close()
			}
		}()
	}
	return reached
}

// connect opens a connection to dst from ns and returns the address that
// accepted it.
func connect(t *testing.T, ns string, reached <-chan string, dst netip.AddrPort) string {
	t.Helper()
	err := nsutil.Do(ns, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", dst, err)
	}
	select {
	case a := <-reached:
		return a
	case <-time.After(time.Second):
		t.Fatalf("connected to %s, but no listener accepted", dst)
	}
	return ""
}
