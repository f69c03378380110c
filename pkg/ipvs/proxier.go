package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/iptables"
	"svcproxy.dev/svcproxy/pkg/metrics"
	"svcproxy.dev/svcproxy/pkg/watch"
)

// Options configures a Proxier for one IP family.
type Options struct {
	Family    v1.IPFamily
	Scheduler string
	// NodePortAddresses limits NodePorts to these node addresses; nil means
	// every node address. Loopback addresses never get NodePorts in IPVS
	// mode.
	NodePortAddresses []netip.Addr
	// NodeIP is the node's primary IP of this family.
	NodeIP       netip.Addr
	ExcludeCIDRs []netip.Prefix
	StrictARP    bool
	// TCPTimeout, TCPFinTimeout and UDPTimeout are IPVS's connection
	// timeouts (ipvsadm --set); zero keeps the kernel's.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
	GracePeriod                           time.Duration
	Now                                   func() time.Time
}

// Proxier keeps one IP family of the kernel in IPVS mode: the virtual
// servers, kube-ipvs0's addresses and the ipsets through an Applier, and the
// helper iptables rules through the shared iptables.Proxier planned with
// PlanRules. Methods are safe for concurrent use (Reap runs on a timer).
type Proxier struct {
	mu      sync.Mutex
	opts    Options
	k       Kernel
	applier *Applier
	rules   *iptables.Proxier
	prev    *State
	setup   bool
	// host caches the plan options derived from the node's addresses
	// while the kernel's address notifications say they have not changed.
	host hostCache
	// calls counts the kernel calls made through k since the last reset;
	// every use of k holds mu, so a Sync's count is exactly its own.
	calls callCounts
	// sets is the uncounted ipset tool, which the drift check runs
	// without the lock (calls needs it).
	sets IPSets
	// betweenSteps, when set (tests), runs after each step of the drift
	// check, where the lock must be free.
	betweenSteps func()
	// realServerChecks is how many virtual servers' real servers one drift
	// check reads (see rotation); nextRealServers is where the next one
	// starts. Only the drift check uses them, one check at a time.
	realServerChecks int
	nextRealServers  VSKey
}

// RealServerChecks is how many virtual servers' real servers one drift check
// reads. Listing real servers is one netlink round trip per virtual server,
// the only part of the check that costs N calls; at 5,000 Services reading
// them all every period was the largest part of the proxy's CPU between
// changes. Above this many virtual servers the checks take turns, so each
// is read at least every ceil(N / RealServerChecks) periods; missing
// virtual servers, addresses and ipset members are still caught in one.
const RealServerChecks = 1000

type hostCache struct {
	opts    PlanOptions
	version uint64
	valid   bool
}

// NewProxier returns a Proxier whose first Sync is a full one. ipt is the
// family's iptables kernel interface and iptOpts the options the helper
// rules are planned with (masquerade bit, local detector, ...).
func NewProxier(k Kernel, ipt iptables.Interface, iptOpts iptables.PlanOptions, opts Options) *Proxier {
	if opts.Scheduler == "" {
		opts.Scheduler = DefaultScheduler
	}
	iptOpts.Family = opts.Family
	p := &Proxier{opts: opts, calls: callCounts{}, realServerChecks: RealServerChecks, rules: iptables.NewProxier(ipt, iptOpts).WithPlanner(PlanRules)}
	p.k, p.sets = countingKernel(k, &p.calls), k.IPSets
	p.applier = NewApplier(p.k, ApplierOptions{Family: opts.Family, ExcludeCIDRs: opts.ExcludeCIDRs, GracePeriod: opts.GracePeriod, Now: opts.Now})
	return p
}

// Result describes one successful sync.
type Result struct {
	Full         bool
	PayloadBytes int
	// Written counts the helper iptables rules this sync wrote, per table.
	Written map[string]int
	Rules   *iptables.Ruleset
	State   *State
	// KernelCalls counts the sync's kernel calls by kind: netlink
	// requests, ipset runs and iptables-restore runs (the Reap that
	// follows the sync included).
	KernelCalls map[string]int
}

// sysctls IPVS mode needs, per network namespace (kube-proxy's).
var sysctls = [][2]string{
	{"net/ipv4/vs/conntrack", "1"},
	{"net/ipv4/vs/expire_nodest_conn", "1"},
	{"net/ipv4/vs/expire_quiescent_template", "1"},
	{"net/ipv4/ip_forward", "1"},
}

var strictARPSysctls = [][2]string{
	{"net/ipv4/conf/all/arp_ignore", "1"},
	{"net/ipv4/conf/all/arp_announce", "2"},
}

// ensureSetup writes the sysctls and IPVS timeouts once. Every one of them
// belongs to the proxy's network namespace; nothing host-global is written.
func (p *Proxier) ensureSetup() error {
	if p.setup {
		return nil
	}
	// The first IPVS call loads ip_vs (moby/ipvs runs modprobe), which
	// brings net/ipv4/vs/* into existence.
	_, _ = p.k.IPVS.Services()
	list := sysctls
	if p.opts.StrictARP {
		list = append(slices.Clone(list), strictARPSysctls...)
	}
	var errs []error
	for _, kv := range list {
		if cur, err := p.k.Sysctl.Get(kv[0]); err == nil && cur == kv[1] {
			continue
		}
		if err := p.k.Sysctl.Set(kv[0], kv[1]); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err))
		} else {
			klog.V(2).InfoS("Set sysctl", "name", kv[0], "value", kv[1])
		}
	}
	o := p.opts
	if o.TCPTimeout > 0 || o.TCPFinTimeout > 0 || o.UDPTimeout > 0 {
		if err := p.k.IPVS.SetTimeouts(o.TCPTimeout, o.TCPFinTimeout, o.UDPTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.setup = true
	return nil
}

// planOptions derives the plan options from the node's addresses. Reading
// them is a dump of every address, the service IPs on kube-ipvs0 included,
// so a delta sync reuses the last answer while the kernel's address
// notifications report no change; a full sync (reread) always reads.
func (p *Proxier) planOptions(reread bool) (PlanOptions, error) {
	version, watched := p.k.Link.HostAddrsVersion()
	if !reread && watched && p.host.valid && p.host.version == version {
		return p.host.opts, nil
	}
	all, err := p.k.Link.HostAddrs(p.opts.Family)
	if err != nil {
		p.host.valid = false
		return PlanOptions{}, err
	}
	p.host = hostCache{opts: HostPlanOptions(all, p.opts), version: version, valid: watched}
	return p.host.opts, nil
}

// NodePortIPs returns the addresses NodePort virtual servers listen on:
// every node address (or those nodePortAddresses names) except loopback
// and IPv6 link-local ones.
func NodePortIPs(host []netip.Addr, allowed []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range host {
		if a.IsLoopback() || (a.Is6() && a.IsLinkLocalUnicast()) || a.IsUnspecified() {
			continue
		}
		if allowed != nil && !slices.Contains(allowed, a) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// Sync makes the kernel match snap. A failure leaves what was written in
// place and makes the next Sync a full one: snap's change set is gone
// with it, so only a full sync (which reads the kernel back) is right
// afterwards.
func (p *Proxier) Sync(snap *watch.Snapshot) (Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A failed sync may have retired real servers too.
	defer p.countDraining()
	p.calls.take() // what drift checks and timed reaps did since
	res, err := p.sync(snap)
	if err != nil {
		p.prev = nil
		p.applier.ForceFull()
		p.rules.ForceFull()
		return Result{}, err
	}
	return res, nil
}

func (p *Proxier) sync(snap *watch.Snapshot) (Result, error) {
	if err := p.ensureSetup(); err != nil {
		klog.ErrorS(err, "IPVS mode set-up incomplete; retrying at the next sync")
	}
	opts, err := p.planOptions(p.applier.NeedsFull() || p.prev == nil || snap.NodeChanged)
	if err != nil {
		return Result{}, err
	}
	full := p.applier.NeedsFull() || p.prev == nil || snap.NodeChanged || !p.prev.opts.equal(opts)
	var base *State
	var changed []string
	if full {
		p.applier.ForceFull()
	} else {
		base = p.prev
		for name := range snap.Changed {
			changed = append(changed, name.String())
		}
		slices.Sort(changed)
	}
	state := PlanFrom(base, snap, opts)
	if err := p.applier.Apply(state, changed); err != nil {
		return Result{}, err
	}
	p.prev = state
	// The ipsets exist now; the helper rules may refer to them.
	if full {
		p.rules.ForceFull()
	}
	res, err := p.rules.Sync(snap)
	if err != nil {
		return Result{}, err
	}
	if err := p.applier.ReapTouched(); err != nil {
		klog.ErrorS(err, "Deleting drained IPVS real servers")
	}
	calls := p.calls.take()
	if res.Payloads > 0 {
		calls["iptables_restore"] = res.Payloads
	}
	return Result{Full: full || res.Full, PayloadBytes: res.PayloadBytes, Written: res.Written, Rules: res.Ruleset, State: state, KernelCalls: calls}, nil
}

// Reap deletes drained real servers; the proxy calls it every few seconds
// between syncs. It takes the lock for one virtual server at a time, so a
// sync never waits for more than one read.
func (p *Proxier) Reap() error {
	p.mu.Lock()
	var keys []VSKey
	if p.prev != nil {
		keys = p.applier.Reaping()
	}
	p.mu.Unlock()
	var errs []error
	for _, k := range keys {
		p.mu.Lock()
		if p.prev != nil {
			errs = append(errs, p.applier.ReapOne(k))
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	p.countDraining()
	p.mu.Unlock()
	return errors.Join(errs...)
}

// countDraining sets the draining gauge; the caller holds p.mu, so that a
// Reap's count cannot overwrite a later Sync's.
func (p *Proxier) countDraining() {
	metrics.IPVSRealServersDraining.WithLabelValues(string(p.opts.Family)).Set(float64(p.applier.Draining()))
}

// Verify looks for drift in the IPVS table, kube-ipvs0, the ipsets and
// the helper rules.
func (p *Proxier) Verify() (*Drift, error) {
	if d, err := p.verifyIPVS(); err != nil || d != nil {
		return d, err
	}
	// Outside our lock: the iptables proxier's Verify runs beside its own
	// Sync, and reading the nat table must not hold up IPVS syncs.
	d, err := p.rules.Verify()
	if err != nil || d == nil {
		return nil, err
	}
	return &Drift{Reason: "iptables-" + d.Reason, Detail: d.Detail}, nil
}

// verifyIPVS compares the virtual servers, addresses and ipsets with what
// the applier wrote. Each netlink step (the virtual server dump, each
// virtual server's real servers, the addresses) reads and compares under
// the lock, so it sees the applier's state of the moment and a sync in
// between cannot pass for drift; between steps the lock is free, so a
// check at 5,000 Services never holds up a sync for more than one read.
// The ipsets are read by a child process, too slow to hold the lock for,
// so that read runs without it (verifySets).
func (p *Proxier) verifyIPVS() (*Drift, error) {
	var keys []VSKey
	d, err := p.step(func() (d *Drift, err error) {
		d, keys, err = p.applier.verifyServices()
		return d, err
	})
	if err != nil || d != nil {
		return d, err
	}
	for _, k := range p.rotation(keys) {
		if d, err := p.step(func() (*Drift, error) { return p.applier.verifyRealServers(k) }); err != nil || d != nil {
			return d, err
		}
	}
	if d, err := p.step(p.applier.verifyAddrs); err != nil || d != nil {
		return d, err
	}
	return p.verifySets()
}

// verifySets reads and parses the ipsets without the lock (see setsCheck)
// and compares them under it.
func (p *Proxier) verifySets() (*Drift, error) {
	p.mu.Lock()
	begun := p.applier.beginSetsCheck()
	p.mu.Unlock()
	if !begun {
		return nil, nil
	}
	if p.betweenSteps != nil {
		p.betweenSteps()
	}
	kernel, err := saveSets(p.sets, p.opts.Family)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.applier.endSetsCheck(nil)
		return nil, err
	}
	return p.applier.endSetsCheck(kernel), nil
}

// rotation returns the virtual servers (of keys, sorted) whose real servers
// this check reads: all of them, or the next realServerChecks after where
// the last check stopped, wrapping around.
func (p *Proxier) rotation(keys []VSKey) []VSKey {
	if len(keys) <= p.realServerChecks {
		return keys
	}
	i, _ := slices.BinarySearchFunc(keys, p.nextRealServers, compareKeys)
	out := make([]VSKey, 0, p.realServerChecks)
	for range p.realServerChecks {
		out = append(out, keys[i%len(keys)])
		i++
	}
	p.nextRealServers = keys[i%len(keys)]
	return out
}

// step runs one step of the drift check under the lock.
func (p *Proxier) step(check func() (*Drift, error)) (*Drift, error) {
	p.mu.Lock()
	d, err := check()
	p.mu.Unlock()
	if p.betweenSteps != nil {
		p.betweenSteps()
	}
	return d, err
}

// ForceFull makes the next Sync rewrite everything.
func (p *Proxier) ForceFull() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applier.ForceFull()
	p.rules.ForceFull()
}

// Family returns the proxier's IP family.
func (p *Proxier) Family() v1.IPFamily { return p.opts.Family }

// Applier returns the applier (for tests).
func (p *Proxier) Applier() *Applier { return p.applier }
