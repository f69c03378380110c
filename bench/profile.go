package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// pprofURL is the CPU profile endpoint svcproxy serves beside /metrics
// when the config sets enableProfiling; traceURL the execution trace's.
const (
	pprofURL = "http://127.0.0.1:10249/debug/pprof/profile"
	traceURL = "http://127.0.0.1:10249/debug/pprof/trace"
)

// profileFile names the CPU profile of one phase of one run.
func profileFile(r *Run, phase string) string {
	mode := r.Mode
	if mode == "" {
		mode = "iptables"
	}
	return fmt.Sprintf("profile-%s-%s-n%d.pb.gz", mode, phase, r.N)
}

// startProfile asks svcproxy for a CPU profile of the next secs seconds
// (with -profile only; kube-proxy is not profiled). The returned wait
// writes it into the output directory and reports what went wrong, which
// the caller logs: a missing profile never fails the bench.
func (b *bench) startProfile(ctx context.Context, r *Run, netns, phase string, secs int) (wait func() error) {
	if !b.o.Profile || r.Proxy == KubeProxy {
		return func() error { return nil }
	}
	done := make(chan error, 2)
	go func() {
		done <- fetchProfile(ctx, netns, pprofURL, secs, filepath.Join(b.o.Out, profileFile(r, phase)))
	}()
	traced := b.o.Trace && phase == "churn"
	if traced {
		name := strings.Replace(strings.TrimSuffix(profileFile(r, phase), ".pb.gz"), "profile-", "trace-", 1) + ".out"
		go func() { done <- fetchProfile(ctx, netns, traceURL, secs, filepath.Join(b.o.Out, name)) }()
	}
	return func() error {
		err := <-done
		if traced {
			err = errors.Join(err, <-done)
		}
		return err
	}
}

// fetchProfile writes what url (a CPU profile or an execution trace)
// serves for the next secs seconds to path.
func fetchProfile(ctx context.Context, netns, url string, secs int, path string) error {
	hc := nsutil.HTTPClient(netns, time.Duration(secs)*time.Second+time.Minute)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?seconds=%d", url, secs), nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s (is enableProfiling set?)", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile: %w", err)
	}
	return f.Close()
}

// collectProfiles moves the guest's profiles from dir into out/profiles
// and writes beside each `go tool pprof -top` of it (flat and cumulative),
// so the figures can be read without the binary.
func collectProfiles(dir, out string) error {
	files, err := filepath.Glob(filepath.Join(dir, "profile-*.pb.gz"))
	if err != nil || len(files) == 0 {
		return err
	}
	traces, _ := filepath.Glob(filepath.Join(dir, "trace-*.out"))
	dst := filepath.Join(out, "profiles")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		to := filepath.Join(dst, filepath.Base(f))
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(to, data, 0o644); err != nil {
			return err
		}
		if err := writeTop(to); err != nil {
			logf("pprof -top %s: %v", to, err)
		}
	}
	for _, f := range traces {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func writeTop(profile string) error {
	var text strings.Builder
	for _, order := range [][]string{{"-top"}, {"-top", "-cum"}} {
		args := append([]string{"tool", "pprof", "-nodecount", "40"}, order...)
		out, err := exec.Command("go", append(args, profile)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		fmt.Fprintf(&text, "$ go tool pprof %s %s\n%s\n", strings.Join(args[2:], " "), filepath.Base(profile), out)
	}
	return os.WriteFile(strings.TrimSuffix(profile, ".pb.gz")+".txt", []byte(text.String()), 0o644)
}
