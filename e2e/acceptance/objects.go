package acceptance

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// API writes a scenario's objects and remembers what it created, so the
// next scenario starts from a clean API (namespaces stay: without a
// controller manager they would hang in Terminating).
type API struct {
	c          kubernetes.Interface
	namespaces map[string]bool
	services   map[string]bool
	slices     map[string]bool
	node       string
	cidrs      []netip.Prefix // service ranges the API server allocates from
	cidrAdded  time.Time
	// LastWrite is when the last write returned; the proxy must have synced
	// after it before flows are checked.
	LastWrite time.Time
}

// NewAPI wraps a client; ranges are the API server's --service-cluster-ip-range.
func NewAPI(c kubernetes.Interface, ranges []string) (*API, error) {
	a := &API{c: c, namespaces: map[string]bool{}, services: map[string]bool{}, slices: map[string]bool{}}
	for _, r := range ranges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, err
		}
		a.cidrs = append(a.cidrs, p)
	}
	return a, nil
}

func (a *API) wrote() { a.LastWrite = time.Now() }

func (a *API) covered(ip netip.Addr) bool {
	for _, p := range a.cidrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// EnsureServiceCIDRs makes every ClusterIP of services allocatable: for an
// address outside the API server's ranges it creates a ServiceCIDR object
// (networking.k8s.io/v1) with the scenario's matching config.serviceCIDRs
// entry, or else the address's /16 (IPv4) or /112 (IPv6). Without a
// controller manager the object has no Ready condition, which the API
// server's allocator treats as ready. The objects are kept for the rest of
// the run (deleting them needs the controller manager's finalizer handling).
func (a *API) EnsureServiceCIDRs(ctx context.Context, configured []string, services []Service) error {
	for _, s := range services {
		ips := s.ClusterIPs
		if len(ips) == 0 && s.ClusterIP != "" {
			ips = []string{s.ClusterIP}
		}
		for _, x := range ips {
			ip, err := netip.ParseAddr(x)
			if err != nil || a.covered(ip) { // "None" or already fine
				continue
			}
			p := rangeFor(ip, configured)
			name := "svcp-" + strings.NewReplacer(".", "-", ":", "-", "/", "-").Replace(p.String())
			obj := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{p.String()}}}
			if _, err := a.c.NetworkingV1().ServiceCIDRs().Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create ServiceCIDR %s: %w", p, err)
			}
			a.cidrs = append(a.cidrs, p)
			a.cidrAdded = time.Now()
		}
	}
	return nil
}

func rangeFor(ip netip.Addr, configured []string) netip.Prefix {
	for _, c := range configured {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(ip) {
			return p.Masked()
		}
	}
	if ip.Is4() {
		return netip.PrefixFrom(ip, 16).Masked()
	}
	return netip.PrefixFrom(ip, 112).Masked()
}

func (a *API) ensureNamespace(ctx context.Context, ns string) error {
	if a.namespaces[ns] {
		return nil
	}
	obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	if _, err := a.c.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	a.namespaces[ns] = true
	return nil
}

// CreateNode creates the Node with its labels and InternalIP addresses. For
// ipFamily IPv6 the IPv6 addresses come first, since the proxy takes its
// primary family from the first node address.
func (a *API) CreateNode(ctx context.Context, n Node, ipFamily string) error {
	ips := orderNodeIPs(n.IPs, ipFamily)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels}}
	_ = a.c.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
	created, err := a.c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	a.node = n.Name
	for _, ip := range ips {
		created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	if _, err := a.c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	a.wrote()
	return nil
}

func orderNodeIPs(ips []string, ipFamily string) []string {
	if ipFamily != "IPv6" {
		return ips
	}
	var v6, v4 []string
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			v4 = append(v4, s)
		} else {
			v6 = append(v6, s)
		}
	}
	return append(v6, v4...)
}

// ApplyService creates or replaces a Service and then writes its load
// balancer status through the status subresource.
func (a *API) ApplyService(ctx context.Context, s Service) error {
	if err := a.ensureNamespace(ctx, s.Namespace); err != nil {
		return err
	}
	want := s.ToAPI()
	svcs := a.c.CoreV1().Services(s.Namespace)
	var cur *corev1.Service
	err := a.retryAllocation(func() error {
		old, err := svcs.Get(ctx, s.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cur, err = svcs.Create(ctx, want.DeepCopy(), metav1.CreateOptions{})
		case err == nil:
			upd := want.DeepCopy()
			upd.ResourceVersion = old.ResourceVersion
			cur, err = svcs.Update(ctx, upd, metav1.UpdateOptions{})
			if apierrors.IsInvalid(err) { // an immutable field changed: replace
				if err = svcs.Delete(ctx, s.Name, metav1.DeleteOptions{}); err == nil {
					cur, err = svcs.Create(ctx, want.DeepCopy(), metav1.CreateOptions{})
				}
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	a.services[s.Namespace+"/"+s.Name] = true
	a.wrote()
	if !reflect.DeepEqual(cur.Status.LoadBalancer, want.Status.LoadBalancer) {
		cur.Status.LoadBalancer = want.Status.LoadBalancer
		if _, err := svcs.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("service %s/%s status: %w", s.Namespace, s.Name, err)
		}
		a.wrote()
	}
	return nil
}

// retryAllocation retries a write refused as invalid shortly after a
// ServiceCIDR was added: the API server's allocator learns of new ranges
// through an informer.
func (a *API) retryAllocation(fn func() error) error {
	for {
		err := fn()
		if err == nil || !apierrors.IsInvalid(err) || time.Since(a.cidrAdded) > 10*time.Second {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// ApplySlice creates or replaces an EndpointSlice.
func (a *API) ApplySlice(ctx context.Context, s EndpointSlice) error {
	if err := a.ensureNamespace(ctx, s.Namespace); err != nil {
		return err
	}
	want := s.ToAPI()
	cl := a.c.DiscoveryV1().EndpointSlices(s.Namespace)
	old, err := cl.Get(ctx, s.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cl.Create(ctx, want, metav1.CreateOptions{})
	case err == nil:
		want.ResourceVersion = old.ResourceVersion
		_, err = cl.Update(ctx, want, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("endpointslice %s/%s: %w", s.Namespace, s.Name, err)
	}
	a.slices[s.Namespace+"/"+s.Name] = true
	a.wrote()
	return nil
}

// DeleteService removes the Service "ns/name".
func (a *API) DeleteService(ctx context.Context, key string) error {
	ns, name, err := SplitKey(key)
	if err != nil {
		return err
	}
	if err := a.c.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete service %s: %w", key, err)
	}
	delete(a.services, key)
	a.wrote()
	return nil
}

// DeleteSlice removes the EndpointSlice "ns/name".
func (a *API) DeleteSlice(ctx context.Context, key string) error {
	ns, name, err := SplitKey(key)
	if err != nil {
		return err
	}
	if err := a.c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete endpointslice %s: %w", key, err)
	}
	delete(a.slices, key)
	a.wrote()
	return nil
}

// Reset deletes every Service, EndpointSlice and the Node this API created.
func (a *API) Reset(ctx context.Context) error {
	var errs []string
	for k := range a.slices {
		if err := a.DeleteSlice(ctx, k); err != nil && !apierrors.IsNotFound(unwrapAPI(err)) {
			errs = append(errs, err.Error())
		}
	}
	for k := range a.services {
		if err := a.DeleteService(ctx, k); err != nil && !apierrors.IsNotFound(unwrapAPI(err)) {
			errs = append(errs, err.Error())
		}
	}
	a.slices, a.services = map[string]bool{}, map[string]bool{}
	if a.node != "" {
		if err := a.c.CoreV1().Nodes().Delete(ctx, a.node, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err.Error())
		}
		a.node = ""
	}
	if len(errs) > 0 {
		return fmt.Errorf("reset: %s", strings.Join(errs, "; "))
	}
	return nil
}

func unwrapAPI(err error) error {
	for err != nil {
		if _, ok := err.(apierrors.APIStatus); ok {
			return err
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
	return err
}

// ToAPI converts the scenario Service, status included.
func (s *Service) ToAPI() *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels, Annotations: s.Annotations},
		Spec: corev1.ServiceSpec{
			Type:                          corev1.ServiceType(s.Type),
			ClusterIP:                     s.ClusterIP,
			ClusterIPs:                    s.ClusterIPs,
			ExternalIPs:                   s.ExternalIPs,
			ExternalName:                  s.ExternalName,
			LoadBalancerSourceRanges:      s.LoadBalancerSourceRanges,
			LoadBalancerClass:             s.LoadBalancerClass,
			AllocateLoadBalancerNodePorts: s.AllocateLoadBalancerNodePorts,
			ExternalTrafficPolicy:         corev1.ServiceExternalTrafficPolicy(s.ExternalTrafficPolicy),
			HealthCheckNodePort:           s.HealthCheckNodePort,
			SessionAffinity:               corev1.ServiceAffinity(s.SessionAffinity),
			PublishNotReadyAddresses:      s.PublishNotReadyAddresses,
			TrafficDistribution:           s.TrafficDistribution,
			Selector:                      s.Selector,
		},
	}
	if svc.Spec.Type == "" {
		svc.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if len(s.ClusterIPs) > 0 && s.ClusterIP == "" {
		svc.Spec.ClusterIP = s.ClusterIPs[0]
	}
	if s.InternalTrafficPolicy != "" {
		p := corev1.ServiceInternalTrafficPolicy(s.InternalTrafficPolicy)
		svc.Spec.InternalTrafficPolicy = &p
	}
	if s.IPFamilyPolicy != "" {
		p := corev1.IPFamilyPolicy(s.IPFamilyPolicy)
		svc.Spec.IPFamilyPolicy = &p
	}
	for _, f := range s.IPFamilies {
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, corev1.IPFamily(f))
	}
	if t := s.AffinityTimeout(); t != nil {
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: t}}
	}
	for _, p := range s.Ports {
		sp := corev1.ServicePort{
			Name:        p.Name,
			Protocol:    corev1.Protocol(defaultString(strings.ToUpper(p.Protocol), "TCP")),
			Port:        p.Port,
			TargetPort:  p.TargetPort,
			NodePort:    p.NodePort,
			AppProtocol: p.AppProtocol,
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	for _, ip := range s.LoadBalancerIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	for _, in := range s.LoadBalancerIngress {
		ing := corev1.LoadBalancerIngress{IP: in.IP, Hostname: in.Hostname}
		if in.IPMode != "" {
			m := corev1.LoadBalancerIPMode(in.IPMode)
			ing.IPMode = &m
		}
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, ing)
	}
	return svc
}

// LoadBalancerAddrs returns every LB ingress IP of the service.
func (s *Service) LoadBalancerAddrs() []string {
	out := append([]string{}, s.LoadBalancerIPs...)
	for _, in := range s.LoadBalancerIngress {
		if in.IP != "" {
			out = append(out, in.IP)
		}
	}
	return out
}

func defaultString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ToAPI converts the scenario EndpointSlice; nil fields stay nil.
func (s *EndpointSlice) ToAPI() *discoveryv1.EndpointSlice {
	labels := map[string]string{}
	for k, v := range s.Labels {
		labels[k] = v
	}
	labels[discoveryv1.LabelServiceName] = s.Service
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: labels},
		AddressType: discoveryv1.AddressType(defaultString(s.AddressType, "IPv4")),
	}
	for _, p := range s.Ports {
		proto := corev1.Protocol(defaultString(strings.ToUpper(p.Protocol), "TCP"))
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: p.Name, Protocol: &proto, Port: p.Port, AppProtocol: p.AppProtocol})
	}
	for _, e := range s.Endpoints {
		ep := discoveryv1.Endpoint{
			Addresses: e.Addresses,
			NodeName:  e.NodeName,
			Hostname:  e.Hostname,
			Zone:      e.Zone,
			Conditions: discoveryv1.EndpointConditions{
				Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating,
			},
		}
		if e.Hints != nil {
			ep.Hints = &discoveryv1.EndpointHints{}
			for _, z := range e.Hints.ForZones {
				ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: string(z)})
			}
			for _, n := range e.Hints.ForNodes {
				ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: string(n)})
			}
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}
