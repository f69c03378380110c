// Command proxy is svcproxy: a Kubernetes service proxy that replaces
// kube-proxy's iptables and ipvs modes. It takes kube-proxy's flags and
// configuration file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"k8s.io/klog/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultGCPercent is the Go GC target used unless GOGC is set. Most of
// the proxy's heap is long-lived (informer caches, the applied rules), and
// the default of 100 lets the heap reach twice that before collecting; on
// a node agent memory matters more than the extra collections (the
// measurement is in bench/README.md, "Figures behind constants").
const defaultGCPercent = 25

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "version" {
		fmt.Fprintln(stdout, "svcproxy", version)
		return 0
	}
	if len(args) > 0 && args[0] == "explain" {
		return runExplain(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "diff" {
		return runDiff(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := registerFlags(fs)
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.version {
		fmt.Fprintln(stdout, "svcproxy", version)
		return 0
	}
	defer klog.Flush()

	// Caught from here on: SIGHUP's default action would end the process.
	src := newConfigSource(f, fs)
	cfg, err := f.configuration(fs)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitConfigError
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if f.cleanup {
		if err := cleanup(); err != nil {
			klog.ErrorS(err, "Cleanup")
			return 1
		}
		return 0
	}
	src.setVerbosity(cfg)
	if err := serve(ctx, cfg, f, src); err != nil {
		klog.ErrorS(err, "Proxy stopped")
		return 1
	}
	// SIGTERM ends here: rules stay in place so traffic keeps flowing
	// while the proxy restarts.
	klog.InfoS("Stopped; kernel rules left in place")
	return 0
}
