# Shared settings of the make cluster scripts (sourced, not run).
#
# The cluster lives in network namespaces these scripts create and remove:
#   svck-sw      a switch: bridge br0, one veth per member below
#   svck-cp      control plane: etcd, kube-apiserver, controller-manager,
#                scheduler (10.99.0.2); e2e.test and kubectl run here too
#   svck-node-a  kubelet + containerd of node-a (10.99.0.11, pods 10.244.1.0/24)
#   svck-node-b  the same for node-b (10.99.0.12, pods 10.244.2.0/24)
#   svck-node-c  the same for node-c (10.99.0.13, pods 10.244.3.0/24)
# None of them has a link to the host's interfaces.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${SVCPROXY_BIN_DIR:-$root/.cache/bin}
cache=$root/.cache/cluster
run=$cache/run            # state of the running cluster (removed by down.sh)
images_tar=$cache/images.tar

# Three nodes: some Service tests need at least three schedulable nodes.
NODES=(node-a node-b node-c)
declare -A NODE_IP=([node-a]=10.99.0.11 [node-b]=10.99.0.12 [node-c]=10.99.0.13)
declare -A POD_CIDR=([node-a]=10.244.1.0/24 [node-b]=10.244.2.0/24 [node-c]=10.244.3.0/24)
CP_IP=10.99.0.2
NET_CIDR=10.99.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_IP=10.96.0.10
API=https://$CP_IP:6443
K8S_VERSION=v1.37.2

# Image names: the e2e framework's (test/utils/image/manifest.go of the
# pinned module), kubeadm's for CoreDNS and kube-proxy, and svcproxy's own.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
BUSYBOX_IMAGE=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
REGRESSION_IMAGE=registry.k8s.io/e2e-test-images/regression-issue-74839:1.5
DISTROLESS_IPTABLES_IMAGE=registry.k8s.io/build-image/distroless-iptables:v0.9.9
GLIBC_DNS_IMAGE=registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
NGINX_IMAGE=registry.k8s.io/e2e-test-images/nginx:1.27.0-2
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:v1.14.6
KUBE_PROXY_IMAGE=registry.k8s.io/kube-proxy:$K8S_VERSION
SVCPROXY_IMAGE=svcproxy.local/svcproxy:dev

ns() { echo "svck-$1"; }
# in NAME CMD...: runs CMD in the cluster namespace NAME. nsenter, not ip
# netns exec: the latter remounts /sys, which hides the cgroup mounts that
# kubelet and runc need.
inns() { local n=$1; shift; nsenter --net=/var/run/netns/"$(ns "$n")" "$@"; }
kc() { inns cp "$bin/kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }
log() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }

# start NAME NETNS CMD...: a daemon in NETNS, in its own session, with its
# output in $run/logs/NAME.log and its pid in $run/pids/NAME.
# CLUSTER_PIDS moves the pid files (the QEMU guest keeps its own).
start() {
	local name=$1 where=$2; shift 2
	local pids=${CLUSTER_PIDS:-$run/pids}
	mkdir -p "$run/logs" "$pids"
	setsid nsenter --net=/var/run/netns/"$(ns "$where")" "$@" >"$run/logs/$name.log" 2>&1 < /dev/null &
	echo $! > "$pids/$name"
}

# wait_for WHAT SECONDS CMD...: retries CMD once a second.
wait_for() {
	local what=$1 secs=$2; shift 2
	local i
	for ((i = 0; i < secs; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 1
	done
	die "timed out after ${secs}s waiting for $what"
}
