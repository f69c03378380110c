package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/conntrack"
	"svcproxy.dev/svcproxy/pkg/health"
	"svcproxy.dev/svcproxy/pkg/hostaddr"
	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/proxy"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// serve runs the proxy until ctx is done.
func serve(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, f *flags, src configSource) error {
	client, err := newClient(cfg, f.master)
	if err != nil {
		return err
	}
	nodeName, err := nodeName(cfg)
	if err != nil {
		return err
	}
	notifyReady("waiting for Node " + nodeName)
	node := waitForNode(ctx, client, nodeName)
	notifyStatus("Node " + nodeName + " found; first sync pending")
	syncPeriod, minSyncPeriod := config.SyncPeriods(cfg)
	klog.InfoS("Starting svcproxy", "version", version, "mode", cfg.Mode, "node", nodeName, "syncPeriod", syncPeriod, "minSyncPeriod", minSyncPeriod)

	providers, err := newProviders(ctx, cfg, node)
	if err != nil {
		return err
	}
	applyConntrackSettings(cfg)
	hs := health.NewProxyHealthServer(health.ProxyHealthServerOptions{Addr: cfg.HealthzBindAddress, HealthTimeout: 2 * syncPeriod})
	svcHealth := health.NewServiceHealthServer(health.ServiceHealthServerOptions{NodeIPs: healthCheckIPs(cfg, node), ProxyHealth: hs})
	go runServer("healthz", func() error { return hs.Run(ctx) })
	go runServer("metrics", func() error { return metrics.Serve(ctx, cfg.MetricsBindAddress, cfg.EnableProfiling) })

	tracker := watch.NewTracker(nodeName)
	tracker.SetReporter(eventReporter(ctx, client, nodeName))
	cleaner := &conntrack.Cleaner{Local: hostaddr.NewCache(hostaddr.Node()).Addrs, FullEvery: syncPeriod}
	conntrackWork := newLatest[*watch.Snapshot]()
	go conntrackWork.each(ctx, func(snap *watch.Snapshot) {
		for _, b := range providers {
			cleaner.Reconcile(snap, b.Family())
		}
	})
	var leftovers sync.Once
	var runner *watch.Runner
	daemon := proxy.New(proxy.Options{
		Tracker: tracker, Providers: providers, Health: hs, SvcHealth: svcHealth, SyncPeriod: syncPeriod,
		Repair: func() { runner.Trigger() },
		OnSynced: func(snap *watch.Snapshot, full bool) {
			// The other mode's state goes only once this mode's rules are
			// complete, so Services keep answering through a mode switch.
			leftovers.Do(func() {
				removeOtherModeLeftovers(providers)
				notifyStatus(fmt.Sprintf("first sync done at %s; keeping %s rules in sync", time.Now().Format(time.TimeOnly), cfg.Mode))
			})
			if full {
				cleaner.ReadNext()
			}
			conntrackWork.offer(snap)
		},
	})
	runner = watch.NewRunner(daemon.Sync, watch.RunnerOptions{MinInterval: minSyncPeriod, MaxInterval: syncPeriod, Burst: 2, Gather: daemon.GatherDelay})
	go daemon.RunDriftChecks(ctx)
	rl := &reloader{path: src.path, load: src.load, running: cfg, poll: configPollInterval,
		apply: func(c *v1alpha1.KubeProxyConfiguration) {
			syncPeriod, minSyncPeriod := config.SyncPeriods(c)
			runner.SetIntervals(minSyncPeriod, syncPeriod)
			daemon.SetSyncPeriod(syncPeriod)
			hs.SetHealthTimeout(2 * syncPeriod)
			src.setVerbosity(c)
			applyConntrackSettings(c)
		}}
	go rl.run(ctx, src.hup)
	synced := watch.Watch(ctx, tracker, watch.InformerOptions{
		Client: client, NodeName: nodeName, Resync: cfg.ConfigSyncPeriod.Duration,
		OnChange: func() { daemon.Queued(); runner.Trigger() },
	})
	for _, b := range providers {
		// A proxy that never manages a first sync must turn unhealthy.
		hs.QueuedUpdate(b.Family())
	}
	runner.Run(ctx, synced)
	return nil
}

func applyConntrackSettings(cfg *v1alpha1.KubeProxyConfiguration) {
	inHost, err := conntrack.InHostNetns()
	if err != nil {
		// Most likely the host's namespace (a node agent under a
		// capability bounding set): try, and let the write say otherwise.
		klog.V(2).InfoS("Cannot tell whether this is the host's network namespace; raising nf_conntrack_max if needed anyway", "err", err)
		inHost = true
	}
	if err := conntrack.Apply(conntrack.Sysctl{Root: "/proc/sys"}, conntrack.SettingsFrom(cfg.Conntrack), inHost); err != nil {
		klog.ErrorS(err, "Applying conntrack settings; going on with the kernel's")
	}
}

func runServer(name string, run func() error) {
	if err := run(); err != nil {
		klog.ErrorS(err, "Server stopped", "server", name)
	}
}

func newClient(cfg *v1alpha1.KubeProxyConfiguration, master string) (kubernetes.Interface, error) {
	kubeconfig := cfg.ClientConnection.Kubeconfig
	var rc *rest.Config
	var err error
	if kubeconfig == "" && master == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags(master, kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	rc.QPS = cfg.ClientConnection.QPS
	rc.Burst = int(cfg.ClientConnection.Burst)
	rc.ContentType = cfg.ClientConnection.ContentType
	rc.AcceptContentTypes = cfg.ClientConnection.AcceptContentTypes
	rc.UserAgent = "svcproxy/" + version
	return kubernetes.NewForConfig(rc)
}

func nodeName(cfg *v1alpha1.KubeProxyConfiguration) (string, error) {
	if cfg.HostnameOverride != "" {
		return strings.ToLower(strings.TrimSpace(cfg.HostnameOverride)), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	return strings.ToLower(h), nil
}

// waitForNode fetches this node's Node object, needed for its primary IPs
// and pod CIDRs; like kube-proxy it waits a while and then goes on without.
func waitForNode(ctx context.Context, client kubernetes.Interface, name string) *v1.Node {
	deadline := time.Now().Add(30 * time.Second)
	for {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return node
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			klog.ErrorS(err, "Could not get this node's Node object; going on without its addresses", "node", name)
			return nil
		}
		time.Sleep(time.Second)
	}
}

// localAddrs lists the addresses of this network namespace's interfaces.
func localAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		klog.ErrorS(err, "Listing local addresses")
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// healthCheckIPs are the addresses health-check NodePorts listen on (see
// config.HealthCheckIPs), with a log line when there are none.
func healthCheckIPs(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) []net.IP {
	out := config.HealthCheckIPs(cfg, node, localAddrs())
	if out != nil && len(out) == 0 {
		klog.InfoS("nodePortAddresses match no address of this node: health-check NodePorts will not be opened", "nodePortAddresses", cfg.NodePortAddresses)
	}
	return out
}

// eventReporter turns skipped invalid input into Warning Events on the
// Service, so `kubectl describe service` shows why it is not proxied.
func eventReporter(ctx context.Context, client kubernetes.Interface, nodeName string) watch.Reporter {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "svcproxy", Host: nodeName})
	return func(svc *v1.Service, reason, message string) {
		recorder.Event(svc, v1.EventTypeWarning, reason, message)
	}
}
