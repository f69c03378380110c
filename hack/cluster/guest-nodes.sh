#!/usr/bin/env bash
# Runs in the QEMU guest for MODE=ipvs (started by up.sh through
# e2e/vm's svcvm): this machine's kernel has no IPVS, the guest's Debian
# kernel has. The control plane stays on this machine in svck-cp; the
# guest's NIC is a TAP on the cluster switch (svck-sw), so the nodes here
# are on the same network as on this machine: 10.99.0.11 to .13.
#
# The guest boots systemd on a writable overlay of this machine's root
# (svcvm -systemd) and runs this script as a unit; $run is shared
# read-write. containerd's and kubelet's state live on a tmpfs of the guest
# (overlayfs cannot stack its upper layer on the overlay or on 9p). It writes $run/guest-ready
# once both kubelets run, and stops them and powers off when
# $run/guest-stop appears (down.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$root/hack/cluster/node.sh"
state=/tmp/svck
mkdir -p "$state"
# containerd's overlayfs snapshots need a tmpfs under them, not the guest's
# overlay root.
mount -t tmpfs tmpfs "$state"
# svcvm returns the command's output only when the guest stops.
mkdir -p "$run/logs"
exec >>"$run/logs/guest-nodes.log" 2>&1
CLUSTER_PIDS=$state/pids  # guest pids mean nothing to this machine's down.sh

# kubelet and the CNI plugins also write to fixed paths (device plugin and
# pod-resources sockets, /var/log/containers, the CNI result cache); this
# machine's root is read-only here. up.sh made the directories.
for d in /var/lib/kubelet /var/lib/cni /var/log; do
	mount -t tmpfs tmpfs "$d"
done
log "guest: $(uname -r), bridge br0 over the TAP (eth0)"
ip link set lo up
ip link add br0 type bridge
ip link set br0 up
ip link set eth0 master br0 up
for n in "${NODES[@]}"; do
	member "$n" "${NODE_IP[$n]}"
	node_network "$n"
done
for n in "${NODES[@]}"; do
	node "$n" "$state/$n"
done
touch "$run/guest-ready"
while [[ ! -e $run/guest-stop ]]; do sleep 2; done
log "guest: stopping"
for f in "$CLUSTER_PIDS"/kubelet-* "$CLUSTER_PIDS"/containerd-*; do
	[[ -e $f ]] && kill "$(cat "$f")" 2>/dev/null
done
sleep 2
