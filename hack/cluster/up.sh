#!/usr/bin/env bash
# Brings up the cluster of lib.sh: network namespaces, a control plane,
# three kubelet nodes with containerd and bridge CNI, CoreDNS and a service
# proxy, installed as a user would (kubectl apply). Run build.sh first.
#
#   up.sh [svcproxy|reference] [iptables|ipvs]
#
# svcproxy (default) applies config/daemonset.yaml with its CHANGE ME values
# filled in, as config/README.md tells a user; reference applies upstream
# kube-proxy the way kubeadm deploys it (manifests/kube-proxy.yaml).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$root/hack/cluster
source "$here/node.sh"
PROXY=${1:-svcproxy}
MODE=${2:-iptables}
[[ $(id -u) == 0 ]] || die "must run as root"
[[ $PROXY == svcproxy || $PROXY == reference ]] || die "proxy \"$PROXY\": want svcproxy or reference"
[[ $MODE == iptables || $MODE == ipvs ]] || die "mode \"$MODE\": want iptables or ipvs"
[[ $MODE == iptables || -x $bin/svcvm ]] || die "$bin/svcvm is missing: run hack/cluster/build.sh (make cluster MODE=ipvs does)"
[[ -f $images_tar ]] || die "$images_tar is missing: run hack/cluster/build.sh (make cluster does)"
if ip netns list | grep -q '^svck-'; then
	die "a cluster is already up (namespaces svck-*): make cluster-down first"
fi
rm -rf "$run"
mkdir -p "$run"
echo "$PROXY $MODE" > "$run/proxy"

network() {
	log "network namespaces: switch, control plane$([[ $MODE == ipvs ]] || echo ", ${NODES[*]}")"
	ip netns add "$(ns sw)"
	inns sw ip link add br0 type bridge
	inns sw ip link set br0 up
	inns sw ip link set lo up
	member cp "$CP_IP" inns sw
	[[ $MODE == ipvs ]] && return
	local n
	for n in "${NODES[@]}"; do
		member "$n" "${NODE_IP[$n]}" inns sw
		node_network "$n"
	done
}

# guest: MODE=ipvs runs the nodes in the QEMU guest (hack/vm; this kernel
# has no IPVS), its NIC a TAP on the cluster switch. See guest-nodes.sh.
guest() {
	log "QEMU guest for ${NODES[*]} (Debian kernel with IPVS, TCG emulation): hack/cluster/guest-nodes.sh"
	mkdir -p "$run/logs" "$run/pids"
	# Mount points for the guest's tmpfs (guest-nodes.sh); kubelets on
	# this machine make the same directories.
	mkdir -p /var/lib/kubelet /var/lib/cni
	# -systemd: the guest switches root into this machine's root (a
	# writable overlay) instead of chrooting into it. In a chroot, `runc
	# exec` (kubectl exec) enters a container's mount namespace at the
	# guest's initramfs root, not the container's: its busybox answered
	# the e2e tests' wget with a segfault.
	setsid "$bin/svcvm" -systemd -tap svck-vm -tap-netns "$(ns sw)" -share "$run" -m "${GUEST_MEMORY:-10240}" \
		-timeout "${GUEST_TIMEOUT:-6h}" -- "$here/guest-nodes.sh" >"$run/logs/guest.log" 2>&1 < /dev/null &
	echo $! > "$run/pids/guest"
	wait_for "the guest's TAP in $(ns sw)" 60 inns sw ip link show svck-vm
	inns sw ip link set svck-vm master br0 up
	wait_for "the guest's kubelets (log: $run/logs/guest-nodes.log)" 1800 guest_ready
}

guest_ready() {
	[[ -e $run/guest-ready ]] && return 0
	kill -0 "$(cat "$run/pids/guest")" 2>/dev/null || { tail -20 "$run/logs/guest.log" >&2; die "the guest stopped"; }
	return 1
}

certificates() {
	log "certificates and tokens"
	local d=$run/pki
	mkdir -p "$d"
	openssl genrsa -out "$d/ca.key" 2048 2>/dev/null
	openssl req -x509 -new -key "$d/ca.key" -subj /CN=svck-ca -days 30 -out "$d/ca.crt" 2>/dev/null
	openssl genrsa -out "$d/apiserver.key" 2048 2>/dev/null
	openssl req -new -key "$d/apiserver.key" -subj /CN=kube-apiserver -out "$d/apiserver.csr" 2>/dev/null
	printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n' \
		"$CP_IP" "$KUBERNETES_SVC_IP" > "$d/apiserver.ext"
	openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
		-days 30 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
	openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
	openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
	# One static token per client (--token-auth-file): user, uid, groups.
	: > "$d/tokens.csv"
	local id user group token
	while IFS='|' read -r id user group; do
		token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
		echo "$token,$user,$id,\"$group\"" >> "$d/tokens.csv"
		kubeconfig "$id" "$token"
	done < <(
		echo "admin|admin|system:masters"
		echo "kcm|system:kube-controller-manager|"
		echo "scheduler|system:kube-scheduler|"
		for n in "${NODES[@]}"; do echo "$n|system:node:$n|system:nodes"; done
	)
}

kubeconfig() {
	cat > "$run/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: svck
  cluster: {server: "$API", certificate-authority: "$run/pki/ca.crt"}
users:
- name: $1
  user: {token: "$2"}
contexts:
- name: svck
  context: {cluster: svck, user: $1}
current-context: svck
KC
}

control_plane() {
	log "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler ($K8S_VERSION)"
	local d=$run/pki
	start etcd cp "$bin/etcd" --data-dir "$run/etcd" --listen-client-urls http://127.0.0.1:2379 \
		--advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
		--initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 \
		--listen-metrics-urls "" --log-level warn --unsafe-no-fsync
	start kube-apiserver cp "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$CP_IP" \
		--tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" --client-ca-file="$d/ca.crt" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
		--authorization-mode=Node,RBAC --token-auth-file="$d/tokens.csv" \
		--enable-admission-plugins=NodeRestriction --allow-privileged=true \
		--kubelet-preferred-address-types=InternalIP --cert-dir="$run/apiserver-certs" --v=1
	wait_for "kube-apiserver /readyz" 120 kc get --raw /readyz
	start kube-controller-manager cp "$bin/kube-controller-manager" --kubeconfig="$run/kcm.kubeconfig" \
		--authentication-kubeconfig="$run/kcm.kubeconfig" --authorization-kubeconfig="$run/kcm.kubeconfig" \
		--service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" \
		--cluster-signing-cert-file="$d/ca.crt" --cluster-signing-key-file="$d/ca.key" \
		--use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 \
		--service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$CLUSTER_CIDR" --v=1
	start kube-scheduler cp "$bin/kube-scheduler" --kubeconfig="$run/scheduler.kubeconfig" \
		--authentication-kubeconfig="$run/scheduler.kubeconfig" --authorization-kubeconfig="$run/scheduler.kubeconfig" \
		--leader-elect=false --bind-address=127.0.0.1 --v=1
	wait_for "the default ServiceAccount" 120 kc -n default get serviceaccount default
}

# The nodes' pod CIDRs are fixed (the CNI configuration above), so they
# are written into the Node objects rather than allocated.
pod_cidrs() {
	local n
	for n in "${NODES[@]}"; do
		wait_for "node $n to register" 120 kc get node "$n"
		kc patch node "$n" --type merge -p "{\"spec\":{\"podCIDR\":\"${POD_CIDR[$n]}\",\"podCIDRs\":[\"${POD_CIDR[$n]}\"]}}" >/dev/null
	done
}

proxy() {
	local cfg
	if [[ $PROXY == svcproxy ]]; then
		log "svcproxy ($MODE mode): kubectl apply config/daemonset.yaml, CHANGE ME values filled in"
		cfg=$run/svcproxy-daemonset.yaml
		sed -e "s|image: svcproxy:latest|image: $SVCPROXY_IMAGE|" \
			-e "s|server: https://kube-apiserver.example.internal:6443|server: $API|" \
			-e "s|clusterCIDR: 10.244.0.0/16|clusterCIDR: $CLUSTER_CIDR|" \
			-e "s|^    mode: iptables|    mode: $MODE|" "$root/config/daemonset.yaml" > "$cfg"
		kc apply --server-side -f "$cfg" >/dev/null
		wait_for "svcproxy pods on every node" 180 ds_ready svcproxy
	else
		log "reference kube-proxy $K8S_VERSION ($MODE mode), as kubeadm deploys it"
		cfg=$run/kube-proxy.yaml
		sed -e "s|@IMAGE@|$KUBE_PROXY_IMAGE|" -e "s|@API@|$API|" -e "s|@CLUSTER_CIDR@|$CLUSTER_CIDR|" \
			-e "s|@MODE@|$MODE|" "$here/manifests/kube-proxy.yaml" > "$cfg"
		kc apply --server-side -f "$cfg" >/dev/null
		wait_for "kube-proxy pods on every node" 180 ds_ready kube-proxy
	fi
}

nodes_ready() {
	[[ $(kc get nodes --no-headers | grep -c ' Ready ') == "${#NODES[@]}" ]]
}

# ds_ready NAME: the DaemonSet's pods are ready on every node.
ds_ready() {
	local want ready
	read -r want ready < <(kc -n kube-system get daemonset "$1" -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady}')
	[[ $want == "${#NODES[@]}" && $ready == "$want" ]]
}

coredns() {
	log "CoreDNS v1.14.6 as kubeadm deploys it (kube-dns Service at $DNS_IP)"
	sed -e "s|@IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_IP@|$DNS_IP|" "$here/manifests/coredns.yaml" > "$run/coredns.yaml"
	kc apply --server-side -f "$run/coredns.yaml" >/dev/null
	wait_for "CoreDNS ready" 180 deploy_ready coredns
}

deploy_ready() {
	local want ready
	read -r want ready < <(kc -n kube-system get deployment "$1" -o jsonpath='{.spec.replicas} {.status.readyReplicas}')
	[[ -n $want && $ready == "$want" ]]
}

# Both DaemonSets mount the host's /lib/modules (for modprobe). This
# machine has none (its kernel has no loadable modules), and a missing
# hostPath fails the pod: an empty directory stands in, removed by down.sh.
if [[ ! -e /lib/modules ]]; then
	mkdir /lib/modules
	touch "$cache/made-lib-modules"
fi
network
certificates
control_plane
if [[ $MODE == ipvs ]]; then
	guest
else
	for n in "${NODES[@]}"; do
		node "$n" "$run/$n"
	done
fi
pod_cidrs
wait_for "nodes Ready" 180 nodes_ready
proxy
coredns
kc get nodes -o wide
kc get pods -A -o wide
log "up: kubectl is \`nsenter --net=/var/run/netns/$(ns cp) $bin/kubectl --kubeconfig $run/admin.kubeconfig\`"
