#!/bin/busybox sh
# /init of the qemu-direct test guests: scripts/fetch-test-guests.sh copies this file as it is
# into each initramfs, beside /etc/qd-guest.conf (QD_ARCH, QD_MODULES, QD_MOUNT_MODULES).
# What it prints and which kernel command line switches it obeys: see the header of that script.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
# shellcheck source=/dev/null
. /etc/qd-guest.conf
mount -t proc proc /proc
mount -t sysfs sysfs /sys
cmdline=$(cat /proc/cmdline)
qd_opt() {
	case " $cmdline " in *" $1 "*) return 0 ;; esac
	return 1
}
load_modules() {
	for m in "$@"; do
		insmod "/lib/modules/$m.ko" >/dev/null 2>&1 || true
	done
}
# shellcheck disable=SC2086 # a list of names
load_modules $QD_MODULES

# Shared folders: qd.mount=TAG:/path (repeatable), virtiofs first, then 9p over virtio.
qd_mount() {
	tag=${1%%:*}
	path=${1#*:}
	if [ -z "$tag" ] || [ "$tag" = "$1" ] || [ -z "$path" ]; then
		echo "qd-error: qd.mount=$1: expected TAG:/path"
		return
	fi
	if ! mkdir -p "$path" 2>/dev/null; then
		echo "qd-error: qd.mount=$1: cannot create $path"
		return
	fi
	if e1=$(mount -t virtiofs "$tag" "$path" 2>&1); then
		echo "qd-mounted: $tag $path virtiofs"
		return
	fi
	if grep -qw 9p /proc/filesystems; then
		if e2=$(mount -t 9p -o trans=virtio,version=9p2000.L "$tag" "$path" 2>&1); then
			echo "qd-mounted: $tag $path 9p"
			return
		fi
	else
		e2="this kernel has no 9p"
	fi
	echo "qd-error: cannot mount $tag on $path (virtiofs: ${e1:-failed}; 9p: ${e2:-failed})"
}
mounts=""
for w in $cmdline; do
	case $w in qd.mount=*) mounts="$mounts ${w#qd.mount=}" ;; esac
done
if [ -n "$mounts" ]; then
	# shellcheck disable=SC2086 # a list of names
	load_modules $QD_MOUNT_MODULES
	for w in $mounts; do qd_mount "$w"; done
fi

# Guest agent: qemu-ga on the virtio-serial port org.qemu.guest_agent.0, when there is one.
# No udev here, so the /dev/virtio-ports/NAME link is made from /sys. The host names a
# port a moment after the driver has bound, so wait for it (at most 2 s), and only while a
# virtio console device (virtio device id 3) is there.
qd_agent() {
	[ -x /usr/sbin/qemu-ga ] || return 0
	has=""
	for d in /sys/bus/virtio/devices/*; do
		[ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && has=1
	done
	[ -n "$has" ] || return 0
	i=0
	port=""
	while :; do
		for p in /sys/class/virtio-ports/*; do
			[ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=${p##*/}
		done
		[ -n "$port" ] || [ $i -ge 40 ] && break
		sleep 0.05
		i=$((i + 1))
	done
	[ -n "$port" ] || return 0
	mkdir -p /dev/virtio-ports
	ln -sf "../$port" /dev/virtio-ports/org.qemu.guest_agent.0
	qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -l /var/log/qemu-ga.log &
	echo "qd-agent: qemu-ga on /dev/virtio-ports/org.qemu.guest_agent.0 ($port)"
}
qd_agent

read -r up _ </proc/uptime
echo "GUEST-READY $QD_ARCH"
echo "qd-uptime: $up"
echo "qd-uname: $(uname -m)"
echo "qd-address-sizes: $(grep -m1 '^address sizes' /proc/cpuinfo)"
echo "qd-flags: $(grep -m1 -iE '^(flags|features)[[:space:]]*:' /proc/cpuinfo)"
echo "qd-cmdline: $cmdline"
nics=""
for n in /sys/class/net/*; do
	n=${n##*/}
	case $n in lo | "*") continue ;; esac
	drv=$(readlink "/sys/class/net/$n/device/driver" 2>/dev/null) || drv=none
	nics="$nics $n(${drv##*/})"
done
echo "qd-net:${nics:- none}"
qd_write=""
for w in $cmdline; do
	case $w in qd.write=*) qd_write=${w#qd.write=} ;; esac
done
if [ -n "$qd_write" ]; then
	i=0
	# Block devices of modules loaded above may appear a moment later.
	while [ ! -b "$qd_write" ] && [ $i -lt 10 ]; do
		sleep 1
		i=$((i + 1))
	done
	if printf 'QD-MARKER %s\n' "$QD_ARCH" | dd of="$qd_write" bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null; then
		sync
		echo "qd-wrote: $qd_write"
	else
		echo "qd-error: cannot write $qd_write"
	fi
fi
if qd_opt qd.panic=1; then
	# PID 1 exiting makes the kernel panic ("Attempted to kill init!").
	echo "qd-panic: exiting init"
	exit 1
fi
if qd_opt qd.hold=1; then
	n=0
	while :; do
		n=$((n + 1))
		echo "qd-heartbeat $n"
		sleep 1
	done
fi
poweroff -f
echo "qd-error: poweroff -f failed"
exit 1
