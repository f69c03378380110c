package iptables

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
)

// RemoveChains deletes the named chains of one table if they exist, after
// deleting every rule elsewhere that jumps to them. Rules are deleted by the
// exact text iptables-save printed, so this works for rules written by any
// version of any proxy; nothing else in the table is touched.
//
// The usual answer is "none of them exist" (every start-up asks for the
// other mode's chains), so the table is first streamed for its chain
// names, and its text read whole only when there is something to remove.
func RemoveChains(kernel Interface, table string, names []string) error {
	names = slices.Clone(names)
	listed, err := readSaved(kernel, table)
	if err != nil {
		return err
	}
	names = slices.DeleteFunc(names, func(n string) bool { _, ok := listed.counts[n]; return !ok })
	if len(names) == 0 {
		return nil
	}
	// Read again whole, for the rules to delete by their exact text; the
	// table may have changed since, so existence is checked again.
	save, err := kernel.Save(table)
	if err != nil {
		return err
	}
	existing := parseSave(save).counts
	doomed := map[string]bool{}
	for _, n := range names {
		if _, ok := existing[n]; ok {
			doomed[n] = true
		}
	}
	if len(doomed) == 0 {
		return nil
	}
	p := newPayload()
	t := p.table(table)
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		chain, spec, _ := strings.Cut(line[3:], " ")
		if !doomed[chain] && doomed[target(spec)] {
			t.del = append(t.del, "-D "+chain+" "+spec)
		}
	}
	for _, n := range slices.Sorted(mapsKeys(doomed)) {
		p.declare(ChainKey{table, n})
		t.remove = append(t.remove, "-X "+n)
	}
	return kernel.Restore(p.Bytes())
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// OwnedChains lists the chains of a table that this proxy (or kube-proxy's
// iptables mode) owns.
func OwnedChains(kernel Interface, table string) ([]string, error) {
	saved, err := readSaved(kernel, table)
	if err != nil {
		return nil, err
	}
	var out []string
	counts := saved.counts
	for name := range counts {
		if kubeletOwns(counts, name) {
			continue
		}
		if IsServiceChain(name) || isBaseChain(name) || name == ChainCanary {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// ChainKubeletCanary is the canary chain kubelet keeps in the tables it
// writes to.
const ChainKubeletCanary = "KUBE-KUBELET-CANARY"

// kubeletOwns reports a chain of a table (given its chains' rule counts)
// that belongs to kubelet as much as to us: KUBE-FIREWALL where kubelet
// runs. Neither clean-up nor a full sync that no longer needs the chain
// may delete it then.
func kubeletOwns[V any](chains map[string]V, name string) bool {
	_, kubelet := chains[ChainKubeletCanary]
	return kubelet && name == ChainFirewall
}

// firewallJumpComment marks this proxy's own jump into KUBE-FIREWALL (see
// base.go); kubelet's and kube-proxy's jumps carry no comment.
const firewallJumpComment = "kubernetes firewall for dropping marked packets"

// KubeletFirewall hands KUBE-FIREWALL over to kubelet where kubelet runs
// (its canary chain is in the filter table): kubelet keeps the same
// 127.0.0.0/8 guard in that chain (CVE-2020-8558), and kube-proxy's
// clean-up leaves the chain and its jumps alone for that reason. It
// deletes only this proxy's own jumps into the chain, recognised by their
// comment; OwnedChains then leaves the chain out. Without kubelet it does
// nothing and the chain goes with the rest.
func KubeletFirewall(kernel Interface) error {
	save, err := kernel.Save(TableFilter)
	if err != nil {
		return err
	}
	if _, ok := parseSave(save).counts[ChainKubeletCanary]; !ok {
		return nil
	}
	p := newPayload()
	t := p.table(TableFilter)
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-A ") && strings.HasSuffix(line, " -j "+ChainFirewall) && strings.Contains(line, firewallJumpComment) {
			t.del = append(t.del, "-D "+line[3:])
		}
	}
	if len(t.del) == 0 {
		return nil
	}
	return kernel.Restore(p.Bytes())
}
