package hostaddr

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"svcproxy.dev/svcproxy/e2e/nsutil"
	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestWatchRealKernel: in a throwaway network namespace, the address
// watch starts in the caller's namespace, ignores addresses added to
// kube-ipvs0 (the service IPs every sync adds) and bumps its version for
// an address on any other interface.
func TestWatchRealKernel(t *testing.T) {
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
	ipvs0, eth := dummy("kube-ipvs0"), dummy("eth9")
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

	w := New()
	w.Ignore(ipvs0.Attrs().Index)
	cache := NewCache(w)
	list := func() []netip.Addr {
		t.Helper()
		var got []netip.Addr
		err := nsutil.Do(ns, func() error {
			var err error
			got, err = cache.Addrs()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("no %s within 5 s", what)
			}
		}
	}
	list() // subscribes in the namespace
	waitFor("subscription", func() bool { _, ok := w.Version(); return ok })
	addAddr(eth, "192.168.77.1/24")
	waitFor("version change after a node address", func() bool { return slices.Contains(list(), netip.MustParseAddr("192.168.77.1")) })

	// Notifications of the first address (and of the link itself) may
	// still be arriving: start counting once the version has settled.
	before, _ := w.Version()
	for settled := time.Now(); time.Since(settled) < 300*time.Millisecond; time.Sleep(10 * time.Millisecond) {
		if v, _ := w.Version(); v != before {
			before, settled = v, time.Now()
		}
	}
	for i := 1; i <= 20; i++ {
		addAddr(ipvs0, "172.30.0."+strconv.Itoa(i)+"/32")
	}
	if got := list(); slices.Contains(got, netip.MustParseAddr("172.30.0.1")) {
		t.Errorf("the cache lists an address of the ignored link: %v", got)
	}
	addAddr(eth, "192.168.77.2/24") // a marker: every earlier notification has been read once it counts
	waitFor("version change after a node address", func() bool { v, _ := w.Version(); return v > before })
	if v, _ := w.Version(); v != before+1 {
		t.Errorf("version moved by %d for 20 kube-ipvs0 addresses and one node address, want 1", v-before)
	}
	got := list()
	if !slices.Contains(got, netip.MustParseAddr("192.168.77.2")) || slices.Contains(got, netip.MustParseAddr("172.30.0.20")) {
		t.Errorf("after the version moved the cache lists %v, want 192.168.77.2 and no kube-ipvs0 address", got)
	}
}
