package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"svcproxy.dev/svcproxy/e2e/controlplane"
)

// Addresses. Everything lives in network namespaces this program creates;
// nothing is routed to or from the host.
const (
	serviceCIDR = "10.96.0.0/12"  // --service-cluster-ip-range: room for 1M ClusterIPs
	clusterCIDR = "10.128.0.0/9"  // pods; detectLocalMode ClusterCIDR
	nodeName    = "bench-node"    // the node both proxies run as
	namespace   = "bench"         // every object of the workload
	servicePort = 80              // every Service's port
	backendPort = 8080            // every endpoint's port
	endpointsN  = 10              // endpoints per Service
	probeName   = "probe"         // the pre-existing Service with real backends
	fakeBase    = "10.130.0.0"    // fake endpoint addresses count up from here
	nodeIPStr   = "192.168.200.2" // the node's InternalIP, on its uplink
	clientIPStr = "10.129.0.2"    // the client pod on the node
)

var (
	nodeIP   = netip.MustParseAddr(nodeIPStr)
	clientIP = netip.MustParseAddr(clientIPStr)
	// realBackends are the probe Services' endpoints: responder pods behind
	// the router, so a TCP connection through the ClusterIP proves serving.
	realBackends = func() []netip.Addr {
		var out []netip.Addr
		for i := 1; i <= endpointsN; i++ {
			out = append(out, netip.AddrFrom4([4]byte{10, 128, 0, byte(i)}))
		}
		return out
	}()
)

// cluster writes the workload through a fast client: high QPS and burst,
// protobuf, parallel writers.
type cluster struct {
	c       kubernetes.Interface
	writers int
	n       int          // workload Services created so far (svc-0 .. svc-(n-1))
	probeIP netip.Addr   // ClusterIP of the probe Service
	nextEP  atomic.Int64 // next fresh fake endpoint address (churn)
	mu      sync.Mutex
	slices  map[int]*discoveryv1.EndpointSlice // the last written slice of each workload Service (churn)
}

// fastClient is a client for rc with high QPS and burst, protobuf.
func fastClient(rc *rest.Config, writers int) (*cluster, error) {
	cfg := rest.CopyConfig(rc)
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	cl := &cluster{c: c, writers: writers, slices: map[int]*discoveryv1.EndpointSlice{}}
	cl.nextEP.Store(10_000_000)
	return cl, nil
}

func newCluster(ctx context.Context, cp *controlplane.ControlPlane, writers int) (*cluster, error) {
	cl, err := fastClient(cp.RESTConfig, writers)
	if err != nil {
		return nil, err
	}
	c := cl.c
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	created, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node: %w", err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIPStr}, {Type: corev1.NodeHostName, Address: nodeName}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("node status: %w", err)
	}
	ip, err := cl.createService(ctx, probeName, realBackends)
	if err != nil {
		return nil, err
	}
	cl.probeIP = ip
	return cl, nil
}

// attachCluster is a cluster whose node, probe Service and first n
// workload Services someone else wrote (the host, for the VM guest).
// firstEP keeps the churn's fresh addresses apart from earlier runs'.
func attachCluster(ctx context.Context, rc *rest.Config, writers, n int, firstEP int64) (*cluster, error) {
	cl, err := fastClient(rc, writers)
	if err != nil {
		return nil, err
	}
	cl.nextEP.Store(firstEP)
	svc, err := cl.c.CoreV1().Services(namespace).Get(ctx, probeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("probe service: %w", err)
	}
	if cl.probeIP, err = netip.ParseAddr(svc.Spec.ClusterIP); err != nil {
		return nil, fmt.Errorf("probe service: clusterIP %q: %w", svc.Spec.ClusterIP, err)
	}
	cl.n = n
	return cl, nil
}

// fakeAddr is the k-th fake endpoint address: fakeBase + k.
func fakeAddr(k int64) netip.Addr {
	b := netip.MustParseAddr(fakeBase).As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(k)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func workloadName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func serviceObj(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(backendPort)}},
		},
	}
}

func sliceObj(service string, addrs []netip.Addr) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: service + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "bench"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(backendPort))}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	return es
}

// createService writes a Service, then its EndpointSlice, and returns the
// allocated ClusterIP.
func (cl *cluster) createService(ctx context.Context, name string, addrs []netip.Addr) (netip.Addr, error) {
	svc, err := cl.c.CoreV1().Services(namespace).Create(ctx, serviceObj(name), metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: %w", name, err)
	}
	if _, err := cl.c.DiscoveryV1().EndpointSlices(namespace).Create(ctx, sliceObj(name, addrs), metav1.CreateOptions{}); err != nil {
		return netip.Addr{}, fmt.Errorf("endpointslice %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: clusterIP %q: %w", name, svc.Spec.ClusterIP, err)
	}
	return ip, nil
}

// deleteService removes a Service and its slice.
func (cl *cluster) deleteService(ctx context.Context, name string) error {
	if err := cl.c.DiscoveryV1().EndpointSlices(namespace).Delete(ctx, name+"-1", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := cl.c.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

func workloadAddrs(i int) []netip.Addr {
	out := make([]netip.Addr, endpointsN)
	for j := range out {
		out[j] = fakeAddr(int64(i*endpointsN + j))
	}
	return out
}

// ensureWorkload creates workload Services cl.n .. n-1 with parallel writers.
func (cl *cluster) ensureWorkload(ctx context.Context, n int) error {
	if n <= cl.n {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int)
	errs := make(chan error, cl.writers)
	var wg sync.WaitGroup
	var done atomic.Int64
	for w := 0; w < cl.writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				err := retry(ctx, func() error {
					_, err := cl.createService(ctx, workloadName(i), workloadAddrs(i))
					if apierrors.IsAlreadyExists(err) {
						return nil
					}
					return err
				})
				if err != nil {
					errs <- err
					cancel()
					return
				}
				done.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				logf("  created %d/%d Services", int64(cl.n)+done.Load(), n)
			}
		}
	}()
feed:
	for i := cl.n; i < n; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(stop)
	select {
	case err := <-errs:
		return err
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cl.n = n
	return nil
}

// retry retries transient API errors (timeouts, throttling) a few times.
func retry(ctx context.Context, fn func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if !(apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		}
	}
	return err
}

// replaceEndpoint swaps one endpoint of workload Service i for a fresh fake
// address and returns when the API accepted the update.
func (cl *cluster) replaceEndpoint(ctx context.Context, i, j int) error {
	cl.mu.Lock()
	es := cl.slices[i]
	cl.mu.Unlock()
	if es == nil {
		var err error
		es, err = cl.c.DiscoveryV1().EndpointSlices(namespace).Get(ctx, workloadName(i)+"-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
	}
	es = es.DeepCopy()
	es.Endpoints[j%len(es.Endpoints)].Addresses = []string{fakeAddr(cl.nextEP.Add(1)).String()}
	// As the EndpointSlice controller does: the proxy observes
	// network_programming_duration from this stamp to the sync that
	// programs the change.
	if es.Annotations == nil {
		es.Annotations = map[string]string{}
	}
	es.Annotations[corev1.EndpointsLastChangeTriggerTime] = time.Now().UTC().Format(time.RFC3339Nano)
	upd, err := cl.c.DiscoveryV1().EndpointSlices(namespace).Update(ctx, es, metav1.UpdateOptions{})
	if err != nil {
		cl.mu.Lock()
		delete(cl.slices, i)
		cl.mu.Unlock()
		return err
	}
	cl.mu.Lock()
	cl.slices[i] = upd
	cl.mu.Unlock()
	return nil
}
