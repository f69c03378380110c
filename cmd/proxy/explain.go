package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/vishvananda/netlink"

	"svcproxy.dev/svcproxy/pkg/config"
	"svcproxy.dev/svcproxy/pkg/explain"
	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/ipvs"
)

// Exit codes of explain and diff.
const (
	exitOK      = 0 // explain: verdict OK; diff: no difference
	exitProblem = 1 // explain: a layer is wrong; diff: the kernel differs
	exitError   = 2 // bad usage, or the API or kernel could not be read
)

const explainUsage = `usage: proxy explain [flags] svc NAMESPACE/NAME [--from SOURCE_IP]
       proxy explain [flags] VIP:PORT[/tcp|udp|sctp] [--from SOURCE_IP]

Walks one Service through the layers (Service, EndpointSlices, the endpoints
this node uses and why, the planned rules next to the kernel's, and with
--from where a packet goes) and prints the first wrong layer as the verdict.
In IPVS mode (the config file's mode, as for the daemon) it shows the
planned virtual servers and real servers next to the kernel's, the writes
the next sync would make for them, and the helper iptables rules; --from
follows the helper rules to the virtual server and its real servers with
their weights.
Run it on the node, as root: it reads the API through the kubeconfig and
the node's kernel rules. It takes the daemon's flags (--config, --kubeconfig,
--master, --hostname-override, ...) so it plans exactly as the daemon does.
Exit status: 0 OK, 1 a layer is wrong, 2 error.

flags:
`

// subcommandFlags registers the daemon's flags plus -o for a subcommand.
func subcommandFlags(name, usage string, stderr io.Writer) (*flag.FlagSet, *flags, *string) {
	fs := flag.NewFlagSet("proxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := registerFlags(fs)
	klog.InitFlags(fs)
	output := fs.String("o", "text", "Output format: text or json.")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	return fs, f, output
}

// parseInterspersed parses flags that may come before, between or after
// the positional arguments, which it returns.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runExplain(args []string, stdout, stderr io.Writer) int {
	fs, f, output := subcommandFlags("explain", explainUsage, stderr)
	from := fs.String("from", "", "Trace a new connection from this source IP (a pod, an outside client, or this node).")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitError
	}
	defer klog.Flush()
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "error: "+format+"\n", a...)
		fs.Usage()
		return exitError
	}
	if *output != "text" && *output != "json" {
		return usageErr("-o must be text or json")
	}
	var q explain.Query
	switch {
	case len(pos) == 2 && (pos[0] == "svc" || pos[0] == "service"):
		ns, name, ok := strings.Cut(pos[1], "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return usageErr("%q is not NAMESPACE/NAME", pos[1])
		}
		q.Service = ns + "/" + name
	case len(pos) == 1:
		t, err := explain.ParseTarget(pos[0])
		if err != nil {
			return usageErr("%v", err)
		}
		q.Target = &t
	default:
		return usageErr("expected svc NAMESPACE/NAME or VIP:PORT[/tcp|udp|sctp]")
	}
	if *from != "" {
		a, err := netip.ParseAddr(*from)
		if err != nil {
			return usageErr("--from %q is not an IP address", *from)
		}
		q.From = a.Unmap()
	}
	cfg, err := f.configuration(fs)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, err := gatherExplain(ctx, cfg, f.master, q)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	rep := explain.Build(*in)
	if *output == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	if rep.Verdict != explain.VerdictOK {
		return exitProblem
	}
	return exitOK
}

// nodeState is what both subcommands read of this node: its API objects,
// addresses, and per IP family the daemon's plan options and the kernel's
// rules.
type nodeState struct {
	client   kubernetes.Interface
	nodeName string
	node     *v1.Node
	local    []netip.Addr
	families []explain.Family
}

func readNode(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, master string) (*nodeState, error) {
	client, err := newClient(cfg, master)
	if err != nil {
		return nil, err
	}
	st := &nodeState{client: client, local: localAddrs()}
	if st.nodeName, err = nodeName(cfg); err != nil {
		return nil, err
	}
	st.node, err = client.CoreV1().Nodes().Get(ctx, st.nodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		st.node = nil
	case err != nil:
		return nil, fmt.Errorf("reading Node %s: %w", st.nodeName, err)
	}
	st.families = kernelFamilies(cfg, st.node)
	return st, nil
}

// kernelFamilies builds the families exactly as the daemon does
// (iptablesFamilies, and in IPVS mode newIPVSProviders' options and helper
// rule planner) and reads each one's rules with iptables-save and, in IPVS
// mode, its IPVS state.
func kernelFamilies(cfg *v1alpha1.KubeProxyConfiguration, node *v1.Node) []explain.Family {
	if cfg.Mode == config.ModeNFTables {
		return nftablesExplainFamilies(cfg, node)
	}
	if cfg.Mode != config.ModeIPTables && cfg.Mode != config.ModeIPVS {
		msg := fmt.Sprintf("mode %s: only iptables and ipvs modes are checked", cfg.Mode)
		return []explain.Family{{Family: v1.IPv4Protocol, Options: planOptions(cfg, node, v1.IPv4Protocol), KernelError: msg}}
	}
	backend := iptables.DetectBackend()
	fams, err := iptablesFamilies(cfg, node, backend)
	if err != nil {
		return []explain.Family{{Family: v1.IPv4Protocol, Options: planOptions(cfg, node, v1.IPv4Protocol), Backend: string(backend), KernelError: err.Error()}}
	}
	var out []explain.Family
	for _, f := range fams {
		ef := explain.Family{Family: f.family, Options: f.opts, Backend: string(backend), Kernel: explain.Kernel{}}
		if cfg.Mode == config.ModeIPVS {
			// IPVS mode serves no NodePort on loopback addresses.
			ef.Options.LocalhostNodePorts = false
			ef.Planner = ipvs.PlanRules
			ef.IPVS = ipvsFamily(cfg, f)
		}
		for _, table := range []string{iptables.TableNAT, iptables.TableFilter, iptables.TableMangle} {
			save, err := f.kernel.Save(table)
			if err != nil {
				ef.Kernel, ef.KernelError = nil, err.Error()
				break
			}
			ef.Kernel.Merge(explain.ParseSave(save))
		}
		out = append(out, ef)
	}
	return out
}

func gatherExplain(ctx context.Context, cfg *v1alpha1.KubeProxyConfiguration, master string, q explain.Query) (*explain.Input, error) {
	st, err := readNode(ctx, cfg, master)
	if err != nil {
		return nil, err
	}
	in := &explain.Input{NodeName: st.nodeName, Node: st.node, Families: st.families, Local: st.local, Mode: string(cfg.Mode)}
	core := st.client.CoreV1()
	if q.Target != nil {
		list, err := core.Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing Services: %w", err)
		}
		svcs := make([]*v1.Service, len(list.Items))
		for i := range list.Items {
			svcs[i] = &list.Items[i]
		}
		if m, ok := explain.FindTarget(svcs, *q.Target, st.local); ok {
			in.Service = m.Service
			q.Service = m.Service.Namespace + "/" + m.Service.Name
			q.MatchedPort, q.MatchedBy = &m.Port, m.By
		}
	} else {
		ns, name, _ := strings.Cut(q.Service, "/")
		svc, err := core.Services(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("reading Service %s: %w", q.Service, err)
		default:
			in.Service = svc
		}
	}
	if in.Service != nil {
		list, err := st.client.DiscoveryV1().EndpointSlices(in.Service.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discovery.LabelServiceName + "=" + in.Service.Name,
		})
		if err != nil {
			return nil, fmt.Errorf("listing EndpointSlices: %w", err)
		}
		for i := range list.Items {
			in.Slices = append(in.Slices, &list.Items[i])
		}
	}
	var svcs []*v1.Service
	if in.Service != nil {
		svcs = []*v1.Service{in.Service}
	}
	in.Snapshot = explain.DaemonSnapshot(st.nodeName, st.node, svcs, in.Slices)
	var fams []v1.IPFamily
	for _, f := range in.Families {
		fams = append(fams, f.Family)
	}
	large, err := largeClusterFamilies(ctx, st.client, fams)
	if err != nil {
		return nil, err
	}
	for i := range in.Families {
		in.Families[i].Options.LargeCluster = large[in.Families[i].Family]
	}
	if q.From.IsValid() && explain.SourceKind(q.From, st.local) != explain.SourceNode {
		q.InIface = arrivalInterface(q.From)
	}
	in.Query = q
	return in, nil
}

// largeClusterFamilies reports the families in which the daemon plans
// without endpoint comments (iptables.LargeClusterEndpoints): explain
// plans one Service, and must plan it as the daemon planned the whole
// cluster. It pages through the slices the daemon watches and stops as
// soon as the answer is known, so a large cluster costs a page or two.
func largeClusterFamilies(ctx context.Context, client kubernetes.Interface, families []v1.IPFamily) (map[v1.IPFamily]bool, error) {
	counts := map[v1.IPFamily]int{}
	large := func() map[v1.IPFamily]bool {
		out := map[v1.IPFamily]bool{}
		for _, f := range families {
			out[f] = counts[f] > iptables.LargeClusterEndpoints
		}
		return out
	}
	allLarge := func() bool {
		for _, l := range large() {
			if !l {
				return false
			}
		}
		return true
	}
	opts := metav1.ListOptions{LabelSelector: explain.DaemonSelector, Limit: 500}
	for {
		list, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing EndpointSlices: %w", err)
		}
		for _, s := range list.Items {
			// The daemon counts an endpoint once per Service port.
			counts[v1.IPFamily(s.AddressType)] += len(s.Endpoints) * max(1, len(s.Ports))
		}
		if list.Continue == "" || allLarge() {
			return large(), nil
		}
		opts.Continue = list.Continue
	}
}

// arrivalInterface is the interface packets from src come in on: the one
// the node routes src through (for interface-based local traffic detection).
func arrivalInterface(src netip.Addr) string {
	routes, err := netlink.RouteGet(net.IP(src.AsSlice()))
	if err != nil || len(routes) == 0 {
		return ""
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return ""
	}
	return link.Attrs().Name
}
