package watch

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// serviceSelector leaves out Services another proxy owns and headless ones,
// as kube-proxy does, so they never reach this process at all.
const serviceSelector = "!" + LabelServiceProxyName + ",!" + LabelHeadless

// InformerOptions configures Watch.
type InformerOptions struct {
	Client   kubernetes.Interface
	NodeName string
	// Resync is the informers' resync period (configSyncPeriod).
	Resync time.Duration
	// OnChange is called after every recorded event (typically Runner.Trigger).
	OnChange func()
}

// Watch starts informers for Services, EndpointSlices and this node's Node,
// feeding tracker. The returned channel closes once every cache has synced.
func Watch(ctx context.Context, tracker *Tracker, opts InformerOptions) <-chan struct{} {
	notify := opts.OnChange
	if notify == nil {
		notify = func() {}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync,
		informers.WithTransform(transform(opts.NodeName)),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = serviceSelector }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync,
		informers.WithTransform(stripUnused),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", opts.NodeName).String()
		}))

	svcInformer := factory.Core().V1().Services().Informer()
	sliceInformer := factory.Discovery().V1().EndpointSlices().Informer()
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	handled := []cache.InformerSynced{
		mustAdd(svcInformer, serviceHandler(tracker, notify)),
		mustAdd(sliceInformer, sliceHandler(tracker, notify)),
		mustAdd(nodeInformer, nodeHandler(tracker, notify)),
	}

	factory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())

	// The handlers' HasSynced, not the informers': an informer has synced
	// once its cache holds the initial list, but its handlers get those
	// objects later, from a queue of their own. A first sync started in
	// between plans part of the cluster (at 5,000 Services on a busy node,
	// half of it), and the rest follows as one huge delta.
	synced := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), handled...) {
			close(synced)
		}
	}()
	return synced
}

// lastApplied is kubectl's copy of the applied object: often as large as
// the object itself, and never read by a proxy.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// transform returns the informers' transform: EndpointSlices become
// Slices, converted for the node called nodeName, so the cache holds only
// what the proxy uses; other objects lose what stripUnused drops. Objects
// already transformed pass through unchanged, as client-go requires.
func transform(nodeName string) cache.TransformFunc {
	return func(obj any) (any, error) {
		if es, ok := obj.(*discovery.EndpointSlice); ok {
			return ConvertSlice(es, nodeName), nil
		}
		return stripUnused(obj)
	}
}

// stripUnused drops what the proxy never reads from an object before the
// informer caches it: managedFields, kubectl's last-applied copy and owner
// references. With thousands of Services they are a large share of the
// cache.
func stripUnused(obj any) (any, error) {
	if _, ok := obj.(*Slice); ok {
		return obj, nil
	}
	if o, err := meta.Accessor(obj); err == nil {
		o.SetManagedFields(nil)
		o.SetOwnerReferences(nil)
		if a := o.GetAnnotations(); a[lastApplied] != "" {
			delete(a, lastApplied)
			o.SetAnnotations(a)
		}
	}
	return obj, nil
}

// mustAdd registers h and returns whether h has seen the initial list.
func mustAdd(inf cache.SharedIndexInformer, h cache.ResourceEventHandler) cache.InformerSynced {
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		// Only fails on a stopped informer, which cannot happen before Start.
		klog.ErrorS(err, "Adding event handler")
		return inf.HasSynced
	}
	return reg.HasSynced
}

func serviceHandler(t *Tracker, notify func()) cache.ResourceEventHandler {
	set := func(obj any) {
		if svc, ok := obj.(*v1.Service); ok {
			t.OnService(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, svc)
			notify()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if svc, ok := unwrap(obj).(*v1.Service); ok {
				t.OnService(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, nil)
				notify()
			}
		},
	}
}

func sliceHandler(t *Tracker, notify func()) cache.ResourceEventHandler {
	on := func(obj any, deleted bool) {
		switch s := unwrap(obj).(type) {
		case *Slice: // see transform
			t.OnSlice(s, deleted)
			notify()
		case *discovery.EndpointSlice: // an informer without the transform
			t.OnEndpointSlice(s, deleted)
			notify()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(obj, false) },
		UpdateFunc: func(_, obj any) { on(obj, false) },
		DeleteFunc: func(obj any) { on(obj, true) },
	}
}

func nodeHandler(t *Tracker, notify func()) cache.ResourceEventHandler {
	set := func(obj any) {
		if n, ok := obj.(*v1.Node); ok {
			t.OnNode(n)
			notify()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(any) { t.OnNode(nil); notify() },
	}
}

// unwrap returns the object inside a tombstone left by a missed delete.
func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}
