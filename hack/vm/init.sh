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
# No network device is configured here: the guest has none unless the run asked
# for one (then /ctl/net.sh sets it up inside the chroot).

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

mount -t 9p -o "$opts,ro,cache=${ROOTCACHE:-none}" hostroot /host || die "cannot mount hostroot"
# A second view of the host root, so directories under the tmpfs-covered
# /tmp, /run and /var/tmp that the guest needs (KEEP: a checkout under /tmp)
# can be bound back.
mkdir -p /hostroot
mount -o bind /host /hostroot || die "cannot bind the host root"
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
