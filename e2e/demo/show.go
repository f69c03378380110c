package demo

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"svcproxy.dev/svcproxy/e2e/acceptance"
)

// showObjects prints the demo namespace's Services and EndpointSlices
// from the API server, in the shape `kubectl get` gives them.
func showObjects(ctx context.Context, sc *acceptance.Scene) {
	const ns = "demo"
	svcs, err := sc.Kube().CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		sc.Report("show-services", false, err.Error())
		return
	}
	eps, err := sc.Kube().DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		sc.Report("show-services", false, err.Error())
		return
	}
	sc.Printf("%-12s %-13s %-13s %-15s %s\n", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)")
	for _, s := range svcs.Items {
		sc.Printf("%-12s %-13s %-13s %-15s %s\n", ns+"/"+s.Name, s.Spec.Type, s.Spec.ClusterIP, externalIPs(&s), ports(&s))
	}
	for _, s := range svcs.Items {
		showSlices(sc, s.Name, eps.Items)
	}
}

func externalIPs(s *corev1.Service) string {
	ips := append([]string{}, s.Spec.ExternalIPs...)
	for _, in := range s.Status.LoadBalancer.Ingress {
		ips = append(ips, in.IP)
	}
	if len(ips) == 0 {
		return "<none>"
	}
	return strings.Join(ips, ",")
}

func ports(s *corev1.Service) string {
	var out []string
	for _, p := range s.Spec.Ports {
		if p.NodePort != 0 {
			out = append(out, fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol))
		} else {
			out = append(out, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
	}
	return strings.Join(out, ",")
}

// showSlices prints the endpoints behind one Service: the pods a user
// would find with `kubectl get endpointslices -l kubernetes.io/service-name=NAME`.
func showSlices(sc *acceptance.Scene, svc string, all []discovery.EndpointSlice) {
	found := false
	for _, es := range all {
		if es.Labels[discovery.LabelServiceName] != svc {
			continue
		}
		found = true
		var ps []string
		for _, p := range es.Ports {
			ps = append(ps, fmt.Sprintf("%s %d/%s", deref(p.Name), deref(p.Port), deref(p.Protocol)))
		}
		sc.Printf("endpoints of demo/%s (EndpointSlice %s, port %s):\n", svc, es.Name, strings.Join(ps, ", "))
		for _, ep := range es.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			sc.Printf("    pod %-12s on node %-11s ready=%v\n", strings.Join(ep.Addresses, ","), deref(ep.NodeName), ready)
		}
	}
	if !found {
		sc.Printf("endpoints of demo/%s: none (no EndpointSlice: its selector matches no pod)\n", svc)
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// showKernel prints what the proxy programmed for one Service: its
// iptables chains, or in IPVS mode its virtual servers.
func showKernel(sc *acceptance.Scene, ns, name string) {
	if sc.Mode() == "ipvs" {
		out, err := sc.NodeCommand("ipvsadm", "-Ln")
		sc.Report("kernel-virtual-servers", err == nil && strings.Contains(string(out), "->"), errText(err))
		sc.Printf("$ ipvsadm -Ln\n%s", indent(string(out)))
		return
	}
	out, err := sc.NodeCommand("iptables-save", "-t", "nat")
	if err != nil {
		sc.Report("kernel-chains", false, fmt.Sprintf("iptables-save: %v: %s", err, out))
		return
	}
	rules := serviceRules(string(out), ns+"/"+name)
	sc.Report("kernel-chains", len(rules) > 0, "no rule of "+ns+"/"+name+" in the nat table")
	sc.Printf("$ iptables-save -t nat   # the rules of %s/%s only (%d of them), comments shortened\n", ns, name, len(rules))
	for _, r := range rules {
		sc.Printf("    %s\n", r)
	}
}

var (
	jumpTarget = regexp.MustCompile(`-j (KUBE-(?:SVC|SEP|EXT|FW|SVL)-[A-Z0-9]+)`)
	comment    = regexp.MustCompile(`-m comment --comment ("[^"]*"|\S+) `)
)

// serviceRules picks the Service's rules out of an iptables-save dump: the
// entries in the shared chains that carry its name, then every chain they
// lead to (service, external, firewall, endpoint chains), in that order.
func serviceRules(dump, svc string) []string {
	lines := strings.Split(dump, "\n")
	var out []string
	chains := map[string]bool{}
	var order []string
	follow := func(line string) {
		for _, m := range jumpTarget.FindAllStringSubmatch(line, -1) {
			if !chains[m[1]] {
				chains[m[1]] = true
				order = append(order, m[1])
			}
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, svc) && !isOwnChain(l) {
			out = append(out, shorten(l))
			follow(l)
		}
	}
	for i := 0; i < len(order); i++ {
		for _, l := range lines {
			if strings.HasPrefix(l, "-A "+order[i]+" ") {
				out = append(out, shorten(l))
				follow(l)
			}
		}
	}
	return out
}

// isOwnChain tells a rule of a per-Service chain (listed later, under its
// chain) from an entry in a shared chain.
func isOwnChain(rule string) bool {
	f := strings.Fields(rule)
	return len(f) > 1 && jumpTarget.MatchString("-j "+f[1])
}

func shorten(rule string) string {
	return comment.ReplaceAllString(rule, "")
}

// metricsSample is what the demo reads from one scrape of the proxy's
// metrics (IPv4 family, the demo's Services are IPv4).
type metricsSample struct {
	syncs, fullSyncs int
	syncSeconds      float64
	restoreBytes     float64
	rulesLast        map[string]float64
	rulesTotal       map[string]float64
}

func scrape(sc *acceptance.Scene) (metricsSample, error) {
	text, err := sc.Metrics()
	if err != nil {
		return metricsSample{}, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return metricsSample{}, fmt.Errorf("metrics: %w", err)
	}
	m := metricsSample{rulesLast: map[string]float64{}, rulesTotal: map[string]float64{}}
	for _, mf := range fams[metricName("sync_proxy_rules_duration_seconds")].GetMetric() {
		if label(mf.GetLabel(), "ip_family") == "IPv4" {
			m.syncs += int(mf.GetHistogram().GetSampleCount())
			m.syncSeconds += mf.GetHistogram().GetSampleSum()
		}
	}
	for _, mf := range fams[metricName("sync_full_proxy_rules_duration_seconds")].GetMetric() {
		if label(mf.GetLabel(), "ip_family") == "IPv4" {
			m.fullSyncs += int(mf.GetHistogram().GetSampleCount())
		}
	}
	for _, mf := range fams[metricName("sync_proxy_rules_restore_bytes")].GetMetric() {
		if label(mf.GetLabel(), "ip_family") == "IPv4" {
			m.restoreBytes += mf.GetHistogram().GetSampleSum()
		}
	}
	for name, dst := range map[string]map[string]float64{"sync_proxy_rules_iptables_last": m.rulesLast, "sync_proxy_rules_iptables_total": m.rulesTotal} {
		for _, mf := range fams[metricName(name)].GetMetric() {
			if label(mf.GetLabel(), "ip_family") == "IPv4" {
				dst[label(mf.GetLabel(), "table")] = mf.GetGauge().GetValue()
			}
		}
	}
	return m, nil
}

func metricName(n string) string { return "kubeproxy_" + n }

type labelPair interface {
	GetName() string
	GetValue() string
}

func label[L labelPair](labels []L, name string) string {
	for _, l := range labels {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// minus is what happened between an earlier scrape and this one.
func (m metricsSample) minus(prev metricsSample) metricsSample {
	return metricsSample{
		syncs:        m.syncs - prev.syncs,
		fullSyncs:    m.fullSyncs - prev.fullSyncs,
		syncSeconds:  m.syncSeconds - prev.syncSeconds,
		restoreBytes: m.restoreBytes - prev.restoreBytes,
	}
}

// rulesText says how many iptables rules the last sync wrote; in IPVS mode
// those are only the helper rules beside the virtual servers.
func rulesText(m metricsSample, mode string) string {
	kind := ""
	if mode == "ipvs" {
		kind = "helper "
	}
	return fmt.Sprintf("the last sync wrote %v nat and %v filter %srules (svcproxy owns %v nat and %v filter rules in all)",
		m.rulesLast["nat"], m.rulesLast["filter"], kind, m.rulesTotal["nat"], m.rulesTotal["filter"])
}

// showVirtualServer prints the ClusterIP virtual server of a Service's
// first port: after a scale-down the removed real server stays at weight 0
// until its connections drain (graceful termination).
func showVirtualServer(sc *acceptance.Scene, svc acceptance.Service) {
	if svc.ClusterIP == "" || len(svc.Ports) == 0 {
		return
	}
	vs := fmt.Sprintf("%s:%d", svc.ClusterIP, svc.Ports[0].Port)
	out, err := sc.NodeCommand("ipvsadm", "-Ln", "-t", vs)
	sc.Report("virtual-server-after-change", err == nil, fmt.Sprintf("ipvsadm -Ln -t %s: %v: %s", vs, err, out))
	sc.Printf("$ ipvsadm -Ln -t %s   # a removed real server stays at weight 0 until its connections drain\n%s", vs, indent(string(out)))
}

func ms(seconds float64) string { return fmt.Sprintf("%.0f ms", seconds*1000) }

func bytesText(b float64) string { return fmt.Sprintf("%.0f bytes", b) }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// spread summarises a flow's connections: per backend, how many it took
// and which client addresses it saw; other outcomes by name.
func spread(atts []acceptance.Attempt, source string) []string {
	type tally struct {
		n     int
		peers []string
	}
	byLabel := map[string]*tally{}
	var labels []string
	for _, a := range atts {
		l := a.Label()
		t := byLabel[l]
		if t == nil {
			t = &tally{}
			byLabel[l] = t
			labels = append(labels, l)
		}
		t.n++
		if a.Class == acceptance.ClassBackend && !slices.Contains(t.peers, a.Peer.Addr().String()) {
			t.peers = append(t.peers, a.Peer.Addr().String())
		}
	}
	slices.Sort(labels)
	src, _ := netip.ParseAddr(source)
	var out []string
	for _, l := range labels {
		t := byLabel[l]
		line := fmt.Sprintf("%-18s x%-3d", l, t.n)
		if len(t.peers) > 0 {
			line += " the backend saw client " + strings.Join(t.peers, ",")
			if len(t.peers) == 1 && t.peers[0] == src.Unmap().String() {
				line += " (the client's own address)"
			} else {
				line += " (masqueraded: not the client's address)"
			}
		}
		if l == acceptance.WordReject {
			line += " (refused: the Service has no endpoints)"
		}
		out = append(out, line)
	}
	return out
}

func reachesAny(atts []acceptance.Attempt, gone []netip.Addr) bool {
	for _, a := range atts {
		if a.Class == acceptance.ClassBackend && slices.Contains(gone, a.Backend.Addr()) {
			return true
		}
	}
	return false
}

// explain runs `proxy explain svc NAME` the way an operator would on the
// node and checks its verdict: OK for a healthy Service, a named layer
// for a broken one.
func explain(sc *acceptance.Scene, svc string, wantOK bool) {
	node := sc.Scenario().Node.Name
	out, _ := sc.NodeCommand(sc.ProxyBinary(), "explain", "--config", sc.ProxyConfig(), "--hostname-override", node, "svc", svc)
	text := strings.TrimRight(string(out), "\n")
	lines := strings.Split(text, "\n")
	sc.Printf("$ proxy explain svc %s     # the verdict, then the per-port part, shortened\n", svc)
	for _, l := range explainExcerpt(lines) {
		sc.Printf("    %s\n", l)
	}
	verdict := lines[0]
	if wantOK {
		sc.Report("explain-"+nameOf(svc)+"-ok", verdict == "verdict: OK", "first line: "+verdict)
		return
	}
	sc.Report("explain-"+nameOf(svc)+"-names-the-layer",
		strings.HasPrefix(verdict, "verdict: ") && strings.Contains(verdict, "[layer: "), "first line: "+verdict)
}

// explainExcerpt keeps what says the most in the least space: explain's
// verdict line and, of its per-port section, the endpoints this node uses
// and the traffic decision, then the kernel check (the planned rules in
// between are left out).
func explainExcerpt(lines []string) []string {
	out := []string{lines[0]}
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "port '") })
	if start < 0 {
		return out
	}
	out = append(out, "...")
	inRules := false
	for _, l := range lines[start:] {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, "planned rules:") || strings.HasPrefix(t, "planned helper rules:"):
			inRules = true
			out = append(out, l, "    ...")
		case strings.HasPrefix(t, "kernel") || strings.HasPrefix(t, "IPVS kernel state"):
			inRules = false
			out = append(out, l)
		case !inRules:
			out = append(out, l)
		}
	}
	return out
}

func nameOf(nsName string) string {
	_, name, _ := strings.Cut(nsName, "/")
	return name
}

func indent(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
