package main

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
)

// Machine describes where the bench ran.
type Machine struct {
	CPU          string
	Cores        int
	MemoryGiB    float64
	Kernel       string
	OS           string
	IPTables     string
	SvcProxy     string
	KubeProxy    string
	Go           string
	LoadStart    string
	LoadEnd      string
	GitRevision  string
	KubeProxyBin string
}

func machineInfo(o options) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				_, _ = fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), "%f", &kb)
			}
		}
		m.MemoryGiB = kb / 1024 / 1024
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	m.IPTables = cmdOut("iptables", "--version")
	m.SvcProxy = cmdOut(o.Proxy, "--version")
	if rev := cmdOut("git", "-C", o.Out, "describe", "--always", "--dirty"); !strings.HasPrefix(rev, "error") {
		m.GitRevision = rev
	}
	m.KubeProxy = "unknown"
	if bi, err := buildinfo.ReadFile(o.KubeProxy); err == nil {
		for _, d := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
			if d.Path == "k8s.io/kubernetes" {
				m.KubeProxy = "kube-proxy " + d.Version + " (k8s.io/kubernetes, built by e2e/build-tools.sh, " + bi.GoVersion + ")"
			}
		}
	}
	m.KubeProxyBin = cmdOut(o.KubeProxy, "--version")
	return m
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
