package config

import (
	"net"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"k8s.io/utils/ptr"
)

// kube-proxy's default values (kubernetes v1.37,
// pkg/proxy/apis/config/v1alpha1/defaults.go and
// cmd/kube-proxy/app/server_linux.go). They are copied rather than
// imported because k8s.io/kubernetes is not meant to be a library.
const (
	DefaultBindAddress           = "0.0.0.0"
	DefaultHealthzPort           = 10256 // ports.ProxyHealthzPort
	DefaultMetricsPort           = 10249 // ports.ProxyStatusPort
	DefaultOOMScoreAdj           = -999  // qos.KubeProxyOOMScoreAdj
	DefaultMasqueradeBit         = 14
	DefaultSyncPeriod            = 30 * time.Second
	DefaultIPTablesMinSyncPeriod = time.Second
	DefaultConfigSyncPeriod      = 15 * time.Minute
	DefaultConntrackMaxPerCore   = 32 * 1024
	DefaultConntrackMin          = 128 * 1024
	DefaultTCPEstablishedTimeout = 24 * time.Hour
	DefaultTCPCloseWaitTimeout   = time.Hour
	DefaultContentType           = "application/vnd.kubernetes.protobuf"
	DefaultQPS                   = 5.0
	DefaultBurst                 = 10
	DefaultMode                  = ModeIPTables
	DefaultDetectLocalMode       = LocalModeClusterCIDR
)

// Default returns a configuration holding kube-proxy's defaults only, for
// running with no --config, exactly as kube-proxy would.
func Default() *v1alpha1.KubeProxyConfiguration {
	c := &v1alpha1.KubeProxyConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: APIVersion, Kind: Kind},
	}
	SetDefaults(c)
	return c
}

// SetDefaults fills unset fields with kube-proxy's defaults. Like
// kube-proxy, it treats a zero duration or number as unset, so those
// fields cannot be set to zero from a file (iptables.minSyncPeriod: 0
// becomes 1s); svcproxy keeps that quirk so that a file means the same
// thing to both.
func SetDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c == nil {
		return
	}
	setAddressDefaults(c)
	setSyncDefaults(c)
	setConntrackDefaults(c)
	setClientDefaults(c)
	setPlatformDefaults(c)
	if c.OOMScoreAdj == nil {
		c.OOMScoreAdj = ptr.To[int32](DefaultOOMScoreAdj)
	}
	if c.FeatureGates == nil {
		c.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&c.Logging)
}

// setAddressDefaults defaults the listen addresses. The healthz and metrics
// defaults follow bindAddress's family so that an IPv6-only node listens on
// IPv6, and a bare IP gets the default port appended, as kube-proxy does.
func setAddressDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.BindAddress == "" {
		c.BindAddress = DefaultBindAddress
	}
	healthzHost, metricsHost := "0.0.0.0", "127.0.0.1"
	if netutils.ParseIPSloppy(c.BindAddress).To4() == nil {
		healthzHost, metricsHost = "::", "::1"
	}
	c.HealthzBindAddress = defaultHostPort(c.HealthzBindAddress, healthzHost, DefaultHealthzPort)
	c.MetricsBindAddress = defaultHostPort(c.MetricsBindAddress, metricsHost, DefaultMetricsPort)
}

// defaultHostPort returns addr, or host:port when addr is empty, or
// addr:port when addr is a bare IP. Anything else is left for Validate.
func defaultHostPort(addr, host string, port int) string {
	p := strconv.Itoa(port)
	if addr == "" {
		return net.JoinHostPort(host, p)
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if netutils.ParseIPSloppy(addr) == nil {
		return addr
	}
	return net.JoinHostPort(addr, p)
}

// setSyncDefaults defaults the per-mode sync periods. ipvs.minSyncPeriod
// has no default in kube-proxy (0: resync on every change) and keeps none
// here.
func setSyncDefaults(c *v1alpha1.KubeProxyConfiguration) {
	defaultDuration(&c.IPTables.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&c.IPTables.MinSyncPeriod, DefaultIPTablesMinSyncPeriod)
	defaultDuration(&c.IPVS.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&c.NFTables.SyncPeriod, DefaultSyncPeriod)
	defaultDuration(&c.NFTables.MinSyncPeriod, DefaultIPTablesMinSyncPeriod)
	defaultDuration(&c.ConfigSyncPeriod, DefaultConfigSyncPeriod)
	if c.IPTables.LocalhostNodePorts == nil {
		c.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if c.IPTables.MasqueradeBit == nil {
		c.IPTables.MasqueradeBit = ptr.To[int32](DefaultMasqueradeBit)
	}
	if c.NFTables.MasqueradeBit == nil {
		c.NFTables.MasqueradeBit = ptr.To[int32](DefaultMasqueradeBit)
	}
}

// defaultDuration sets *d to def when it is zero.
func defaultDuration(d *metav1.Duration, def time.Duration) {
	if d.Duration == 0 {
		d.Duration = def
	}
}

// setConntrackDefaults defaults the conntrack sysctls kube-proxy manages.
// Only nil means unset here: maxPerCore: 0 explicitly means "leave the
// kernel's limit alone".
func setConntrackDefaults(c *v1alpha1.KubeProxyConfiguration) {
	ct := &c.Conntrack
	if ct.MaxPerCore == nil {
		ct.MaxPerCore = ptr.To[int32](DefaultConntrackMaxPerCore)
	}
	if ct.Min == nil {
		ct.Min = ptr.To[int32](DefaultConntrackMin)
	}
	if ct.TCPEstablishedTimeout == nil {
		ct.TCPEstablishedTimeout = &metav1.Duration{Duration: DefaultTCPEstablishedTimeout}
	}
	if ct.TCPCloseWaitTimeout == nil {
		// One hour, to match typical server timeouts; see
		// kubernetes/kubernetes#32551 for why CLOSE_WAIT matters.
		ct.TCPCloseWaitTimeout = &metav1.Duration{Duration: DefaultTCPCloseWaitTimeout}
	}
}

// setClientDefaults defaults the API server client settings.
func setClientDefaults(c *v1alpha1.KubeProxyConfiguration) {
	cc := &c.ClientConnection
	if cc.ContentType == "" {
		cc.ContentType = DefaultContentType
	}
	if cc.QPS == 0 {
		cc.QPS = DefaultQPS
	}
	if cc.Burst == 0 {
		cc.Burst = DefaultBurst
	}
}

// setPlatformDefaults applies the defaults kube-proxy sets at start-up on
// Linux rather than in its defaulting functions, so that Default() is the
// configuration kube-proxy actually runs with.
func setPlatformDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.Mode == "" {
		c.Mode = DefaultMode
	}
	if c.DetectLocalMode == "" {
		c.DetectLocalMode = DefaultDetectLocalMode
	}
}
