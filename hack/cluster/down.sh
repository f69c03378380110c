#!/usr/bin/env bash
# Tears down what up.sh made, whatever state it is in: processes, the pods'
# containers and mounts, cgroups, network namespaces (the nodes', the
# switch's and the pod sandboxes' cni-* ones) and .cache/cluster/run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $(id -u) == 0 ]] || die "must run as root"

kill_pidfile() {
	local f=$run/pids/$1
	[[ -f $f ]] || return 0
	kill -9 -- "-$(cat "$f")" 2>/dev/null || kill -9 "$(cat "$f")" 2>/dev/null || true
	rm -f "$f"
}

# The QEMU guest (MODE=ipvs) stops its nodes and powers off when asked.
if [[ -f $run/pids/guest ]]; then
	touch "$run/guest-stop"
	for _ in $(seq 60); do kill -0 "$(cat "$run/pids/guest")" 2>/dev/null || break; sleep 1; done
	kill_pidfile guest
fi
# Kubelets first, so nothing restarts the containers killed next.
for n in "${NODES[@]}"; do kill_pidfile "kubelet-$n"; done
# Every process in a node's cgroups (pods), then the containerd shims,
# which name their node's directory on their command line.
for n in "${NODES[@]}"; do
	find /sys/fs/cgroup/pids/svck-"$n" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
done
pkill -9 -f -- "$run/" 2>/dev/null || true
for f in "$run"/pids/*; do [[ -e $f ]] && kill_pidfile "${f##*/}"; done
sleep 1

# Mounts under the run directory (pod volumes, overlay snapshots, shm),
# deepest first.
if [[ -d $run ]]; then
	awk -v r="$run/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
fi
# Pod sandboxes' network namespaces (containerd's CRI makes cni-<uuid>).
for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ { print $1 }'); do
	ip netns delete "$n" 2>/dev/null || true
done
for n in sw cp "${NODES[@]}"; do
	ip netns delete "$(ns "$n")" 2>/dev/null || true
done
# The nodes' cgroup roots, deepest first.
for n in "${NODES[@]}"; do
	for c in /sys/fs/cgroup/*/svck-"$n"; do
		[[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
done
rm -rf --one-file-system "$run"
if [[ -f $cache/made-lib-modules ]]; then
	rmdir /lib/modules 2>/dev/null || true
	rm -f "$cache/made-lib-modules"
fi
left=$(ip netns list 2>/dev/null | grep -c '^svck-' || true)
[[ $left == 0 ]] || die "$left svck-* namespaces remain"
log "down"
