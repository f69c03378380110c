package install

import (
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func readDockerfile(t *testing.T) []Stage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "config", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages, err := ParseDockerfile(string(b))
	if err != nil {
		t.Fatalf("config/Dockerfile: %v", err)
	}
	return stages
}

// goBuild is the builder's `go build` command, split into words.
type goBuild struct {
	env   map[string]string // VAR=value words before `go`
	flags []string          // everything after `go build`
}

// ldflags returns the value of -ldflags.
func (g goBuild) ldflags() (string, bool) {
	for i, f := range g.flags {
		if v, ok := strings.CutPrefix(f, "-ldflags="); ok {
			return v, true
		}
		if f == "-ldflags" && i+1 < len(g.flags) {
			return g.flags[i+1], true
		}
	}
	return "", false
}

// findGoBuild returns the RUN that builds the proxy. Its environment is
// the stage's ENV settings overridden by VAR=value words right before
// `go build`.
func findGoBuild(t *testing.T, st Stage) goBuild {
	t.Helper()
	env := map[string]string{}
	for _, in := range st.Instructions {
		words, err := shellWords(in.Args)
		if err != nil {
			t.Fatalf("line %d: %v", in.Line, err)
		}
		switch in.Cmd {
		case "ENV":
			if len(words) == 2 && !strings.Contains(words[0], "=") { // ENV K V
				env[words[0]] = words[1]
				continue
			}
			for _, w := range words {
				if k, v, ok := strings.Cut(w, "="); ok {
					env[k] = v
				}
			}
		case "RUN":
			for i := 0; i+1 < len(words); i++ {
				if words[i] != "go" || words[i+1] != "build" {
					continue
				}
				g := goBuild{env: maps.Clone(env), flags: words[i+2:]}
				for j := i - 1; j >= 0 && strings.Contains(words[j], "=") && !strings.HasPrefix(words[j], "-"); j-- {
					k, v, _ := strings.Cut(words[j], "=")
					g.env[k] = v
				}
				return g
			}
		}
	}
	t.Fatal("builder stage has no RUN ... go build")
	return goBuild{}
}

// shellWords splits a command line the way sh does for plain words and
// double or single quotes; other shell syntax (&&, ;) ends up as words.
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// goDirective is the `go` line of go.mod, e.g. "1.26".
func goDirective(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// TestDockerfile checks the image definition without a Docker daemon: two
// stages, a golang builder matching go.mod, a static trimmed build with the
// version stamped into main.version, the source directories the binary
// needs, and a Debian runtime with the kernel tools and the entrypoint.
func TestDockerfile(t *testing.T) {
	stages := readDockerfile(t)
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2 (builder, runtime)", len(stages))
	}
	build, run := stages[0], stages[1]

	wantBase := "golang:" + goDirective(t)
	if build.Base != wantBase && !strings.HasPrefix(build.Base, wantBase+"-") && !strings.HasPrefix(build.Base, wantBase+".") {
		t.Errorf("builder FROM %s, want %s (go.mod's go version)", build.Base, wantBase)
	}
	if build.Name == "" {
		t.Error("builder stage has no name (FROM ... AS build)")
	}
	g := findGoBuild(t, build)
	if g.env["CGO_ENABLED"] != "0" {
		t.Errorf("go build without CGO_ENABLED=0 (env %v): the binary would need the builder's libc", g.env)
	}
	if !slices.Contains(g.flags, "-trimpath") {
		t.Errorf("go build %v lacks -trimpath", g.flags)
	}
	ld, ok := g.ldflags()
	if !ok || !regexp.MustCompile(`-X[ =]main\.version=\$\{?VERSION\}?`).MatchString(ld) {
		t.Errorf("go build -ldflags %q: want -X main.version=${VERSION}", ld)
	}
	if len(build.Find("ARG")) == 0 || !slices.ContainsFunc(build.Find("ARG"), func(in Instruction) bool { return strings.HasPrefix(in.Args, "VERSION") }) {
		t.Error("builder stage has no ARG VERSION")
	}
	if last := g.flags[len(g.flags)-1]; last != "./cmd/proxy" {
		t.Errorf("go build builds %s, want ./cmd/proxy", last)
	}
	// main.version must exist, or -X silently does nothing.
	main, err := os.ReadFile(filepath.Join(repoRoot(t), "cmd", "proxy", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^var version = `).Match(main) {
		t.Error("cmd/proxy has no `var version`: -X main.version would be ignored")
	}
	checkSourcesCopied(t, build)

	if run.Base != "debian:bookworm-slim" {
		t.Errorf("runtime FROM %s, want debian:bookworm-slim", run.Base)
	}
	var apt []string
	for _, in := range run.Find("RUN") {
		if strings.Contains(in.Args, "apt-get install") {
			words, err := shellWords(in.Args)
			if err != nil {
				t.Fatal(err)
			}
			apt = append(apt, words...)
		}
	}
	if !slices.Contains(apt, "--no-install-recommends") {
		t.Errorf("apt-get install without --no-install-recommends: %v", apt)
	}
	for _, p := range []string{"iptables", "ipset", "conntrack", "ipvsadm"} {
		if !slices.Contains(apt, p) {
			t.Errorf("runtime image does not install %s", p)
		}
	}
	if !slices.ContainsFunc(run.Find("RUN"), func(in Instruction) bool { return strings.Contains(in.Args, "rm -rf /var/lib/apt/lists") }) {
		t.Error("apt lists are left in the image")
	}
	copied := false
	for _, in := range run.Find("COPY") {
		f := strings.Fields(in.Args)
		if slices.Contains(f, "--from="+build.Name) && f[len(f)-1] == "/usr/local/bin/proxy" {
			copied = true
		}
	}
	if !copied {
		t.Errorf("runtime stage does not COPY --from=%s the binary to /usr/local/bin/proxy", build.Name)
	}
	eps := run.Find("ENTRYPOINT")
	if len(eps) != 1 || eps[0].Args != `["/usr/local/bin/proxy"]` {
		t.Errorf("ENTRYPOINT %v, want exec form [\"/usr/local/bin/proxy\"]", eps)
	}
}

// checkSourcesCopied: every package of this module that cmd/proxy imports
// lies under a directory the builder copies, so a new import of, say,
// internal/ cannot break the image build unnoticed.
func checkSourcesCopied(t *testing.T, build Stage) {
	t.Helper()
	var dirs []string
	for _, in := range build.Find("COPY") {
		f := strings.Fields(in.Args)
		for _, src := range f[:len(f)-1] {
			if !strings.HasPrefix(src, "--") {
				dirs = append(dirs, strings.TrimSuffix(strings.TrimPrefix(src, "./"), "/"))
			}
		}
	}
	for _, need := range []string{"go.mod", "go.sum"} {
		if !slices.Contains(dirs, need) && !slices.Contains(dirs, ".") {
			t.Errorf("builder does not copy %s", need)
		}
	}
	cmd := exec.Command("go", "list", "-buildvcs=false", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/proxy")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps ./cmd/proxy: %v\n%s", err, stderr)
	}
	const module = "svcproxy.dev/svcproxy/"
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		if !slices.ContainsFunc(dirs, func(d string) bool { return d == "." || rel == d || strings.HasPrefix(rel, d+"/") }) {
			t.Errorf("cmd/proxy imports %s, but the builder does not COPY its directory (copies %v)", pkg, dirs)
		}
	}
}

// TestDockerfileBuildIsStatic runs the builder's go build (its environment,
// flags and ldflags, with a test version) on this machine and checks the
// result: a static ELF with no interpreter and no shared libraries, which
// prints the stamped version. It compiles the proxy, so -short skips it.
func TestDockerfileBuildIsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the proxy; skipped with -short")
	}
	g := findGoBuild(t, readDockerfile(t)[0])
	const version = "install-test-1"
	out := filepath.Join(t.TempDir(), "proxy")
	var args []string
	for i := 0; i < len(g.flags); i++ {
		f := g.flags[i]
		if f == "-o" {
			i++ // the image path; ours instead
			continue
		}
		args = append(args, strings.NewReplacer("${VERSION}", version, "$VERSION", version).Replace(f))
	}
	args = append([]string{"build", "-o", out}, args...)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = os.Environ()
	for k, v := range g.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %s program header: not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
	got, err := exec.Command(out, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "svcproxy "+version {
		t.Errorf("proxy version: %q (%v), want \"svcproxy %s\"", got, err, version)
	}
}

func TestShellWords(t *testing.T) {
	got, err := shellWords(`CGO_ENABLED=0 go build -ldflags "-s -w -X main.version=${VERSION}" -o '/out/my proxy' ./cmd/proxy`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CGO_ENABLED=0", "go", "build", "-ldflags", "-s -w -X main.version=${VERSION}", "-o", "/out/my proxy", "./cmd/proxy"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if _, err := shellWords(`echo "oops`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseDockerfile(t *testing.T) {
	stages, err := ParseDockerfile("# syntax=docker/dockerfile:1\nARG X=1\nFROM --platform=$BUILDPLATFORM golang:1.26 AS b\nRUN a \\\n  # comment\n\n  b\nFROM scratch\nCOPY --from=b /x /y\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) != 2 || stages[0].Name != "b" || stages[0].Base != "golang:1.26" || stages[1].Base != "scratch" {
		t.Fatalf("stages %+v", stages)
	}
	if r := stages[0].Find("RUN"); len(r) != 1 || r[0].Args != "a b" || r[0].Line != 4 {
		t.Errorf("RUN %+v", r)
	}
	for _, bad := range []string{"RUN x\n", "FROM a b\n", "FROM a\nRUN x \\\n", ""} {
		if _, err := ParseDockerfile(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
