package nftables

import (
	"maps"
	"slices"
)

// KubeProxyTable is kube-proxy's nftables-mode table, removed like ours
// when a node switches to another mode or is cleaned up.
const KubeProxyTable = "kube-proxy"

// Cleanup deletes every table this mode owns, and kube-proxy's, in one
// transaction.
func Cleanup(k Interface) error {
	tables, err := k.Chains()
	if err != nil {
		return err
	}
	b := &txBuilder{}
	for _, t := range slices.Sorted(maps.Keys(tables)) {
		b.add(Op{Kind: DropTable, Table: t})
	}
	tx := b.build()
	if tx.Empty() {
		return nil
	}
	return k.Apply(tx)
}
