export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
cmdline=$(cat /proc/cmdline)
qd_opt() {
	case " $cmdline " in *" $1 "*) return 0 ;; esac
	return 1
}
for m in $QD_MODULES; do
	insmod "/lib/modules/$m.ko" >/dev/null 2>&1 || true
done
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
