// Command svcvm runs one command in the IPVS-capable QEMU guest (package
// svcproxy.dev/svcproxy/e2e/vm), for hands-on use:
//
//	go run ./e2e/vm/cmd/svcvm [flags] -- COMMAND [ARG...]
//
// It streams the guest's console to stderr with -v, prints the command's
// output to stdout, timings to stderr, and exits with the command's status.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"svcproxy.dev/svcproxy/e2e/vm"
)

type forwards []vm.Forward

func (f *forwards) String() string { return fmt.Sprint(*f) }
func (f *forwards) Set(s string) error {
	g, h, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want GUESTADDR=HOSTADDR, e.g. 10.0.2.100:6443=127.0.0.1:6443")
	}
	*f = append(*f, vm.ForwardTCP(g, h))
	return nil
}

func main() {
	var opts vm.RunOptions
	var fw forwards
	var env multi
	verbose := flag.Bool("v", false, "stream the guest console to stderr")
	modules := flag.String("modules", "default", `modules to load up front: "default" (hack/vm/modules.txt), "none", or a comma-separated list`)
	kargs := flag.String("append", "", "extra kernel command line arguments (space-separated)")
	cache := flag.Bool("share-cache", false, "mount -share with 9p's page cache (faster exec from it)")
	flag.StringVar(&opts.ShareDir, "share", "", "host directory the guest mounts read-write at the same path")
	flag.StringVar(&opts.Dir, "C", "", "working directory in the guest (default /)")
	flag.IntVar(&opts.Memory, "m", 0, "guest memory in MiB (default 4096)")
	flag.IntVar(&opts.CPUs, "smp", 0, "guest CPUs (default 2)")
	flag.DurationVar(&opts.Timeout, "timeout", 0, "bound on the whole run (default 10m)")
	flag.BoolVar(&opts.KeepCtl, "keep", false, "keep the control directory")
	flag.BoolVar(&opts.Systemd, "systemd", false, "boot systemd as PID 1 on a writable overlay of the host root; the command runs as a unit")
	flag.Var(&fw, "forward", "GUESTADDR=HOSTADDR guest-to-host TCP forward (repeatable), HOSTADDR ip:port or unix:/path")
	flag.StringVar(&opts.Tap, "tap", "", "give the guest a NIC on a TAP device of this name, made in -tap-netns (the command sets eth0 up)")
	flag.StringVar(&opts.TapNetns, "tap-netns", "", "network namespace (under /var/run/netns) for -tap")
	flag.Var(&env, "e", "KEY=VALUE for the command's environment (repeatable)")
	flag.Parse()
	opts.Command = flag.Args()
	opts.Forwards = fw
	opts.Env = env
	opts.ShareCache = *cache
	opts.KernelArgs = strings.Fields(*kargs)
	switch *modules {
	case "default":
	case "none":
		opts.Modules = []string{}
	default:
		opts.Modules = strings.Split(*modules, ",")
	}
	if len(opts.Command) == 0 {
		fmt.Fprintln(os.Stderr, "usage: svcvm [flags] -- COMMAND [ARG...]")
		os.Exit(2)
	}
	if *verbose {
		opts.Console = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := vm.Run(ctx, opts)
	if !*verbose {
		os.Stdout.WriteString(res.Output)
	}
	if res.SetupLog != "" {
		fmt.Fprint(os.Stderr, res.SetupLog)
	}
	fmt.Fprintf(os.Stderr, "svcvm: total %v, boot %v, command %v\n",
		res.Duration.Round(time.Millisecond), res.Boot.Round(time.Millisecond), res.CommandTime.Round(time.Millisecond))
	if res.CtlDir != "" {
		fmt.Fprintf(os.Stderr, "svcvm: control dir %s\n", res.CtlDir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	os.Exit(res.ExitCode)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }
