// Command acceptance runs an acceptance scenario file against a service
// proxy binary on a real control plane, in network namespaces of its own:
//
//	go run ./e2e/cmd/acceptance --mode iptables --file /abs/scenarios.yaml [--run REGEXP] [--proxy PATH|reference] [--verbose] [--demo]
//
// It prints one line per flow ("scenario/flow: pass|fail: why|skip: why")
// and a closing "N passed, N failed, N skipped"; it exits 0 only when no
// flow failed. Ctrl-C and SIGTERM stop the run and remove everything it
// created.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"svcproxy.dev/svcproxy/e2e/acceptance"
	"svcproxy.dev/svcproxy/e2e/controlplane"
	"svcproxy.dev/svcproxy/e2e/demo"
)

func main() {
	os.Exit(run())
}

func run() int {
	mode := flag.String("mode", "iptables", "proxy mode: iptables, ipvs or nftables")
	file := flag.String("file", "", "scenario file (required)")
	runRE := flag.String("run", "", "only scenarios or scenario/flow names matching this regexp")
	proxy := flag.String("proxy", "", `proxy binary (default <repo>/bin/proxy; "reference" = .cache/bin/kube-proxy)`)
	verbose := flag.Bool("verbose", false, "print setup details and the proxy logs of failed scenarios")
	demoMode := flag.Bool("demo", false, "show what the proxy did at each stage (make demo; for e2e/demo/demo.yaml)")
	// Internal: the side of an ipvs run inside the VM guest (see
	// acceptance.RunInVM), against the host's API server.
	inVM := flag.Bool("in-vm", false, "internal: run the scenarios here against --kubeconfig (the guest side of --mode ipvs)")
	kubeconfig := flag.String("kubeconfig", "", "internal (--in-vm): kubeconfig of the running API server")
	cidrs := flag.String("service-cidrs", "", "internal (--in-vm): the API server's service CIDRs, comma-separated")
	responder := flag.String("responder", "", "prebuilt responder binary (default: built from e2e/cmd/responder)")
	flag.Parse()
	if *file == "" {
		fmt.Fprintln(os.Stderr, "acceptance: --file is required")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "acceptance: must run as root (network namespaces, iptables)")
		return 2
	}
	opts := acceptance.Options{Mode: *mode, Verbose: *verbose, Out: os.Stdout, Log: os.Stderr}
	var err error
	if opts.File, err = filepath.Abs(*file); err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 2
	}
	if *runRE != "" {
		if opts.Run, err = regexp.Compile(*runRE); err != nil {
			fmt.Fprintln(os.Stderr, "acceptance: --run:", err)
			return 2
		}
	}
	if opts.Proxy, err = proxyPath(*proxy); err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 2
	}
	opts.ResponderBin = *responder
	if *demoMode {
		opts.Observer = demo.New()
		opts.GuestFlags = []string{"--demo"}
	}
	if *inVM {
		opts.Kubeconfig = *kubeconfig
		opts.ServiceCIDRs = strings.Split(*cidrs, ",")
		opts.Out = acceptance.MarkedWriter{W: os.Stdout}
		// Emulation is slow: give the proxy and each attempt more time.
		opts.SyncTimeout, opts.AttemptTimeout = 3*time.Minute, 3*time.Second
	} else if *mode == "ipvs" && os.Getenv("SVCPROXY_VM_GUEST") == "" {
		// The host kernel has no IPVS: run the scenarios in a VM guest.
		return runInVM(opts, *demoMode)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := acceptance.NewRunner(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 2
	}
	defer r.Close()
	// First signal: cancel, let the scenario tear itself down. Second: the
	// shared parts go at once (the scenario's namespaces are removed by the
	// next run's stale cleanup if we die before reaching them).
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "acceptance: interrupted, cleaning up")
		cancel()
		<-sig
		_ = r.Close()
		os.Exit(130)
	}()

	sum, err := r.RunFile(ctx)
	if sum != nil {
		fmt.Println(sum.Line())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 1
	}
	if sum.Failed > 0 {
		return 1
	}
	return 0
}

// proxyPath resolves --proxy.
func proxyPath(p string) (string, error) {
	switch p {
	case "reference":
		return filepath.Join(controlplane.DefaultBinDir(), "kube-proxy"), nil
	case "":
		root, err := controlplane.RepoRoot()
		if err != nil {
			return "", err
		}
		p = filepath.Join(root, "bin", "proxy")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("proxy binary: %w", err)
	}
	return abs, nil
}

// runInVM runs the file in an IPVS-capable guest (acceptance.RunInVM).
func runInVM(opts acceptance.Options, transcript bool) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "acceptance: interrupted, stopping the guest")
		cancel()
	}()
	sum, err := acceptance.RunInVM(ctx, acceptance.VMOptions{Options: opts, Transcript: transcript})
	if sum != nil {
		fmt.Println(sum.Line())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "acceptance:", err)
		return 1
	}
	if sum.Failed > 0 {
		return 1
	}
	return 0
}
