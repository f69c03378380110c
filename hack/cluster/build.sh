#!/usr/bin/env bash
# Builds everything make cluster and make conformance need, skipping what is
# already up to date (the first run takes about 30 minutes on 2 cores):
#   - Debian packages: containerd, runc, containernetworking-plugins,
#     debootstrap, openssl;
#   - from the pinned k8s.io/kubernetes module (e2e/tools): kubelet,
#     kube-controller-manager, kube-scheduler, kubectl, agnhost,
#     regression-issue-74839, e2e.test; pause from its pause.c;
#     CoreDNS from e2e/tools/coredns; svcproxy as config/Dockerfile builds it;
#   - a Debian bookworm root file system (debootstrap --variant=minbase), the
#     base layer of the images;
#   - .cache/cluster/images.tar: every image, under the names the manifests
#     and the e2e framework use, for `ctr images import` (no registry).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, debootstrap)"

# --- Debian packages --------------------------------------------------------
"$root/hack/install-deps.sh"
need=()
for pair in containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins debootstrap:debootstrap openssl:openssl gcc:gcc; do
	cmd=${pair%%:*} pkg=${pair##*:}
	command -v "$cmd" >/dev/null 2>&1 || [[ -x $cmd ]] || need+=("$pkg")
done
if [[ ${#need[@]} -gt 0 ]]; then
	log "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- binaries ---------------------------------------------------------------
"$root/e2e/build-tools.sh"
mkdir -p "$bin" "$cache"
# stale BINARY INPUT...: the binary is missing or older than an input.
stale() {
	local b=$1 in
	[[ -x $b ]] || return 0
	shift
	for in in "$@"; do [[ $b -ot $in ]] && return 0; done
	return 1
}
k8s_stamp=$root/e2e/tools/go.mod
k8s_ldflags=$root/e2e/tools/ldflags.sh
ldflags=$("$root/e2e/tools/ldflags.sh")
k8s=(cmd/kubelet cmd/kube-controller-manager cmd/kube-scheduler cmd/kubectl test/images/agnhost test/images/regression-issue-74839)
for p in "${k8s[@]}"; do
	b=$bin/${p##*/}
	if stale "$b" "$k8s_stamp" "$k8s_ldflags"; then
		log "building ${p##*/} (k8s.io/kubernetes $K8S_VERSION) ..."
		(cd "$root/e2e/tools" && CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$b" "k8s.io/kubernetes/$p")
		touch "$b"
	fi
done
if stale "$bin/e2e.test" "$k8s_stamp" "$k8s_ldflags"; then
	log "building e2e.test (k8s.io/kubernetes $K8S_VERSION test/e2e; several minutes) ..."
	(cd "$root/e2e/tools" && go test -c -ldflags "$ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e)
	touch "$bin/e2e.test"
fi
if stale "$bin/ginkgo" "$k8s_stamp"; then
	# The ginkgo CLI of the version e2e.test is built with: it runs the
	# suite's specs in parallel processes.
	(cd "$root/e2e/tools" && go build -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
fi
if stale "$bin/coredns" "$root/e2e/tools/coredns/go.mod"; then
	log "building coredns (e2e/tools/coredns) ..."
	(cd "$root/e2e/tools/coredns" && CGO_ENABLED=0 go build -trimpath -o "$bin/coredns" github.com/coredns/coredns)
	touch "$bin/coredns"
fi
if stale "$bin/image" "$root/e2e/tools/image/main.go" "$root/e2e/tools/image/go.mod"; then
	(cd "$root/e2e/tools/image" && go build -o "$bin/image" .)
fi
# MODE=ipvs runs the nodes in the QEMU guest through svcvm.
(cd "$root" && go build -o "$bin/svcvm" ./e2e/vm/cmd/svcvm)
k8s_src=$(cd "$root/e2e/tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
if stale "$bin/pause" "$k8s_stamp"; then
	log "building pause (build/pause/linux/pause.c of k8s.io/kubernetes $K8S_VERSION)"
	gcc -Os -Wall -static -DVERSION=3.10.2 -o "$bin/pause" "$k8s_src/build/pause/linux/pause.c"
fi
# svcproxy exactly as config/Dockerfile builds it.
version=$(git -C "$root" describe --always --dirty 2>/dev/null || echo dev)
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$cache/svcproxy" ./cmd/proxy)

# --- base root file system ------------------------------------------------------
# One Debian bookworm minbase for every image: config/Dockerfile's runtime
# packages (iptables ipset conntrack ipvsadm kmod) and what the e2e tests
# run inside agnhost (its Dockerfile installs curl, nc, dig, ip, bash and
# socat on Alpine, whose busybox adds wget; these are Debian's, with GNU
# wget: Debian's busybox wget crashes), busybox, and nginx for the nginx
# image.
rootfs=$cache/rootfs
base_pkgs=bash,curl,wget,netcat-openbsd,dnsutils,iproute2,iputils-ping,socat,procps,iptables,ipset,conntrack,ipvsadm,kmod,busybox,nginx-light
# The recipe's name: a change here rebuilds the root file system.
base_recipe="$base_pkgs; busybox applets for the rest"
if [[ ! -f $cache/base.tar || $(cat "$cache/base.pkgs" 2>/dev/null) != "$base_recipe" ]]; then
	log "debootstrap bookworm into $rootfs (a few minutes) ..."
	rm -rf "$rootfs" "$rootfs.tmp"
	debootstrap --variant=minbase --include="$base_pkgs" bookworm "$rootfs.tmp" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
		{ tail -20 "$cache/debootstrap.log"; die "debootstrap failed (log: $cache/debootstrap.log)"; }
	rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/* \
		"$rootfs.tmp"/usr/share/{doc,man,locale,info}
	# Alpine, agnhost's upstream base, has busybox applets for what no
	# package provides, and the tests use some (wget, for one): link every
	# applet that has no command of its own.
	chroot "$rootfs.tmp" /bin/sh -c 'for a in $(busybox --list); do command -v "$a" >/dev/null || ln -s /bin/busybox "/usr/local/bin/$a"; done'
	mv "$rootfs.tmp" "$rootfs"
	tar -C "$rootfs" --numeric-owner -cf "$cache/base.tar.tmp" .
	mv "$cache/base.tar.tmp" "$cache/base.tar"
	echo "$base_recipe" > "$cache/base.pkgs"
fi

# --- images -------------------------------------------------------------------
spec=$cache/images.json
cat > "$spec" <<JSON
[
 {"name": "$PAUSE_IMAGE", "files": {"/pause": "$bin/pause"}, "entrypoint": ["/pause"]},
 {"name": "$AGNHOST_IMAGE", "base": "$cache/base.tar",
  "files": {"/agnhost": "$bin/agnhost", "/coredns": "$bin/coredns",
            "/localhost.crt": "$k8s_src/test/images/agnhost/porter/localhost.crt",
            "/localhost.key": "$k8s_src/test/images/agnhost/porter/localhost.key"},
  "symlinks": {"/agnhost-2": "agnhost"}, "dirs": ["/uploads"],
  "entrypoint": ["/agnhost"], "cmd": ["pause"]},
 {"name": "$BUSYBOX_IMAGE", "base": "$cache/base.tar", "cmd": ["/bin/sh"]},
 {"name": "$DISTROLESS_IPTABLES_IMAGE", "base": "$cache/base.tar"},
 {"name": "$GLIBC_DNS_IMAGE", "base": "$cache/base.tar", "files": {"/coredns": "$bin/coredns"}},
 {"name": "$NGINX_IMAGE", "base": "$cache/base.tar", "entrypoint": ["nginx", "-g", "daemon off;"]},
 {"name": "$REGRESSION_IMAGE", "base": "$cache/base.tar",
  "files": {"/regression-issue-74839": "$bin/regression-issue-74839"}, "entrypoint": ["/regression-issue-74839"]},
 {"name": "$COREDNS_IMAGE", "base": "$cache/base.tar", "files": {"/coredns": "$bin/coredns"}, "entrypoint": ["/coredns"]},
 {"name": "$KUBE_PROXY_IMAGE", "base": "$cache/base.tar", "files": {"/usr/local/bin/kube-proxy": "$bin/kube-proxy"}},
 {"name": "$SVCPROXY_IMAGE", "base": "$cache/base.tar", "files": {"/usr/local/bin/proxy": "$cache/svcproxy"}, "entrypoint": ["/usr/local/bin/proxy"]}
]
JSON
log "writing $images_tar (10 images)"
"$bin/image" -spec "$spec" -out "$images_tar.tmp"
mv "$images_tar.tmp" "$images_tar"
