// Package config loads svcproxy's configuration: a kube-proxy
// KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1).
//
// svcproxy is a drop-in replacement for kube-proxy's iptables and ipvs
// modes, so it reads kube-proxy's own file format and applies kube-proxy's
// own defaults: a file written for kube-proxy works unchanged. Decoding is
// stricter in one way that matters to operators: every error names the
// field by its JSON path and repeats the offending value, and all problems
// are reported at once.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// The only apiVersion and kind accepted; kube-proxy has no other version
// of its configuration API.
const (
	APIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	Kind       = "KubeProxyConfiguration"
)

// Proxy modes svcproxy implements. Windows' "kernelspace" is rejected by
// Validate.
const (
	ModeIPTables v1alpha1.ProxyMode = "iptables"
	ModeIPVS     v1alpha1.ProxyMode = "ipvs"
	ModeNFTables v1alpha1.ProxyMode = "nftables"
)

// Ways of telling local traffic from remote, as in kube-proxy.
const (
	LocalModeClusterCIDR         v1alpha1.LocalMode = "ClusterCIDR"
	LocalModeNodeCIDR            v1alpha1.LocalMode = "NodeCIDR"
	LocalModeBridgeInterface     v1alpha1.LocalMode = "BridgeInterface"
	LocalModeInterfaceNamePrefix v1alpha1.LocalMode = "InterfaceNamePrefix"
)

// Keywords accepted in nodePortAddresses besides CIDRs, as in kube-proxy.
const (
	NodePortAddressesPrimary   = "primary"
	NodePortAddressesLocalhost = "localhost"
	NodePortAddressesAll       = "all"
)

// ErrEmpty is returned for a file with no configuration in it. An empty
// file is almost always a broken ConfigMap mount, and silently running on
// defaults would hide that.
var ErrEmpty = errors.New("configuration is empty: expected a KubeProxyConfiguration with apiVersion " +
	APIVersion + " and kind " + Kind)

// Load reads path, decodes it strictly, applies defaults and validates.
func Load(path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	cfg, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("configuration file %s:\n%w", path, err)
	}
	return cfg, nil
}

// Decode does what Load does for bytes holding YAML or JSON. It is split
// out so that callers (and the fuzzer) need no file.
func Decode(data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	doc, err := parseDocument(data)
	if err != nil {
		return nil, err
	}
	if err := checkTypeMeta(doc); err != nil {
		return nil, err
	}
	if err := checkSchema(doc, reflect.TypeFor[v1alpha1.KubeProxyConfiguration]()); err != nil {
		return nil, err
	}
	cfg := &v1alpha1.KubeProxyConfiguration{}
	if err := yaml.UnmarshalStrict(data, cfg); err != nil {
		// The schema check should have caught anything that gets here.
		return nil, fmt.Errorf("decoding configuration: %w", err)
	}
	SetDefaults(cfg)
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseDocument turns YAML (or JSON) into a generic tree whose numbers
// are kept as json.Number, so that integer fields can be range-checked
// without float rounding. Duplicate keys are rejected, as kube-proxy does.
func parseDocument(data []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, ErrEmpty
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	switch doc := v.(type) {
	case nil:
		return nil, ErrEmpty
	case map[string]any:
		return doc, nil
	default:
		return nil, fmt.Errorf("configuration must be a YAML mapping (a %s), got %s %s", Kind, jsonKind(v), render(v))
	}
}

// checkTypeMeta insists on kube-proxy's apiVersion and kind before
// anything else, because a file of another kind (a kubelet configuration
// mounted by mistake) would otherwise produce a screenful of unknown-field
// errors instead of the one that matters.
func checkTypeMeta(doc map[string]any) error {
	return errors.Join(
		checkConstField(doc, "apiVersion", APIVersion),
		checkConstField(doc, "kind", Kind),
	)
}

// checkConstField requires doc[key] to be exactly want.
func checkConstField(doc map[string]any, key, want string) error {
	v, ok := doc[key]
	if !ok || v == nil || v == "" {
		return &FieldError{Path: key, Reason: ReasonRequiredValue, Detail: fmt.Sprintf("must be %q", want)}
	}
	if v != want {
		return fieldErr(key, ReasonUnsupportedValue, v, fmt.Sprintf("must be %q", want))
	}
	return nil
}

// SyncPeriods returns the syncPeriod and minSyncPeriod in force for the
// configured mode. kube-proxy keeps a pair per mode in the file but uses
// only the active mode's pair, so callers should not pick one themselves.
func SyncPeriods(c *v1alpha1.KubeProxyConfiguration) (sync, minSync time.Duration) {
	switch c.Mode {
	case ModeIPVS:
		return c.IPVS.SyncPeriod.Duration, c.IPVS.MinSyncPeriod.Duration
	case ModeNFTables:
		return c.NFTables.SyncPeriod.Duration, c.NFTables.MinSyncPeriod.Duration
	}
	return c.IPTables.SyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration
}
