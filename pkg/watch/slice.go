package watch

import (
	"fmt"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Slice is what the proxy keeps of one EndpointSlice: its endpoints per
// port, converted once when the object arrives, and the little metadata
// the informer and the Tracker use. The informer caches Slices in place of
// EndpointSlices (see transform), and the Tracker's merged endpoint lists
// point at the same Endpoints: at 5,000 slices of 10 endpoints the decoded
// objects plus a converted copy of each endpoint were about 25 MB of the
// proxy's heap.
//
// A Slice is never modified once made.
type Slice struct {
	// TypeMeta is empty; with DeepCopyObject it makes *Slice a
	// runtime.Object, which client-go's debugging aids (the cache mutation
	// and watch-list consistency detectors) assume of cached objects.
	metav1.TypeMeta
	// ObjectMeta holds the name, namespace and resourceVersion only: the
	// informer keys and compares cached objects by them.
	metav1.ObjectMeta
	// Service is the kubernetes.io/service-name label ("" when missing).
	Service string
	// TriggerTime is the endpoints.kubernetes.io/last-change-trigger-time
	// annotation; zero when absent or unparsable.
	TriggerTime time.Time
	Ports       []SlicePort
	// Warnings name the invalid ports and endpoints left out, for the
	// Service's events.
	Warnings []string
}

// SlicePort is one port of a Slice with the endpoints serving it.
type SlicePort struct {
	Name      string
	Protocol  v1.Protocol
	Endpoints []*Endpoint
}

// ConvertSlice converts an EndpointSlice as seen by the node called
// nodeName (which decides each endpoint's IsLocal). FQDN slices yield no
// ports: the proxy cannot program names.
func ConvertSlice(es *discovery.EndpointSlice, nodeName string) *Slice {
	s := &Slice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: es.Namespace, Name: es.Name, ResourceVersion: es.ResourceVersion},
		Service:     es.Labels[discovery.LabelServiceName],
		TriggerTime: triggerTime(es),
	}
	if es.AddressType == discovery.AddressTypeFQDN {
		return s
	}
	for pi, port := range es.Ports {
		name, proto, err := slicePort(port)
		if err != nil {
			s.Warnings = append(s.Warnings, fmt.Sprintf("EndpointSlice %s/%s ports[%d]: %v", es.Namespace, es.Name, pi, err))
			continue
		}
		sp := SlicePort{Name: name, Protocol: proto, Endpoints: make([]*Endpoint, 0, len(es.Endpoints))}
		for ei := range es.Endpoints {
			ep, err := endpointFrom(&es.Endpoints[ei], *port.Port, nodeName)
			if err != nil {
				s.Warnings = append(s.Warnings, fmt.Sprintf("EndpointSlice %s/%s endpoints[%d]: %v", es.Namespace, es.Name, ei, err))
				continue
			}
			sp.Endpoints = append(sp.Endpoints, ep)
		}
		s.Ports = append(s.Ports, sp)
	}
	return s
}

func triggerTime(es *discovery.EndpointSlice) time.Time {
	raw, ok := es.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}
	}
	at, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		return time.Time{}
	}
	return at
}

// DeepCopyObject returns a copy sharing nothing with s.
func (s *Slice) DeepCopyObject() runtime.Object {
	c := *s
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.Warnings = slices.Clone(s.Warnings)
	c.Ports = make([]SlicePort, len(s.Ports))
	for i, p := range s.Ports {
		c.Ports[i] = SlicePort{Name: p.Name, Protocol: p.Protocol, Endpoints: make([]*Endpoint, len(p.Endpoints))}
		for j, ep := range p.Endpoints {
			e := *ep
			e.ZoneHints, e.NodeHints = slices.Clone(ep.ZoneHints), slices.Clone(ep.NodeHints)
			c.Ports[i].Endpoints[j] = &e
		}
	}
	return &c
}
