package watch

import (
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/cowmap"
)

// Tracker records Service, EndpointSlice and Node events and hands out
// Snapshots. Events only mark a Service dirty; the conversion and comparison
// happen in Snapshot, so a burst of events (or an add followed by a delete)
// costs one comparison and may turn out to be no change at all.
type Tracker struct {
	nodeName string
	reporter Reporter
	// start is when the Tracker was made: trigger times before it belong to
	// changes made before this process watched (kube-proxy's trackerStartTime).
	start time.Time

	mu       sync.Mutex
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]map[string]*Slice
	node     *v1.Node

	dirty       map[types.NamespacedName]bool
	nodeDirty   bool
	svcEvents   int
	epEvents    int
	triggerTime map[types.NamespacedName]time.Time
	lag         sliceLag

	// state as of the last Snapshot
	ports    map[types.NamespacedName][]portState
	nodeInfo NodeInfo
	first    bool
	// published holds the maps the last Snapshot handed out. They are
	// immutable: the next Snapshot with changes edits copies that share
	// every shard the changed Services do not touch (see cowmap); one
	// without changes shares them whole.
	published published
	seq       uint64 // of the last Snapshot
}

type published struct {
	services  cowmap.Map[ServicePortName, *ServicePort]
	endpoints cowmap.Map[ServicePortName, []*Endpoint]
	ports     cowmap.Map[types.NamespacedName, []*ServicePort]
}

// publishing edits copies of the published maps.
type publishing struct {
	services  *cowmap.Editor[ServicePortName, *ServicePort]
	endpoints *cowmap.Editor[ServicePortName, []*Endpoint]
	ports     *cowmap.Editor[types.NamespacedName, []*ServicePort]
}

// NewTracker returns a Tracker for the node called nodeName.
func NewTracker(nodeName string) *Tracker {
	return &Tracker{
		nodeName:    nodeName,
		start:       time.Now(),
		services:    map[types.NamespacedName]*v1.Service{},
		slices:      map[types.NamespacedName]map[string]*Slice{},
		dirty:       map[types.NamespacedName]bool{},
		triggerTime: map[types.NamespacedName]time.Time{},
		ports:       map[types.NamespacedName][]portState{},
		nodeInfo:    NodeInfo{Name: nodeName},
		first:       true,
	}
}

// Reporter is told about invalid input the Tracker skips, so an operator
// sees it as an Event on the Service and not only in this node's log.
type Reporter func(svc *v1.Service, reason, message string)

// SetReporter installs r; call it before the informers start.
func (t *Tracker) SetReporter(r Reporter) { t.reporter = r }

func (t *Tracker) report(svc *v1.Service, reason, message string) {
	if t.reporter != nil && svc != nil {
		t.reporter(svc, reason, message)
	}
}

// OnService records the current state of a Service; nil deletes it.
func (t *Tracker) OnService(name types.NamespacedName, svc *v1.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if svc == nil {
		delete(t.services, name)
		t.lag.forget(name)
	} else {
		// Before the first Snapshot the informers list what exists; the
		// gaps between their lists say nothing about the controller.
		if !t.first && t.services[name] == nil && len(t.slices[name]) == 0 {
			t.lag.serviceAdded(name, time.Now())
		}
		t.services[name] = svc
	}
	t.dirty[name] = true
	t.svcEvents++
}

// OnEndpointSlice records the current state of an EndpointSlice, converted
// for this node; deleted removes it.
func (t *Tracker) OnEndpointSlice(es *discovery.EndpointSlice, deleted bool) {
	t.OnSlice(ConvertSlice(es, t.nodeName), deleted)
}

// OnSlice records the current state of a slice; deleted removes it.
// Slices without the service-name label belong to no Service and are
// ignored.
func (t *Tracker) OnSlice(slice *Slice, deleted bool) {
	if slice.Service == "" {
		return
	}
	name := types.NamespacedName{Namespace: slice.Namespace, Name: slice.Service}
	t.mu.Lock()
	defer t.mu.Unlock()
	bySlice := t.slices[name]
	if deleted {
		delete(bySlice, slice.Name)
		if len(bySlice) == 0 {
			delete(t.slices, name)
		}
	} else {
		if bySlice == nil {
			bySlice = map[string]*Slice{}
			t.slices[name] = bySlice
		}
		bySlice[slice.Name] = slice
		t.lag.sliceAdded(name, time.Now())
	}
	t.dirty[name] = true
	t.epEvents++
	t.noteTriggerTime(name, slice.TriggerTime)
}

func (t *Tracker) noteTriggerTime(name types.NamespacedName, at time.Time) {
	if !at.After(t.start) {
		return
	}
	if prev, ok := t.triggerTime[name]; !ok || at.Before(prev) {
		t.triggerTime[name] = at
	}
}

// OnNode records this node's Node object (nil when it is deleted).
func (t *Tracker) OnNode(node *v1.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.node = node
	t.nodeDirty = true
}

// Node returns the last Node object seen (nil if none).
func (t *Tracker) Node() *v1.Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

// awaitingLimit bounds AwaitingEndpoints' walk over the pending changes.
const awaitingLimit = 64

// AwaitingEndpoints reports whether a change waiting for a Snapshot is a
// Service that has no EndpointSlice yet, and if so how long slices have
// lately taken to follow their Services (the longest of the last few gaps,
// 0 before the first). Its slice is usually written a moment later;
// syncing now would program the Service without endpoints (a REJECT) and
// the next sync its endpoints, two kernel writes where one would do, while
// a lone endpoint change has nothing to wait for. With more than
// awaitingLimit changes pending it reports true, and no lag, without
// looking: a burst is worth gathering anyway.
func (t *Tracker) AwaitingEndpoints() (awaiting bool, lag time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.dirty) > awaitingLimit {
		return true, 0
	}
	for name := range t.dirty {
		if t.services[name] != nil && len(t.slices[name]) == 0 {
			return true, t.lag.max()
		}
	}
	return false, 0
}

// Pending returns how many service and endpoint events wait for a Snapshot.
func (t *Tracker) Pending() (services, endpoints int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.svcEvents, t.epEvents
}

// Snapshot returns the current desired state and which Services changed
// since the previous call.
func (t *Tracker) Snapshot() *Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()

	snap := &Snapshot{
		Changed:      map[types.NamespacedName]bool{},
		TriggerTimes: map[types.NamespacedName]time.Time{},
	}
	t.seq++
	snap.Seq = t.seq
	t.refreshNode(snap)
	for name := range t.dirty {
		if t.refreshService(name) {
			snap.Changed[name] = true
		}
	}
	if snap.NodeChanged {
		for name := range t.ports {
			snap.Changed[name] = true
		}
	}
	t.publish(snap)
	// Only real changes count for network programming latency, as in
	// kube-proxy, which records trigger times only for slices that changed.
	for name, at := range t.triggerTime {
		if snap.Changed[name] {
			snap.TriggerTimes[name] = at
		}
	}

	t.dirty = map[types.NamespacedName]bool{}
	t.triggerTime = map[types.NamespacedName]time.Time{}
	t.svcEvents, t.epEvents = 0, 0
	t.first = false
	return snap
}

// refreshNode re-reads the Node. Locality and topology of every endpoint
// depend on it, so a change re-plans everything.
func (t *Tracker) refreshNode(snap *Snapshot) {
	info := nodeInfo(t.nodeName, t.node)
	snap.NodeChanged = t.first || (t.nodeDirty && !reflect.DeepEqual(info, t.nodeInfo))
	if snap.NodeChanged && !t.first {
		// Endpoint locality does not depend on labels, but topology does.
		for name := range t.ports {
			t.dirty[name] = true
		}
	}
	t.nodeInfo = info
	t.nodeDirty = false
	snap.Node = info
}

// refreshService converts one dirty Service and reports whether its ports or
// endpoints differ from what the last Snapshot held.
func (t *Tracker) refreshService(name types.NamespacedName) bool {
	ports, ok := t.convertService(name)
	if !ok {
		// Keep the last good state of an object that became invalid: a bad
		// update must not take a working Service down.
		return false
	}
	var eps map[ServicePortName][]*Endpoint
	if len(ports) > 0 {
		var warnings []string
		eps, warnings = sliceEndpoints(name, t.slices[name])
		for _, w := range warnings {
			klog.InfoS("Skipping invalid part of EndpointSlice", "service", name, "problem", w)
			t.report(t.services[name], "InvalidEndpoints", "Skipped by the service proxy: "+w)
		}
	}
	state := portStates(ports, eps)
	changed := !reflect.DeepEqual(state, t.ports[name])
	if len(state) == 0 {
		delete(t.ports, name)
	} else {
		t.ports[name] = state
	}
	return changed
}

// portState is one port of a Service as of the last Snapshot, with the
// endpoints serving it. A Service keeps a sorted slice of them rather than
// two maps keyed by port name: most Services have one port, and two small
// maps with 64-byte keys cost about 1.4 KB per Service (7 MB at 5,000).
type portState struct {
	port *ServicePort
	eps  []*Endpoint
}

// portStates pairs each port with its endpoints, in name order; endpoints
// of slice ports the Service does not have are left out.
func portStates(ports map[ServicePortName]*ServicePort, eps map[ServicePortName][]*Endpoint) []portState {
	if len(ports) == 0 {
		return nil
	}
	out := make([]portState, 0, len(ports))
	for spn, p := range ports {
		out = append(out, portState{port: p, eps: eps[spn]})
	}
	slices.SortFunc(out, func(a, b portState) int { return CompareNames(a.port.Name, b.port.Name) })
	return out
}

// convertService returns the ports of a Service (none when it is gone or not
// ours); ok is false when the Service is invalid and must be skipped.
func (t *Tracker) convertService(name types.NamespacedName) (ports map[ServicePortName]*ServicePort, ok bool) {
	svc := t.services[name]
	if svc == nil {
		return nil, true
	}
	ports, warnings, err := servicePorts(svc)
	if err != nil {
		klog.ErrorS(err, "Skipping invalid Service; its last good state (if any) stays programmed", "service", name)
		t.report(svc, "InvalidService", "Skipped by the service proxy: "+err.Error())
		return nil, false
	}
	for _, w := range warnings {
		klog.InfoS("Ignoring invalid part of Service", "service", name, "problem", w)
		t.report(svc, "InvalidServiceField", "Ignored by the service proxy: "+w)
	}
	return ports, true
}

func (t *Tracker) publish(snap *Snapshot) {
	if len(snap.Changed) > 0 {
		pub := publishing{t.published.services.Edit(), t.published.endpoints.Edit(), t.published.ports.Edit()}
		for name := range snap.Changed {
			pub.set(name, t.ports[name])
		}
		t.published = published{pub.services.Map(), pub.endpoints.Map(), pub.ports.Map()}
	}
	snap.Services, snap.Endpoints, snap.Ports = t.published.services, t.published.endpoints, t.published.ports
}

// set replaces one Service's ports and endpoints.
func (p publishing) set(name types.NamespacedName, state []portState) {
	for _, old := range p.ports.Get(name) {
		p.services.Delete(old.Name)
		p.endpoints.Delete(old.Name)
	}
	p.ports.Delete(name)
	if len(state) == 0 {
		return
	}
	ports := make([]*ServicePort, 0, len(state))
	for _, ps := range state {
		ports = append(ports, ps.port)
		p.services.Set(ps.port.Name, ps.port)
		if len(ps.eps) > 0 {
			p.endpoints.Set(ps.port.Name, ps.eps)
		}
	}
	p.ports.Set(name, ports)
}
