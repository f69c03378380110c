// Package install checks that svcproxy installs as shipped in config/: the
// Kubernetes manifests apply to a real API server and give the proxy
// exactly the access it needs, the systemd unit verifies, and the
// Dockerfile builds the binary the way the image needs it.
package install

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// FieldManager is the server-side apply field manager the tests use, as
// `kubectl apply --server-side --field-manager` would.
const FieldManager = "svcproxy-install"

// Manifest is one API object from a file in config/.
type Manifest struct {
	File string // base name of the file it came from
	Doc  int    // 1-based index of the YAML document in that file
	Obj  *unstructured.Unstructured
}

func (m Manifest) String() string {
	return fmt.Sprintf("%s %s (%s, document %d)", m.Obj.GetKind(), key(m.Obj), m.File, m.Doc)
}

func key(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return o.GetName()
	}
	return o.GetNamespace() + "/" + o.GetName()
}

// notManifests are kinds found in config/ that are files for the proxy,
// not API objects.
var notManifests = []string{"KubeProxyConfiguration"}

// LoadManifests reads every *.yaml and *.yml file in dir and returns the
// API objects in them, in file then document order. Empty documents (only
// comments) are skipped, and so are KubeProxyConfiguration files; any
// other document without apiVersion, kind or metadata.name is an error.
func LoadManifests(dir string) ([]Manifest, error) {
	var files []string
	for _, pat := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		files = append(files, m...)
	}
	slices.Sort(files)
	var out []Manifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ms, err := ParseManifests(filepath.Base(f), data)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// ParseManifests splits a multi-document YAML file into API objects; name
// is used in errors and in Manifest.File.
func ParseManifests(name string, data []byte) ([]Manifest, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []Manifest
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		if len(m) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		if slices.Contains(notManifests, obj.GetKind()) {
			continue
		}
		if obj.GetAPIVersion() == "" || obj.GetKind() == "" || obj.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d: apiVersion, kind and metadata.name are required", name, doc)
		}
		out = append(out, Manifest{File: name, Doc: doc, Obj: obj})
	}
}

// Applier server-side applies manifests through the dynamic client.
type Applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

// NewApplier builds a dynamic client and a discovery-backed REST mapper.
func NewApplier(cfg *rest.Config) (*Applier, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// resource returns the client for the object's resource, namespaced when
// the resource is.
func (a *Applier) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.Kind, key(o), err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			return nil, fmt.Errorf("%s %s: namespaced, but metadata.namespace is not set", gvk.Kind, o.GetName())
		}
		return a.dyn.Resource(mapping.Resource).Namespace(o.GetNamespace()), nil
	}
	if o.GetNamespace() != "" {
		return nil, fmt.Errorf("%s %s: cluster-scoped, but metadata.namespace is set", gvk.Kind, key(o))
	}
	return a.dyn.Resource(mapping.Resource), nil
}

// Apply sends the object as a server-side apply patch (types.ApplyPatchType)
// with strict field validation, so an unknown or misspelt field is an
// error instead of being dropped.
func (a *Applier) Apply(ctx context.Context, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ri, err := a.resource(o)
	if err != nil {
		return nil, err
	}
	data, err := o.MarshalJSON()
	if err != nil {
		return nil, err
	}
	force := true
	got, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager:    FieldManager,
		Force:           &force,
		FieldValidation: metav1.FieldValidationStrict,
	})
	if err != nil {
		return nil, fmt.Errorf("apply %s %s: %w", o.GetKind(), key(o), err)
	}
	return got, nil
}

// Get reads the object back from the API server.
func (a *Applier) Get(ctx context.Context, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ri, err := a.resource(o)
	if err != nil {
		return nil, err
	}
	return ri.Get(ctx, o.GetName(), metav1.GetOptions{})
}

// ConfigMapFile returns one key of a ConfigMap manifest's data.
func ConfigMapFile(ms []Manifest, name, dataKey string) (string, error) {
	for _, m := range ms {
		if m.Obj.GetKind() != "ConfigMap" || m.Obj.GetName() != name {
			continue
		}
		v, ok, err := unstructured.NestedString(m.Obj.Object, "data", dataKey)
		if err != nil || !ok {
			return "", fmt.Errorf("ConfigMap %s has no data key %q", name, dataKey)
		}
		return v, nil
	}
	return "", fmt.Errorf("no ConfigMap %s in the manifests", name)
}

// Find returns the manifest of the given kind and name.
func Find(ms []Manifest, kind, name string) (Manifest, bool) {
	for _, m := range ms {
		if strings.EqualFold(m.Obj.GetKind(), kind) && m.Obj.GetName() == name {
			return m, true
		}
	}
	return Manifest{}, false
}
