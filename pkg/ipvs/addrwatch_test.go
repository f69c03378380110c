package ipvs

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestAddrWatchRealKernel: in a throwaway network namespace, the address
// watch starts in the caller's namespace, ignores addresses added to
// kube-ipvs0 (the service IPs every sync adds) and bumps its version for
// an address on any other interface.
func TestAddrWatchRealKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	ns := nsutil.Name("addrwatch")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Bridges stand in for the dummy interface and the node's NIC: the
	// host kernel has no dummy module, and the watch only looks at link
	// indexes.
	dummy := func(name string) netlink.Link {
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ipvs0, eth := dummy(DummyInterface), dummy("eth9")
	addAddr := func(l netlink.Link, cidr string) {
		ip, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
			t.Fatal(err)
		}
	}

	link := &netlinkLink{b: &bounded{timeout: DefaultCallTimeout}, watch: &addrWatch{}}
	link.watch.dummyIndex.Store(int32(ipvs0.Attrs().Index))
	if err := nsutil.Do(ns, func() error { link.HostAddrsVersion(); return nil }); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("no %s within 5 s", what)
			}
		}
	}
	waitFor("subscription", func() bool { _, ok := link.HostAddrsVersion(); return ok })

	before, _ := link.HostAddrsVersion()
	for i := 1; i <= 20; i++ {
		addAddr(ipvs0, "172.30.0."+strconv.Itoa(i)+"/32")
	}
	addAddr(eth, "192.168.77.2/24") // a marker: every earlier notification has been read once it counts
	waitFor("version change after a node address", func() bool { v, _ := link.HostAddrsVersion(); return v > before })
	if v, _ := link.HostAddrsVersion(); v != before+1 {
		t.Errorf("version moved by %d for 20 kube-ipvs0 addresses and one node address, want 1", v-before)
	}
}
