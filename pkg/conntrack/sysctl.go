package conntrack

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// Settings are kube-proxy's conntrack tunables.
type Settings struct {
	MaxPerCore, Min       int32
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	TCPBeLiberal          bool
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration
}

// SettingsFrom reads them from a configuration (zero means "leave the
// kernel's value", as in kube-proxy).
func SettingsFrom(c v1alpha1.KubeProxyConntrackConfiguration) Settings {
	s := Settings{TCPBeLiberal: c.TCPBeLiberal, UDPTimeout: c.UDPTimeout.Duration, UDPStreamTimeout: c.UDPStreamTimeout.Duration}
	if c.MaxPerCore != nil {
		s.MaxPerCore = *c.MaxPerCore
	}
	if c.Min != nil {
		s.Min = *c.Min
	}
	if c.TCPEstablishedTimeout != nil {
		s.TCPEstablishedTimeout = c.TCPEstablishedTimeout.Duration
	}
	if c.TCPCloseWaitTimeout != nil {
		s.TCPCloseWaitTimeout = c.TCPCloseWaitTimeout.Duration
	}
	return s
}

// Sysctl reads and writes /proc/sys (a directory in tests).
type Sysctl struct{ Root string }

func (s Sysctl) path(name string) string {
	return filepath.Join(s.Root, strings.ReplaceAll(name, ".", "/"))
}

func (s Sysctl) get(name string) (int, error) {
	b, err := os.ReadFile(s.path(name))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (s Sysctl) set(name string, v int) error {
	return os.WriteFile(s.path(name), []byte(strconv.Itoa(v)), 0o644)
}

// Apply writes the settings as kube-proxy does. The table size
// (nf_conntrack_max) belongs to the whole host, so it is only raised, and
// only when the proxy runs in the host's own network namespace; the
// timeouts are per network namespace.
func Apply(sys Sysctl, s Settings, inHostNetns bool) error {
	var errs []string
	if max := maxEntries(s, runtime.NumCPU()); max > 0 {
		if !inHostNetns {
			klog.InfoS("Not in the host network namespace; leaving nf_conntrack_max alone", "wanted", max)
		} else if err := raise(sys, "net.netfilter.nf_conntrack_max", max); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for name, d := range map[string]time.Duration{
		"net.netfilter.nf_conntrack_tcp_timeout_established": s.TCPEstablishedTimeout,
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  s.TCPCloseWaitTimeout,
		"net.netfilter.nf_conntrack_udp_timeout":             s.UDPTimeout,
		"net.netfilter.nf_conntrack_udp_timeout_stream":      s.UDPStreamTimeout,
	} {
		if d > 0 {
			if err := sys.set(name, int(d.Seconds())); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if s.TCPBeLiberal {
		if err := sys.set("net.netfilter.nf_conntrack_tcp_be_liberal", 1); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("conntrack settings: %s", strings.Join(errs, "; "))
	}
	return nil
}

// maxEntries is kube-proxy's rule: maxPerCore x cores, at least min.
func maxEntries(s Settings, cores int) int {
	if s.MaxPerCore <= 0 {
		return 0
	}
	return max(int(s.MaxPerCore)*cores, int(s.Min))
}

func raise(sys Sysctl, name string, want int) error {
	cur, err := sys.get(name)
	if err != nil {
		return err
	}
	if cur >= want {
		return nil
	}
	return sys.set(name, want)
}

// InHostNetns reports whether this process shares PID 1's network
// namespace, or an error when it cannot tell: reading PID 1's namespace
// link needs every capability PID 1 has (or CAP_SYS_PTRACE), which a
// process under a capability bounding set, such as the systemd unit's,
// lacks.
func InHostNetns() (bool, error) {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return false, err
	}
	host, err := os.Readlink("/proc/1/ns/net")
	if err != nil {
		return false, err
	}
	return self == host, nil
}
