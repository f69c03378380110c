package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"svcproxy.dev/svcproxy/pkg/explain"
)

const diffUsage = `usage: proxy diff [flags]

Prints the kernel changes the next sync would make, without making them:
plans from the API state as the daemon does, reads the kernel rules
(iptables-save) and prints, per IP family and per Service whose kernel
state differs, the iptables-restore --noflush lines that bring the kernel
to the plan (chains to rewrite or remove, shared-chain entries to add or
delete), then the fixed chains, canaries and jumps if they differ.
In IPVS mode it first prints, per IP family, the virtual server, real
server, kube-ipvs0 address and ipset changes a sync would make (what the
daemon's applier would do, found by running it against a copy of the
kernel's state), as ipvsadm, ip and ipset commands; the iptables part is
then the helper rules' difference.
Exit status: 0 no difference, 1 the kernel differs, 2 error.

flags:
`

func runDiff(args []string, stdout, stderr io.Writer) int {
	fs, f, output := subcommandFlags("diff", diffUsage, stderr)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitError
	}
	defer klog.Flush()
	if len(pos) > 0 || (*output != "text" && *output != "json") {
		fmt.Fprintln(stderr, "error: proxy diff takes no arguments, and -o text or -o json")
		fs.Usage()
		return exitError
	}
	cfg, err := f.configuration(fs)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := readNode(ctx, cfg, f.master)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	// The daemon's informers list with this selector; so does diff.
	opts := metav1.ListOptions{LabelSelector: explain.DaemonSelector}
	svcList, err := st.client.CoreV1().Services(metav1.NamespaceAll).List(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "error: listing Services:", err)
		return exitError
	}
	sliceList, err := st.client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "error: listing EndpointSlices:", err)
		return exitError
	}
	svcs := make([]*v1.Service, len(svcList.Items))
	for i := range svcList.Items {
		svcs[i] = &svcList.Items[i]
	}
	slices := make([]*discovery.EndpointSlice, len(sliceList.Items))
	for i := range sliceList.Items {
		slices[i] = &sliceList.Items[i]
	}
	snap := explain.DaemonSnapshot(st.nodeName, st.node, svcs, slices)
	d := explain.Diff(snap, st.families)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(d)
	} else {
		err = d.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return exitError
	}
	for _, fam := range d.Families {
		if fam.Error != "" {
			return exitError
		}
	}
	if d.Differ {
		return exitProblem
	}
	return exitOK
}
