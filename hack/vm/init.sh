#!/bin/busybox sh
# /init of the svcproxy test guest (packed into the initramfs by prepare.sh).
#
# 1. loads the virtio and 9p modules listed in /etc/boot-modules (insmod, in
#    that order) and mounts the per-run control share "ctl" (read-write) on
#    /ctl; /ctl/params (shell) sets KDIR, SHARE, TEE, ROOTCACHE and
#    SHARECACHE;
# 2. mounts the host root "hostroot" read-only on /host, tmpfs over
#    /host/tmp, /host/run, /host/var/tmp and /host/dev/shm, the optional
#    read-write share "share" on /host$SHARE, binds /proc /sys /dev (+devpts,
#    cgroup2) and /ctl on /host/run/svcvm; puts the extracted kernel's
#    module tree on /lib/modules/<release> through a read-only overlay;
# 3. loads the modules of /ctl/modules (or /etc/modules.default) with the
#    host's modprobe -d $KDIR, and makes the kernel's own module autoloading
#    use the same;
# 4. runs /run/svcvm/cmd.sh chrooted in /host, output to /ctl/output, exit
#    code to /ctl/rc, then powers off.
# With SYSTEMD=1 in /ctl/params, the host root is instead a writable overlay
# (the read-only 9p mount under a tmpfs upper layer), and after step 3 the
# guest switches root to it and boots the host's systemd as PID 1 into
# svcvm.target: basic.target plus svcvm-run.service, which runs cmd.sh as
# in step 4 and powers off.
# No network device is configured here: the guest has none unless the run asked
# for one (then /ctl/net.sh sets it up inside the chroot).

# boot_systemd hands the guest to the host's systemd (SYSTEMD=1): units that
# run the command and power off, no fstab (the host's names disks the guest
# lacks), the kernel's module helper inside the new root, then switch_root.
boot_systemd() {
	etc=/host/etc/systemd/system
	mkdir -p "$etc"
	cat >"$etc/svcvm.target" <<-'EOF'
		[Unit]
		Description=svcvm test run
		Requires=basic.target
		After=basic.target
		Wants=svcvm-run.service
		AllowIsolate=yes
	EOF
	cat >"$etc/svcvm-run.service" <<-'EOF'
		[Unit]
		Description=svcvm command (/run/svcvm/cmd.sh)
		After=basic.target
		[Service]
		Type=simple
		ExecStart=/bin/sh /run/svcvm/systemd-run.sh
		# Power off rather than leave the host waiting for its timeout.
		FailureAction=poweroff-force
	EOF
	ln -sf svcvm.target "$etc/default.target"
	: >/host/etc/fstab
	cat >/run-systemd.sh <<-'EOF'
		up() { read -r u _ </proc/uptime; echo "$1 $u" >>/run/svcvm/times; }
		. /run/svcvm/params
		up start
		if [ "$TEE" = 1 ]; then
			{
				/bin/sh /run/svcvm/cmd.sh </dev/null 2>&1
				echo $? >/run/svcvm/rc.tmp
			} | tee /run/svcvm/output >/dev/console
		else
			/bin/sh /run/svcvm/cmd.sh </dev/null >/run/svcvm/output 2>&1
			echo $? >/run/svcvm/rc.tmp
		fi
		up end
		mv /run/svcvm/rc.tmp /run/svcvm/rc
		sync
		systemctl poweroff --force --force
	EOF
	cp /run-systemd.sh /ctl/systemd-run.sh || die "cannot write the systemd run script"
	printf '#!/bin/sh\nexec /usr/sbin/modprobe -d "%s" "$@"\n' "$KDIR" >/host/sbin/svcvm-modprobe
	chmod 755 /host/sbin/svcvm-modprobe
	[ -x /host/lib/systemd/systemd ] || die "no /lib/systemd/systemd in the host root (Debian package systemd)"
	up switch-root
	exec switch_root /host /lib/systemd/systemd
}

/bin/busybox mkdir -p /proc /sys /dev /tmp /ctl /host
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

up() { read -r u _ </proc/uptime; echo "$1 $u" >>/ctl/times; }
die() {
	echo "svcvm: $*" >/dev/console
	echo "svcvm: $*" >>/ctl/setup.log 2>/dev/null
	sync
	poweroff -f
	sleep 5
}

while read -r m; do
	insmod "/lib/modules/$m.ko" || echo "svcvm: insmod $m failed" >/dev/console
done </etc/boot-modules

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts" ctl /ctl || die "cannot mount the ctl share"
: >/ctl/setup.log
up init
. /ctl/params
[ -n "$KDIR" ] || die "KDIR not set in /ctl/params"

mkdir -p /hostroot
if [ "$SYSTEMD" = 1 ]; then
	# systemd writes all over /etc, /var and the like: give it a writable
	# root whose writes go to guest memory and vanish with the guest.
	mkdir -p /lower /ovl
	mount -t 9p -o "$opts,ro,cache=${ROOTCACHE:-none}" hostroot /lower || die "cannot mount hostroot"
	mount -t tmpfs -o mode=755 tmpfs /ovl || die "tmpfs for the overlay"
	mkdir -p /ovl/upper /ovl/work
	mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /host ||
		die "cannot mount the writable overlay over the host root"
	mount -o bind /lower /hostroot || die "cannot bind the host root"
else
	mount -t 9p -o "$opts,ro,cache=${ROOTCACHE:-none}" hostroot /host || die "cannot mount hostroot"
	# A second view of the host root, so directories under the tmpfs-covered
	# /tmp, /run and /var/tmp that the guest needs (KEEP: a checkout under
	# /tmp) can be bound back.
	mount -o bind /host /hostroot || die "cannot bind the host root"
fi
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || die "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || die "tmpfs /run"
[ -d /host/var/tmp ] && mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
for keep in $KEEP; do
	mkdir -p "/host$keep" && mount -o bind "/hostroot$keep" "/host$keep" || die "cannot keep $keep visible"
done
if [ -n "$SHARE" ]; then
	mkdir -p "/host$SHARE" 2>/dev/null
	mount -t 9p -o "$opts,cache=${SHARECACHE:-none}" share "/host$SHARE" || die "cannot mount the share on $SHARE"
fi
mount -o bind /proc /host/proc
mount -o bind /sys /host/sys
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
mount -o bind /dev /host/dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mkdir -p /host/run/svcvm /host/run/lock
mount -o bind /ctl /host/run/svcvm

# /lib/modules/$(uname -r) for programs that run a plain modprobe or read
# modules.builtin (the host has no such tree): a read-only overlay of the
# extracted kernel's lib/ (just modules/) on the host's lib directory.
kver=$(uname -r)
lib=/host/lib
[ -L "$lib" ] && lib=/host/$(readlink "$lib" | sed 's,^/*,,')
mount -t overlay -o "ro,lowerdir=/host$KDIR/lib:$lib" overlay "$lib" ||
	echo "svcvm: warning: no /lib/modules/$kver in the guest (plain modprobe will fail)" | tee -a /ctl/setup.log >/dev/console
up mounted

hostname svcvm
ip link set lo up

# The kernel's own module requests (e.g. an nft expression iptables needs) go
# to the host's modprobe in the chroot, reading the extracted Debian kernel.
echo "$KDIR" >/etc/kdir
echo /sbin/svcvm-modprobe >/proc/sys/kernel/modprobe

mods=/etc/modules.default
[ -f /ctl/modules ] && mods=/ctl/modules
list=$(sed -e 's/#.*//' "$mods" | tr -s ' \t\n' '   ')
if [ -n "${list# }" ]; then
	# modprobe -a loads all it can and names each module it cannot find.
	chroot /host /usr/sbin/modprobe -d "$KDIR" -a $list 2>&1 | tee -a /ctl/setup.log >/dev/console
fi
up modules

if [ -f /ctl/net.sh ]; then
	chroot /host /bin/sh /run/svcvm/net.sh >>/ctl/setup.log 2>&1 ||
		echo "svcvm: warning: network setup failed" | tee -a /ctl/setup.log >/dev/console
fi

if [ "$SYSTEMD" = 1 ]; then
	boot_systemd
fi

up start
if [ "$TEE" = 1 ]; then
	{
		chroot /host /bin/sh /run/svcvm/cmd.sh </dev/null 2>&1
		echo $? >/ctl/rc.tmp
	} | tee /ctl/output >/dev/console
else
	chroot /host /bin/sh /run/svcvm/cmd.sh </dev/null >/ctl/output 2>&1
	echo $? >/ctl/rc.tmp
fi
up end
mv /ctl/rc.tmp /ctl/rc
sync
poweroff -f
sleep 5
