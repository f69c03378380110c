package iptables

import (
	"slices"
	"strings"
	"testing"
)

// kubeletFirewall is what kubelet keeps in the filter table: its canary
// and its copy of the 127.0.0.0/8 guard, with uncommented jumps.
const kubeletFirewall = `*filter
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
COMMIT
`

// TestCleanupLeavesKubeletFirewall: where kubelet runs, clean-up removes
// only this proxy's jump into KUBE-FIREWALL and leaves the chain and
// kubelet's jumps (as kube-proxy's clean-up does); without kubelet the
// chain goes (TestCleanupRemovesOnlyOurs).
func TestCleanupLeavesKubeletFirewall(t *testing.T) {
	c := newCluster(t, 3)
	fake := NewFake()
	if err := fake.Restore([]byte(kubeletFirewall)); err != nil {
		t.Fatal(err)
	}
	converge(t, NewProxier(fake, defaultOpts()), fake, c.tr.Snapshot())
	if n := len(fake.Rules(TableFilter, "INPUT")); n < 2 {
		t.Fatalf("INPUT has %d rules after a sync, want kubelet's jump and ours", n)
	}
	if err := KubeletFirewall(fake); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(fake); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{TableNAT, TableFilter, TableMangle} {
		for _, ch := range fake.Chains(table) {
			if strings.HasPrefix(ch, "KUBE-") && ch != ChainKubeletCanary && ch != ChainFirewall {
				t.Errorf("%s/%s left behind", table, ch)
			}
		}
	}
	if !slices.Contains(fake.Chains(TableFilter), ChainFirewall) || len(fake.Rules(TableFilter, ChainFirewall)) != 1 {
		t.Errorf("kubelet's KUBE-FIREWALL went: chains %v, rules %v", fake.Chains(TableFilter), fake.Rules(TableFilter, ChainFirewall))
	}
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if got := fake.Rules(TableFilter, chain); !slices.Equal(got, []string{"-j KUBE-FIREWALL"}) {
			t.Errorf("%s = %q, want only kubelet's jump", chain, got)
		}
	}
}

// TestKubeletFirewallWithoutKubelet: no kubelet canary, nothing changes.
func TestKubeletFirewallWithoutKubelet(t *testing.T) {
	c := newCluster(t, 1)
	fake := NewFake()
	converge(t, NewProxier(fake, defaultOpts()), fake, c.tr.Snapshot())
	fake.Restores = nil
	if err := KubeletFirewall(fake); err != nil {
		t.Fatal(err)
	}
	if len(fake.Restores) != 0 {
		t.Errorf("wrote %q without kubelet", fake.Restores)
	}
	if ours, _ := OwnedChains(fake, TableFilter); !slices.Contains(ours, ChainFirewall) {
		t.Errorf("OwnedChains(filter) = %v, want KUBE-FIREWALL in it", ours)
	}
}

// A full sync that no longer needs KUBE-FIREWALL (localhost NodePorts off,
// or IPVS mode) removes it as a stale fixed chain, unless kubelet keeps
// its own copy there.
func TestFullSyncLeavesKubeletFirewall(t *testing.T) {
	for _, kubelet := range []bool{true, false} {
		c := newCluster(t, 2)
		fake := NewFake()
		p := NewProxier(fake, defaultOpts()) // localhost NodePorts on: KUBE-FIREWALL is ours
		converge(t, p, fake, c.tr.Snapshot())
		if !slices.Contains(fake.Chains(TableFilter), ChainFirewall) {
			t.Fatal("with localhost NodePorts the sync should create KUBE-FIREWALL")
		}
		if kubelet {
			if err := fake.Restore([]byte("*filter\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n")); err != nil {
				t.Fatal(err)
			}
		}
		opts := defaultOpts()
		opts.LocalhostNodePorts = false
		converge(t, NewProxier(fake, opts), fake, c.tr.Snapshot())
		if got := slices.Contains(fake.Chains(TableFilter), ChainFirewall); got != kubelet {
			t.Errorf("kubelet running %v: KUBE-FIREWALL present after the sync = %v", kubelet, got)
		}
	}
}
