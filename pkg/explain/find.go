package explain

import (
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"svcproxy.dev/svcproxy/pkg/watch"
)

// Match is a Service port found for a VIP:PORT.
type Match struct {
	Service *v1.Service
	Port    string // the Service port's name
	By      string // cluster IP, external IP, load balancer IP or node port
}

// FindTarget looks for the Service port a VIP:PORT/protocol addresses, in
// the API objects (so that Services the proxy does not handle are found
// too, and explained). A node port matches on the node's own addresses
// (local) and loopback. Services are searched in namespace/name order; the
// first match wins.
func FindTarget(svcs []*v1.Service, t Target, local []netip.Addr) (Match, bool) {
	sorted := slices.Clone(svcs)
	slices.SortFunc(sorted, func(a, b *v1.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	isLocal := t.IP.IsLoopback() || slices.Contains(local, t.IP)
	for _, kind := range []string{"cluster IP", "external IP", "load balancer IP", "node port"} {
		for _, svc := range sorted {
			for _, p := range svc.Spec.Ports {
				proto := p.Protocol
				if proto == "" {
					proto = v1.ProtocolTCP
				}
				if proto != t.Protocol {
					continue
				}
				var hit bool
				switch kind {
				case "cluster IP":
					hit = p.Port == t.Port && containsIP(clusterIPs(svc), t.IP)
				case "external IP":
					hit = p.Port == t.Port && containsIP(svc.Spec.ExternalIPs, t.IP)
				case "load balancer IP":
					var ips []string
					for _, ing := range svc.Status.LoadBalancer.Ingress {
						ips = append(ips, ing.IP)
					}
					hit = p.Port == t.Port && containsIP(ips, t.IP)
				case "node port":
					hit = p.NodePort != 0 && p.NodePort == t.Port && isLocal
				}
				if hit {
					return Match{Service: svc, Port: p.Name, By: kind}, true
				}
			}
		}
	}
	return Match{}, false
}

func clusterIPs(svc *v1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

func containsIP(list []string, ip netip.Addr) bool {
	for _, s := range list {
		if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// DaemonSelector is the label selector the daemon's informers list
// Services and EndpointSlices with: objects labelled for another proxy or
// as headless never reach it.
const DaemonSelector = "!" + watch.LabelServiceProxyName + ",!" + watch.LabelHeadless

// Watched reports whether the daemon's informers receive an object with
// these labels (DaemonSelector).
func Watched(labels map[string]string) bool {
	_, other := labels[watch.LabelServiceProxyName]
	_, headless := labels[watch.LabelHeadless]
	return !other && !headless
}

// DaemonSnapshot feeds the objects the daemon's informers would receive
// into a fresh watch.Tracker and returns its Snapshot: exactly what the
// daemon plans from. Objects the informers select away are skipped.
func DaemonSnapshot(nodeName string, node *v1.Node, svcs []*v1.Service, eps []*discovery.EndpointSlice) *watch.Snapshot {
	t := watch.NewTracker(nodeName)
	if node != nil {
		t.OnNode(node)
	}
	for _, s := range svcs {
		if Watched(s.Labels) {
			t.OnService(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, s)
		}
	}
	for _, es := range eps {
		if Watched(es.Labels) {
			t.OnEndpointSlice(es, false)
		}
	}
	return t.Snapshot()
}
