package ipvs

import (
	"errors"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"

	"svcproxy.dev/svcproxy/e2e/nsutil"

	"svcproxy.dev/svcproxy/e2e/testenv"
)

// TestFakeIPVSValidates: the fake refuses what the kernel refuses.
func TestFakeIPVSValidates(t *testing.T) {
	f := NewFakeIPVS()
	k := VSKey{v1.ProtocolTCP, netip.MustParseAddr("172.30.0.1"), 80}
	rs := ap("10.0.0.1:80")
	for _, tc := range []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"real server of a missing virtual server", f.AddDestination(k, rs, 1), syscall.ENOENT},
		{"unknown scheduler", f.AddService(Service{Key: k, Scheduler: "nope"}), syscall.ENOENT},
		{"first add", f.AddService(Service{Key: k, Scheduler: "rr"}), 0},
		{"duplicate virtual server", f.AddService(Service{Key: k, Scheduler: "rr"}), syscall.EEXIST},
		{"first real server", f.AddDestination(k, rs, 1), 0},
		{"duplicate real server", f.AddDestination(k, rs, 1), syscall.EEXIST},
		{"real server of another family", f.AddDestination(k, ap("[fd00::1]:80"), 1), syscall.EAFNOSUPPORT},
		{"update a missing real server", f.UpdateDestination(k, ap("10.0.0.2:80"), 1), syscall.ENOENT},
		{"delete a missing virtual server", f.DeleteService(VSKey{v1.ProtocolUDP, k.Addr, 80}), syscall.ENOENT},
	} {
		if tc.want == 0 {
			if tc.err != nil {
				t.Errorf("%s: %v", tc.name, tc.err)
			}
			continue
		}
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

// TestFakeIPSetsValidate: members must fit their set's type and family,
// sets must exist, and a create must not differ from an existing set.
func TestFakeIPSetsValidate(t *testing.T) {
	s := NewFakeIPSets()
	ok := func(payload string) {
		t.Helper()
		if err := s.Restore([]byte(payload)); err != nil {
			t.Errorf("%q: %v", payload, err)
		}
	}
	bad := func(payload string) {
		t.Helper()
		if err := s.Restore([]byte(payload)); err == nil {
			t.Errorf("%q accepted", payload)
		}
	}
	ok("create A hash:ip,port family inet hashsize 1024 maxelem 65536\ncreate B bitmap:port range 0-65535\ncreate C hash:ip,port,net family inet6 hashsize 1024 maxelem 65536\n")
	ok("add A 1.2.3.4,tcp:80\nadd A 1.2.3.4,tcp:80\ndel A 9.9.9.9,udp:1\nadd B 3001\nadd C fd00::1,sctp:53,fd00::/64\n")
	bad("add A 1.2.3.4\n")
	bad("add A fd00::1,tcp:80\n")
	bad("add A 1.2.3.4,icmp:80\n")
	bad("add B 1.2.3.4,tcp:80\n")
	bad("add C fd00::1,tcp:80,fd00::1/128\n") // ipset prints a host net without /128
	bad("add MISSING 1.2.3.4,tcp:80\n")
	bad("create A hash:ip family inet\n")
}

// TestRealIPSetRoundTrip checks, against the real ipset tool in a throwaway
// network namespace, that every set we create is accepted and that `ipset
// save` prints members exactly as we render them: the applier and Verify
// compare members as strings.
func TestRealIPSetRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for a network namespace")
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		testenv.Missing(t, "no ipset tool (Debian package ipset)")
	}
	ns := nsutil.Name("ipsetrt")
	if err := nsutil.Add(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nsutil.Delete(ns) }()

	var payload strings.Builder
	members := map[string][]string{}
	add := func(set, m string) {
		members[set] = append(members[set], m)
		payload.WriteString("add " + set + " " + m + "\n")
	}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, d := range setDefs(fam) {
			payload.WriteString(d.createLine() + "\n")
		}
	}
	a4, a6 := netip.MustParseAddr("172.30.0.41"), netip.MustParseAddr("fd00:172:30:0::71")
	add(SetClusterIP, ipPortEntry(a4, v1.ProtocolSCTP, 53))
	add(SetLoopBack, ipPortIPEntry(a4, v1.ProtocolUDP, 53, a4))
	add(SetLBSourceCIDR, ipPortNetEntry(a4, v1.ProtocolTCP, 80, netip.MustParsePrefix("203.0.113.0/25")))
	add(SetLBSourceCIDR, ipPortNetEntry(a4, v1.ProtocolTCP, 80, netip.MustParsePrefix("203.0.113.7/32")))
	add(SetNodePortTCP, portEntry(3001))
	add(SetIPVSIPs, a4.String())
	add(SetName(SetClusterIP, v1.IPv6Protocol), ipPortEntry(a6, v1.ProtocolTCP, 80))
	add(SetName(SetLBSourceCIDR, v1.IPv6Protocol), ipPortNetEntry(a6, v1.ProtocolTCP, 80, netip.MustParsePrefix("2001:db8::/48")))
	add(SetName(SetIPVSIPs, v1.IPv6Protocol), a6.String())

	var save []byte
	err := nsutil.Do(ns, func() error {
		k := execIPSets{}
		if err := k.Restore([]byte(payload.String())); err != nil {
			return err
		}
		var err error
		save, err = k.Save()
		return err
	})
	if err != nil {
		t.Fatalf("%v\npayload:\n%s", err, payload.String())
	}
	want := map[string]bool{}
	for _, n := range allSetNames() {
		want[n] = true
	}
	got, err := parseSave(save, want)
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, d := range setDefs(fam) {
			ks := got[d.Name]
			if ks == nil || !d.matches(ks.Type, ks.Family) {
				t.Errorf("set %s: %+v after create", d.Name, ks)
				continue
			}
			if m := members[d.Name]; !slices.Equal(slices.Sorted(maps.Keys(ks.Members)), slices.Sorted(slices.Values(m))) {
				t.Errorf("set %s members %v, want %v", d.Name, ks.Members, m)
			}
		}
	}
}
