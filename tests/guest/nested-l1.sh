# Run once in the L1 guest of tests/it/nested.rs, through its guest agent (sh -c), after boot:
# makes /h a root to chroot into for running the host's qemu-direct and QEMU inside L1.
#
#   sh -c "$(cat nested-l1.sh)" nested-l1 EMULATOR...
#
# Expects /h/usr (the host's /usr: QEMU, its data and firmware, the libraries), /h/qd (the
# folder of the qemu-direct binary under test) and /h/guests (the test guests) already mounted
# by /init from qd.mount= (virtiofs: QEMU 7.2's C virtiofsd serves them read-write, so they are
# made read-only here, in L1). Adds what a root needs (/bin, /lib... as links into /usr; proc,
# sys, dev) and a tmpfs /tmp for the XDG directories of the qemu-direct runs. /qemu-bin holds
# links to the emulators named on the command line only, and is the runs' PATH: qemu-direct
# probes every qemu-system-* on PATH, which costs some 10 s each in an emulated L1.
# Prints "qd-l1: ..." lines saying what it did; exits non-zero at the first failure.
set -eu
for m in /h/usr /h/qd /h/guests; do
	mount -o remount,ro "$m"
	echo "qd-l1: $m read-only"
done
cd /h
for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$d"; done
mkdir -p proc sys dev tmp etc qemu-bin
mount -t proc proc /h/proc
mount -t sysfs sysfs /h/sys
mount -t devtmpfs devtmpfs /h/dev
mount -t tmpfs -o mode=1777 tmpfs /h/tmp
mkdir -p /h/tmp/run /h/tmp/state /h/tmp/cache /h/tmp/config /h/tmp/home
chmod 0700 /h/tmp/run
for e in "$@"; do
	[ -x "/h/usr/bin/$e" ] || {
		echo "qd-l1: no /usr/bin/$e on the host"
		exit 1
	}
	ln -sfn "/usr/bin/$e" "/h/qemu-bin/$e"
done
[ -c /h/dev/kvm ] || {
	echo "qd-l1: no /dev/kvm in L1"
	exit 1
}
echo "qd-l1: root /h ready; emulators: $*"
