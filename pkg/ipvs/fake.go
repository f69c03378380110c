package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// schedulers the fake kernel knows (the ip_vs_* scheduler modules).
var schedulers = map[string]bool{"rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true, "sh": true, "dh": true, "sed": true, "nq": true, "mh": true}

// FakeIPVS is an in-memory IPVS table that answers like the kernel: adding
// a virtual server or real server that exists is EEXIST, touching one that
// does not is ENOENT, an unknown scheduler is ENOENT, and a real server of
// another address family than its virtual server is EAFNOSUPPORT. Calls
// counts every call by kind, for tests that check a sync's cost.
type FakeIPVS struct {
	mu       sync.Mutex
	services map[VSKey]*fakeVS
	Calls    map[string]int
	// Read counts the virtual and real servers dumps returned.
	Read     int
	Timeouts [3]time.Duration
	// Fail, when set, fails every mutating call with it.
	Fail error
}

type fakeVS struct {
	svc   Service
	dests map[netip.AddrPort]*Destination
}

// NewFakeIPVS returns an empty fake table.
func NewFakeIPVS() *FakeIPVS {
	return &FakeIPVS{services: map[VSKey]*fakeVS{}, Calls: map[string]int{}}
}

func (f *FakeIPVS) count(kind string) error {
	f.Calls[kind]++
	if f.Fail != nil && kind != "Services" && kind != "Destinations" {
		return f.Fail
	}
	return nil
}

// ResetCalls zeroes the call counters.
func (f *FakeIPVS) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls, f.Read = map[string]int{}, 0
}

// Mutations returns the number of calls that changed the table (or tried to).
func (f *FakeIPVS) Mutations() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, v := range f.Calls {
		if k != "Services" && k != "Destinations" {
			n += v
		}
	}
	return n
}

func (f *FakeIPVS) Services() ([]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.count("Services")
	var out []Service
	for _, k := range slices.SortedFunc(maps.Keys(f.services), compareKeys) {
		out = append(out, f.services[k].svc)
	}
	f.Read += len(out)
	return out, nil
}

func (f *FakeIPVS) Destinations(k VSKey) ([]Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.count("Destinations")
	vs, ok := f.services[k]
	if !ok {
		return nil, fmt.Errorf("%s: %w", k, syscall.ENOENT)
	}
	var out []Destination
	for _, a := range slices.SortedFunc(maps.Keys(vs.dests), compareAddrPorts) {
		out = append(out, *vs.dests[a])
	}
	f.Read += len(out)
	return out, nil
}

func checkService(s Service) error {
	if !s.Key.Addr.IsValid() || s.Key.Port == 0 {
		return fmt.Errorf("virtual server %s: %w", s.Key, syscall.EINVAL)
	}
	if !schedulers[s.Scheduler] {
		return fmt.Errorf("scheduler %q: %w", s.Scheduler, syscall.ENOENT)
	}
	return nil
}

func (f *FakeIPVS) AddService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.count("AddService"); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return err
	}
	if _, ok := f.services[s.Key]; ok {
		return fmt.Errorf("%s: %w", s.Key, syscall.EEXIST)
	}
	f.services[s.Key] = &fakeVS{svc: s, dests: map[netip.AddrPort]*Destination{}}
	return nil
}

func (f *FakeIPVS) UpdateService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.count("UpdateService"); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return err
	}
	vs, ok := f.services[s.Key]
	if !ok {
		return fmt.Errorf("%s: %w", s.Key, syscall.ENOENT)
	}
	vs.svc = s
	return nil
}

func (f *FakeIPVS) DeleteService(k VSKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.count("DeleteService"); err != nil {
		return err
	}
	if _, ok := f.services[k]; !ok {
		return fmt.Errorf("%s: %w", k, syscall.ENOENT)
	}
	delete(f.services, k)
	return nil
}

func (f *FakeIPVS) dest(kind string, k VSKey, rs netip.AddrPort, mustExist bool) (*fakeVS, error) {
	if err := f.count(kind); err != nil {
		return nil, err
	}
	vs, ok := f.services[k]
	if !ok {
		return nil, fmt.Errorf("real server %s of missing %s: %w", rs, k, syscall.ENOENT)
	}
	if rs.Addr().Is4() != k.Addr.Is4() {
		return nil, fmt.Errorf("real server %s for %s: %w", rs, k, syscall.EAFNOSUPPORT)
	}
	if _, ok := vs.dests[rs]; ok != mustExist {
		if ok {
			return nil, fmt.Errorf("real server %s of %s: %w", rs, k, syscall.EEXIST)
		}
		return nil, fmt.Errorf("real server %s of %s: %w", rs, k, syscall.ENOENT)
	}
	return vs, nil
}

func (f *FakeIPVS) AddDestination(k VSKey, rs netip.AddrPort, w int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	vs, err := f.dest("AddDestination", k, rs, false)
	if err != nil {
		return err
	}
	vs.dests[rs] = &Destination{Addr: rs, Weight: w}
	return nil
}

func (f *FakeIPVS) UpdateDestination(k VSKey, rs netip.AddrPort, w int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	vs, err := f.dest("UpdateDestination", k, rs, true)
	if err != nil {
		return err
	}
	vs.dests[rs].Weight = w
	return nil
}

func (f *FakeIPVS) DeleteDestination(k VSKey, rs netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	vs, err := f.dest("DeleteDestination", k, rs, true)
	if err != nil {
		return err
	}
	delete(vs.dests, rs)
	return nil
}

func (f *FakeIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.count("SetTimeouts"); err != nil {
		return err
	}
	for i, d := range []time.Duration{tcp, tcpFin, udp} {
		if d > 0 {
			f.Timeouts[i] = d
		}
	}
	return nil
}

// SetConns sets a real server's connection counts (for graceful
// termination tests).
func (f *FakeIPVS) SetConns(k VSKey, rs netip.AddrPort, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vs, ok := f.services[k]; ok {
		if d, ok := vs.dests[rs]; ok {
			d.ActiveConn, d.InactiveConn = active, inactive
		}
	}
}

// Dump renders the table like `ipvsadm -Ln`, sorted, one line per virtual
// server (for tests).
func (f *FakeIPVS) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.SortedFunc(maps.Keys(f.services), compareKeys) {
		vs := f.services[k]
		v := &VirtualServer{Key: k, Scheduler: vs.svc.Scheduler, Timeout: vs.svc.Timeout, RealServers: map[netip.AddrPort]int{}}
		for a, d := range vs.dests {
			v.RealServers[a] = d.Weight
		}
		b.WriteString(v.String() + "\n")
	}
	return b.String()
}

// FakeIPSets is an in-memory ipset table that validates restore payloads
// like the ipset tool: a create that differs from an existing set, a member
// of a missing set, or a member that does not fit the set's type or family
// fails the payload at that line (earlier lines stay applied, as with
// `ipset restore`). With -exist, adding a present member or deleting a
// missing one is not an error.
type FakeIPSets struct {
	mu       sync.Mutex
	sets     map[string]*fakeSet
	Restores int
	Saves    int
	Fail     error
}

type fakeSet struct {
	create  string // normalised create line
	typ     string
	family  string
	members map[string]bool
}

// NewFakeIPSets returns an empty ipset table.
func NewFakeIPSets() *FakeIPSets { return &FakeIPSets{sets: map[string]*fakeSet{}} }

func (s *FakeIPSets) Save() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Saves++
	var b bytes.Buffer
	for _, name := range slices.Sorted(maps.Keys(s.sets)) {
		set := s.sets[name]
		b.WriteString(set.create + "\n")
		for _, m := range slices.Sorted(maps.Keys(set.members)) {
			fmt.Fprintf(&b, "add %s %s\n", name, m)
		}
	}
	return b.Bytes(), nil
}

func (s *FakeIPSets) Restore(payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil {
		return s.Fail
	}
	s.Restores++
	sc := bufio.NewScanner(bytes.NewReader(payload))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if err := s.apply(line); err != nil {
			return fmt.Errorf("ipset restore: line %d %q: %w", n, line, err)
		}
	}
	return nil
}

func (s *FakeIPSets) apply(line string) error {
	f := strings.Fields(line)
	if len(f) < 2 {
		return fmt.Errorf("malformed line")
	}
	name := f[1]
	set := s.sets[name]
	switch f[0] {
	case "create":
		if len(f) < 3 {
			return fmt.Errorf("create without a type")
		}
		fam := ""
		if i := slices.Index(f, "family"); i > 0 && i+1 < len(f) {
			fam = f[i+1]
		}
		if !strings.HasPrefix(f[2], "bitmap:") && fam == "" {
			fam = "inet"
		}
		if set != nil {
			if set.create != line {
				return fmt.Errorf("set %s exists with different create parameters", name)
			}
			return nil
		}
		s.sets[name] = &fakeSet{create: line, typ: f[2], family: fam, members: map[string]bool{}}
	case "add", "del":
		if set == nil {
			return fmt.Errorf("set %s does not exist", name)
		}
		if len(f) != 3 {
			return fmt.Errorf("malformed member")
		}
		if err := validMember(set.typ, set.family, f[2]); err != nil {
			return err
		}
		if f[0] == "add" {
			set.members[f[2]] = true
		} else {
			delete(set.members, f[2])
		}
	case "destroy":
		if set == nil {
			return fmt.Errorf("set %s does not exist", name)
		}
		delete(s.sets, name)
	case "flush":
		if set == nil {
			return fmt.Errorf("set %s does not exist", name)
		}
		set.members = map[string]bool{}
	default:
		return fmt.Errorf("unknown command %q", f[0])
	}
	return nil
}

// Create makes a set behind the proxy's back (for tests of foreign or
// mismatched sets).
func (s *FakeIPSets) Create(line string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apply(line)
}

// Members returns a set's members, sorted.
func (s *FakeIPSets) Members(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if set := s.sets[name]; set != nil {
		return slices.Sorted(maps.Keys(set.members))
	}
	return nil
}

// Flush empties a set behind the proxy's back (for drift tests).
func (s *FakeIPSets) Flush(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if set := s.sets[name]; set != nil {
		set.members = map[string]bool{}
	}
}

// validMember checks that a member fits a set type and family, as ipset
// parses it.
func validMember(typ, family, m string) error {
	parts := strings.Split(m, ",")
	addr := func(s string) error {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("bad address %q", s)
		}
		if a.Is6() != (family == "inet6") {
			return fmt.Errorf("address %s does not fit family %s", s, family)
		}
		return nil
	}
	protoPort := func(s string) error {
		proto, port, ok := strings.Cut(s, ":")
		if !ok || (proto != "tcp" && proto != "udp" && proto != "sctp") {
			return fmt.Errorf("bad proto:port %q", s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("bad port %q", s)
		}
		return nil
	}
	want := map[string]int{typeHashIP: 1, typeHashIPPort: 2, typeHashIPPortIP: 3, typeHashIPPortNet: 3, typeBitmapPort: 1}[typ]
	if want == 0 {
		return fmt.Errorf("unknown set type %s", typ)
	}
	if len(parts) != want {
		return fmt.Errorf("member %q does not fit %s", m, typ)
	}
	switch typ {
	case typeBitmapPort:
		if n, err := strconv.Atoi(m); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("bad port %q", m)
		}
		return nil
	case typeHashIP:
		return addr(m)
	}
	if err := addr(parts[0]); err != nil {
		return err
	}
	if err := protoPort(parts[1]); err != nil {
		return err
	}
	switch typ {
	case typeHashIPPortIP:
		return addr(parts[2])
	case typeHashIPPortNet:
		if strings.Contains(parts[2], "/") {
			p, err := netip.ParsePrefix(parts[2])
			if err != nil || p.Addr().Is6() != (family == "inet6") || p != p.Masked() || p.IsSingleIP() {
				return fmt.Errorf("bad net %q (ipset prints a host without its length)", parts[2])
			}
			return nil
		}
		return addr(parts[2])
	}
	return nil
}

// FakeSysctl records sysctl writes.
type FakeSysctl struct {
	mu     sync.Mutex
	Values map[string]string
	Writes int
}

// NewFakeSysctl returns sysctls holding the given values.
func NewFakeSysctl() *FakeSysctl { return &FakeSysctl{Values: map[string]string{}} }

func (s *FakeSysctl) Get(path string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.Values[path]
	if !ok {
		return "0", nil
	}
	return v, nil
}

func (s *FakeSysctl) Set(path, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Values[path] = value
	s.Writes++
	return nil
}

// NewFakeKernel returns fakes for every kernel interface.
func NewFakeKernel(host ...netip.Addr) (Kernel, *FakeIPVS, *FakeLink, *FakeIPSets, *FakeSysctl) {
	i, l, s, c := NewFakeIPVS(), NewFakeLink(host...), NewFakeIPSets(), NewFakeSysctl()
	return Kernel{IPVS: i, Link: l, IPSets: s, Sysctl: c}, i, l, s, c
}
