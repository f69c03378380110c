// Package acceptance runs acceptance scenario files (the format of
// shared/acceptance/FORMAT.md) against a service proxy binary: a real
// control plane, real network namespaces, real kernel rules and real packets.
package acceptance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Scenario is one entry of a scenario file.
type Scenario struct {
	Name           string          `json:"name"`
	Category       string          `json:"category,omitempty"`
	Tags           []string        `json:"tags,omitempty"`
	Description    string          `json:"description,omitempty"`
	SourceTest     string          `json:"source_test,omitempty"`
	Derived        string          `json:"derived,omitempty"`
	Modes          []string        `json:"modes"`
	Node           Node            `json:"node"`
	Config         Config          `json:"config"`
	Services       []Service       `json:"services"`
	EndpointSlices []EndpointSlice `json:"endpointSlices"`
	Flows          []Flow          `json:"flows"`
	Steps          []Step          `json:"steps,omitempty"`
}

// Node describes the node the proxy runs on.
type Node struct {
	Name string   `json:"name"`
	IPs  []string `json:"ips"`
	// ClusterCIDR is comma-separated when dual-stack.
	ClusterCIDR string `json:"clusterCIDR,omitempty"`
	// LocalDetector is "ClusterCIDR" (default) or "None".
	LocalDetector string            `json:"localDetector,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
}

// Config holds the proxy settings that differ from the defaults.
type Config struct {
	MasqueradeAll      *bool    `json:"masqueradeAll,omitempty"`
	LocalhostNodePorts *bool    `json:"localhostNodePorts,omitempty"`
	NodePortAddresses  []string `json:"nodePortAddresses,omitempty"`
	IPFamily           string   `json:"ipFamily,omitempty"`
	ServiceCIDRs       []string `json:"serviceCIDRs,omitempty"`
}

// Service is a Service as a scenario writes it.
type Service struct {
	Namespace                     string            `json:"namespace"`
	Name                          string            `json:"name"`
	Type                          string            `json:"type,omitempty"`
	ClusterIP                     string            `json:"clusterIP,omitempty"`
	ClusterIPs                    []string          `json:"clusterIPs,omitempty"`
	IPFamilies                    []string          `json:"ipFamilies,omitempty"`
	IPFamilyPolicy                string            `json:"ipFamilyPolicy,omitempty"`
	Ports                         []ServicePort     `json:"ports,omitempty"`
	ExternalIPs                   []string          `json:"externalIPs,omitempty"`
	ExternalName                  string            `json:"externalName,omitempty"`
	LoadBalancerIPs               []string          `json:"loadBalancerIPs,omitempty"`
	LoadBalancerIngress           []LBIngress       `json:"loadBalancerIngress,omitempty"`
	LoadBalancerSourceRanges      []string          `json:"loadBalancerSourceRanges,omitempty"`
	LoadBalancerClass             *string           `json:"loadBalancerClass,omitempty"`
	AllocateLoadBalancerNodePorts *bool             `json:"allocateLoadBalancerNodePorts,omitempty"`
	ExternalTrafficPolicy         string            `json:"externalTrafficPolicy,omitempty"`
	InternalTrafficPolicy         string            `json:"internalTrafficPolicy,omitempty"`
	HealthCheckNodePort           int32             `json:"healthCheckNodePort,omitempty"`
	SessionAffinity               string            `json:"sessionAffinity,omitempty"`
	SessionAffinityTimeoutSeconds *int32            `json:"sessionAffinityTimeoutSeconds,omitempty"`
	SessionAffinityConfig         *AffinityConfig   `json:"sessionAffinityConfig,omitempty"`
	PublishNotReadyAddresses      bool              `json:"publishNotReadyAddresses,omitempty"`
	Annotations                   map[string]string `json:"annotations,omitempty"`
	Labels                        map[string]string `json:"labels,omitempty"`
	TrafficDistribution           *string           `json:"trafficDistribution,omitempty"`
	Selector                      map[string]string `json:"selector,omitempty"`
}

// AffinityConfig is the API's sessionAffinityConfig, accepted as an
// alternative to sessionAffinityTimeoutSeconds.
type AffinityConfig struct {
	ClientIP *struct {
		TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`
	} `json:"clientIP,omitempty"`
}

// AffinityTimeout returns the ClientIP affinity timeout, if any was given.
func (s *Service) AffinityTimeout() *int32 {
	if s.SessionAffinityTimeoutSeconds != nil {
		return s.SessionAffinityTimeoutSeconds
	}
	if s.SessionAffinityConfig != nil && s.SessionAffinityConfig.ClientIP != nil {
		return s.SessionAffinityConfig.ClientIP.TimeoutSeconds
	}
	return nil
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name        string             `json:"name"`
	Protocol    string             `json:"protocol,omitempty"`
	Port        int32              `json:"port"`
	TargetPort  intstr.IntOrString `json:"targetPort,omitempty"`
	NodePort    int32              `json:"nodePort,omitempty"`
	AppProtocol *string            `json:"appProtocol,omitempty"`
}

// LBIngress is one status.loadBalancer.ingress entry.
type LBIngress struct {
	IP       string `json:"ip,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	IPMode   string `json:"ipMode,omitempty"`
}

// EndpointSlice is an EndpointSlice as a scenario writes it.
type EndpointSlice struct {
	Namespace   string            `json:"namespace"`
	Service     string            `json:"service"`
	Name        string            `json:"name"`
	AddressType string            `json:"addressType,omitempty"`
	Ports       []SlicePort       `json:"ports,omitempty"`
	Endpoints   []Endpoint        `json:"endpoints,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// SlicePort is one port of an EndpointSlice. Name and Port stay nil when
// omitted, as in the API.
type SlicePort struct {
	Name        *string `json:"name,omitempty"`
	Protocol    string  `json:"protocol,omitempty"`
	Port        *int32  `json:"port,omitempty"`
	AppProtocol *string `json:"appProtocol,omitempty"`
}

// Endpoint is one endpoint of a slice; omitted conditions and nodeName stay
// nil.
type Endpoint struct {
	Addresses   []string `json:"addresses"`
	NodeName    *string  `json:"nodeName,omitempty"`
	Hostname    *string  `json:"hostname,omitempty"`
	Ready       *bool    `json:"ready,omitempty"`
	Serving     *bool    `json:"serving,omitempty"`
	Terminating *bool    `json:"terminating,omitempty"`
	Zone        *string  `json:"zone,omitempty"`
	Hints       *Hints   `json:"hints,omitempty"`
}

// Hints are topology hints. Entries are accepted as plain names or as
// {name: ...} objects (the API's shape).
type Hints struct {
	ForZones []NameRef `json:"forZones,omitempty"`
	ForNodes []NameRef `json:"forNodes,omitempty"`
}

// NameRef is a zone or node name.
type NameRef string

// UnmarshalJSON accepts "zone-a" and {"name": "zone-a"}.
func (n *NameRef) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*n = NameRef(s)
		return nil
	}
	var o struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("hint must be a name or {name: ...}: %s", b)
	}
	*n = NameRef(o.Name)
	return nil
}

// Flow is one traffic check.
type Flow struct {
	Name                  string              `json:"name"`
	Description           string              `json:"description,omitempty"`
	Note                  string              `json:"note,omitempty"`
	Source                string              `json:"source"`
	SourceKind            string              `json:"source_kind"`
	DestIP                string              `json:"dest_ip"`
	DestPort              int                 `json:"dest_port"`
	Protocol              string              `json:"protocol,omitempty"`
	Expect                []string            `json:"expect"`
	Masquerade            *bool               `json:"masquerade,omitempty"`
	Sticky                bool                `json:"sticky,omitempty"`
	HTTPGet               *HTTPGet            `json:"http_get,omitempty"`
	RequiresSpoofedSource bool                `json:"requires_spoofed_source,omitempty"`
	ModeOverrides         map[string]Override `json:"mode_overrides,omitempty"`
}

// HTTPGet asks for an HTTP probe instead of raw connections.
//
// Beyond the format's path and expect_status, a flow may name what the
// response must carry: expect_headers (each header's exact value) and
// expect_json (top-level fields of a JSON body and their exact values), for
// example a health-check NodePort's localEndpoints count.
type HTTPGet struct {
	Path          string            `json:"path"`
	ExpectStatus  int               `json:"expect_status"`
	ExpectHeaders map[string]string `json:"expect_headers,omitempty"`
	ExpectJSON    map[string]any    `json:"expect_json,omitempty"`
}

// Check returns why resp does not match, or "" when it does.
func (h *HTTPGet) Check(resp HTTPResponse) string {
	if resp.Status != h.ExpectStatus {
		return fmt.Sprintf("status %d, expected %d", resp.Status, h.ExpectStatus)
	}
	for _, name := range slices.Sorted(maps.Keys(h.ExpectHeaders)) {
		if got, want := resp.Header.Get(name), h.ExpectHeaders[name]; got != want {
			return fmt.Sprintf("header %s: %q, expected %q", name, got, want)
		}
	}
	if len(h.ExpectJSON) == 0 {
		return ""
	}
	var body map[string]any
	if err := json.Unmarshal(resp.Body, &body); err != nil {
		return fmt.Sprintf("body is not a JSON object (%v): %q", err, resp.Body)
	}
	for _, field := range slices.Sorted(maps.Keys(h.ExpectJSON)) {
		got, ok := body[field]
		if !ok {
			return fmt.Sprintf("body has no field %q: %s", field, resp.Body)
		}
		if !jsonEqual(got, h.ExpectJSON[field]) {
			return fmt.Sprintf("body field %q is %v, expected %v", field, got, h.ExpectJSON[field])
		}
	}
	return ""
}

// jsonEqual compares two decoded JSON values; the YAML side may hold whole
// numbers as int64 where the body's decoder gives float64.
func jsonEqual(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// Override replaces a flow's expect and/or masquerade for one mode.
type Override struct {
	Expect     []string `json:"expect,omitempty"`
	Masquerade *bool    `json:"masquerade,omitempty"`
	Note       string   `json:"note,omitempty"`
}

// Step changes API objects and checks its own flows afterwards.
type Step struct {
	Description string     `json:"description,omitempty"`
	Apply       *Objects   `json:"apply,omitempty"`
	Delete      *DeleteSet `json:"delete,omitempty"`
	Flows       []Flow     `json:"flows,omitempty"`
}

// Objects are whole objects to create or replace.
type Objects struct {
	Services       []Service       `json:"services,omitempty"`
	EndpointSlices []EndpointSlice `json:"endpointSlices,omitempty"`
}

// DeleteSet names objects to remove as "namespace/name".
type DeleteSet struct {
	Services       []string `json:"services,omitempty"`
	EndpointSlices []string `json:"endpointSlices,omitempty"`
}

// Source kinds.
const (
	KindPod       = "pod"
	KindEndpoint  = "endpoint"
	KindNode      = "node"
	KindLocalhost = "localhost"
	KindExternal  = "external"
	KindSpoofed   = "spoofed"
)

// Outcome words of expect.
const (
	WordReject    = "REJECT"
	WordDrop      = "DROP"
	WordLocal     = "LOCAL"
	WordUnhandled = "UNHANDLED"
)

// LoadFile reads and validates a scenario file. Unknown keys are tolerated
// (the format allows informational extras); they are returned as notes.
func LoadFile(path string) ([]Scenario, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return Parse(b)
}

// Parse decodes and validates scenario YAML.
func Parse(b []byte) ([]Scenario, []string, error) {
	var notes []string
	var list []Scenario
	if err := yaml.UnmarshalStrict(b, &list); err != nil {
		notes = append(notes, "unknown keys tolerated: "+err.Error())
		list = nil
		if err := yaml.Unmarshal(b, &list); err != nil {
			return nil, nil, err
		}
	}
	seen := map[string]bool{}
	var errs []error
	for i := range list {
		s := &list[i]
		s.normalize()
		if err := s.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("scenario %d (%s): %w", i, s.Name, err))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("scenario name %q is not unique", s.Name))
		}
		seen[s.Name] = true
	}
	return list, notes, errors.Join(errs...)
}

// normalize applies the format's defaults so the rest of the runner need not.
func (s *Scenario) normalize() {
	norm := func(fs []Flow) {
		for i := range fs {
			f := &fs[i]
			f.Protocol = strings.ToUpper(f.Protocol)
			if f.Protocol == "" {
				f.Protocol = "TCP"
			}
			if f.RequiresSpoofedSource && f.SourceKind == "" {
				f.SourceKind = KindSpoofed
			}
		}
	}
	norm(s.Flows)
	for i := range s.Steps {
		norm(s.Steps[i].Flows)
	}
	if s.Node.LocalDetector == "" {
		s.Node.LocalDetector = "ClusterCIDR"
	}
}

// Validate checks what the runner relies on.
func (s *Scenario) Validate() error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("no name"))
	}
	if s.Node.Name == "" {
		errs = append(errs, errors.New("node.name missing"))
	}
	for _, ip := range s.Node.IPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			errs = append(errs, fmt.Errorf("node.ips: %w", err))
		}
	}
	names := map[string]bool{}
	check := func(fs []Flow) {
		for _, f := range fs {
			if names[f.Name] {
				errs = append(errs, fmt.Errorf("flow name %q is not unique", f.Name))
			}
			names[f.Name] = true
			if err := f.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("flow %s: %w", f.Name, err))
			}
		}
	}
	check(s.Flows)
	for _, st := range s.Steps {
		check(st.Flows)
		if st.Delete != nil {
			for _, k := range append(append([]string{}, st.Delete.Services...), st.Delete.EndpointSlices...) {
				if _, _, err := SplitKey(k); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Validate checks one flow's fields.
func (f *Flow) Validate() error {
	switch f.SourceKind {
	case KindPod, KindEndpoint, KindNode, KindLocalhost, KindExternal, KindSpoofed:
	default:
		return fmt.Errorf("unknown source_kind %q", f.SourceKind)
	}
	if _, err := netip.ParseAddr(f.Source); err != nil && f.SourceKind != KindLocalhost {
		return fmt.Errorf("source: %w", err)
	}
	if _, err := netip.ParseAddr(f.DestIP); err != nil {
		return fmt.Errorf("dest_ip: %w", err)
	}
	if f.DestPort <= 0 || f.DestPort > 65535 {
		return fmt.Errorf("dest_port %d out of range", f.DestPort)
	}
	switch f.Protocol {
	case "TCP", "UDP", "SCTP":
	default:
		return fmt.Errorf("unknown protocol %q", f.Protocol)
	}
	for mode, o := range f.ModeOverrides {
		if _, err := ParseExpect(o.Expect); err != nil {
			return fmt.Errorf("mode_overrides.%s: %w", mode, err)
		}
	}
	if f.HTTPGet == nil && len(f.Expect) == 0 {
		return errors.New("expect is empty")
	}
	_, err := ParseExpect(f.Expect)
	return err
}

// Effective returns the flow's expect and masquerade for a mode, after its
// mode override.
func (f *Flow) Effective(mode string) (expect []string, masq *bool) {
	expect, masq = f.Expect, f.Masquerade
	if o, ok := f.ModeOverrides[mode]; ok {
		if len(o.Expect) > 0 {
			expect = o.Expect
		}
		if o.Masquerade != nil {
			masq = o.Masquerade
		}
	}
	return expect, masq
}

// HasMode reports whether the scenario holds for mode.
func (s *Scenario) HasMode(mode string) bool {
	for _, m := range s.Modes {
		if m == mode {
			return true
		}
	}
	return false
}

// AllFlows returns the top-level flows and then each step's, in order.
func (s *Scenario) AllFlows() []Flow {
	out := append([]Flow{}, s.Flows...)
	for _, st := range s.Steps {
		out = append(out, st.Flows...)
	}
	return out
}

// SplitKey splits "namespace/name".
func SplitKey(k string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(k, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("object key %q is not namespace/name", k)
	}
	return ns, name, nil
}

// ClusterCIDRs splits node.clusterCIDR.
func (n *Node) ClusterCIDRs() []string {
	var out []string
	for _, c := range strings.Split(n.ClusterCIDR, ",") {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}
