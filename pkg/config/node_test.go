package config

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

func testNode() *v1.Node {
	return &v1.Node{
		Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:244:1::/64"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeExternalIP, Address: "203.0.113.9"},
			{Type: v1.NodeInternalIP, Address: "192.168.0.2"},
			{Type: v1.NodeInternalIP, Address: "192.168.0.3"},
			{Type: v1.NodeInternalIP, Address: "2001:db8::2"},
		}},
	}
}

var localAddrs = []netip.Addr{
	netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("10.0.5.1"),
	netip.MustParseAddr("::1"), netip.MustParseAddr("2001:db8::2"),
}

func TestPrimaryIPs(t *testing.T) {
	got := PrimaryIPs(testNode())
	if got[v1.IPv4Protocol].String() != "192.168.0.2" || got[v1.IPv6Protocol].String() != "2001:db8::2" {
		t.Errorf("PrimaryIPs = %v (the first InternalIP of each family wins over an ExternalIP)", got)
	}
	external := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeExternalIP, Address: "203.0.113.9"}}}}
	if got := PrimaryIPs(external)[v1.IPv4Protocol]; got.String() != "203.0.113.9" {
		t.Errorf("only an ExternalIP: %v", got)
	}
	if len(PrimaryIPs(nil)) != 0 {
		t.Error("no Node, yet primary IPs")
	}
}

func TestNodePortAddresses(t *testing.T) {
	for _, c := range []struct {
		entries []string
		family  v1.IPFamily
		want    string // "every" for nil (every local address)
	}{
		{nil, v1.IPv4Protocol, "every"},
		{[]string{"all"}, v1.IPv4Protocol, "every"},
		{[]string{"primary"}, v1.IPv4Protocol, "[192.168.0.2]"},
		{[]string{"primary"}, v1.IPv6Protocol, "[2001:db8::2]"},
		{[]string{"localhost"}, v1.IPv4Protocol, "[127.0.0.1]"},
		{[]string{"localhost"}, v1.IPv6Protocol, "[::1]"},
		{[]string{"10.0.0.0/16", "192.168.0.0/24"}, v1.IPv4Protocol, "[10.0.5.1 192.168.0.2]"},
		{[]string{"10.0.0.0/16"}, v1.IPv6Protocol, "[]"},
	} {
		got := NodePortAddresses(&v1alpha1.KubeProxyConfiguration{NodePortAddresses: c.entries}, testNode(), c.family, localAddrs)
		s := fmt.Sprint(got)
		if got == nil {
			s = "every"
		}
		if s != c.want {
			t.Errorf("%v %s: %s, want %s", c.entries, c.family, s, c.want)
		}
	}
}

func TestHealthCheckIPs(t *testing.T) {
	every := HealthCheckIPs(&v1alpha1.KubeProxyConfiguration{}, testNode(), localAddrs)
	if every != nil {
		t.Errorf("no nodePortAddresses: %v, want nil (every address)", every)
	}
	some := HealthCheckIPs(&v1alpha1.KubeProxyConfiguration{NodePortAddresses: []string{"primary"}}, testNode(), localAddrs)
	if fmt.Sprint(some) != "[192.168.0.2 2001:db8::2]" {
		t.Errorf("primary: %v", some)
	}
	none := HealthCheckIPs(&v1alpha1.KubeProxyConfiguration{NodePortAddresses: []string{"198.51.100.0/24"}}, testNode(), localAddrs)
	if none == nil || len(none) != 0 {
		t.Errorf("a range holding no node address: %v, want empty", none)
	}
}

func TestDetector(t *testing.T) {
	for _, c := range []struct {
		mode   v1alpha1.LocalMode
		family v1.IPFamily
		want   DetectLocal
	}{
		{LocalModeClusterCIDR, v1.IPv4Protocol, DetectLocal{CIDR: netip.MustParsePrefix("10.244.0.0/16")}},
		{LocalModeClusterCIDR, v1.IPv6Protocol, DetectLocal{CIDR: netip.MustParsePrefix("fd00:244::/56")}},
		{LocalModeNodeCIDR, v1.IPv4Protocol, DetectLocal{CIDR: netip.MustParsePrefix("10.244.1.0/24")}},
		{LocalModeNodeCIDR, v1.IPv6Protocol, DetectLocal{CIDR: netip.MustParsePrefix("fd00:244:1::/64")}},
		{LocalModeBridgeInterface, v1.IPv4Protocol, DetectLocal{Interface: "cbr0"}},
		{LocalModeInterfaceNamePrefix, v1.IPv6Protocol, DetectLocal{Interface: "veth+"}},
	} {
		cfg := &v1alpha1.KubeProxyConfiguration{DetectLocalMode: c.mode, ClusterCIDR: "10.244.0.0/16, fd00:244::/56",
			DetectLocal: v1alpha1.DetectLocalConfiguration{BridgeInterface: "cbr0", InterfaceNamePrefix: "veth"}}
		if got := Detector(cfg, testNode(), c.family); got != c.want {
			t.Errorf("%s %s: %+v, want %+v", c.mode, c.family, got, c.want)
		}
	}
	if got := Detector(&v1alpha1.KubeProxyConfiguration{ClusterCIDR: "10.244.0.0/16"}, nil, v1.IPv6Protocol); got != (DetectLocal{}) {
		t.Errorf("no IPv6 cluster CIDR: %+v", got)
	}
}

func TestMasqueradeBitAndLocalhostNodePorts(t *testing.T) {
	cfg := &v1alpha1.KubeProxyConfiguration{}
	if MasqueradeBit(cfg) != DefaultMasqueradeBit || !LocalhostNodePorts(cfg) {
		t.Errorf("unset: bit %d, localhost NodePorts %t", MasqueradeBit(cfg), LocalhostNodePorts(cfg))
	}
	cfg.IPTables.MasqueradeBit, cfg.IPTables.LocalhostNodePorts = ptr.To[int32](7), ptr.To(false)
	if MasqueradeBit(cfg) != 7 || LocalhostNodePorts(cfg) {
		t.Errorf("set: bit %d, localhost NodePorts %t", MasqueradeBit(cfg), LocalhostNodePorts(cfg))
	}
}

func TestExcludeCIDRs(t *testing.T) {
	cfg := &v1alpha1.KubeProxyConfiguration{IPVS: v1alpha1.KubeProxyIPVSConfiguration{ExcludeCIDRs: []string{" 10.1.2.3/16", "fd00::1/64"}}}
	if got := fmt.Sprint(ExcludeCIDRs(cfg)); got != "[10.1.0.0/16 fd00::/64]" {
		t.Errorf("ExcludeCIDRs = %s", got)
	}
}
