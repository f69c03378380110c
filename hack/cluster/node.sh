# The member and node steps of the cluster (sourced after lib.sh), shared by
# up.sh on this machine and guest-nodes.sh in the QEMU guest (MODE=ipvs),
# where the nodes run on the guest's kernel because this one has no IPVS.

# member NAME ADDR SWITCH...: makes the namespace of a cluster member with
# eth0 at ADDR/24 on the bridge br0 of the namespace SWITCH (a command
# prefix: `inns sw`, or nothing for the current namespace), and its routes
# to the pod CIDRs of the other nodes.
member() {
	local name=$1 addr=$2; shift 2
	ip netns add "$(ns "$name")"
	if [[ $# -gt 0 ]]; then
		ip link add "$name" netns "$(ns sw)" type veth peer name eth0 netns "$(ns "$name")"
	else
		ip link add "$name" type veth peer name eth0 netns "$(ns "$name")"
	fi
	"$@" ip link set "$name" master br0 up
	inns "$name" ip link set lo up
	inns "$name" ip addr add "$addr/24" dev eth0
	inns "$name" ip link set eth0 up
	# Every member reaches the pod CIDRs through the node that owns them.
	local other
	for other in "${NODES[@]}"; do
		[[ $other == "$name" ]] || inns "$name" ip route add "${POD_CIDR[$other]}" via "${NODE_IP[$other]}"
	done
}

# node_network NAME: what a node's namespace needs beyond member's.
node_network() {
	# A default route, so that the node's own connections to Service IPs
	# are routed at all (then DNAT'ed by the proxy); it leads only to the
	# control plane's namespace.
	inns "$1" ip route add default via "$CP_IP"
	inns "$1" sysctl -qw net.ipv4.ip_forward=1
	# Bridged pod-to-pod packets go through iptables, as on any node
	# running bridge CNI (br_netfilter); the proxy's DNAT depends on it.
	inns "$1" sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
}

# cgroup_root NAME: the node's kubelet cgroupRoot. cgroup v1 (this
# machine): in every controller, cpuset with its cpus and mems before
# anything can join it. cgroup v2 (the guest): one directory, with the
# controllers delegated to it.
cgroup_root() {
	if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
		mkdir -p "/sys/fs/cgroup/$1"
		local c
		for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
			echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
			echo "+$c" > "/sys/fs/cgroup/$1/cgroup.subtree_control" 2>/dev/null || true
		done
		return
	fi
	local c
	for c in /sys/fs/cgroup/*/; do
		[[ -d $c && $c != */unified/ ]] || continue
		mkdir -p "$c$1"
	done
	cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$1/cpuset.cpus"
	cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$1/cpuset.mems"
}

# node NAME DIR: containerd (state under DIR, which must allow overlayfs
# upper directories), the images, bridge CNI and the kubelet of node NAME.
node() {
	local n=$1 d=$2
	log "$n: containerd, images, kubelet"
	mkdir -p "$d/cni" "$d/containerd"
	cat > "$d/containerd.toml" <<TOML
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine lacks CAP_SYS_RESOURCE: a negative oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
	cat > "$d/cni/10-bridge.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "svck",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$d/cni-ipam", "ranges": [[{"subnet": "${POD_CIDR[$n]}"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
	start "containerd-$n" "$n" containerd --config "$d/containerd.toml"
	wait_for "$n containerd" 120 test -S "$d/containerd/containerd.sock"
	ctr --address "$d/containerd/containerd.sock" -n k8s.io images import --all-platforms "$images_tar" >"$run/logs/import-$n.log" 2>&1 ||
		{ cat "$run/logs/import-$n.log"; die "$n: image import failed"; }
	cgroup_root "svck-$n"
	# Pods that use dnsPolicy: Default (CoreDNS itself) get this file; the
	# name server is the control plane's namespace, where nothing answers
	# DNS: names outside the cluster do not resolve, by design.
	echo "nameserver $CP_IP" > "$d/resolv.conf"
	cat > "$d/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has a cgroup v1 (hybrid) hierarchy; the guest (ipvs) has v2.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /svck-$n
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
address: ${NODE_IP[$n]}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
podLogsDir: $d/pod-logs
failSwapOn: false
# Both nodes share one disk: eviction thresholds low enough that a busy
# disk does not evict test pods.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
KUBELET
	start "kubelet-$n" "$n" "$bin/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$run/$n.kubeconfig" \
		--root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" --hostname-override="$n" --node-ip="${NODE_IP[$n]}" --v=1
}
