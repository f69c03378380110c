package main

import (
	"flag"
	"strings"

	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
)

// flags are kube-proxy's flags for the common cases. A flag given on the
// command line overrides the same setting in the config file.
type flags struct {
	configFile         string
	kubeconfig         string
	master             string
	hostnameOverride   string
	proxyMode          string
	clusterCIDR        string
	nodePortAddresses  string
	metricsBindAddress string
	healthzBindAddress string
	cleanup            bool
	version            bool
}

func registerFlags(fs *flag.FlagSet) *flags {
	f := &flags{}
	fs.StringVar(&f.configFile, "config", "", "Path to a KubeProxyConfiguration file.")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file (in-cluster config when empty).")
	fs.StringVar(&f.master, "master", "", "Address of the Kubernetes API server (overrides the kubeconfig).")
	fs.StringVar(&f.hostnameOverride, "hostname-override", "", "Name of this node (default: the hostname).")
	fs.StringVar(&f.proxyMode, "proxy-mode", "", "Which proxy mode to use: 'iptables' or 'ipvs'.")
	fs.StringVar(&f.clusterCIDR, "cluster-cidr", "", "The CIDR range(s) of pods in the cluster, comma-separated.")
	fs.StringVar(&f.nodePortAddresses, "nodeport-addresses", "", "Comma-separated CIDRs (or 'primary') whose addresses serve NodePorts.")
	fs.StringVar(&f.metricsBindAddress, "metrics-bind-address", "", "host:port for the metrics server (empty to disable).")
	fs.StringVar(&f.healthzBindAddress, "healthz-bind-address", "", "host:port for /healthz and /livez (empty to disable).")
	fs.BoolVar(&f.cleanup, "cleanup", false, "Remove every rule this proxy (or kube-proxy) created, then exit.")
	fs.BoolVar(&f.version, "version", false, "Print the version and exit.")
	return f
}

// configuration loads the file (or kube-proxy's defaults), applies the
// flags that were set, and validates the result.
func (f *flags) configuration(fs *flag.FlagSet) (*v1alpha1.KubeProxyConfiguration, error) {
	cfg := config.Default()
	if f.configFile != "" {
		var err error
		if cfg, err = config.Load(f.configFile); err != nil {
			return nil, err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	override := func(name string, apply func()) {
		if set[name] {
			apply()
		}
	}
	override("kubeconfig", func() { cfg.ClientConnection.Kubeconfig = f.kubeconfig })
	override("hostname-override", func() { cfg.HostnameOverride = f.hostnameOverride })
	override("proxy-mode", func() { cfg.Mode = v1alpha1.ProxyMode(f.proxyMode) })
	override("cluster-cidr", func() { cfg.ClusterCIDR = f.clusterCIDR })
	override("nodeport-addresses", func() { cfg.NodePortAddresses = splitList(f.nodePortAddresses) })
	override("metrics-bind-address", func() { cfg.MetricsBindAddress = f.metricsBindAddress })
	override("healthz-bind-address", func() { cfg.HealthzBindAddress = f.healthzBindAddress })
	if err := config.Validate(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
