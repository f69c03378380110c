package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// header is the apiVersion/kind every valid file starts with.
const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// assertErrContains fails unless err is non-nil and its message contains
// every one of want.
func assertErrContains(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings: the JSON path and the value, at least
	}{
		// Envelope.
		{"empty file", "", []string{"empty"}},
		{"only comments", "# nothing here\n\n", []string{"empty"}},
		{"not a mapping", "- a\n- b\n", []string{"mapping", `["a","b"]`}},
		{"bad YAML", header + "mode: [unclosed\n", []string{"invalid YAML"}},
		{"duplicate key", header + "mode: ipvs\nmode: iptables\n", []string{`"mode" already set`}},
		{"missing apiVersion", "kind: KubeProxyConfiguration\n", []string{"apiVersion: required value", APIVersion}},
		{"missing kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n", []string{"kind: required value", Kind}},
		{"wrong apiVersion", "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
			[]string{"apiVersion", `"kubeproxy.config.k8s.io/v1beta1"`}},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
			[]string{"kind", `"KubeletConfiguration"`}},
		{"apiVersion not a string", "apiVersion: 1\nkind: KubeProxyConfiguration\n", []string{"apiVersion", "1"}},

		// Unknown fields, at every depth.
		{"unknown top-level field", header + "proxyMode: ipvs\n", []string{`unknown field "proxyMode"`}},
		{"unknown nested field", header + "iptables:\n  masqueradeBits: 14\n", []string{`unknown field "iptables.masqueradeBits"`}},
		{"unknown deep field", header + "logging:\n  options:\n    text:\n      bufferSize: 1\n",
			[]string{`unknown field "logging.options.text.bufferSize"`}},
		{"wrong case", header + "BindAddress: 1.2.3.4\n", []string{`unknown field "BindAddress"`, `did you mean "bindAddress"`}},
		{"unknown clientConnection field", header + "clientConnection:\n  kubeConfig: /x\n",
			[]string{`unknown field "clientConnection.kubeConfig"`, `"kubeconfig"`}},
		{"unknown conntrack field", header + "conntrack:\n  max: 1\n", []string{`unknown field "conntrack.max"`}},

		// Durations.
		{"bad duration", header + "iptables:\n  syncPeriod: 3x\n", []string{"iptables.syncPeriod", `"3x"`}},
		{"duration as number", header + "configSyncPeriod: 30\n", []string{"configSyncPeriod", "30", "duration string"}},
		{"empty duration", header + "ipvs:\n  minSyncPeriod: \"\"\n", []string{"ipvs.minSyncPeriod", `""`}},
		{"null duration", header + "iptables:\n  minSyncPeriod:\n", []string{"iptables.minSyncPeriod", "null"}},
		{"bad pointer duration", header + "conntrack:\n  tcpEstablishedTimeout: 1 day\n",
			[]string{"conntrack.tcpEstablishedTimeout", `"1 day"`}},
		{"bad ipvs duration", header + "ipvs:\n  tcpTimeout: 5min\n", []string{"ipvs.tcpTimeout", `"5min"`}},
		{"bad logging flushFrequency", header + "logging:\n  flushFrequency: soon\n", []string{"logging.flushFrequency", `"soon"`}},

		// Wrong types.
		{"string for int", header + "iptables:\n  masqueradeBit: fourteen\n", []string{"iptables.masqueradeBit", `"fourteen"`, "integer"}},
		{"quoted int", header + "oomScoreAdj: \"-999\"\n", []string{"oomScoreAdj", `"-999"`}},
		{"string for float", header + "clientConnection:\n  qps: fast\n", []string{"clientConnection.qps", `"fast"`}},
		{"fraction for int", header + "clientConnection:\n  burst: 1.5\n", []string{"clientConnection.burst", "1.5"}},
		{"int out of range", header + "conntrack:\n  min: 99999999999\n", []string{"conntrack.min", "99999999999", "range"}},
		{"negative uint", header + "logging:\n  verbosity: -1\n", []string{"logging.verbosity", "-1"}},
		{"number for string", header + "mode: 4\n", []string{"mode", "4", "string"}},
		{"bool for string", header + "hostnameOverride: yes\n", []string{"hostnameOverride", "true"}},
		{"string for bool", header + "iptables:\n  masqueradeAll: maybe\n", []string{"iptables.masqueradeAll", `"maybe"`}},
		{"string for list", header + "nodePortAddresses: 10.0.0.0/8\n", []string{"nodePortAddresses", `"10.0.0.0/8"`, "list"}},
		{"bad list element", header + "ipvs:\n  excludeCIDRs: [10.0.0.0/8, 7]\n", []string{"ipvs.excludeCIDRs[1]", "7"}},
		{"scalar for object", header + "iptables: true\n", []string{"iptables", "true", "object"}},
		{"bad feature gate", header + "featureGates:\n  Foo: sometimes\n", []string{"featureGates.Foo", `"sometimes"`}},

		// Decoded fine, rejected by Validate.
		{"unsupported mode", header + "mode: userspace\n", []string{`mode: unsupported value "userspace"`}},
		{"validation after defaulting", header + "iptables:\n  minSyncPeriod: 1m\n",
			[]string{"iptables.minSyncPeriod", `"1m0s"`, "iptables.syncPeriod"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Decode([]byte(tt.yaml))
			assertErrContains(t, err, tt.want...)
			if cfg != nil {
				t.Errorf("got a configuration along with the error")
			}
		})
	}
}

func TestDecodeEmptyIsErrEmpty(t *testing.T) {
	for _, in := range []string{"", "  \n", "# comment\n", "null\n", "---\n"} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrEmpty) {
			t.Errorf("Decode(%q) = %v, want ErrEmpty", in, err)
		}
	}
}

func TestDecodeReportsAllErrors(t *testing.T) {
	in := header + "iptables:\n  masqueradeBits: 1\n  syncPeriod: 3x\nclientConnection:\n  qps: fast\nmode: 7\n"
	_, err := Decode([]byte(in))
	assertErrContains(t, err,
		`unknown field "iptables.masqueradeBits"`,
		`iptables.syncPeriod: invalid duration "3x"`,
		`clientConnection.qps: invalid type "fast"`,
		`mode: invalid type 7`,
	)
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Errorf("error %v does not wrap a *FieldError", err)
	}
}

func TestDecodeMinimalYieldsDefaults(t *testing.T) {
	cfg, err := Decode([]byte(header))
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("minimal file:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestLoadMinimalFile(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Errorf("testdata/minimal.yaml does not yield exactly the defaults: %+v", cfg)
	}
}

// TestLoadKubeadmFile checks the ConfigMap kubeadm generates, with every
// field present but zero or null: it must come out as the defaults plus
// the two values it sets.
func TestLoadKubeadmFile(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "kubeadm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.ClientConnection.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
	want.ClusterCIDR = "10.244.0.0/16"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("kubeadm file:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestLoadFullFile(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		field     string
		got, want any
	}{
		{"featureGates", cfg.FeatureGates, map[string]bool{"SomeAlphaFeature": true}},
		{"clientConnection.kubeconfig", cfg.ClientConnection.Kubeconfig, "/var/lib/kube-proxy/kubeconfig"},
		{"clientConnection.acceptContentTypes", cfg.ClientConnection.AcceptContentTypes, "application/json"},
		{"clientConnection.contentType", cfg.ClientConnection.ContentType, "application/json"},
		{"clientConnection.qps", cfg.ClientConnection.QPS, float32(50)},
		{"clientConnection.burst", cfg.ClientConnection.Burst, int32(100)},
		{"logging.format", cfg.Logging.Format, "text"},
		{"logging.flushFrequency", cfg.Logging.FlushFrequency.Duration.Duration, 10 * time.Second},
		{"logging.verbosity", uint32(cfg.Logging.Verbosity), uint32(2)},
		{"hostnameOverride", cfg.HostnameOverride, "node-1"},
		{"bindAddress", cfg.BindAddress, "10.0.0.5"},
		{"healthzBindAddress", cfg.HealthzBindAddress, "10.0.0.5:10266"},
		{"metricsBindAddress", cfg.MetricsBindAddress, "0.0.0.0:10259"},
		{"bindAddressHardFail", cfg.BindAddressHardFail, true},
		{"enableProfiling", cfg.EnableProfiling, true},
		{"mode", cfg.Mode, ModeIPTables},
		{"iptables.masqueradeAll", cfg.IPTables.MasqueradeAll, true},
		{"iptables.masqueradeBit", cfg.IPTables.MasqueradeBit, ptr.To[int32](15)},
		{"iptables.localhostNodePorts", cfg.IPTables.LocalhostNodePorts, ptr.To(false)},
		{"iptables.syncPeriod", cfg.IPTables.SyncPeriod.Duration, time.Minute},
		{"iptables.minSyncPeriod", cfg.IPTables.MinSyncPeriod.Duration, 2 * time.Second},
		{"ipvs.scheduler", cfg.IPVS.Scheduler, "wrr"},
		{"ipvs.excludeCIDRs", cfg.IPVS.ExcludeCIDRs, []string{"192.168.0.0/16"}},
		{"ipvs.strictARP", cfg.IPVS.StrictARP, true},
		{"ipvs.syncPeriod", cfg.IPVS.SyncPeriod.Duration, 45 * time.Second},
		{"ipvs.minSyncPeriod", cfg.IPVS.MinSyncPeriod.Duration, 5 * time.Second},
		{"ipvs.tcpTimeout", cfg.IPVS.TCPTimeout.Duration, 15 * time.Minute},
		{"ipvs.tcpFinTimeout", cfg.IPVS.TCPFinTimeout.Duration, 30 * time.Second},
		{"ipvs.udpTimeout", cfg.IPVS.UDPTimeout.Duration, 5 * time.Minute},
		{"detectLocalMode", cfg.DetectLocalMode, LocalModeClusterCIDR},
		{"clusterCIDR", cfg.ClusterCIDR, "10.244.0.0/16,fd00:10:244::/56"},
		{"nodePortAddresses", cfg.NodePortAddresses, []string{"primary", "10.0.0.0/8"}},
		{"oomScoreAdj", cfg.OOMScoreAdj, ptr.To[int32](-500)},
		{"conntrack.maxPerCore", cfg.Conntrack.MaxPerCore, ptr.To[int32](65536)},
		{"conntrack.min", cfg.Conntrack.Min, ptr.To[int32](262144)},
		{"conntrack.tcpEstablishedTimeout", cfg.Conntrack.TCPEstablishedTimeout, &metav1.Duration{Duration: 12 * time.Hour}},
		{"conntrack.tcpCloseWaitTimeout", cfg.Conntrack.TCPCloseWaitTimeout, &metav1.Duration{Duration: 30 * time.Minute}},
		{"conntrack.tcpBeLiberal", cfg.Conntrack.TCPBeLiberal, true},
		{"conntrack.udpTimeout", cfg.Conntrack.UDPTimeout.Duration, 30 * time.Second},
		{"conntrack.udpStreamTimeout", cfg.Conntrack.UDPStreamTimeout.Duration, 2 * time.Minute},
		{"configSyncPeriod", cfg.ConfigSyncPeriod.Duration, 10 * time.Minute},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.field, c.got, c.want)
		}
	}
}

// TestLoadJSON checks that a JSON file (which kube-proxy also accepts)
// loads, and that IPv6 and mode-specific settings come through.
func TestLoadJSON(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "ipvs.json"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != ModeIPVS || cfg.IPVS.Scheduler != "lc" {
		t.Errorf("mode/scheduler = %q/%q, want ipvs/lc", cfg.Mode, cfg.IPVS.Scheduler)
	}
	if cfg.HealthzBindAddress != "[fd00::5]:10256" {
		t.Errorf("healthzBindAddress = %q, want the default port appended", cfg.HealthzBindAddress)
	}
	if cfg.MetricsBindAddress != "[::1]:10249" {
		t.Errorf("metricsBindAddress = %q, want the IPv6 default", cfg.MetricsBindAddress)
	}
}

func TestLoadErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(missing)
	assertErrContains(t, err, missing)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v does not wrap os.ErrNotExist", err)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(header+"iptables:\n  syncPeriod: 3x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	assertErrContains(t, err, bad, "iptables.syncPeriod", `"3x"`)
}

// TestExampleFiles checks that the commented examples shipped in config/
// load as they are.
func TestExampleFiles(t *testing.T) {
	for file, mode := range map[string]v1alpha1.ProxyMode{
		"iptables.yaml": ModeIPTables,
		"ipvs.yaml":     ModeIPVS,
	} {
		t.Run(file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("..", "..", "config", file))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Mode != mode {
				t.Errorf("mode = %q, want %q", cfg.Mode, mode)
			}
		})
	}
}

func TestSyncPeriods(t *testing.T) {
	cfg := Default()
	cfg.IPTables.SyncPeriod.Duration, cfg.IPTables.MinSyncPeriod.Duration = time.Minute, 2*time.Second
	cfg.IPVS.SyncPeriod.Duration, cfg.IPVS.MinSyncPeriod.Duration = 45*time.Second, 3*time.Second

	sync, minSync := SyncPeriods(cfg)
	if sync != time.Minute || minSync != 2*time.Second {
		t.Errorf("iptables mode: SyncPeriods = %v, %v; want 1m, 2s", sync, minSync)
	}
	cfg.Mode = ModeIPVS
	sync, minSync = SyncPeriods(cfg)
	if sync != 45*time.Second || minSync != 3*time.Second {
		t.Errorf("ipvs mode: SyncPeriods = %v, %v; want 45s, 3s", sync, minSync)
	}
}
