package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLinePrefixer(t *testing.T) {
	var out bytes.Buffer
	p := &linePrefixer{w: &out, prefix: "g| "}
	for _, chunk := range []string{"one\r\ntw", "o\n", "\nthree"} {
		if _, err := p.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if want := "g| one\ng| two\ng| \ng| three"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestRenderVM(t *testing.T) {
	rep := &VMReport{
		Started: time.Now(), Finished: time.Now(), Modes: []string{"iptables", "ipvs"},
		Settings: Settings{Ns: []int{200}, CapSeconds: 300, LatencySamples: 2},
		MinSync:  MinSyncCheck{Fast: "1ms"},
		Boots:    []VMBoot{{N: 200, WallS: 100, BootS: 9}},
		Runs: []*Run{
			{Proxy: SvcProxy, Mode: "iptables", N: 200, Cold: Phase{ServingS: 4, FirstSyncS: 8}, PeakRSSKB: 1024},
			{Proxy: SvcProxy, Mode: "ipvs", N: 200, Cold: Phase{ServingS: 2, FirstSyncS: 8}, PeakRSSKB: 2048, Err: "boom"},
		},
	}
	md := renderVM(rep)
	for _, want := range []string{"| Cold start: serving (first TCP connection through the probe ClusterIP) | 4.00 s | 2.00 s | 0.50x |", "| ipvs / iptables |", "ipvs: **run ended early**: `boom`"} {
		if !strings.Contains(md, want) {
			t.Errorf("vm.md lacks %q:\n%s", want, md)
		}
	}
	for _, gone := range []string{"Floor", "nat rules"} {
		if strings.Contains(md, gone) {
			t.Errorf("vm.md has the iptables-only row %q", gone)
		}
	}
}

func TestRenderVMSlopes(t *testing.T) {
	run := func(mode string, n int, syncS float64, calls map[string]float64) *Run {
		return &Run{Proxy: SvcProxy, Mode: mode, N: n, Churn: &Churn{Changes: 60, Syncs: 60, SyncSPerChange: syncS, KernelCallsPerChange: calls}}
	}
	rep := &VMReport{
		Started: time.Now(), Finished: time.Now(), Modes: []string{"iptables", "ipvs"},
		Settings: Settings{Ns: []int{200, 5000}, CapSeconds: 300},
		Runs: []*Run{
			run("iptables", 200, 0.100, map[string]float64{"iptables_restore": 1}),
			run("iptables", 5000, 0.340, map[string]float64{"iptables_restore": 1}),
			run("ipvs", 200, 0.040, map[string]float64{"ipvs_add_destination": 1, "ipvs_update_destination": 1, "link_list_all_addresses": 1}),
			run("ipvs", 5000, 0.046, map[string]float64{"ipvs_add_destination": 1, "ipvs_update_destination": 1}),
		},
	}
	md := renderVM(rep)
	for _, want := range []string{
		"| iptables | sync duration per change | 100 ms | 340 ms | 50 ms | 3.40x |",
		"| ipvs | sync duration per change | 40 ms | 46 ms | 1.2 ms | 1.15x |",
		"| Churn: netlink requests per change (`sync_kernel_calls_total` ipvs_*, link_*, ipsetnl_*) | not counted | 2.00 |  |",
		"| ipvs | netlink requests per change | 3.00 | 2.00 | -0.21 | 0.67x |",
		"ipvs_add_destination 1.00, ipvs_update_destination 1.00, link_list_all_addresses 1.00",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("vm.md lacks %q:\n%s", want, md)
		}
	}
}
