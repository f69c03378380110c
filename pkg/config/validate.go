package config

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
)

// ipvsSchedulers are the schedulers the kernel's IPVS offers; "" means
// kube-proxy's default, rr.
var ipvsSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"}

// localModes are the accepted detectLocalMode values.
var localModes = []v1alpha1.LocalMode{
	LocalModeClusterCIDR, LocalModeNodeCIDR, LocalModeBridgeInterface, LocalModeInterfaceNamePrefix,
}

// validator collects every problem so that an operator fixes a file in one
// round rather than one error per restart.
type validator struct {
	errs []error
}

func (v *validator) add(path string, reason Reason, value any, detail string) {
	v.errs = append(v.errs, fieldErr(path, reason, value, detail))
}

// Validate checks a (defaulted) configuration; the error names every bad
// field by its JSON path and value. Settings of the mode not in use (e.g.
// ipvs.* in iptables mode) are not checked, as in kube-proxy, so that a
// file carrying stale settings for another mode still loads.
func Validate(c *v1alpha1.KubeProxyConfiguration) error {
	if c == nil {
		return errors.New("configuration is nil")
	}
	var v validator
	v.mode(c.Mode)
	v.addresses(c)
	v.clusterCIDR(c.ClusterCIDR)
	v.nodePortAddresses(c.NodePortAddresses)
	v.iptables(c)
	if c.Mode == ModeIPVS {
		v.ipvs(&c.IPVS)
	}
	v.positive("configSyncPeriod", c.ConfigSyncPeriod.Duration)
	v.detectLocal(c)
	v.conntrack(&c.Conntrack)
	v.clientConnection(c)
	if c.OOMScoreAdj != nil {
		v.intRange("oomScoreAdj", *c.OOMScoreAdj, -1000, 1000)
	}
	return errors.Join(v.errs...)
}

// mode accepts only the modes svcproxy implements; anything else is
// refused loudly rather than run as iptables.
func (v *validator) mode(m v1alpha1.ProxyMode) {
	if m != ModeIPTables && m != ModeIPVS && m != ModeNFTables {
		v.add("mode", ReasonUnsupportedValue, string(m),
			fmt.Sprintf("svcproxy supports %q, %q and %q", ModeIPTables, ModeIPVS, ModeNFTables))
	}
}

// addresses checks bindAddress (an IP) and the two listen addresses
// (host:port with an IP host, or empty to disable the server).
func (v *validator) addresses(c *v1alpha1.KubeProxyConfiguration) {
	if netutils.ParseIPSloppy(c.BindAddress) == nil {
		v.add("bindAddress", ReasonInvalidValue, c.BindAddress, "must be an IP address")
	}
	v.hostPort("healthzBindAddress", c.HealthzBindAddress)
	v.hostPort("metricsBindAddress", c.MetricsBindAddress)
}

// hostPort checks an "IP:port" listen address; empty disables the server.
func (v *validator) hostPort(path, addr string) {
	if addr == "" {
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(path, ReasonInvalidValue, addr, `must be IP:port (e.g. "0.0.0.0:10256" or "[::]:10256"), or empty to disable`)
		return
	}
	if netutils.ParseIPSloppy(host) == nil {
		v.add(path, ReasonInvalidValue, addr, fmt.Sprintf("host %q is not an IP address", host))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		v.add(path, ReasonInvalidValue, addr, fmt.Sprintf("port %q is not in 1-65535", port))
	}
}

// clusterCIDR accepts empty or a comma-separated list holding at most one
// CIDR per IP family (a dual-stack pair).
func (v *validator) clusterCIDR(s string) {
	if s == "" {
		return
	}
	cidrs := strings.Split(s, ",")
	families := map[string]int{}
	for _, cidr := range cidrs {
		_, ipnet, err := netutils.ParseCIDRSloppy(cidr)
		if err != nil {
			detail := "not a valid CIDR (e.g. 10.244.0.0/16)"
			if len(cidrs) > 1 {
				detail = fmt.Sprintf("in %q: %s", s, detail)
			}
			v.add("clusterCIDR", ReasonInvalidValue, cidr, detail)
			continue
		}
		families[ipFamily(ipnet.IP)]++
	}
	for _, family := range []string{"IPv4", "IPv6"} {
		if families[family] > 1 {
			v.add("clusterCIDR", ReasonInvalidValue, s,
				fmt.Sprintf("at most one %s CIDR is allowed (use a single CIDR or a dual-stack pair)", family))
		}
	}
}

func ipFamily(ip net.IP) string {
	if ip.To4() != nil {
		return "IPv4"
	}
	return "IPv6"
}

// nodePortAddresses accepts CIDRs and kube-proxy's keywords. "localhost"
// and "all" are kept alongside "primary" because they are documented in
// the v1alpha1 API, and kube-proxy files using them must load unchanged.
func (v *validator) nodePortAddresses(addrs []string) {
	seen := map[string]bool{}
	for i, a := range addrs {
		path := index("nodePortAddresses", i)
		switch a {
		case NodePortAddressesPrimary, NodePortAddressesLocalhost, NodePortAddressesAll:
			if seen[a] {
				v.add(path, ReasonDuplicateValue, a, "keyword listed twice")
			}
			seen[a] = true
			continue
		}
		if _, _, err := netutils.ParseCIDRSloppy(a); err != nil {
			v.add(path, ReasonInvalidValue, a, `must be a CIDR or one of "primary", "localhost", "all"`)
		}
	}
}

// iptables checks the iptables section. The masquerade bit is checked in
// every mode because the ipvs mode marks packets with it too.
func (v *validator) iptables(c *v1alpha1.KubeProxyConfiguration) {
	if bit := c.IPTables.MasqueradeBit; bit != nil {
		v.intRange("iptables.masqueradeBit", *bit, 0, 31)
	}
	if c.Mode == ModeIPTables {
		v.syncPeriods("iptables", c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod)
	}
	if c.Mode == ModeNFTables {
		if bit := c.NFTables.MasqueradeBit; bit != nil {
			v.intRange("nftables.masqueradeBit", *bit, 0, 31)
		}
		v.syncPeriods("nftables", c.NFTables.SyncPeriod, c.NFTables.MinSyncPeriod)
	}
}

// ipvs checks the ipvs section (only in ipvs mode).
func (v *validator) ipvs(c *v1alpha1.KubeProxyIPVSConfiguration) {
	v.syncPeriods("ipvs", c.SyncPeriod, c.MinSyncPeriod)
	if c.Scheduler != "" && !slices.Contains(ipvsSchedulers, c.Scheduler) {
		v.add("ipvs.scheduler", ReasonUnsupportedValue, c.Scheduler,
			"must be empty (rr) or one of "+quoteAll(ipvsSchedulers))
	}
	for i, cidr := range c.ExcludeCIDRs {
		if _, _, err := netutils.ParseCIDRSloppy(cidr); err != nil {
			v.add(index("ipvs.excludeCIDRs", i), ReasonInvalidValue, cidr, "must be a CIDR (e.g. 10.0.0.0/8)")
		}
	}
	v.nonNegative("ipvs.tcpTimeout", c.TCPTimeout.Duration)
	v.nonNegative("ipvs.tcpFinTimeout", c.TCPFinTimeout.Duration)
	v.nonNegative("ipvs.udpTimeout", c.UDPTimeout.Duration)
}

// syncPeriods checks a mode's syncPeriod/minSyncPeriod pair: the periodic
// resync must happen, and the rate limit between syncs cannot be longer
// than the period itself.
func (v *validator) syncPeriods(section string, sync, minSync metav1.Duration) {
	v.positive(section+".syncPeriod", sync.Duration)
	v.nonNegative(section+".minSyncPeriod", minSync.Duration)
	if minSync.Duration > sync.Duration && sync.Duration > 0 {
		v.add(section+".minSyncPeriod", ReasonInvalidValue, minSync.Duration.String(),
			fmt.Sprintf("must not exceed %s.syncPeriod (%q)", section, sync.Duration.String()))
	}
}

// detectLocal checks detectLocalMode and the detectLocal field it needs.
func (v *validator) detectLocal(c *v1alpha1.KubeProxyConfiguration) {
	mode := c.DetectLocalMode
	if !slices.Contains(localModes, mode) {
		v.add("detectLocalMode", ReasonUnsupportedValue, string(mode), "must be one of "+quoteAll(localModes))
		return
	}
	required := func(path, value string) {
		if value == "" {
			v.errs = append(v.errs, &FieldError{Path: path, Reason: ReasonRequiredValue,
				Detail: fmt.Sprintf("must be set when detectLocalMode is %q", mode)})
		}
	}
	switch mode {
	case LocalModeBridgeInterface:
		required("detectLocal.bridgeInterface", c.DetectLocal.BridgeInterface)
	case LocalModeInterfaceNamePrefix:
		required("detectLocal.interfaceNamePrefix", c.DetectLocal.InterfaceNamePrefix)
	}
}

// conntrack checks that no conntrack setting is negative; zero means
// "leave the kernel's value alone".
func (v *validator) conntrack(ct *v1alpha1.KubeProxyConntrackConfiguration) {
	if ct.MaxPerCore != nil && *ct.MaxPerCore < 0 {
		v.add("conntrack.maxPerCore", ReasonInvalidValue, *ct.MaxPerCore, "must be greater than or equal to 0")
	}
	if ct.Min != nil && *ct.Min < 0 {
		v.add("conntrack.min", ReasonInvalidValue, *ct.Min, "must be greater than or equal to 0")
	}
	if ct.TCPEstablishedTimeout != nil {
		v.nonNegative("conntrack.tcpEstablishedTimeout", ct.TCPEstablishedTimeout.Duration)
	}
	if ct.TCPCloseWaitTimeout != nil {
		v.nonNegative("conntrack.tcpCloseWaitTimeout", ct.TCPCloseWaitTimeout.Duration)
	}
	v.nonNegative("conntrack.udpTimeout", ct.UDPTimeout.Duration)
	v.nonNegative("conntrack.udpStreamTimeout", ct.UDPStreamTimeout.Duration)
}

// clientConnection checks the API server client rate limits.
func (v *validator) clientConnection(c *v1alpha1.KubeProxyConfiguration) {
	cc := &c.ClientConnection
	if !(cc.QPS >= 0) { // also catches NaN
		v.add("clientConnection.qps", ReasonInvalidValue, cc.QPS, "must be greater than or equal to 0")
	}
	if cc.Burst < 0 {
		v.add("clientConnection.burst", ReasonInvalidValue, cc.Burst, "must be greater than or equal to 0")
	}
}

// positive requires d > 0.
func (v *validator) positive(path string, d time.Duration) {
	if d <= 0 {
		v.add(path, ReasonInvalidValue, d.String(), "must be greater than 0")
	}
}

// nonNegative requires d >= 0.
func (v *validator) nonNegative(path string, d time.Duration) {
	if d < 0 {
		v.add(path, ReasonInvalidValue, d.String(), "must be greater than or equal to 0")
	}
}

// intRange requires lo <= n <= hi.
func (v *validator) intRange(path string, n, lo, hi int32) {
	if n < lo || n > hi {
		v.add(path, ReasonInvalidValue, n, fmt.Sprintf("must be within the range [%d, %d]", lo, hi))
	}
}

// quoteAll renders a list of allowed values for an error message.
func quoteAll[T ~string](list []T) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(string(s))
	}
	return strings.Join(q, ", ")
}
