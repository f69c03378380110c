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
