package config

import (
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// TestDefault pins every default to kube-proxy v1.37's value.
func TestDefault(t *testing.T) {
	c := Default()
	checks := []struct {
		field     string
		got, want any
	}{
		{"apiVersion", c.APIVersion, "kubeproxy.config.k8s.io/v1alpha1"},
		{"kind", c.Kind, "KubeProxyConfiguration"},
		{"bindAddress", c.BindAddress, "0.0.0.0"},
		{"healthzBindAddress", c.HealthzBindAddress, "0.0.0.0:10256"},
		{"metricsBindAddress", c.MetricsBindAddress, "127.0.0.1:10249"},
		{"configSyncPeriod", c.ConfigSyncPeriod.Duration, 15 * time.Minute},
		{"clientConnection.qps", c.ClientConnection.QPS, float32(5)},
		{"clientConnection.burst", c.ClientConnection.Burst, int32(10)},
		{"clientConnection.contentType", c.ClientConnection.ContentType, "application/vnd.kubernetes.protobuf"},
		{"clientConnection.kubeconfig", c.ClientConnection.Kubeconfig, ""},
		{"iptables.masqueradeBit", c.IPTables.MasqueradeBit, ptr.To[int32](14)},
		{"iptables.masqueradeAll", c.IPTables.MasqueradeAll, false},
		{"iptables.localhostNodePorts", c.IPTables.LocalhostNodePorts, ptr.To(true)},
		{"iptables.syncPeriod", c.IPTables.SyncPeriod.Duration, 30 * time.Second},
		{"iptables.minSyncPeriod", c.IPTables.MinSyncPeriod.Duration, time.Second},
		{"ipvs.syncPeriod", c.IPVS.SyncPeriod.Duration, 30 * time.Second},
		{"ipvs.minSyncPeriod", c.IPVS.MinSyncPeriod.Duration, time.Duration(0)},
		{"ipvs.scheduler", c.IPVS.Scheduler, ""},
		{"nftables.masqueradeBit", c.NFTables.MasqueradeBit, ptr.To[int32](14)},
		{"nftables.syncPeriod", c.NFTables.SyncPeriod.Duration, 30 * time.Second},
		{"nftables.minSyncPeriod", c.NFTables.MinSyncPeriod.Duration, time.Second},
		{"conntrack.maxPerCore", c.Conntrack.MaxPerCore, ptr.To[int32](32768)},
		{"conntrack.min", c.Conntrack.Min, ptr.To[int32](131072)},
		{"conntrack.tcpEstablishedTimeout", c.Conntrack.TCPEstablishedTimeout, &metav1.Duration{Duration: 24 * time.Hour}},
		{"conntrack.tcpCloseWaitTimeout", c.Conntrack.TCPCloseWaitTimeout, &metav1.Duration{Duration: time.Hour}},
		{"conntrack.udpTimeout", c.Conntrack.UDPTimeout.Duration, time.Duration(0)},
		{"oomScoreAdj", c.OOMScoreAdj, ptr.To[int32](-999)},
		{"mode", c.Mode, v1alpha1.ProxyMode("iptables")},
		{"detectLocalMode", c.DetectLocalMode, v1alpha1.LocalMode("ClusterCIDR")},
		{"clusterCIDR", c.ClusterCIDR, ""},
		{"nodePortAddresses", c.NodePortAddresses, []string(nil)},
		{"featureGates", c.FeatureGates, map[string]bool{}},
		{"logging.format", c.Logging.Format, "text"},
		{"logging.flushFrequency", c.Logging.FlushFrequency.Duration.Duration, 5 * time.Second},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("default %s = %#v, want %#v", ch.field, ch.got, ch.want)
		}
	}
	if err := Validate(c); err != nil {
		t.Errorf("Default() does not validate: %v", err)
	}
}

func TestSetDefaultsAddresses(t *testing.T) {
	tests := []struct {
		name                               string
		bind, healthz, metrics             string
		wantBind, wantHealthz, wantMetrics string
	}{
		{"all unset", "", "", "", "0.0.0.0", "0.0.0.0:10256", "127.0.0.1:10249"},
		{"IPv6 bindAddress", "::", "", "", "::", "[::]:10256", "[::1]:10249"},
		{"bare IPv4 gets port", "", "10.0.0.1", "0.0.0.0", "0.0.0.0", "10.0.0.1:10256", "0.0.0.0:10249"},
		{"bare IPv6 gets port", "", "fd00::1", "::1", "0.0.0.0", "[fd00::1]:10256", "[::1]:10249"},
		{"host:port kept", "", "1.2.3.4:1", "[::1]:2", "0.0.0.0", "1.2.3.4:1", "[::1]:2"},
		{"garbage kept for Validate", "", "nonsense", "also:bad:x", "0.0.0.0", "nonsense", "also:bad:x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &v1alpha1.KubeProxyConfiguration{BindAddress: tt.bind, HealthzBindAddress: tt.healthz, MetricsBindAddress: tt.metrics}
			SetDefaults(c)
			if c.BindAddress != tt.wantBind || c.HealthzBindAddress != tt.wantHealthz || c.MetricsBindAddress != tt.wantMetrics {
				t.Errorf("got %q %q %q, want %q %q %q", c.BindAddress, c.HealthzBindAddress, c.MetricsBindAddress,
					tt.wantBind, tt.wantHealthz, tt.wantMetrics)
			}
		})
	}
}

// TestSetDefaultsKeepsSetValues checks that nothing the user set is
// overwritten, including explicit zeros that kube-proxy honours (pointer
// fields such as conntrack.maxPerCore: 0).
func TestSetDefaultsKeepsSetValues(t *testing.T) {
	c := &v1alpha1.KubeProxyConfiguration{
		Mode:             ModeIPVS,
		DetectLocalMode:  LocalModeNodeCIDR,
		OOMScoreAdj:      ptr.To[int32](0),
		ConfigSyncPeriod: metav1.Duration{Duration: time.Minute},
		IPTables: v1alpha1.KubeProxyIPTablesConfiguration{
			MasqueradeBit:      ptr.To[int32](0),
			LocalhostNodePorts: ptr.To(false),
		},
		IPVS: v1alpha1.KubeProxyIPVSConfiguration{MinSyncPeriod: metav1.Duration{Duration: 2 * time.Second}},
		Conntrack: v1alpha1.KubeProxyConntrackConfiguration{
			MaxPerCore:            ptr.To[int32](0),
			Min:                   ptr.To[int32](0),
			TCPEstablishedTimeout: &metav1.Duration{},
			TCPCloseWaitTimeout:   &metav1.Duration{},
		},
		FeatureGates: map[string]bool{"X": true},
	}
	c.ClientConnection.QPS, c.ClientConnection.Burst = 1, 2
	want := c.DeepCopy()
	SetDefaults(c)

	if c.Mode != want.Mode || c.DetectLocalMode != want.DetectLocalMode {
		t.Errorf("mode/detectLocalMode overwritten: %q %q", c.Mode, c.DetectLocalMode)
	}
	for name, pair := range map[string][2]any{
		"oomScoreAdj":                     {c.OOMScoreAdj, want.OOMScoreAdj},
		"configSyncPeriod":                {c.ConfigSyncPeriod, want.ConfigSyncPeriod},
		"iptables.masqueradeBit":          {c.IPTables.MasqueradeBit, want.IPTables.MasqueradeBit},
		"iptables.localhostNodePorts":     {c.IPTables.LocalhostNodePorts, want.IPTables.LocalhostNodePorts},
		"ipvs.minSyncPeriod":              {c.IPVS.MinSyncPeriod, want.IPVS.MinSyncPeriod},
		"conntrack.maxPerCore":            {c.Conntrack.MaxPerCore, want.Conntrack.MaxPerCore},
		"conntrack.min":                   {c.Conntrack.Min, want.Conntrack.Min},
		"conntrack.tcpEstablishedTimeout": {c.Conntrack.TCPEstablishedTimeout, want.Conntrack.TCPEstablishedTimeout},
		"conntrack.tcpCloseWaitTimeout":   {c.Conntrack.TCPCloseWaitTimeout, want.Conntrack.TCPCloseWaitTimeout},
		"clientConnection.qps":            {c.ClientConnection.QPS, want.ClientConnection.QPS},
		"clientConnection.burst":          {c.ClientConnection.Burst, want.ClientConnection.Burst},
		"featureGates":                    {c.FeatureGates, want.FeatureGates},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			t.Errorf("%s overwritten: got %#v, want %#v", name, pair[0], pair[1])
		}
	}
}

func TestSetDefaultsIdempotentAndNilSafe(t *testing.T) {
	SetDefaults(nil) // must not panic
	c := Default()
	again := c.DeepCopy()
	SetDefaults(again)
	if !reflect.DeepEqual(c, again) {
		t.Errorf("SetDefaults changed an already defaulted configuration")
	}
}

// TestExplicitZeroDurationsAreDefaulted documents a kube-proxy quirk kept
// on purpose: a zero duration cannot be told from an unset one.
func TestExplicitZeroDurationsAreDefaulted(t *testing.T) {
	cfg, err := Decode([]byte(header + "iptables:\n  minSyncPeriod: 0s\n  syncPeriod: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sync, minSync := SyncPeriods(cfg); sync != 30*time.Second || minSync != time.Second {
		t.Errorf("SyncPeriods = %v, %v; want kube-proxy's 30s, 1s", sync, minSync)
	}
}
