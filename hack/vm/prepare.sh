#!/usr/bin/env bash
# Prepares the QEMU test guest that runs the IPVS tests on a stock Debian
# kernel (the host kernel has no IPVS). Idempotent: a prepared machine only
# checks and exits in well under a second.
#
#   hack/vm/prepare.sh [--force]
#
# - installs the Debian packages it needs when missing (qemu-system-x86,
#   busybox-static, cpio, kmod, xz-utils, and the tools the guest runs from the host:
#   iptables ipset ipvsadm conntrack socat iproute2);
# - downloads the kernel package linux-image-amd64 depends on (apt-get
#   download), extracts it to .cache/vm/kernel (dpkg-deb -x) and runs depmod;
# - builds .cache/vm/initramfs.cpio: busybox-static, the virtio, 9p and
#   overlay modules and hack/vm/init.sh as /init;
# - extracts the uncompressed kernel (.cache/vm/vmlinux) that QEMU boots
#   through its PVH entry, faster than the self-decompressing bzImage.
#
# The cache lives in $SVCPROXY_VM_CACHE, default <repo>/.cache/vm (git-ignored).
# Use it through the Go package svcproxy.dev/svcproxy/e2e/vm, or by hand with
# go run ./e2e/vm/cmd/svcvm -- COMMAND (see e2e/vm/README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${SVCPROXY_VM_CACHE:-$root/.cache/vm}
force=0
[[ ${1:-} == --force ]] && force=1

log() { echo "prepare-vm: $*" >&2; }

if [[ $(id -u) != 0 ]]; then
	log "must run as root (apt-get, and the guest needs root to share /)"
	exit 1
fi

# --- packages -------------------------------------------------------------
pkgs=(qemu-system-x86 busybox-static cpio kmod xz-utils iptables ipset ipvsadm conntrack socat iproute2)
missing=()
for p in "${pkgs[@]}"; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[[ $st == installed ]] || missing+=("$p")
done
apt_updated=0
if [[ ${#missing[@]} -gt 0 ]]; then
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt_updated=1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel ---------------------------------------------------------------
mkdir -p "$cache"
kver=""
[[ -f $cache/kernel.version ]] && kver=$(<"$cache/kernel.version")
if [[ $force == 1 || -z $kver || ! -f $cache/kernel/boot/vmlinuz-$kver || ! -f $cache/kernel/lib/modules/$kver/modules.dep.bin ]]; then
	find_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
	kpkg=$(find_pkg)
	if [[ -z $kpkg && $apt_updated == 0 ]]; then
		apt-get update -qq
		kpkg=$(find_pkg)
	fi
	if [[ -z $kpkg ]]; then
		log "cannot find the kernel package: apt-cache depends linux-image-amd64 names none"
		exit 1
	fi
	log "downloading $kpkg"
	dl=$(mktemp -d "$cache/download.XXXXXX")
	trap 'rm -rf "$dl"' EXIT
	(cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
	deb=$(ls "$dl"/*.deb)
	rm -rf "$cache/kernel.new"
	dpkg-deb -x "$deb" "$cache/kernel.new"
	kver=$(ls "$cache/kernel.new/lib/modules")
	if [[ $(wc -w <<<"$kver") != 1 || ! -f $cache/kernel.new/boot/vmlinuz-$kver ]]; then
		log "unexpected layout in $deb"
		exit 1
	fi
	depmod -b "$cache/kernel.new" "$kver"
	rm -rf "$cache/kernel"
	mv "$cache/kernel.new" "$cache/kernel"
	echo "$kver" >"$cache/kernel.version"
	rm -rf "$dl"
	trap - EXIT
	log "kernel $kver in $cache/kernel"
fi
kdir=$cache/kernel

# --- uncompressed kernel ----------------------------------------------------
# QEMU boots an ELF vmlinux through its PVH entry (CONFIG_PVH), which skips
# the bzImage's self-decompression: about 3 s less per boot under TCG. The Go
# package falls back to the bzImage when vmlinux is absent.
vmlinuz=$kdir/boot/vmlinuz-$kver
if ! grep -q '^CONFIG_PVH=y' "$kdir/boot/config-$kver"; then
	rm -f "$cache/vmlinux" "$cache/vmlinux.version"
elif [[ $force == 1 || ! -s $cache/vmlinux || ! -f $cache/vmlinux.version || $(<"$cache/vmlinux.version") != "$kver" ]]; then
	rm -f "$cache/vmlinux" "$cache/vmlinux.new" "$cache/vmlinux.version"
	for magic in $'\xfd7zXZ':xz $'\x28\xb5\x2f\xfd':zstd $'\x1f\x8b\x08':gzip; do
		pat=${magic%:*} tool=${magic##*:}
		command -v "$tool" >/dev/null || continue
		for off in $(LC_ALL=C grep -abo "$pat" "$vmlinuz" | cut -d: -f1 | head -5); do
			tail -c +$((off + 1)) "$vmlinuz" | "$tool" -dc >"$cache/vmlinux.new" 2>/dev/null || true
			if [[ $(head -c 4 "$cache/vmlinux.new" 2>/dev/null) == $'\x7fELF' ]]; then
				mv "$cache/vmlinux.new" "$cache/vmlinux"
				break 2
			fi
		done
	done
	rm -f "$cache/vmlinux.new"
	if [[ -s $cache/vmlinux ]]; then
		echo "$kver" >"$cache/vmlinux.version"
		log "uncompressed kernel $cache/vmlinux (PVH boot)"
	else
		log "warning: could not extract a PVH vmlinux from $vmlinuz; the guest boots the bzImage (slower)"
	fi
fi

# --- initramfs ------------------------------------------------------------
# Rebuilt when the kernel, busybox, init.sh, modules.txt or this script change.
busybox=/bin/busybox
stamp=$( (echo "$kver"; sha256sum "$busybox" "$here/init.sh" "$here/modules.txt" "$here/prepare.sh") | sha256sum | cut -d' ' -f1)
if [[ $force == 0 && -f $cache/initramfs.cpio && -f $cache/initramfs.stamp && $(<"$cache/initramfs.stamp") == "$stamp" ]]; then
	exit 0
fi
if ldd "$busybox" >/dev/null 2>&1; then
	log "$busybox is not static (is busybox-static installed?)"
	exit 1
fi

stage=$cache/initramfs.d
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,etc,lib/modules,proc,sys,dev,tmp,ctl,host}
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -m 755 "$here/init.sh" "$stage/init"
cat >"$stage/sbin/svcvm-modprobe" <<'EOF'
#!/bin/sh
# The kernel's module requests: the host's modprobe on the extracted kernel.
exec /bin/chroot /host /usr/sbin/modprobe -d "$(cat /etc/kdir)" "$@"
EOF
chmod 755 "$stage/sbin/svcvm-modprobe"
cp "$here/modules.txt" "$stage/etc/modules.default"

# The boot modules and their dependencies, in load order. Modules built into
# the kernel print "builtin" and need nothing.
: >"$stage/etc/boot-modules"
modprobe -d "$kdir" -S "$kver" --show-depends -a virtio_pci 9pnet_virtio 9p overlay | while read -r kind path _; do
	[[ $kind == insmod ]] || continue
	name=$(basename "$path")
	name=${name%.xz}
	name=${name%.zst}
	name=${name%.gz}
	name=${name%.ko}
	grep -qx "$name" "$stage/etc/boot-modules" && continue
	case $path in
	*.xz) xz -dc "$path" >"$stage/lib/modules/$name.ko" ;;
	*.zst) zstd -qdc "$path" >"$stage/lib/modules/$name.ko" ;;
	*.gz) gzip -dc "$path" >"$stage/lib/modules/$name.ko" ;;
	*) cp "$path" "$stage/lib/modules/$name.ko" ;;
	esac
	echo "$name" >>"$stage/etc/boot-modules"
done
log "boot modules: $(tr '\n' ' ' <"$stage/etc/boot-modules")"

# Warn now about listed modules this kernel lacks (the guest skips them).
absent=()
while read -r m; do
	m=${m%%#*}
	m=${m//[[:space:]]/}
	[[ -z $m ]] && continue
	modprobe -d "$kdir" -S "$kver" --show-depends "$m" >/dev/null 2>&1 || absent+=("$m")
done <"$here/modules.txt"
[[ ${#absent[@]} -gt 0 ]] && log "warning: kernel $kver lacks modules: ${absent[*]}"

(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >"$cache/initramfs.cpio.new"
mv "$cache/initramfs.cpio.new" "$cache/initramfs.cpio"
rm -rf "$stage"
echo "$stamp" >"$cache/initramfs.stamp"
log "initramfs $cache/initramfs.cpio ($(du -h "$cache/initramfs.cpio" | cut -f1))"
