package install

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"

	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/pkg/config"
)

// Names and paths the manifests must agree on.
const (
	systemNS      = "kube-system"
	name          = "svcproxy"
	configMount   = "/etc/svcproxy"
	saMount       = "/var/run/secrets/kubernetes.io/serviceaccount"
	healthzPort   = 10256
	nodeNameArg   = "--hostname-override=$(NODE_NAME)"
	configFileArg = "--config=" + configMount + "/config.yaml"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func loadManifests(t *testing.T) []Manifest {
	t.Helper()
	ms, err := LoadManifests(filepath.Join(repoRoot(t), "config"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		t.Fatal("no manifests in config/")
	}
	return ms
}

// decodeStrict converts a manifest into its Go type, failing on any field
// the type does not have (a typo would otherwise vanish silently).
func decodeStrict(t *testing.T, m Manifest, into any) {
	t.Helper()
	raw, err := m.Obj.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		t.Fatalf("%s: %v", m, err)
	}
}

func mustFind(t *testing.T, ms []Manifest, kind string) Manifest {
	t.Helper()
	m, ok := Find(ms, kind, name)
	if !ok {
		t.Fatalf("no %s %s in config/", kind, name)
	}
	return m
}

// TestManifestsAreComplete: the five objects exist, each once, decode
// strictly into their API types, and sit in kube-system when namespaced.
func TestManifestsAreComplete(t *testing.T) {
	ms := loadManifests(t)
	seen := map[string]bool{}
	for _, m := range ms {
		k := m.Obj.GetKind() + "/" + key(m.Obj)
		if seen[k] {
			t.Errorf("%s is defined twice", m)
		}
		seen[k] = true
	}
	want := map[string]any{
		"ConfigMap":          &corev1.ConfigMap{},
		"ServiceAccount":     &corev1.ServiceAccount{},
		"ClusterRole":        &rbacv1.ClusterRole{},
		"ClusterRoleBinding": &rbacv1.ClusterRoleBinding{},
		"DaemonSet":          &appsv1.DaemonSet{},
	}
	for kind, obj := range want {
		m := mustFind(t, ms, kind)
		decodeStrict(t, m, obj)
		namespaced := !strings.HasPrefix(kind, "Cluster")
		if got := m.Obj.GetNamespace(); namespaced && got != systemNS || !namespaced && got != "" {
			t.Errorf("%s: namespace %q", m, got)
		}
	}
}

// TestClusterRoleIsLeastPrivilege compares the role's rules with exactly
// what the proxy's client does: an extra verb, resource or wildcard fails.
func TestClusterRoleIsLeastPrivilege(t *testing.T) {
	ms := loadManifests(t)
	var role rbacv1.ClusterRole
	decodeStrict(t, mustFind(t, ms, "ClusterRole"), &role)
	want := map[string][]string{ // group/resource -> verbs
		"/services":                       {"list", "watch"},
		"discovery.k8s.io/endpointslices": {"list", "watch"},
		"/nodes":                          {"get", "list", "watch"},
		"/events":                         {"create", "patch"},
		"events.k8s.io/events":            {"create", "patch"},
	}
	got := map[string][]string{}
	for i, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %d: unexpected resourceNames/nonResourceURLs %v %v", i, r.ResourceNames, r.NonResourceURLs)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := g + "/" + res
				got[k] = append(got[k], r.Verbs...)
			}
		}
	}
	for k, verbs := range got {
		slices.Sort(verbs)
		got[k] = slices.Compact(verbs)
		if strings.Contains(k, "*") || slices.Contains(verbs, "*") {
			t.Errorf("wildcard in rule for %s: %v", k, verbs)
		}
	}
	for k, verbs := range want {
		if !slices.Equal(got[k], verbs) {
			t.Errorf("%s: verbs %v, want %v", k, got[k], verbs)
		}
	}
	for k, verbs := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: not needed by the proxy, but granted %v", k, verbs)
		}
	}

	var binding rbacv1.ClusterRoleBinding
	decodeStrict(t, mustFind(t, ms, "ClusterRoleBinding"), &binding)
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}) {
		t.Errorf("binding roleRef %+v", binding.RoleRef)
	}
	wantSubj := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: systemNS}}
	if !slices.Equal(binding.Subjects, wantSubj) {
		t.Errorf("binding subjects %+v, want %+v", binding.Subjects, wantSubj)
	}
}

// TestConfigMapConfigLoads runs the ConfigMap's config.yaml through the
// proxy's own loader and checks its kubeconfig uses the pod's
// ServiceAccount credentials.
func TestConfigMapConfigLoads(t *testing.T) {
	ms := loadManifests(t)
	text, err := ConfigMapFile(ms, name, "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Decode([]byte(text))
	if err != nil {
		t.Fatalf("ConfigMap config.yaml: %v", err)
	}
	if cfg.Mode != config.ModeIPTables {
		t.Errorf("mode %q, want iptables", cfg.Mode)
	}
	if cfg.HostnameOverride != "" {
		t.Errorf("hostnameOverride %q: must be empty, the DaemonSet sets it per node", cfg.HostnameOverride)
	}
	_, port, err := net.SplitHostPort(cfg.HealthzBindAddress)
	if err != nil || port != "10256" {
		t.Errorf("healthzBindAddress %q: the probes use port %d", cfg.HealthzBindAddress, healthzPort)
	}
	kcPath := cfg.ClientConnection.Kubeconfig
	dataKey, ok := strings.CutPrefix(kcPath, configMount+"/")
	if !ok {
		t.Fatalf("clientConnection.kubeconfig %q is not in the ConfigMap mount %s", kcPath, configMount)
	}
	kc, err := ConfigMapFile(ms, name, dataKey)
	if err != nil {
		t.Fatal(err)
	}
	kcfg, err := clientcmd.Load([]byte(kc))
	if err != nil {
		t.Fatalf("ConfigMap %s: %v", dataKey, err)
	}
	cc, err := clientcmd.NewDefaultClientConfig(*kcfg, nil).RawConfig()
	if err != nil {
		t.Fatal(err)
	}
	ctx := cc.Contexts[cc.CurrentContext]
	if ctx == nil {
		t.Fatalf("kubeconfig: current context %q missing", cc.CurrentContext)
	}
	cl, user := cc.Clusters[ctx.Cluster], cc.AuthInfos[ctx.AuthInfo]
	if cl == nil || user == nil {
		t.Fatalf("kubeconfig: context %q names a missing cluster or user", cc.CurrentContext)
	}
	if cl.CertificateAuthority != saMount+"/ca.crt" || user.TokenFile != saMount+"/token" {
		t.Errorf("kubeconfig: CA %q and tokenFile %q, want the ServiceAccount mount's", cl.CertificateAuthority, user.TokenFile)
	}
	if !strings.HasPrefix(cl.Server, "https://") {
		t.Errorf("kubeconfig: server %q", cl.Server)
	}
}

// TestDaemonSet checks the pod spec item by item.
func TestDaemonSet(t *testing.T) {
	ms := loadManifests(t)
	var ds appsv1.DaemonSet
	decodeStrict(t, mustFind(t, ms, "DaemonSet"), &ds)
	spec := ds.Spec.Template.Spec

	if us := ds.Spec.UpdateStrategy; us.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
		us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork is not set")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if spec.ServiceAccountName != name {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if !slices.Contains(spec.Tolerations, corev1.Toleration{Operator: corev1.TolerationOpExists}) {
		t.Errorf("tolerations %+v: want one that tolerates every taint (operator: Exists, no key, no effect)", spec.Tolerations)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	for _, a := range []string{configFileArg, nodeNameArg} {
		if !slices.Contains(c.Args, a) && !slices.Contains(c.Command, a) {
			t.Errorf("container args %q lack %s", c.Args, a)
		}
	}
	var nodeEnv *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeEnv = &c.Env[i]
		}
	}
	if nodeEnv == nil || nodeEnv.ValueFrom == nil || nodeEnv.ValueFrom.FieldRef == nil || nodeEnv.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME must come from the downward API (fieldRef spec.nodeName): %+v", nodeEnv)
	}

	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Error("no securityContext: the proxy needs NET_ADMIN at least")
	case sc.Privileged != nil && *sc.Privileged:
		// Allowed with the reason in a comment, which a decoder cannot
		// see; the raw file is checked for it instead.
		raw, err := os.ReadFile(filepath.Join(repoRoot(t), "config", mustFind(t, ms, "DaemonSet").File))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte("/proc/sys is mounted read-only")) {
			t.Error("privileged: true without the comment explaining why")
		}
	default:
		if sc.Capabilities == nil {
			t.Fatal("securityContext has neither privileged nor capabilities")
		}
		for _, cp := range sc.Capabilities.Add {
			if !slices.Contains([]corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_MODULE"}, cp) {
				t.Errorf("capability %s is not needed", cp)
			}
		}
		if !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") {
			t.Error("NET_ADMIN missing")
		}
	}

	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", what, path)
			return
		}
		if p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != healthzPort {
			t.Errorf("%s probe: GET %s on port %s, want %s on %d", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path, healthzPort)
		}
	}
	probe("liveness", c.LivenessProbe, "/livez")
	probe("readiness", c.ReadinessProbe, "/healthz")
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resource requests %v: want cpu and memory", c.Resources.Requests)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s uses undefined volume %s", m.MountPath, m.Name)
		}
	}
	hostPath := func(mountPath, path string, typ corev1.HostPathType, readOnly bool) {
		m, ok := mounts[mountPath]
		if !ok {
			t.Errorf("no mount at %s", mountPath)
			return
		}
		hp := volumes[m.Name].HostPath
		if hp == nil || hp.Path != path || (typ != "" && (hp.Type == nil || *hp.Type != typ)) {
			t.Errorf("mount %s: volume %+v, want hostPath %s %s", mountPath, volumes[m.Name].VolumeSource, path, typ)
		}
		if m.ReadOnly != readOnly {
			t.Errorf("mount %s: readOnly %v, want %v", mountPath, m.ReadOnly, readOnly)
		}
	}
	hostPath("/lib/modules", "/lib/modules", "", true)
	hostPath("/run/xtables.lock", "/run/xtables.lock", corev1.HostPathFileOrCreate, false)
	if m, ok := mounts[configMount]; !ok {
		t.Errorf("no mount at %s", configMount)
	} else if cm := volumes[m.Name].ConfigMap; cm == nil || cm.Name != name {
		t.Errorf("mount %s: want ConfigMap %s, got %+v", configMount, name, volumes[m.Name].VolumeSource)
	}
}
