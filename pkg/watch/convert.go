package watch

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Label and annotation names the proxy honours, as kube-proxy does.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = v1.IsHeadlessService
	taintToBeDeleted      = "ToBeDeletedByClusterAutoscaler"
)

// servicePorts converts a Service into its ports. A Service this proxy must
// not handle yields no ports and no error; an invalid one yields an error
// naming the bad field, and the caller skips the whole Service. Problems that
// kube-proxy tolerates (a bad external IP) are returned as warnings.
func servicePorts(svc *v1.Service) (ports map[ServicePortName]*ServicePort, warnings []string, err error) {
	if !handled(svc) {
		return nil, nil, nil
	}
	clusterIPs, err := parseClusterIPs(svc)
	if err != nil {
		return nil, nil, err
	}
	if err := checkPorts(svc.Spec.Ports); err != nil {
		return nil, nil, err
	}
	externalIPs, w1 := parseAddrs("spec.externalIPs", svc.Spec.ExternalIPs)
	lbIPs, w2 := loadBalancerVIPs(svc)
	ranges, w3 := parseSourceRanges(svc.Spec.LoadBalancerSourceRanges)
	warnings = slices.Concat(w1, w2, w3)

	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports = make(map[ServicePortName]*ServicePort, len(svc.Spec.Ports))
	for _, sp := range svc.Spec.Ports {
		spn := ServicePortName{NamespacedName: name, Port: sp.Name, Protocol: sp.Protocol}
		ports[spn] = &ServicePort{
			Name:                     spn,
			Type:                     svc.Spec.Type,
			Protocol:                 sp.Protocol,
			Port:                     sp.Port,
			NodePort:                 sp.NodePort,
			ClusterIPs:               clusterIPs,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: ranges,
			ExternalPolicyLocal:      externalPolicyLocal(svc),
			InternalPolicyLocal:      internalPolicyLocal(svc),
			HealthCheckNodePort:      healthCheckNodePort(svc),
			SessionAffinityTimeout:   affinityTimeout(svc),
		}
	}
	return ports, warnings, nil
}

// handled reports whether the Service is one a proxy programs at all:
// headless and ExternalName Services have no virtual IP.
func handled(svc *v1.Service) bool {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return false
	}
	// A Service labelled for another proxy belongs to that proxy.
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return false
	}
	return svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != v1.ClusterIPNone
}

func parseClusterIPs(svc *v1.Service) ([]netip.Addr, error) {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 {
		raw = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for i, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("spec.clusterIPs[%d]: invalid IP %q", i, s)
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// checkPorts rejects ports that the API server would never accept but a
// broken or hand-written object might still carry.
func checkPorts(ports []v1.ServicePort) error {
	seen := map[string]bool{}
	for i, p := range ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not in 1-65535", field, p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return fmt.Errorf("%s.nodePort: %d is not in 0-65535", field, p.NodePort)
		}
		switch p.Protocol {
		case v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
		default:
			return fmt.Errorf("%s.protocol: unsupported protocol %q", field, p.Protocol)
		}
		key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if seen[key] || seen["name:"+p.Name] {
			return fmt.Errorf("%s: duplicate port %q (%s)", field, p.Name, key)
		}
		seen[key], seen["name:"+p.Name] = true, true
	}
	return nil
}

func parseAddrs(field string, raw []string) ([]netip.Addr, []string) {
	var out []netip.Addr
	var warnings []string
	for i, s := range raw {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || ip.Zone() != "" {
			warnings = append(warnings, fmt.Sprintf("%s[%d]: ignoring invalid IP %q", field, i, s))
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, warnings
}

// loadBalancerVIPs returns the ingress IPs the proxy must capture. Ingress
// entries with ipMode Proxy are left to the load balancer, as kube-proxy does.
func loadBalancerVIPs(svc *v1.Service) ([]netip.Addr, []string) {
	var raw []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy) {
			continue
		}
		raw = append(raw, ing.IP)
	}
	return parseAddrs("status.loadBalancer.ingress.ip", raw)
}

func parseSourceRanges(raw []string) ([]netip.Prefix, []string) {
	var out []netip.Prefix
	var warnings []string
	for i, s := range raw {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("spec.loadBalancerSourceRanges[%d]: ignoring invalid CIDR %q", i, s))
			continue
		}
		out = append(out, p.Masked())
	}
	return out, warnings
}

func externalPolicyLocal(svc *v1.Service) bool {
	external := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(svc.Spec.ExternalIPs) > 0
	return external && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
}

func internalPolicyLocal(svc *v1.Service) bool {
	p := svc.Spec.InternalTrafficPolicy
	return p != nil && *p == v1.ServiceInternalTrafficPolicyLocal
}

func healthCheckNodePort(svc *v1.Service) int32 {
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && externalPolicyLocal(svc) {
		return svc.Spec.HealthCheckNodePort
	}
	return 0
}

// affinityTimeout returns the ClientIP affinity timeout; kube-proxy's default
// is 10800 s when the Service asks for affinity without a timeout.
func affinityTimeout(svc *v1.Service) int32 {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	cfg := svc.Spec.SessionAffinityConfig
	if cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil && *cfg.ClientIP.TimeoutSeconds > 0 {
		return *cfg.ClientIP.TimeoutSeconds
	}
	return v1.DefaultClientIPServiceAffinitySeconds
}

// sliceEndpoints merges a Service's Slices into endpoints per service
// port. Slices are taken in name order and an ip:port seen twice keeps its
// first occurrence unless a later one is local (kube-proxy favours the local
// copy too). Each port's endpoints are sorted by "ip:port" string, as
// kube-proxy's endpointsMapFromEndpointInfo does, so the result depends
// neither on event order nor on the order of endpoints inside a slice.
// The lists point at the Slices' Endpoints; nothing is copied. The
// Slices' warnings come back in the same order.
func sliceEndpoints(svc types.NamespacedName, slicesByName map[string]*Slice) (map[ServicePortName][]*Endpoint, []string) {
	out := map[ServicePortName][]*Endpoint{}
	keys := map[ServicePortName][]string{}       // "ip:port" of each out[spn]
	seen := map[ServicePortName]map[string]int{} // "ip:port" -> index in out[spn]
	var warnings []string
	for _, n := range slices.Sorted(maps.Keys(slicesByName)) {
		warnings = append(warnings, slicesByName[n].Warnings...)
		for _, port := range slicesByName[n].Ports {
			spn := ServicePortName{NamespacedName: svc, Port: port.Name, Protocol: port.Protocol}
			if seen[spn] == nil {
				seen[spn] = map[string]int{}
			}
			for _, ep := range port.Endpoints {
				key := ep.String()
				if i, dup := seen[spn][key]; dup {
					if ep.IsLocal && !out[spn][i].IsLocal {
						out[spn][i] = ep
					}
					continue
				}
				seen[spn][key] = len(out[spn])
				out[spn] = append(out[spn], ep)
				keys[spn] = append(keys[spn], key)
			}
		}
	}
	for spn, eps := range out {
		sortByKey(eps, keys[spn])
	}
	return out, warnings
}

// sortByKey sorts eps by their "ip:port" strings (kube-proxy's order),
// given in keys: formatting them inside the comparison made two strings
// per comparison, most of a large cluster's garbage at start-up.
func sortByKey(eps []*Endpoint, keys []string) {
	type keyed struct {
		key string
		ep  *Endpoint
	}
	pairs := make([]keyed, len(eps))
	for i, ep := range eps {
		pairs[i] = keyed{keys[i], ep}
	}
	slices.SortFunc(pairs, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	for i, p := range pairs {
		eps[i] = p.ep
	}
}

// slicePort returns the name and protocol of a slice's port, or why the
// port is invalid.
func slicePort(port discovery.EndpointPort) (string, v1.Protocol, error) {
	if port.Port == nil {
		return "", "", errors.New("port number is missing")
	}
	if *port.Port < 1 || *port.Port > 65535 {
		return "", "", fmt.Errorf("port %d is not in 1-65535", *port.Port)
	}
	name, proto := "", v1.ProtocolTCP
	if port.Name != nil {
		name = *port.Name
	}
	if port.Protocol != nil {
		proto = *port.Protocol
	}
	return name, proto, nil
}

func endpointFrom(e *discovery.Endpoint, port int32, nodeName string) (*Endpoint, error) {
	if len(e.Addresses) == 0 {
		return nil, errors.New("no addresses")
	}
	addr, err := netip.ParseAddr(e.Addresses[0])
	if err != nil || addr.Zone() != "" {
		return nil, fmt.Errorf("invalid IP %q", e.Addresses[0])
	}
	ep := &Endpoint{
		Addr: addr.Unmap(),
		Port: port,
		// A missing condition means true, as the EndpointSlice API says.
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
		ep.IsLocal = nodeName != "" && ep.NodeName == nodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			ep.ZoneHints = append(ep.ZoneHints, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			ep.NodeHints = append(ep.NodeHints, n.Name)
		}
		slices.Sort(ep.ZoneHints)
		slices.Sort(ep.NodeHints)
	}
	return ep, nil
}

// nodeInfo extracts what the proxy needs from its Node.
func nodeInfo(name string, node *v1.Node) NodeInfo {
	info := NodeInfo{Name: name}
	if node == nil {
		return info
	}
	info.Labels = node.Labels
	info.Zone = node.Labels[v1.LabelTopologyZone]
	info.Deleting = node.DeletionTimestamp != nil
	for _, t := range node.Spec.Taints {
		if t.Key == taintToBeDeleted {
			info.Deleting = true
		}
	}
	return info
}
