#!/usr/bin/env bash
# build-test-image.sh - a bootable Debian bookworm cloud image (qcow2, UEFI) for the tests.
#
# Usage: scripts/build-test-image.sh [--refresh] [--rebuild] ARCH [DIR]
#   ARCH   x86_64 or aarch64
#   DIR    output folder (default: ${XDG_CACHE_HOME:-~/.cache}/qemu-direct/test-images/ARCH)
# Prints the path of the image (DIR/disk.qcow2) on stdout; progress and step times on stderr.
#
# Built from Debian's package archive only (bookworm main, deb.debian.org; nothing else is
# downloaded), the way distro cloud images are: a GPT disk of 2 GiB (virtual; the qcow2 holds
# what is written, a few hundred MB) with
#   partition 1  ESP, FAT, 64 MiB: EFI/BOOT/BOOT{X64,AA64}.EFI is systemd-boot (removable-media
#                path, so no NVRAM entry is needed), loader/entries/debian.conf boots /vmlinuz
#                and /initrd.img (copies of the installed kernel and initramfs) with
#                root=UUID=<root> console=<serial console>
#   partition 2  root, ext4, the rest of the disk, last on the disk so cloud-init's growpart
#                can grow it into a larger virtual size (run --disk PATH,size=...)
# and in the root: the cloud kernel (linux-image-cloud-amd64 / -arm64) with a small initramfs
# (MODULES=list: the virtio drivers), systemd, udev, systemd-networkd (cloud-init's network
# renderer here), cloud-init (datasources NoCloud then None: no waiting on cloud metadata
# services), openssh-server (no host keys in the image: cloud-init makes them per instance),
# qemu-guest-agent (started by udev when the agent's virtio-serial port appears), growpart
# (cloud-guest-utils), sudo (for cloud-init's default user "debian"). No root password.
# No CA certificates (path-excluded: the image is reached offline).
#
# The foreign arch (aarch64 on an x86_64 host, or the other way round) is configured by
# qemu-user-static through binfmt_misc, registered here if it is not yet (mounting
# /proc/sys/fs/binfmt_misc when needed; as root). Why not unpack and finish the configuration
# inside the booted guest: that runs every maintainer script and the initramfs build under
# full-system TCG, several times slower than user-mode emulation, and needs a second boot
# path (init=) only for this; binfmt_misc can be registered on the machines we run on (CI
# included). With the "F" flag the interpreter is opened at registration, so it works in the
# chroot.
#
# The disk is assembled without loop devices or mounts: mmdebstrap installs into a folder,
# mkfs.ext4 -d fills the root file system from it, mkfs.vfat + mtools make the ESP, sfdisk
# writes the partition table into a raw file, dd places both file systems, and qemu-img
# converts it to qcow2. Root is needed for mmdebstrap's chroot (its "root" mode), for the
# files' owners in mkfs.ext4 -d, and for binfmt_misc.
#
# Cached by package versions, like scripts/fetch-test-guests.sh: the versions apt resolves for
# the image's packages (a simulated install into an empty system, from private lists under
# DIR/.apt refreshed when older than a day or with --refresh) and the sha256 of this script
# make a key; when DIR/manifest.txt has the same key and the image's sha256 still matches,
# nothing is built. Downloaded .debs are kept in DIR/.debs for rebuilds, the last build's logs
# in DIR/mmdebstrap.log and DIR/dpkg.log (dpkg's, timestamped: where the install's time went).
set -euo pipefail
set -o errtrace
umask 022

readonly PROG=build-test-image
readonly MIRROR=http://deb.debian.org/debian
readonly SUITE=bookworm
readonly KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
readonly LISTS_MAX_AGE_MIN=1440
readonly DISK_MB=2048 ESP_MB=64

STAGE="starting"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
on_err() { printf '%s: error: while %s: command failed (exit %s) at line %s: %s\n' "$PROG" "$STAGE" "$1" "$2" "$3" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

usage() {
	sed -n '3,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	cat <<EOF
  --refresh   update the private apt lists even if they are fresh
  --rebuild   build even if the image is up to date
EOF
}

# Time one step: step NAME COMMAND...
step() {
	local name=$1 start=$SECONDS
	shift
	STAGE=$name
	log "$name ..."
	"$@"
	log "$name: done in $((SECONDS - start)) s"
}

# --- arguments --------------------------------------------------------------

REFRESH=0 REBUILD=0 ARCH="" DIR=""
while (($#)); do
	case $1 in
	--refresh) REFRESH=1 ;;
	--rebuild) REBUILD=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	-*) die "unknown option '$1' (see --help)" ;;
	*)
		if [[ -z $ARCH ]]; then
			ARCH=$1
		elif [[ -z $DIR ]]; then
			DIR=$1
		else
			die "too many arguments: '$1' (usage: $PROG [--refresh] [--rebuild] ARCH [DIR])"
		fi
		;;
	esac
	shift
done
[[ -n $ARCH ]] || die "no ARCH given (x86_64 or aarch64; see --help)"

# Per-arch facts: Debian arch, UEFI name (BOOT<EFI>.EFI, systemd-boot<efi>.efi), serial
# console, qemu-user name, GPT root partition type (the Discoverable Partitions Spec's).
case $ARCH in
x86_64) DEBARCH=amd64 EFI=x64 CONSOLE=ttyS0 QEMU_USER=x86_64 ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 ;;
aarch64) DEBARCH=arm64 EFI=aa64 CONSOLE=ttyAMA0 QEMU_USER=aarch64 ROOT_TYPE=B921B045-1DF0-41C3-AF44-4C6F280D3FAE ;;
*) die "unknown ARCH '$ARCH' (valid: x86_64, aarch64)" ;;
esac
readonly ARCH DEBARCH EFI CONSOLE QEMU_USER ROOT_TYPE

DIR=${DIR:-${XDG_CACHE_HOME:-${HOME:?HOME is not set; pass DIR}/.cache}/qemu-direct/test-images/$ARCH}
mkdir -p "$DIR"
DIR=$(realpath "$DIR")
readonly DIR IMAGE=$DIR/disk.qcow2 MANIFEST=$DIR/manifest.txt APTDIR=$DIR/.apt DEBS=$DIR/.debs

# The packages of the image, beyond the essential set and apt (mmdebstrap --variant=apt).
PACKAGES=(
	"linux-image-cloud-$DEBARCH" systemd systemd-sysv udev dbus cloud-init openssh-server
	qemu-guest-agent cloud-guest-utils systemd-boot-efi sudo e2fsprogs
	# initramfs-tools is what the kernel pulls in; named so the MODULES=list hook below applies
	initramfs-tools
)
readonly PACKAGES

[[ $(id -u) == 0 ]] || die "needs root: mmdebstrap's chroot, file owners in mkfs.ext4 -d, binfmt_misc (run with sudo)"

# --- host tools -------------------------------------------------------------

host_tools() {
	local want=(mmdebstrap e2fsprogs dosfstools mtools fdisk qemu-utils debian-archive-keyring)
	if [[ $DEBARCH != $(dpkg --print-architecture) ]]; then want+=(qemu-user-static); fi
	"$(dirname -- "${BASH_SOURCE[0]}")/install-deps" "${want[@]}"
}
step "host tools" host_tools

# binfmt_misc for the foreign arch: mounted and the qemu-user-static interpreter registered.
binfmt() {
	[[ $DEBARCH != $(dpkg --print-architecture) ]] || return 0
	local fs=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-$QEMU_USER.conf
	if [[ ! -e $fs/register ]]; then
		mount -t binfmt_misc binfmt_misc "$fs" ||
			die "cannot mount binfmt_misc on $fs: needed to run $DEBARCH programs in the image's chroot"
	fi
	if [[ ! -e $fs/qemu-$QEMU_USER ]]; then
		[[ -r $conf ]] || die "no $conf (from qemu-user-static)"
		cat "$conf" >"$fs/register" || die "cannot register $conf in $fs/register"
		log "registered $conf in binfmt_misc"
	fi
	grep -qx enabled "$fs/qemu-$QEMU_USER" || die "binfmt_misc entry qemu-$QEMU_USER is disabled ($fs/qemu-$QEMU_USER)"
}
step "binfmt_misc" binfmt

# --- versions: the cache key --------------------------------------------------

mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc/apt.conf.d" \
	"$APTDIR/etc/preferences.d" "$APTDIR/etc/trusted.gpg.d"
: >"$APTDIR/status"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APTDIR/sources.list"
# Our own apt.conf.d (empty): the host's (docker-clean, proxies for other suites) is not ours.
cat >"$APTDIR/apt.conf" <<EOF
Dir::State "$APTDIR";
Dir::State::Lists "$APTDIR/lists";
Dir::State::status "$APTDIR/status";
Dir::Cache "$APTDIR/cache";
Dir::Etc::SourceList "$APTDIR/sources.list";
Dir::Etc::SourceParts "-";
Dir::Etc::Parts "$APTDIR/etc/apt.conf.d";
Dir::Etc::Preferences "$APTDIR/etc/preferences";
Dir::Etc::PreferencesParts "$APTDIR/etc/preferences.d";
Dir::Etc::TrustedParts "$APTDIR/etc/trusted.gpg.d";
APT::Architecture "$DEBARCH";
APT::Architectures "$DEBARCH";
APT::Sandbox::User "root";
Acquire::Languages "none";
EOF
apt_() { APT_CONFIG=$APTDIR/apt.conf "$@"; }

update_lists() {
	if ((REFRESH)) || [[ -z $(find "$APTDIR/lists-updated" -mmin -"$LISTS_MAX_AGE_MIN" 2>/dev/null) ]]; then
		apt_ apt-get -q update >"$APTDIR/update.log" 2>&1 || {
			cat "$APTDIR/update.log" >&2
			die "apt-get update of $MIRROR $SUITE main ($DEBARCH) failed"
		}
		touch "$APTDIR/lists-updated"
	fi
}
step "package lists" update_lists

# "name version arch" of every package of the image, as apt resolves them for an empty system.
resolve() {
	local joined
	joined=$(IFS=,; echo "${PACKAGES[*]}")
	apt_ apt-get -s -q --no-install-recommends install '?essential' apt "${PACKAGES[@]}" 2>&1 |
		awk '/^Inst / { v = $3; gsub(/^\(/, "", v); a = $NF; gsub(/[][)]/, "", a); print $2, v, a }' |
		LC_ALL=C sort >"$DIR/resolved.txt"
	[[ -s $DIR/resolved.txt ]] || die "apt could not resolve the image's packages ($joined) for $DEBARCH (try --refresh)"
}
step "resolving versions" resolve
RECIPE=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
KEY=$( (echo "recipe $RECIPE"; cat "$DIR/resolved.txt") | sha256sum | cut -d' ' -f1)
KERNEL_VERSION=$(awk '$1 ~ /^linux-image-[0-9].*-cloud-/ { print $1, $2 }' "$DIR/resolved.txt")

if ((!REBUILD)) && [[ -f $IMAGE && -f $MANIFEST ]] && grep -qx "key $KEY" "$MANIFEST" &&
	grep -qx "file disk.qcow2 $(sha256sum "$IMAGE" | cut -d' ' -f1)" "$MANIFEST"; then
	log "up to date: $IMAGE ($KERNEL_VERSION)"
	echo "$IMAGE"
	exit 0
fi

# --- build ----------------------------------------------------------------------

BUILD=$DIR/.build
rm -rf "$BUILD"
mkdir -p "$BUILD" "$DEBS"
ROOT=$BUILD/root
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ESP_SERIAL=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')

# Files the image's root gets before any package is installed (the initramfs's module list,
# so the first initramfs build is already the small one).
cat >"$BUILD/initramfs-hook" <<'EOF'
#!/bin/sh
# qemu-direct test image: the drivers a QEMU guest boots from (MODULES=list adds no others)
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_mmio virtio_blk virtio_scsi sd_mod nvme
EOF
chmod 755 "$BUILD/initramfs-hook"

# Settings written into the installed root (mmdebstrap --customize-hook, $1 is the root).
cat >"$BUILD/customize" <<EOF
#!/bin/sh
set -eu
root=\$1
printf 'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n' $ROOT_UUID >"\$root/etc/fstab"
cat >"\$root/etc/cloud/cloud.cfg.d/90-qemu-direct.cfg" <<'CFG'
# qemu-direct test image: a NoCloud seed (cidata volume) or nothing; no metadata services.
datasource_list: [ NoCloud, None ]
# The locale the image has (no others are generated): cloud-init's default, en_US.UTF-8,
# would fail its locale module and with it the whole cloud-config stage.
locale: C.UTF-8
# The instance's hostname resolves (sudo asks for it).
manage_etc_hosts: localhost
CFG
echo LANG=C.UTF-8 >"\$root/etc/default/locale"
# The initramfs is built once, by the kernel's postinst (update-initramfs -c); the
# update_initramfs=no the setup hook wrote (kept over the package's file: force-confold) spared
# initramfs-tools' trigger a second build (~35 s under qemu-user). The package's file back.
conf=\$root/etc/initramfs-tools/update-initramfs.conf
if [ -e "\$conf.dpkg-dist" ]; then mv -f "\$conf.dpkg-dist" "\$conf"; fi
# Host keys are made per instance by cloud-init, never shared by every clone of the image.
# (Empty placeholders from a setup hook kept openssh-server's postinst from generating them:
# RSA key generation under qemu-user takes minutes.)
rm -f "\$root"/etc/ssh/ssh_host_*
chroot "\$root" systemctl enable systemd-networkd.service
# A scrub of LVM snapshots there are none of: 10-20 s of a TCG boot.
chroot "\$root" systemctl mask e2scrub_reap.service
: >"\$root/etc/machine-id"
rm -f "\$root"/var/cache/apt/archives/*.deb "\$root"/var/lib/apt/lists/*_Packages
EOF
chmod 755 "$BUILD/customize"

install_root() {
	local excludes=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
		--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
		--dpkgopt='path-exclude=/usr/share/info/*'
		# No CA store: the image is reached offline, and update-ca-certificates linking ~140
		# certificates a process at a time took ~65 s of the aarch64 build under qemu-user.
		--dpkgopt='path-exclude=/usr/share/ca-certificates/mozilla/*')
	local joined
	joined=$(IFS=,; echo "${PACKAGES[*]}")
	# dpkg's fsyncs cost minutes here and buy nothing for a folder that becomes an image.
	mmdebstrap --mode=root --variant=apt --arch="$DEBARCH" --include="$joined" \
		--aptopt='Acquire::Languages "none"' --dpkgopt=force-unsafe-io "${excludes[@]}" \
		--skip=download/empty --skip=essential/unlink \
		--setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" "$1/var/cache/apt/archives"' \
		--setup-hook="echo MODULES=list >\"\$1/etc/initramfs-tools/conf.d/qemu-direct.conf\"" \
		--setup-hook="cp '$BUILD/initramfs-hook' \"\$1/etc/initramfs-tools/hooks/qemu-direct\"" \
		--setup-hook='mkdir -p "$1/etc/ssh" && for t in rsa ecdsa ed25519; do : >"$1/etc/ssh/ssh_host_${t}_key"; done' \
		--setup-hook='printf "update_initramfs=no\nbackup_initramfs=no\n" >"$1/etc/initramfs-tools/update-initramfs.conf"' \
		--dpkgopt=force-confold \
		--setup-hook="sync-in '$DEBS' /var/cache/apt/archives/" \
		--customize-hook="sync-out /var/cache/apt/archives '$DEBS'" \
		--customize-hook="cp \"\$1/var/log/dpkg.log\" '$BUILD/dpkg.log'" \
		--customize-hook="'$BUILD/customize' \"\$1\"" \
		"$SUITE" "$ROOT" "$MIRROR" >"$BUILD/mmdebstrap.log" 2>&1 || {
		tail -n 40 "$BUILD/mmdebstrap.log" >&2
		die "mmdebstrap failed (log: $BUILD/mmdebstrap.log)"
	}
	rm -f "$DEBS"/lock
}
step "installing the root ($DEBARCH: ${#PACKAGES[@]} packages and their dependencies)" install_root

# The ESP: systemd-boot as the removable-media loader, the kernel and initramfs beside it.
make_esp() {
	local kernel initrd esp=$BUILD/esp.img
	kernel=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)
	initrd=$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)
	[[ -n $kernel && -n $initrd ]] || die "no kernel or initramfs in $ROOT/boot"
	mkdir -p "$BUILD/esp/loader/entries"
	printf 'timeout 0\ndefault debian.conf\n' >"$BUILD/esp/loader/loader.conf"
	printf 'title Debian %s (qemu-direct test image)\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=UUID=%s ro console=%s\n' \
		"$SUITE" "$ROOT_UUID" "$CONSOLE" >"$BUILD/esp/loader/entries/debian.conf"
	rm -f "$esp"
	mkfs.vfat -C -F 32 -n ESP -i "$ESP_SERIAL" "$esp" $((ESP_MB * 1024)) >/dev/null
	export MTOOLS_SKIP_CHECK=1
	mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
	mcopy -i "$esp" "$ROOT/usr/lib/systemd/boot/efi/systemd-boot$EFI.efi" "::/EFI/BOOT/BOOT${EFI^^}.EFI"
	mcopy -i "$esp" "$kernel" ::/vmlinuz
	mcopy -i "$esp" "$initrd" ::/initrd.img
	mcopy -i "$esp" "$BUILD/esp/loader/loader.conf" ::/loader/loader.conf
	mcopy -i "$esp" "$BUILD/esp/loader/entries/debian.conf" ::/loader/entries/debian.conf
}
step "ESP" make_esp

# The disk: GPT, ESP from 1 MiB, root from there to the end (33 sectors kept for the backup GPT).
make_disk() {
	local raw=$BUILD/disk.raw root_mb=$((DISK_MB - ESP_MB - 2))
	mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -d "$ROOT" "$BUILD/root.img" "${root_mb}M" >/dev/null
	rm -f "$raw"
	truncate -s "${DISK_MB}M" "$raw"
	sfdisk -q "$raw" <<EOF
label: gpt
start=1MiB, size=${ESP_MB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
start=$((ESP_MB + 1))MiB, size=${root_mb}MiB, type=$ROOT_TYPE, name=root
EOF
	dd if="$BUILD/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
	dd if="$BUILD/root.img" of="$raw" bs=1M seek=$((ESP_MB + 1)) conv=notrunc,sparse status=none
	qemu-img convert -f raw -O qcow2 "$raw" "$BUILD/disk.qcow2"
}
step "disk" make_disk

# The manifest: the key, what went in, and the image's sha256.
finish() {
	local installed
	installed=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f '${Package} ${Version} ${Architecture}\n' | LC_ALL=C sort)
	{
		echo "key $KEY"
		echo "recipe $RECIPE"
		echo "arch $ARCH $DEBARCH"
		echo "kernel $KERNEL_VERSION"
		echo "root-uuid $ROOT_UUID"
		echo "file disk.qcow2 $(sha256sum "$BUILD/disk.qcow2" | cut -d' ' -f1)"
		sed 's/^/package /' <<<"$installed"
	} >"$BUILD/manifest.txt"
	mv -f "$BUILD/disk.qcow2" "$IMAGE"
	mv -f "$BUILD/manifest.txt" "$MANIFEST"
	mv -f "$BUILD/mmdebstrap.log" "$BUILD/dpkg.log" "$DIR/"
	rm -rf "$BUILD"
}
step "manifest" finish
log "built $IMAGE: $(du -m "$IMAGE" | cut -f1) MB on disk, ${DISK_MB} MiB virtual, $KERNEL_VERSION"
echo "$IMAGE"
