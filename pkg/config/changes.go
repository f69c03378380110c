package config

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"k8s.io/kube-proxy/config/v1alpha1"
)

// Change is one setting that differs between two configurations.
type Change struct {
	// Path is the field's path in the file, e.g. "iptables.syncPeriod".
	Path string
	// Old and New are the values, rendered as in the file ("" when unset).
	Old, New string
	// Live is true when a running proxy applies the change without a
	// restart; anything else (the mode, addresses, the planner's inputs)
	// waits for the next start.
	Live bool
}

func (c Change) String() string {
	return fmt.Sprintf("%s: %s -> %s", c.Path, orUnset(c.Old), orUnset(c.New))
}

func orUnset(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// liveFields are the settings a running proxy re-applies: the sync loop's
// timing, log verbosity and the conntrack sysctls. Every one of them is
// read again on each use, so changing it cannot leave half-applied state.
// The sync periods of the mode that is not running are inert, and so
// harmless to accept live as well.
var liveFields = []string{
	"iptables.syncPeriod", "iptables.minSyncPeriod",
	"ipvs.syncPeriod", "ipvs.minSyncPeriod",
	"logging.verbosity",
	"conntrack.",
}

// restartFields are exceptions under a live prefix: tcpBeLiberal also
// decides whether KUBE-FORWARD drops INVALID packets, a planner input fixed
// at start-up.
var restartFields = []string{"conntrack.tcpBeLiberal"}

func isLive(path string) bool {
	if slices.Contains(restartFields, path) {
		return false
	}
	for _, f := range liveFields {
		if path == f || (strings.HasSuffix(f, ".") && strings.HasPrefix(path, f)) {
			return true
		}
	}
	return false
}

// Changes lists the settings that differ between old and new, sorted by
// path. Both must be defaulted (Load and Default do that), so a field left
// out of the file compares as its default, not as a change.
func Changes(old, new *v1alpha1.KubeProxyConfiguration) ([]Change, error) {
	a, err := flatten(old)
	if err != nil {
		return nil, err
	}
	b, err := flatten(new)
	if err != nil {
		return nil, err
	}
	var out []Change
	for path := range union(a, b) {
		if a[path] != b[path] {
			out = append(out, Change{Path: path, Old: a[path], New: b[path], Live: isLive(path)})
		}
	}
	slices.SortFunc(out, func(x, y Change) int { return strings.Compare(x.Path, y.Path) })
	return out, nil
}

// flatten renders every leaf of the configuration, keyed by its path in
// the file; lists and maps count as one leaf, so a reordered list of
// addresses is one change, named by the list's field.
func flatten(c *v1alpha1.KubeProxyConfiguration) (map[string]string, error) {
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	out := map[string]string{}
	flattenInto(out, "", doc)
	return out, nil
}

func flattenInto(out map[string]string, prefix string, v any) {
	obj, ok := v.(map[string]any)
	if !ok || isMapField(prefix) {
		out[prefix] = exact(v)
		return
	}
	for k, child := range obj {
		if prefix == "" && (k == "kind" || k == "apiVersion") {
			continue
		}
		flattenInto(out, joinPath(prefix, k), child)
	}
}

// exact renders a value as JSON, untruncated, so that two long lists
// that differ late still compare as different; strings stay bare so that
// logs read "iptables", not "\"iptables\"".
func exact(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// isMapField reports the fields whose JSON objects are maps, not structs:
// featureGates is compared whole.
func isMapField(path string) bool { return path == "featureGates" }

func joinPath(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func union(a, b map[string]string) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// WithLive returns running with the live settings taken from next: what a
// running proxy uses after it re-reads its file. Every other setting keeps
// its running value until a restart, so a later diff against the file
// still names it.
func WithLive(running, next *v1alpha1.KubeProxyConfiguration) *v1alpha1.KubeProxyConfiguration {
	out := running.DeepCopy()
	out.IPTables.SyncPeriod = next.IPTables.SyncPeriod
	out.IPTables.MinSyncPeriod = next.IPTables.MinSyncPeriod
	out.IPVS.SyncPeriod = next.IPVS.SyncPeriod
	out.IPVS.MinSyncPeriod = next.IPVS.MinSyncPeriod
	out.NFTables.SyncPeriod = next.NFTables.SyncPeriod
	out.NFTables.MinSyncPeriod = next.NFTables.MinSyncPeriod
	out.Logging.Verbosity = next.Logging.Verbosity
	liberal := out.Conntrack.TCPBeLiberal
	next.Conntrack.DeepCopyInto(&out.Conntrack)
	out.Conntrack.TCPBeLiberal = liberal
	return out
}
