package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Interface is the kernel side of the iptables backend for one IP family.
// It is deliberately small: everything else is planned in memory.
type Interface interface {
	// Restore applies a payload with --noflush, so chains not named in it
	// are left alone, and waits for the xtables lock.
	Restore(payload []byte) error
	// Save returns one table in iptables-save format.
	Save(table string) ([]byte, error)
	// EnsureJump makes sure a rule is present in a built-in chain,
	// inserting it at the top when it is missing.
	EnsureJump(j Jump) error
	// DeleteJump removes a rule from a built-in chain if present.
	DeleteJump(j Jump) error
	// ChainExists reports whether a chain exists.
	ChainExists(table, chain string) (bool, error)
}

// Backend names an iptables backend.
type Backend string

// The two backends iptables 1.8 can drive.
const (
	BackendNFT    Backend = "nft"
	BackendLegacy Backend = "legacy"
)

// lockWait bounds how long a command waits for the xtables lock. Another
// process holding the lock delays a sync; restore is all-or-nothing, so it
// never half-writes.
const lockWait = 30 * time.Second

// Kernel drives the real iptables binaries of one family and backend.
type Kernel struct {
	family  v1.IPFamily
	backend Backend
	ipt     *goipt.IPTables
}

// NewKernel returns the kernel interface for family on backend.
func NewKernel(family v1.IPFamily, backend Backend) (*Kernel, error) {
	ipt, err := goipt.New(goipt.IPFamily(protocol(family)), goipt.Path(binary(family, backend, "")), goipt.Timeout(int(lockWait.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("iptables %s/%s: %w", family, backend, err)
	}
	return &Kernel{family: family, backend: backend, ipt: ipt}, nil
}

func protocol(family v1.IPFamily) goipt.Protocol {
	if family == v1.IPv6Protocol {
		return goipt.ProtocolIPv6
	}
	return goipt.ProtocolIPv4
}

// binary returns e.g. "iptables-nft-restore" or "ip6tables-legacy-save".
func binary(family v1.IPFamily, backend Backend, suffix string) string {
	name := "iptables"
	if family == v1.IPv6Protocol {
		name = "ip6tables"
	}
	name += "-" + string(backend)
	if suffix != "" {
		name += "-" + suffix
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

// Restore implements Interface.
func (k *Kernel) Restore(payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), lockWait+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(k.family, k.backend, "restore"), "-w", fmt.Sprint(int(lockWait.Seconds())), "--noflush", "--counters")
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return &RestoreError{Err: err, Stderr: strings.TrimSpace(stderr.String()), Payload: payload}
	}
	return nil
}

// Save implements Interface.
func (k *Kernel) Save(table string) ([]byte, error) {
	cmd := exec.Command(binary(k.family, k.backend, "save"), "-t", table)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", cmd.Path, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// SaveLines streams one table in iptables-save format to fn, one line at
// a time without its newline; the line is valid only during the call. The
// drift check reads the whole nat table every period this way, without
// holding its text (16 MB at 5,000 Services).
func (k *Kernel) SaveLines(table string, fn func(line []byte)) error {
	cmd := exec.Command(binary(k.family, k.backend, "save"), "-t", table)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("%s -t %s: %w", cmd.Path, table, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s -t %s: %w", cmd.Path, table, err)
	}
	read := false
	defer func() {
		if !read {
			// A read error or a panic in fn: the dump may be blocked on a
			// full pipe, so stop it rather than wait for it.
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	if err := eachLine(bufio.NewReaderSize(stdout, 64<<10), fn); err != nil {
		return fmt.Errorf("%s -t %s: reading: %w", cmd.Path, table, err)
	}
	read = true
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s -t %s: %w: %s", cmd.Path, table, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// eachLine calls fn for every line r yields, joining lines longer than
// r's buffer.
func eachLine(r *bufio.Reader, fn func(line []byte)) error {
	var long []byte
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, line...)
			continue
		}
		if len(long) > 0 {
			long = append(long, line...)
			line, long = long, long[:0]
		}
		if len(line) > 0 {
			fn(bytes.TrimSuffix(line, []byte{'\n'}))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// EnsureJump implements Interface.
func (k *Kernel) EnsureJump(j Jump) error {
	ok, err := k.ipt.Exists(j.Table, j.Chain, j.Rule...)
	if err != nil || ok {
		return err
	}
	return k.ipt.Insert(j.Table, j.Chain, 1, j.Rule...)
}

// DeleteJump implements Interface.
func (k *Kernel) DeleteJump(j Jump) error { return k.ipt.DeleteIfExists(j.Table, j.Chain, j.Rule...) }

// ChainExists implements Interface.
func (k *Kernel) ChainExists(table, chain string) (bool, error) {
	return k.ipt.ChainExists(table, chain)
}

// RestoreError is a failed restore, with the lines iptables complained about.
type RestoreError struct {
	Err     error
	Stderr  string
	Payload []byte
}

func (e *RestoreError) Error() string {
	msg := fmt.Sprintf("iptables-restore failed: %v: %s", e.Err, e.Stderr)
	if line := failedLine(e.Stderr, e.Payload); line != "" {
		msg += "; failing line: " + line
	}
	return msg
}

// failedLine finds the payload line that "Error occurred at line: N" names.
func failedLine(stderr string, payload []byte) string {
	var n int
	idx := strings.Index(stderr, "line: ")
	if idx < 0 {
		return ""
	}
	if _, err := fmt.Sscanf(stderr[idx+len("line: "):], "%d", &n); err != nil || n < 1 {
		return ""
	}
	lines := strings.Split(string(payload), "\n")
	if n > len(lines) {
		return ""
	}
	return lines[n-1]
}

// DetectBackend picks the backend the node already uses, as kube-proxy and
// the iptables-wrapper do: the one holding the kubelet's (or a previous
// proxy's) chains, else the one with more rules, else nft.
func DetectBackend() Backend {
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		out, err := exec.Command(binary(v1.IPv4Protocol, b, "save"), "-t", "mangle").Output()
		if err == nil && (bytes.Contains(out, []byte("KUBE-IPTABLES-HINT")) || bytes.Contains(out, []byte("KUBE-KUBELET-CANARY"))) {
			klog.V(2).InfoS("Detected iptables backend from kubelet hint", "backend", b)
			return b
		}
	}
	nft, legacy := countRules(BackendNFT), countRules(BackendLegacy)
	if legacy > nft {
		return BackendLegacy
	}
	return BackendNFT
}

func countRules(b Backend) int {
	out, err := exec.Command(binary(v1.IPv4Protocol, b, "save")).Output()
	if err != nil {
		return 0
	}
	return bytes.Count(out, []byte("\n-A "))
}
