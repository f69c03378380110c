// Command image writes container images as one docker-archive tarball that
// `ctr images import` loads into a node's containerd: no Docker daemon and no
// registry are needed (none is reachable here).
//
//	image -spec images.json -out images.tar
//
// The spec is a JSON list of images. Each has the full name the pods and
// the e2e framework ask for (e.g. registry.k8s.io/pause:3.10.2), an optional
// base layer (a tar of a root file system; images that name the same tar
// share the layer, written once), files copied into a second layer, symlinks,
// and the entrypoint, command and environment of the image config.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image is one entry of the spec file.
type Image struct {
	Name       string            `json:"name"`
	Base       string            `json:"base,omitempty"`     // tar of a root file system
	Files      map[string]string `json:"files,omitempty"`    // path in the image -> file on this machine
	Symlinks   map[string]string `json:"symlinks,omitempty"` // path in the image -> link target
	Dirs       []string          `json:"dirs,omitempty"`     // empty directories to create
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        []string          `json:"env,omitempty"`
	WorkingDir string            `json:"workingDir,omitempty"`
}

func main() {
	spec := flag.String("spec", "", "JSON file listing the images")
	out := flag.String("out", "", "docker-archive tarball to write")
	flag.Parse()
	if *spec == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: image -spec images.json -out images.tar")
		os.Exit(2)
	}
	if err := run(*spec, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(specPath, out string) error {
	data, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var images []Image
	if err := json.Unmarshal(data, &images); err != nil {
		return fmt.Errorf("%s: %w", specPath, err)
	}
	bases := map[string]v1.Layer{}
	refs := map[name.Reference]v1.Image{}
	for _, spec := range images {
		img, err := build(spec, bases)
		if err != nil {
			return fmt.Errorf("image %s: %w", spec.Name, err)
		}
		tag, err := name.NewTag(spec.Name)
		if err != nil {
			return fmt.Errorf("image name %q: %w", spec.Name, err)
		}
		refs[tag] = img
	}
	return tarball.MultiRefWriteToFile(out, refs)
}

func build(spec Image, bases map[string]v1.Layer) (v1.Image, error) {
	var layers []v1.Layer
	if spec.Base != "" {
		base, ok := bases[spec.Base]
		if !ok {
			var err error
			if base, err = tarball.LayerFromFile(spec.Base); err != nil {
				return nil, err
			}
			bases[spec.Base] = base
		}
		layers = append(layers, base)
	}
	own, err := ownLayer(spec)
	if err != nil {
		return nil, err
	}
	layers = append(layers, own)
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, spec.Env...)
	cfg.Config.WorkingDir = spec.WorkingDir
	return mutate.ConfigFile(img, cfg)
}

// ownLayer is the image's own files, symlinks and directories as one layer,
// in a fixed order so the same inputs give the same digest.
func ownLayer(spec Image) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	made := map[string]bool{}
	mkdirs := func(p string) error {
		var parents []string
		for d := path.Dir(p); d != "/" && d != "." && !made[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			made[parents[i]] = true
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: parents[i][1:] + "/", Mode: 0o755}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range spec.Dirs {
		if err := mkdirs(path.Join(d, "x")); err != nil {
			return nil, err
		}
	}
	for _, dst := range sortedKeys(spec.Files) {
		if err := addFile(tw, mkdirs, dst, spec.Files[dst]); err != nil {
			return nil, err
		}
	}
	for _, dst := range sortedKeys(spec.Symlinks) {
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Name: dst[1:], Linkname: spec.Symlinks[dst], Mode: 0o777}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	content := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(content)), nil
	})
}

func addFile(tw *tar.Writer, mkdirs func(string) error, dst, src string) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("file %q: the path in the image must be absolute", dst)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := mkdirs(dst); err != nil {
		return err
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: dst[1:], Mode: int64(st.Mode().Perm()), Size: int64(len(data))}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = tw.Write(data)
	return err
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
