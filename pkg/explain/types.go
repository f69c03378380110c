package explain

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Layers, in the order they are checked.
const (
	LayerService   = "service"
	LayerEndpoints = "endpoints"
	LayerSelection = "selection"
	LayerKernel    = "kernel"
)

// VerdictOK is the verdict when no layer is wrong.
const VerdictOK = "OK"

// Input is everything explain looks at.
type Input struct {
	Query Query
	// NodeName is this node's name; Node its object (nil when not found).
	NodeName string
	Node     *v1.Node
	// Service is the Service as the API holds it (nil when not found).
	Service *v1.Service
	// Slices are the Service's EndpointSlices (label kubernetes.io/service-name).
	Slices []*discovery.EndpointSlice
	// Snapshot is what the daemon sees: built by a watch.Tracker from the
	// objects its informers would receive.
	Snapshot *watch.Snapshot
	// Families are the IP families this node programs, IPv4 first.
	Families []Family
	// Local are the node's own addresses (for tracing).
	Local []netip.Addr
	// Mode is the proxy mode (iptables or ipvs); the kernel is checked in
	// those two.
	Mode string
}

// Family is one IP family as the daemon would program it.
type Family struct {
	Family  v1.IPFamily
	Options iptables.PlanOptions
	// Backend is the iptables backend (nft or legacy).
	Backend string
	// Kernel is what iptables-save printed (nat and filter, and mangle for
	// the canary); nil when it was not read.
	Kernel      Kernel
	KernelError string
	// Planner plans the iptables rules: nil for iptables mode's planner,
	// ipvs.PlanRules for IPVS mode's helper rules.
	Planner iptables.Planner
	// IPVS is set in IPVS mode.
	IPVS *IPVSFamily
	// NFT is set in nftables mode.
	NFT *NFTablesFamily
}

// Query is what was asked.
type Query struct {
	// Service is "namespace/name".
	Service string `json:"service,omitempty"`
	// Target is set for the VIP:PORT form.
	Target *Target `json:"target,omitempty"`
	// MatchedPort and MatchedBy say which Service port the target is and
	// how it matched (cluster IP, external IP, load balancer IP, node port).
	MatchedPort *string `json:"matchedPort,omitempty"`
	MatchedBy   string  `json:"matchedBy,omitempty"`
	// From is the source to trace from; InIface the interface its packets
	// arrive on (for interface-based local traffic detection).
	From    netip.Addr `json:"from,omitzero"`
	InIface string     `json:"inInterface,omitempty"`
}

// Target is a VIP:PORT/protocol.
type Target struct {
	IP       netip.Addr  `json:"ip"`
	Port     int32       `json:"port"`
	Protocol v1.Protocol `json:"protocol"`
}

func (t Target) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(t.IP, uint16(t.Port)), strings.ToLower(string(t.Protocol)))
}

// ParseTarget reads "IP:PORT[/tcp|udp|sctp]" ("[IPv6]:PORT/..." for IPv6).
func ParseTarget(s string) (Target, error) {
	addr, proto, hasProto := strings.Cut(s, "/")
	t := Target{Protocol: v1.ProtocolTCP}
	if hasProto {
		switch strings.ToLower(proto) {
		case "tcp":
		case "udp":
			t.Protocol = v1.ProtocolUDP
		case "sctp":
			t.Protocol = v1.ProtocolSCTP
		default:
			return t, fmt.Errorf("%q: protocol must be tcp, udp or sctp", s)
		}
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		return t, fmt.Errorf("%q is not VIP:PORT[/tcp|udp|sctp]", s)
	}
	t.IP, t.Port = ap.Addr().Unmap(), int32(ap.Port())
	return t, nil
}

// Report is the outcome, in the order of the layers. Field names are
// stable: `-o json` prints this struct.
type Report struct {
	// Verdict is "OK" or the first thing that is wrong; Layer names its layer.
	Verdict string      `json:"verdict"`
	Layer   string      `json:"layer,omitempty"`
	Query   Query       `json:"query"`
	Node    NodeReport  `json:"node"`
	Service *SvcReport  `json:"service,omitempty"`
	Slices  []SliceInfo `json:"slices"`
	Ports   []PortInfo  `json:"ports"`
	// UnmatchedSlicePorts are slice ports no Service port names.
	UnmatchedSlicePorts []string `json:"unmatchedSlicePorts,omitempty"`
	// Stale lists kernel rules of the Service that belong to none of its
	// current ports.
	Stale  []Difference `json:"stale,omitempty"`
	Traces []Trace      `json:"traces,omitempty"`
	Notes  []string     `json:"notes,omitempty"`
}

// NodeReport describes this node.
type NodeReport struct {
	Name      string       `json:"name"`
	Found     bool         `json:"found"`
	Zone      string       `json:"zone,omitempty"`
	Addresses []string     `json:"addresses,omitempty"`
	Local     []string     `json:"localAddresses,omitempty"`
	Families  []FamilyInfo `json:"families"`
}

// FamilyInfo is one IP family the node programs.
type FamilyInfo struct {
	Family      string `json:"family"`
	Backend     string `json:"backend,omitempty"`
	KernelError string `json:"kernelError,omitempty"`
	// IPVS is set in IPVS mode: the IPVS table was read (or IPVSError says
	// why not); Backend is then the helper rules' iptables backend.
	IPVS      bool   `json:"ipvs,omitempty"`
	IPVSError string `json:"ipvsError,omitempty"`
}

// SvcReport is the Service as the API holds it.
type SvcReport struct {
	Namespace                string     `json:"namespace"`
	Name                     string     `json:"name"`
	Type                     string     `json:"type"`
	ClusterIPs               []string   `json:"clusterIPs,omitempty"`
	ExternalIPs              []string   `json:"externalIPs,omitempty"`
	LoadBalancer             []LBInfo   `json:"loadBalancer,omitempty"`
	LoadBalancerSourceRanges []string   `json:"loadBalancerSourceRanges,omitempty"`
	Ports                    []SpecPort `json:"ports"`
	ExternalTrafficPolicy    string     `json:"externalTrafficPolicy,omitempty"`
	InternalTrafficPolicy    string     `json:"internalTrafficPolicy,omitempty"`
	HealthCheckNodePort      int32      `json:"healthCheckNodePort,omitempty"`
	SessionAffinity          string     `json:"sessionAffinity"`
	AffinityTimeoutSeconds   int32      `json:"affinityTimeoutSeconds,omitempty"`
	ServiceProxyName         *string    `json:"serviceProxyName,omitempty"`
	Headless                 bool       `json:"headless"`
	ExternalName             string     `json:"externalName,omitempty"`
	TrafficDistribution      string     `json:"trafficDistribution,omitempty"`
}

// LBInfo is one load balancer ingress.
type LBInfo struct {
	IP       string `json:"ip,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	// IPMode is VIP (the proxy captures the IP) or Proxy (it does not);
	// unset means VIP.
	IPMode string `json:"ipMode"`
}

// SpecPort is one port of the Service spec.
type SpecPort struct {
	Name       string `json:"name"`
	Protocol   string `json:"protocol"`
	Port       int32  `json:"port"`
	TargetPort string `json:"targetPort"`
	NodePort   int32  `json:"nodePort,omitempty"`
}

// SliceInfo is one EndpointSlice.
type SliceInfo struct {
	Name        string          `json:"name"`
	AddressType string          `json:"addressType"`
	Ports       []SlicePort     `json:"ports"`
	Endpoints   []SliceEndpoint `json:"endpoints"`
	// Ignored says why the proxy does not use the slice at all.
	Ignored string `json:"ignored,omitempty"`
}

// SlicePort is one port of a slice.
type SlicePort struct {
	Name     string `json:"name"`
	Port     string `json:"port"`
	Protocol string `json:"protocol"`
}

// SliceEndpoint is one endpoint of a slice as written. Conditions are
// "true", "false", or "unset=true"/"unset=false" when the field is nil
// (the API reads nil ready and serving as true, nil terminating as false).
type SliceEndpoint struct {
	Addresses   []string `json:"addresses"`
	Ready       string   `json:"ready"`
	Serving     string   `json:"serving"`
	Terminating string   `json:"terminating"`
	Node        string   `json:"node,omitempty"`
	Zone        string   `json:"zone,omitempty"`
	ZoneHints   []string `json:"zoneHints,omitempty"`
	NodeHints   []string `json:"nodeHints,omitempty"`
}

// PortInfo is one Service port through every layer.
type PortInfo struct {
	SpecPort
	// Problem is the first thing wrong with this port, in Layer.
	Problem   string         `json:"problem,omitempty"`
	Layer     string         `json:"layer,omitempty"`
	Endpoints []EndpointInfo `json:"endpoints"`
	Families  []FamilyPort   `json:"families"`
}

// EndpointInfo is one endpoint of a port and whether each kind of traffic
// uses it.
type EndpointInfo struct {
	Address     string    `json:"address"`
	Family      string    `json:"family"`
	Node        string    `json:"node,omitempty"`
	Zone        string    `json:"zone,omitempty"`
	Local       bool      `json:"local"`
	Ready       bool      `json:"ready"`
	Serving     bool      `json:"serving"`
	Terminating bool      `json:"terminating"`
	Internal    Decision  `json:"internal"`
	External    *Decision `json:"external,omitempty"`
}

// FamilyPort is one port in one IP family: selection, plan and kernel.
type FamilyPort struct {
	Family    string       `json:"family"`
	ClusterIP string       `json:"clusterIP"`
	Internal  TrafficInfo  `json:"internal"`
	External  *TrafficInfo `json:"external,omitempty"`
	Planned   []ChainRules `json:"planned"`
	Kernel    KernelCheck  `json:"kernel"`
	// IPVS is set in IPVS mode: the virtual servers next to the kernel's.
	// Planned and Kernel are then the helper iptables rules.
	IPVS *IPVSCheck `json:"ipvs,omitempty"`
	// NFTables is set in nftables mode: the port's shard, its planned
	// chains and map elements, and the kernel's differences. Planned and
	// Kernel are then empty.
	NFTables *NFTablesCheck `json:"nftables,omitempty"`
}

// TrafficInfo is how one kind of traffic is handled.
type TrafficInfo struct {
	Policy string `json:"policy"`
	// Action is "balance" over Endpoints, or DROP (endpoints exist, none
	// for this policy) or REJECT (no usable endpoint at all).
	Action              string   `json:"action"`
	Chain               string   `json:"chain,omitempty"`
	Endpoints           []string `json:"endpoints"`
	TerminatingFallback bool     `json:"terminatingFallback,omitempty"`
	Topology            string   `json:"topology,omitempty"`
}

// ChainRules is a planned chain, or a port's entries in a shared chain.
type ChainRules struct {
	Table  string   `json:"table"`
	Chain  string   `json:"chain"`
	Shared bool     `json:"shared"`
	Rules  []string `json:"rules"`
}

// KernelCheck is the kernel compared with the plan.
type KernelCheck struct {
	Checked     bool         `json:"checked"`
	Backend     string       `json:"backend,omitempty"`
	Error       string       `json:"error,omitempty"`
	Differences []Difference `json:"differences,omitempty"`
}

// Trace is where packets from a source to a destination go.
type Trace struct {
	Source      string `json:"source"`
	SourceKind  string `json:"sourceKind"` // node, or pod-or-external
	Destination string `json:"destination"`
	Port        string `json:"port"`
	// Outcomes follow the planned rules; KernelOutcomes follow what the
	// kernel holds, when it differs from the plan.
	Outcomes       []Outcome `json:"outcomes"`
	KernelOutcomes []Outcome `json:"kernelOutcomes,omitempty"`
	Error          string    `json:"error,omitempty"`
}

// Outcome is one possible fate of the packet.
type Outcome struct {
	Verdict     string   `json:"verdict"`
	Endpoint    string   `json:"endpoint,omitempty"`
	Masquerade  bool     `json:"masquerade"`
	Probability float64  `json:"probability"`
	Path        []string `json:"path"`
	// VirtualServer and Weight are set for an IPVS outcome (Verdict IPVS):
	// the virtual server that took the packet and the real server's weight.
	VirtualServer string `json:"virtualServer,omitempty"`
	Weight        *int   `json:"weight,omitempty"`
}
