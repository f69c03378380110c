package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *v1alpha1.KubeProxyConfiguration)
		want   []string // the JSON path and the bad value, at least
	}{
		{"mode userspace", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "userspace" },
			[]string{`mode: unsupported value "userspace": svcproxy supports "iptables", "ipvs" and "nftables"`}},
		{"nftables masqueradeBit", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = "nftables"
			c.NFTables.MasqueradeBit = ptr.To[int32](32)
		}, []string{"nftables.masqueradeBit", "32"}},
		{"nftables minSyncPeriod", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = "nftables"
			c.NFTables.MinSyncPeriod.Duration = time.Hour
		}, []string{"nftables.minSyncPeriod"}},
		{"mode kernelspace", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "kernelspace" },
			[]string{"mode", `"kernelspace"`}},
		{"mode empty", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "" }, []string{"mode", `""`}},

		{"clusterCIDR not a CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.0/33" },
			[]string{"clusterCIDR", `"10.0.0.0/33"`}},
		{"clusterCIDR bare IP", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.1" },
			[]string{"clusterCIDR", `"10.0.0.1"`}},
		{"clusterCIDR trailing comma", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.0/8," },
			[]string{"clusterCIDR", `""`}},
		{"clusterCIDR two IPv4", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.0/8,10.1.0.0/16" },
			[]string{"clusterCIDR", `"10.0.0.0/8,10.1.0.0/16"`, "IPv4"}},
		{"clusterCIDR two IPv6", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "fd00::/48,fd01::/48" },
			[]string{"clusterCIDR", `"fd00::/48,fd01::/48"`, "IPv6"}},

		{"nodePortAddresses bad entry", func(c *v1alpha1.KubeProxyConfiguration) {
			c.NodePortAddresses = []string{"primary", "10.0.0.1"}
		}, []string{"nodePortAddresses[1]", `"10.0.0.1"`}},
		{"nodePortAddresses unknown keyword", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"public"} },
			[]string{"nodePortAddresses[0]", `"public"`}},
		{"nodePortAddresses duplicate keyword", func(c *v1alpha1.KubeProxyConfiguration) {
			c.NodePortAddresses = []string{"primary", "primary"}
		}, []string{"nodePortAddresses[1]", `"primary"`}},

		{"ipvs.excludeCIDRs", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.ExcludeCIDRs = []string{"10.0.0.0/8", "bogus"}
		}, []string{"ipvs.excludeCIDRs[1]", `"bogus"`}},
		{"ipvs.scheduler", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.Scheduler = "random" },
			[]string{"ipvs.scheduler", `"random"`}},
		{"ipvs.syncPeriod zero", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.SyncPeriod.Duration = 0 },
			[]string{"ipvs.syncPeriod", `"0s"`}},
		{"ipvs.minSyncPeriod negative", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.MinSyncPeriod.Duration = -time.Second
		}, []string{"ipvs.minSyncPeriod", `"-1s"`}},
		{"ipvs.minSyncPeriod above syncPeriod", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.MinSyncPeriod.Duration = time.Hour
		}, []string{"ipvs.minSyncPeriod", `"1h0m0s"`, "ipvs.syncPeriod"}},
		{"ipvs.tcpTimeout negative", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.TCPTimeout.Duration = -1 },
			[]string{"ipvs.tcpTimeout", `"-1ns"`}},
		{"ipvs.tcpFinTimeout negative", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPVS.TCPFinTimeout.Duration = -time.Second
		}, []string{"ipvs.tcpFinTimeout", `"-1s"`}},
		{"ipvs.udpTimeout negative", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.UDPTimeout.Duration = -time.Second },
			[]string{"ipvs.udpTimeout", `"-1s"`}},

		{"bindAddress", func(c *v1alpha1.KubeProxyConfiguration) { c.BindAddress = "node-1" },
			[]string{"bindAddress", `"node-1"`}},
		{"healthzBindAddress no port", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "localhost" },
			[]string{"healthzBindAddress", `"localhost"`}},
		{"healthzBindAddress hostname", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "localhost:10256" },
			[]string{"healthzBindAddress", `"localhost:10256"`}},
		{"metricsBindAddress port 0", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "127.0.0.1:0" },
			[]string{"metricsBindAddress", `"127.0.0.1:0"`}},
		{"metricsBindAddress port too big", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "127.0.0.1:70000" },
			[]string{"metricsBindAddress", `"127.0.0.1:70000"`}},

		{"iptables.masqueradeBit too big", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MasqueradeBit = ptr.To[int32](32) },
			[]string{"iptables.masqueradeBit", "32", "[0, 31]"}},
		{"iptables.masqueradeBit negative in ipvs mode", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode = ModeIPVS
			c.IPTables.MasqueradeBit = ptr.To[int32](-1)
		}, []string{"iptables.masqueradeBit", "-1"}},
		{"iptables.syncPeriod negative", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.SyncPeriod.Duration = -time.Second },
			[]string{"iptables.syncPeriod", `"-1s"`}},
		{"iptables.minSyncPeriod negative", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.MinSyncPeriod.Duration = -time.Second
		}, []string{"iptables.minSyncPeriod", `"-1s"`}},
		{"iptables.minSyncPeriod above syncPeriod", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.MinSyncPeriod.Duration = time.Minute
		}, []string{"iptables.minSyncPeriod", `"1m0s"`, `iptables.syncPeriod ("30s")`}},
		{"configSyncPeriod", func(c *v1alpha1.KubeProxyConfiguration) { c.ConfigSyncPeriod.Duration = -time.Minute },
			[]string{"configSyncPeriod", `"-1m0s"`}},

		{"detectLocalMode", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "PodCIDR" },
			[]string{"detectLocalMode", `"PodCIDR"`}},
		{"detectLocal.bridgeInterface", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = LocalModeBridgeInterface },
			[]string{"detectLocal.bridgeInterface: required value", `"BridgeInterface"`}},
		{"detectLocal.interfaceNamePrefix", func(c *v1alpha1.KubeProxyConfiguration) {
			c.DetectLocalMode = LocalModeInterfaceNamePrefix
		}, []string{"detectLocal.interfaceNamePrefix: required value", `"InterfaceNamePrefix"`}},

		{"conntrack.maxPerCore", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.MaxPerCore = ptr.To[int32](-1) },
			[]string{"conntrack.maxPerCore", "-1"}},
		{"conntrack.min", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.Min = ptr.To[int32](-5) },
			[]string{"conntrack.min", "-5"}},
		{"conntrack.tcpEstablishedTimeout", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: -time.Hour}
		}, []string{"conntrack.tcpEstablishedTimeout", `"-1h0m0s"`}},
		{"conntrack.tcpCloseWaitTimeout", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: -time.Hour}
		}, []string{"conntrack.tcpCloseWaitTimeout", `"-1h0m0s"`}},
		{"conntrack.udpTimeout", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.UDPTimeout.Duration = -time.Second },
			[]string{"conntrack.udpTimeout", `"-1s"`}},
		{"conntrack.udpStreamTimeout", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.UDPStreamTimeout.Duration = -time.Second },
			[]string{"conntrack.udpStreamTimeout", `"-1s"`}},

		{"clientConnection.qps", func(c *v1alpha1.KubeProxyConfiguration) { c.ClientConnection.QPS = -1 },
			[]string{"clientConnection.qps", "-1"}},
		{"clientConnection.burst", func(c *v1alpha1.KubeProxyConfiguration) { c.ClientConnection.Burst = -2 },
			[]string{"clientConnection.burst", "-2"}},
		{"oomScoreAdj too low", func(c *v1alpha1.KubeProxyConfiguration) { c.OOMScoreAdj = ptr.To[int32](-1001) },
			[]string{"oomScoreAdj", "-1001", "[-1000, 1000]"}},
		{"oomScoreAdj too high", func(c *v1alpha1.KubeProxyConfiguration) { c.OOMScoreAdj = ptr.To[int32](1001) },
			[]string{"oomScoreAdj", "1001"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(c)
			assertErrContains(t, Validate(c), tt.want...)
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *v1alpha1.KubeProxyConfiguration)
	}{
		{"defaults", func(*v1alpha1.KubeProxyConfiguration) {}},
		{"ipvs mode", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = ModeIPVS; c.IPVS.Scheduler = "mh" }},
		{"dual-stack clusterCIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.244.0.0/16,fd00:10:244::/56" }},
		{"nodePortAddresses keywords and CIDRs", func(c *v1alpha1.KubeProxyConfiguration) {
			c.NodePortAddresses = []string{"primary", "localhost", "all", "10.0.0.0/8", "fd00::/64"}
		}},
		{"listen servers disabled", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress, c.MetricsBindAddress = "", "" }},
		{"IPv6 listen addresses", func(c *v1alpha1.KubeProxyConfiguration) {
			c.BindAddress, c.HealthzBindAddress, c.MetricsBindAddress = "fd00::1", "[::]:10256", "[::1]:10249"
		}},
		{"bridge interface", func(c *v1alpha1.KubeProxyConfiguration) {
			c.DetectLocalMode, c.DetectLocal.BridgeInterface = LocalModeBridgeInterface, "cbr0"
		}},
		{"stale ipvs settings in iptables mode", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPVS.Scheduler, c.IPVS.MinSyncPeriod.Duration = "nonsense", time.Hour
		}},
		{"stale iptables periods in ipvs mode", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Mode, c.IPTables.MinSyncPeriod.Duration = ModeIPVS, time.Hour
		}},
		{"zero conntrack means leave alone", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.MaxPerCore, c.Conntrack.Min = ptr.To[int32](0), ptr.To[int32](0)
		}},
		{"range ends", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.MasqueradeBit, c.OOMScoreAdj = ptr.To[int32](31), ptr.To[int32](-1000)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(c)
			if err := Validate(c); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestValidateCollectsAllErrors(t *testing.T) {
	c := Default()
	c.Mode = "userspace"
	c.BindAddress = "x"
	c.OOMScoreAdj = ptr.To[int32](5000)
	err := Validate(c)
	assertErrContains(t, err, "mode:", "bindAddress:", "oomScoreAdj:")
	if n := strings.Count(err.Error(), "\n") + 1; n != 3 {
		t.Errorf("got %d errors, want 3:\n%v", n, err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "mode" {
		t.Errorf("first error is not a *FieldError for mode: %#v", fe)
	}
}

func TestValidateNil(t *testing.T) {
	if Validate(nil) == nil {
		t.Error("Validate(nil) returned no error")
	}
}
