#!/usr/bin/env bash
# fetch-test-guests.sh - build tiny QEMU test guests from Debian bookworm packages.
#
# Usage: scripts/fetch-test-guests.sh [--arch ARCH]... [--generic-kernel] [--kvm-host] [--refresh] [--rebuild] [DIR]
#
# The packages are downloaded (never installed) through a private apt
# configuration under DIR/.apt and unpacked with dpkg-deb. What the guests are is data in
# tests/guest/: arches.tsv (per guest: Debian arch, kernel packages, UEFI arch, console,
# guest agent package), modules.list (kernel modules for the initramfs) and init.sh (the
# initramfs /init, copied as it is; per-guest values go to /etc/qd-guest.conf, which it
# sources); this script only orchestrates. Layout of DIR:
#
#   <arch>/kernel, <arch>/initrd.gz   x86_64 aarch64 ppc64le s390x mipsel (and i686, only
#                                     when named: --arch i686); the initramfs has busybox,
#                                     the kernel modules of modules.list, and qemu-ga
#                                     (qemu-guest-agent; not i686) with the shared libraries
#                                     it needs and nothing else of their packages
#   <arch>/uefi.img                   x86_64 aarch64: FAT disk (no partition table) that
#                                     UEFI firmware (OVMF, AAVMF) boots as removable media:
#                                     EFI/BOOT/BOOT{X64,AA64}.EFI is systemd-boot, whose
#                                     loader/loader.conf (timeout 0) boots loader/entries/qd.conf
#                                     at once: /linux (the same kernel, an EFI-stub PE image),
#                                     /initrd.gz, options console=<console> panic=-1.
#                                     startup.nsh does the same from the UEFI shell (fallback).
#   riscv64/fw_jump.bin               OpenSBI generic fw_jump (-bios)
#   riscv64/u-boot.bin                U-Boot qemu-riscv64_smode (-kernel)
#   riscv64/boot/boot.scr.uimg        U-Boot script; serve the folder as fat:DIR/riscv64/boot
#                                     (riscv64: no kernel, no agent; bookworm has neither)
#   manifest.txt                      "name version arch sha256" per .deb (kernel, busybox,
#                                     systemd-boot, qemu-guest-agent and its dependencies),
#                                     "file <relative path> <sha256>" per output
#
# The kernels: Debian's cloud flavour for x86_64 and aarch64 (small, quick to boot, but no
# 9p), the generic ones elsewhere; --generic-kernel gives x86_64 and aarch64 the generic
# flavour too (9p as modules; see tests/guest/README.md for what it costs).
#
# --kvm-host builds guests that are KVM hosts themselves (the L1 of tests/it/nested.rs): their
# initramfs also carries the "kvm" modules of modules.list (kvm_amd and what it depends on,
# where the kernel has them as modules), which /init loads at boot. Build them into a DIR of
# their own: the cache key tells them apart, but one DIR holds one flavour.
#
# The initramfs /init (tests/guest/init.sh), in this order:
# - loads the "boot" modules of modules.list (virtio pci/mmio/blk/net/console);
# - for each qd.mount=TAG:/path on the kernel command line (repeatable): loads the "mount"
#   modules once, creates /path, mounts TAG there with virtiofs, or else 9p (trans=virtio,
#   version=9p2000.L), and prints "qd-mounted: TAG /path virtiofs|9p", or
#   "qd-error: cannot mount TAG on /path (virtiofs: ...; 9p: ...)";
# - when a virtio-serial port named org.qemu.guest_agent.0 is there (waiting up to 2 s for
#   the host to name the ports, only if a virtio console device is there), links
#   /dev/virtio-ports/org.qemu.guest_agent.0 to it, starts
#   "qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0" in the background
#   (log: /var/log/qemu-ga.log) and prints "qd-agent: qemu-ga on <path> (<vportNpM>)".
#   It serves guest-exec (busybox sh and applets in /bin) and guest-file-*; a client
#   should guest-sync-delimited first (it starts while the marker is printed);
# - prints "GUEST-READY <arch>", then qd-uptime: (the guest's /proc/uptime seconds at the
#   marker; always the line right after it), qd-uname:, qd-address-sizes:, qd-flags:,
#   qd-cmdline:, and "qd-net: <name>(<driver>)..." for each network interface but lo, or
#   "qd-net: none";
# - qd.write=DEV: writes the 512-byte block "QD-MARKER <arch>" at the start of block device
#   DEV, e.g. /dev/vda, synced, then prints "qd-wrote: DEV", or "qd-error: ..." if it fails;
# - qd.panic=1: kernel panic; qd.hold=1: prints "qd-heartbeat N" every second forever;
#   otherwise powers off.
#
# Re-runs are cached by package version: when the versions resolved from the apt
# lists (refreshed when older than a day, or with --refresh) match the manifest, the
# recipe (this script and tests/guest/*) is unchanged and the outputs are intact,
# nothing is done.
set -euo pipefail
set -o errtrace
umask 022

readonly PROG=fetch-test-guests
readonly MIRROR=http://deb.debian.org/debian
readonly SUITE=bookworm
readonly KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
readonly LISTS_MAX_AGE_MIN=1440

STAGE="starting"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
on_err() {
	local rc=$1 line=$2 cmd=$3
	printf '%s: error: while %s: command failed (exit %s) at line %s: %s\n' \
		"$PROG" "$STAGE" "$rc" "$line" "$cmd" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

usage() {
	cat <<EOF
Usage: $0 [--arch ARCH]... [--generic-kernel] [--kvm-host] [--refresh] [--rebuild] [DIR]

Build small QEMU test guests from Debian $SUITE packages into DIR
(default: \${XDG_CACHE_HOME:-\$HOME/.cache}/qemu-direct/test-guests).

  --arch ARCH   only this guest (repeatable, or comma-separated);
                one of: ${ALL_ARCHES[*]}
                (default: ${DEFAULT_ARCHES[*]}; the others only when named)
  --generic-kernel
                x86_64 and aarch64 get Debian's generic kernel (linux-image-amd64,
                -arm64), which has 9p, instead of the cloud one, which has not
                (virtiofs works with both); the other guests' kernels are generic already
  --kvm-host    the initramfs also loads the KVM modules at boot (kvm_amd, kvm, ...),
                for guests that run guests of their own under KVM (nested KVM)
  --refresh     run apt-get update on the private apt lists even if they are fresh
  --rebuild     rebuild the selected guests even if they are up to date
  -h, --help    show this help
EOF
}

# --- per-arch facts ---------------------------------------------------------

# They live in tests/guest/ (arches.tsv, modules.list, init.sh); this script only orchestrates.
GUEST_SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../tests/guest" 2>/dev/null && pwd) ||
	die "no tests/guest folder beside scripts/ (it holds arches.tsv, modules.list, init.sh)"
readonly GUEST_SRC ARCHES_FILE=$GUEST_SRC/arches.tsv MODULES_FILE=$GUEST_SRC/modules.list \
	INIT_FILE=$GUEST_SRC/init.sh
for f in "$ARCHES_FILE" "$MODULES_FILE" "$INIT_FILE"; do
	[[ -r $f ]] || die "missing $f"
done

# arches.tsv: arch debarch kernel generic efi console agent default ("-" is none); # starts a
# comment. DEFAULT_ARCHES: those built when no --arch is given.
ALL_ARCHES=() DEFAULT_ARCHES=()
declare -A DEBARCH=() KERNEL_META=() GENERIC_META=() EFI_ARCH=() CONSOLE=() AGENT_PKG=()
read_arches() {
	local line n=0 cols
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		line=${line%%#*}
		read -r -a cols <<<"$line"
		((${#cols[@]})) || continue
		((${#cols[@]} == 8)) ||
			die "$ARCHES_FILE:$n: expected 8 columns (arch debarch kernel generic efi console agent default), got ${#cols[@]}"
		case ${cols[7]} in
		yes) DEFAULT_ARCHES+=("${cols[0]}") ;;
		no) ;;
		*) die "$ARCHES_FILE:$n: the default column is yes or no, not '${cols[7]}'" ;;
		esac
		[[ -z ${DEBARCH[${cols[0]}]:-} ]] || die "$ARCHES_FILE:$n: arch ${cols[0]} listed twice"
		ALL_ARCHES+=("${cols[0]}")
		DEBARCH[${cols[0]}]=${cols[1]}
		KERNEL_META[${cols[0]}]=${cols[2]}
		GENERIC_META[${cols[0]}]=${cols[3]}
		EFI_ARCH[${cols[0]}]=${cols[4]}
		CONSOLE[${cols[0]}]=${cols[5]}
		AGENT_PKG[${cols[0]}]=${cols[6]}
	done <"$ARCHES_FILE"
	((${#ALL_ARCHES[@]})) || die "$ARCHES_FILE lists no arch"
}
read_arches
readonly ALL_ARCHES DEFAULT_ARCHES

# Debian architectures of all guests, each once (the private apt's APT::Architectures).
ALL_DEBARCHES=()
for a in "${ALL_ARCHES[@]}"; do
	[[ " ${ALL_DEBARCHES[*]} " == *" ${DEBARCH[$a]} "* ]] || ALL_DEBARCHES+=("${DEBARCH[$a]}")
done
readonly ALL_DEBARCHES

debarch_of() { echo "${DEBARCH[$1]}"; }

# Kernel metapackage (the generic flavour's with --generic-kernel); fails for a guest without
# a kernel (riscv64).
kernel_meta_of() {
	[[ ${KERNEL_META[$1]:--} != - ]] || return 1
	if ((GENERIC_KERNEL)) && [[ ${GENERIC_META[$1]:--} != - ]]; then
		echo "${GENERIC_META[$1]}"
	else
		echo "${KERNEL_META[$1]}"
	fi
}

# The guest agent package of a kernel guest; fails where it gets none.
agent_of() {
	kernel_meta_of "$1" >/dev/null || return 1
	[[ ${AGENT_PKG[$1]:--} != - ]] || return 1
	echo "${AGENT_PKG[$1]}"
}

# UEFI arch name (as in BOOT<NAME>.EFI, systemd-boot<name>.efi) and serial console of
# the guests that get a uefi.img.
uefi_of() {
	[[ ${EFI_ARCH[$1]:--} != - ]] || return 1
	echo "${EFI_ARCH[$1]} ${CONSOLE[$1]}"
}

# Output files (relative to DIR) of one guest.
outputs_of() {
	if ! kernel_meta_of "$1" >/dev/null; then
		printf '%s\n' "$1/fw_jump.bin" "$1/u-boot.bin" "$1/boot/boot.scr.uimg"
	elif uefi_of "$1" >/dev/null; then
		printf '%s\n' "$1/kernel" "$1/initrd.gz" "$1/uefi.img"
	else
		printf '%s\n' "$1/kernel" "$1/initrd.gz"
	fi
}

# Drivers loaded by /init when they are modules (plus their dependencies): BOOT_MODULES
# always, MOUNT_MODULES when the kernel command line asks for a shared folder (qd.mount=),
# KVM_MODULES always but only in --kvm-host guests.
BOOT_MODULES=() MOUNT_MODULES=() KVM_MODULES=()
n=0
while IFS= read -r line || [[ -n $line ]]; do
	n=$((n + 1))
	line=${line%%#*}
	read -r -a cols <<<"$line"
	((${#cols[@]})) || continue
	case ${#cols[@]}:${cols[1]:-} in
	2:boot) BOOT_MODULES+=("${cols[0]}") ;;
	2:mount) MOUNT_MODULES+=("${cols[0]}") ;;
	2:kvm) KVM_MODULES+=("${cols[0]}") ;;
	*) die "$MODULES_FILE:$n: expected 'MODULE boot', 'MODULE mount' or 'MODULE kvm', got '$line'" ;;
	esac
done <"$MODULES_FILE"
readonly BOOT_MODULES MOUNT_MODULES KVM_MODULES

# --- arguments --------------------------------------------------------------

ARCHES=()
REFRESH=0
REBUILD=0
GENERIC_KERNEL=0
KVM_HOST=0
DIR=""
add_arch() {
	local a known=0 k
	for a in ${1//,/ }; do
		for k in "${ALL_ARCHES[@]}"; do if [[ $a == "$k" ]]; then known=1; fi; done
		((known)) || die "unknown arch '$a' (known: ${ALL_ARCHES[*]})"
		ARCHES+=("$a")
		known=0
	done
}
while (($#)); do
	case $1 in
	--arch)
		(($# >= 2)) || die "--arch needs a value"
		add_arch "$2"
		shift 2
		;;
	--arch=*)
		add_arch "${1#--arch=}"
		shift
		;;
	--refresh)
		REFRESH=1
		shift
		;;
	--generic-kernel)
		GENERIC_KERNEL=1
		shift
		;;
	--kvm-host)
		KVM_HOST=1
		shift
		;;
	--rebuild)
		REBUILD=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		break
		;;
	-*) die "unknown option '$1' (see --help)" ;;
	*)
		[[ -z $DIR ]] || die "only one DIR may be given (got '$DIR' and '$1')"
		DIR=$1
		shift
		;;
	esac
done
if (($#)); then
	[[ -z $DIR && $# -eq 1 ]] || die "only one DIR may be given"
	DIR=$1
fi
if ((${#ARCHES[@]} == 0)); then
	ARCHES=("${DEFAULT_ARCHES[@]}")
else
	# de-duplicate, canonical order
	sel=()
	for k in "${ALL_ARCHES[@]}"; do
		for a in "${ARCHES[@]}"; do
			if [[ $a == "$k" ]]; then
				sel+=("$k")
				break
			fi
		done
	done
	ARCHES=("${sel[@]}")
fi
if [[ -z $DIR ]]; then
	DIR=${XDG_CACHE_HOME:-${HOME:?HOME is not set; pass DIR}/.cache}/qemu-direct/test-guests
fi

IS_ROOT=0
if [[ $(id -u) == 0 ]]; then IS_ROOT=1; fi

# --- host tools -------------------------------------------------------------

STAGE="checking host tools"
ensure_host_tools() {
	local missing_pkgs=() missing_cmds=() entry cmd pkg a uefi_tools=() agent_tools=()
	for a in "${ARCHES[@]}"; do
		if uefi_of "$a" >/dev/null; then uefi_tools=(mformat:mtools mmd:mtools mcopy:mtools); fi
		if agent_of "$a" >/dev/null; then agent_tools=(readelf:binutils); fi
	done
	for entry in apt-get:apt apt-cache:apt dpkg-deb:dpkg cpio:cpio gzip:gzip \
		sha256sum:coreutils tr:coreutils od:coreutils find:findutils awk:mawk sed:sed \
		tar:tar flock:util-linux realpath:coreutils "${uefi_tools[@]}" "${agent_tools[@]}"; do
		cmd=${entry%%:*} pkg=${entry#*:}
		if ! command -v "$cmd" >/dev/null 2>&1; then
			missing_cmds+=("$cmd")
			[[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
		fi
	done
	((${#missing_cmds[@]})) || return 0
	if [[ " ${missing_cmds[*]} " == *" apt-get "* || " ${missing_cmds[*]} " == *" dpkg-deb "* ]]; then
		die "missing host tools: ${missing_cmds[*]} (this script needs a Debian-like host with apt and dpkg)"
	fi
	if ((!IS_ROOT)); then
		die "missing host tools: ${missing_cmds[*]}; install them as root with: apt-get install ${missing_pkgs[*]}"
	fi
	log "installing missing host tools: ${missing_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" >&2; then
		apt-get update -q >&2 || true
		apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" >&2 ||
			die "could not install host tools: ${missing_pkgs[*]}"
	fi
}
ensure_host_tools

# Decompressor for a kernel module, checked when one is met.
need_cmd() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null 2>&1 && return 0
	((IS_ROOT)) || die "missing host tool '$cmd'; install it as root with: apt-get install $pkg"
	log "installing missing host tool: $pkg"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2 ||
		die "could not install host tool $pkg"
}

# --- work dir, lock ---------------------------------------------------------

STAGE="preparing $DIR"
mkdir -p -- "$DIR" || die "cannot create $DIR"
DIR=$(realpath -- "$DIR")
MANIFEST=$DIR/manifest.txt
RECIPE_FILE=$DIR/.recipe
APTDIR=$DIR/.apt
DEBS=$APTDIR/debs

exec 9>>"$DIR/.lock"
if ! flock -n 9; then
	log "waiting for another run on $DIR to finish"
	flock 9 || die "cannot lock $DIR/.lock"
fi

# Leftovers of interrupted runs (we hold the lock, so nobody else is using them).
rm -rf -- "$DIR"/.tmp.*

TMP=$(mktemp -d "$DIR/.tmp.XXXXXX")
BUILD_PIDS=()
BUILD_ARCHES=()
cleanup() {
	if ((${#BUILD_PIDS[@]})); then
		kill -TERM -- "${BUILD_PIDS[@]/#/-}" 2>/dev/null || true
		wait "${BUILD_PIDS[@]}" 2>/dev/null || true
	fi
	rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The recipe (this script and the files of tests/guest it reads) is part of the cache key:
# a changed /init rebuilds.
# --kvm-host changes the initramfs of the same packages, so it is part of the key too.
RECIPE=$({
	cat -- "${BASH_SOURCE[0]}" "$ARCHES_FILE" "$MODULES_FILE" "$INIT_FILE"
	if ((KVM_HOST)); then echo "--kvm-host"; fi
} | sha256sum)
RECIPE=${RECIPE%% *}

# --- private apt ------------------------------------------------------------

STAGE="setting up the private apt configuration in $APTDIR"
# Write $2 to $1 only if it differs (keeps mtimes, so apt's cache stays valid).
write_if_changed() {
	local f=$1 content=$2
	if [[ -f $f ]] && [[ $(<"$f") == "$content" ]]; then return 0; fi
	printf '%s\n' "$content" >"$f.new"
	mv -f -- "$f.new" "$f"
}
mkdir -p "$APTDIR"/lists/partial "$APTDIR"/cache/archives/partial "$APTDIR"/state \
	"$APTDIR"/sources.list.d "$APTDIR"/preferences.d "$DEBS"
[[ -f $APTDIR/status ]] || : >"$APTDIR/status"
[[ -r $KEYRING ]] || die "Debian archive keyring $KEYRING not found (package debian-archive-keyring)"
write_if_changed "$APTDIR/sources.list" \
	"deb [signed-by=$KEYRING] $MIRROR $SUITE main"
sandbox_line=""
if ((IS_ROOT)); then sandbox_line='APT::Sandbox::User "root";'; fi
# Read after the host's apt.conf.d (via -c), so it overrides e.g. docker-clean.
write_if_changed "$APTDIR/apt.conf" "// generated by $PROG; private apt for test guests
Dir::Etc::SourceList \"$APTDIR/sources.list\";
Dir::Etc::SourceParts \"$APTDIR/sources.list.d\";
Dir::Etc::Preferences \"$APTDIR/preferences\";
Dir::Etc::PreferencesParts \"$APTDIR/preferences.d\";
Dir::State \"$APTDIR/state\";
Dir::State::Lists \"$APTDIR/lists\";
Dir::State::status \"$APTDIR/status\";
Dir::Cache \"$APTDIR/cache\";
Dir::Cache::archives \"$APTDIR/cache/archives\";
Dir::Cache::pkgcache \"pkgcache.bin\";
Dir::Cache::srcpkgcache \"\";
#clear APT::Architectures;
APT::Architectures { $(printf '\"%s\"; ' "${ALL_DEBARCHES[@]}")};
$sandbox_line
Acquire::Languages \"none\";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;"

apt_() {
	local tool=$1
	shift
	"$tool" -c "$APTDIR/apt.conf" "$@"
}

# Run a command with its output in a log; show the log if it fails.
run_logged() {
	local what=$1 logf=$TMP/log.$RANDOM
	shift
	local rc=0
	"$@" >"$logf" 2>&1 || rc=$?
	if ((rc == 0)); then return 0; fi
	cat "$logf" >&2
	log "$what failed (exit $rc): $*"
	return $rc
}

LISTS_STAMP=$APTDIR/lists-updated
UPDATED=0
apt_update() {
	STAGE="updating the private apt lists ($MIRROR $SUITE main)"
	log "apt-get update ($SUITE main; ${ALL_DEBARCHES[*]})"
	if run_logged "apt-get update" apt_ apt-get -q update; then
		echo "${ALL_DEBARCHES[*]}" >"$LISTS_STAMP"
		UPDATED=1
		return 0
	fi
	if compgen -G "$APTDIR/lists/*_Packages*" >/dev/null; then
		log "warning: apt-get update failed; going on with the lists from an earlier update"
		return 0
	fi
	die "apt-get update failed and there are no earlier lists in $APTDIR/lists"
}

need_update=0
if ((REFRESH)) || [[ ! -f $MANIFEST ]] || [[ ! -f $LISTS_STAMP ]] ||
	! compgen -G "$APTDIR/lists/*_Packages*" >/dev/null; then
	need_update=1
elif [[ -z $(find "$LISTS_STAMP" -mmin -"$LISTS_MAX_AGE_MIN" 2>/dev/null) ]]; then
	need_update=1
elif [[ $(<"$LISTS_STAMP") != "${ALL_DEBARCHES[*]}" ]]; then
	# Lists of another set of architectures (arches.tsv gained a row): fetch the new ones.
	need_update=1
fi
if ((need_update)); then apt_update; fi

# --- resolve package versions -----------------------------------------------

# apt-cache show (candidates) -> lines "name debarch version depends-without-spaces sha256"
apt_show() {
	apt_ apt-cache show --no-all-versions "$@" | awk '
		BEGIN { RS = ""; FS = "\n" }
		{
			p = a = v = d = h = ""
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^Package: /) p = substr($i, 10)
				else if ($i ~ /^Architecture: /) a = substr($i, 15)
				else if ($i ~ /^Version: /) v = substr($i, 10)
				else if ($i ~ /^Depends: /) d = substr($i, 10)
				else if ($i ~ /^SHA256: /) h = substr($i, 9)
			}
			gsub(/[ \t]/, "", d)
			if (d == "") d = "-"
			if (h == "") h = "-"
			if (p != "") print p, a, v, d, h
		}'
}

# WANT[arch] = "name:debarch=version ..." (kernel guests: the kernel, busybox-static,
# for the uefi_of arches systemd-boot-efi, then for the agent_of arches the agent and the
# packages it depends on; riscv64: opensbi, u-boot-qemu)
# KERNEL_SPEC, BUSYBOX_SPEC, SDBOOT_SPEC[arch] = the one spec; AGENT_SPECS[arch] = "spec ..."
# DEB_SHA[name:debarch=version] = SHA256 of the .deb from the (signed) Packages index
declare -A WANT DEB_SHA KERNEL_SPEC BUSYBOX_SPEC SDBOOT_SPEC AGENT_SPECS
SPEC=""
resolve() {
	STAGE="resolving package versions"
	local a da meta specs=() agents=() shown kernel_specs=() closure=() line name deps
	for a in "${ARCHES[@]}"; do
		da=$(debarch_of "$a")
		if [[ $a == riscv64 ]]; then
			specs+=(opensbi u-boot-qemu)
		else
			meta=$(kernel_meta_of "$a")
			specs+=("$meta:$da" "busybox-static:$da")
			if uefi_of "$a" >/dev/null; then specs+=("systemd-boot-efi:$da"); fi
			if agent_of "$a" >/dev/null; then agents+=("$(agent_of "$a"):$da"); fi
		fi
	done
	# The agents' dependency closure (Depends only: its shared libraries come from these
	# packages; Pre-Depends on init-system-helpers would pull in perl), by apt-cache in the
	# background meanwhile.
	local depsf=$TMP/agent-deps pid=""
	if ((${#agents[@]})); then
		apt_ apt-cache depends --recurse --no-pre-depends --no-recommends --no-suggests \
			--no-conflicts --no-breaks --no-replaces --no-enhances "${agents[@]}" >"$depsf" &
		pid=$!
	fi
	shown=$(apt_show "${specs[@]}") || die "apt-cache could not resolve: ${specs[*]} (try --refresh)"
	# lookup helper: version/depends of name+arch
	find_pkg() { awk -v n="$1" -v a="$2" '$1 == n && $2 == a { print; exit }' <<<"$shown"; }
	# want_pkg NAME DEBARCH: SPEC=name:debarch=version of the candidate; remember its SHA256
	want_pkg() {
		local line ver sha
		line=$(find_pkg "$1" "$2")
		[[ -n $line ]] || die "package $1:$2 not found in $SUITE (try --refresh)"
		read -r _ _ ver _ sha <<<"$line"
		SPEC="$1:$2=$ver"
		DEB_SHA[$SPEC]=$sha
	}
	for a in "${ARCHES[@]}"; do
		da=$(debarch_of "$a")
		if [[ $a == riscv64 ]]; then
			WANT[$a]=""
			for name in opensbi u-boot-qemu; do
				want_pkg "$name" all
				WANT[$a]+="$SPEC "
			done
			continue
		fi
		meta=$(kernel_meta_of "$a")
		line=$(find_pkg "$meta" "$da")
		[[ -n $line ]] || die "package $meta:$da not found in $SUITE"
		read -r _ _ _ deps <<<"$line"
		name=$(tr ',|' '\n' <<<"$deps" | sed -n '/^linux-image-[0-9]/s/(.*//p')
		name=${name%%$'\n'*}
		[[ -n $name ]] || die "cannot find the linux-image-<abi>-<flavour> dependency of $meta:$da (Depends: $deps)"
		kernel_specs+=("$name:$da")
		want_pkg busybox-static "$da"
		BUSYBOX_SPEC[$a]=$SPEC
		SDBOOT_SPEC[$a]=""
		if uefi_of "$a" >/dev/null; then
			want_pkg systemd-boot-efi "$da"
			SDBOOT_SPEC[$a]=$SPEC
		fi
	done
	# apt-cache names packages of the host's own architecture without ":arch".
	if [[ -n $pid ]]; then
		local native
		native=$(dpkg --print-architecture)
		wait "$pid" || die "apt-cache could not resolve the dependencies of: ${agents[*]} (try --refresh)"
		deps=$(grep -v '^ ' "$depsf")
		while read -r name; do
			case $name in
			"<"* | "") continue ;;
			*:*) closure+=("$name") ;;
			*) closure+=("$name:$native") ;;
			esac
		done <<<"$deps"
	fi
	if ((${#kernel_specs[@]} + ${#closure[@]})); then
		shown=$(apt_show "${kernel_specs[@]}" "${closure[@]}") ||
			die "apt-cache could not resolve: ${kernel_specs[*]} ${closure[*]} (try --refresh)"
		for a in "${ARCHES[@]}"; do
			if [[ $a == riscv64 ]]; then continue; fi
			da=$(debarch_of "$a")
			name=""
			for line in "${kernel_specs[@]}"; do
				if [[ ${line#*:} == "$da" ]]; then name=${line%:*}; fi
			done
			want_pkg "$name" "$da"
			KERNEL_SPEC[$a]=$SPEC
			WANT[$a]="${KERNEL_SPEC[$a]} ${BUSYBOX_SPEC[$a]} ${SDBOOT_SPEC[$a]} "
			AGENT_SPECS[$a]=""
			if agent_of "$a" >/dev/null; then
				# the agent first, then its dependencies by name
				want_pkg "$(agent_of "$a")" "$da"
				AGENT_SPECS[$a]="$SPEC "
				for line in $(printf '%s\n' "${closure[@]}" | LC_ALL=C sort); do
					[[ ${line#*:} == "$da" && ${line%:*} != "$(agent_of "$a")" ]] || continue
					want_pkg "${line%:*}" "$da"
					AGENT_SPECS[$a]+="$SPEC "
				done
			fi
			WANT[$a]+=${AGENT_SPECS[$a]}
		done
	fi
}

# spec "name:debarch=version" -> file name apt-get download gives it
deb_file_of() {
	local spec=$1 name rest da ver
	name=${spec%%:*}
	rest=${spec#*:}
	da=${rest%%=*}
	ver=${rest#*=}
	printf '%s_%s_%s.deb\n' "$name" "${ver//:/%3a}" "$da"
}

# --- what is up to date -----------------------------------------------------

declare -A OLD_SHA=() # "file <rel>" -> sha256 from the manifest
declare -A OLD_PKG=() # "name version debarch" -> 1
declare -A OLD_RECIPE=()
if [[ -f $MANIFEST ]]; then
	while read -r f1 f2 f3 f4 _; do
		if [[ $f1 == file ]]; then
			OLD_SHA[$f2]=$f3
		elif [[ -n ${f4:-} ]]; then
			OLD_PKG["$f1 $f2 $f3"]=1
		fi
	done <"$MANIFEST"
fi
if [[ -f $RECIPE_FILE ]]; then
	while read -r f1 f2 _; do OLD_RECIPE[$f1]=$f2; done <"$RECIPE_FILE"
fi

STALE=()
find_stale() {
	STAGE="checking the cached guests"
	STALE=()
	local a spec name rest ok rel sha
	local -A cur_sha=()
	local files=()
	for a in "${ARCHES[@]}"; do
		while read -r rel; do if [[ -f $DIR/$rel ]]; then files+=("$rel"); fi; done < <(outputs_of "$a")
	done
	if ((${#files[@]})); then
		while read -r sha rel; do cur_sha[$rel]=$sha; done < <(cd "$DIR" && sha256sum -- "${files[@]}")
	fi
	for a in "${ARCHES[@]}"; do
		ok=1
		if ((REBUILD)); then ok=0; fi
		[[ ${OLD_RECIPE[$a]:-} == "$RECIPE" ]] || ok=0
		for spec in ${WANT[$a]}; do
			name=${spec%%:*} rest=${spec#*:}
			[[ -n ${OLD_PKG["$name ${rest#*=} ${rest%%=*}"]:-} ]] || ok=0
		done
		while read -r rel; do
			[[ -n ${cur_sha[$rel]:-} && ${cur_sha[$rel]} == "${OLD_SHA[$rel]:-}" ]] || ok=0
		done < <(outputs_of "$a")
		((ok)) || STALE+=("$a")
	done
}

# --- download ---------------------------------------------------------------

download() {
	STAGE="downloading packages"
	local a spec specs=() f
	for a in "${STALE[@]}"; do
		for spec in ${WANT[$a]}; do
			f=$DEBS/$(deb_file_of "$spec")
			if [[ -f $f ]] && deb_ok "$spec"; then continue; fi
			rm -f -- "$f"
			specs+=("$spec")
		done
	done
	((${#specs[@]})) || return 0
	log "downloading ${#specs[@]} package(s): ${specs[*]}"
	(cd "$DEBS" && run_logged "apt-get download" apt_ apt-get -q download "${specs[@]}") || return 1
	for spec in "${specs[@]}"; do
		f=$(deb_file_of "$spec")
		if [[ ! -f $DEBS/$f ]]; then
			log "apt-get download did not produce $f"
			return 1
		fi
		if ! deb_ok "$spec"; then
			log "$f does not have the SHA256 of the Packages index (${DEB_SHA[$spec]})"
			return 1
		fi
	done
}

# Does the cached .deb of SPEC have the SHA256 that the Packages index gives?
deb_ok() {
	local spec=$1 sha
	sha=$(sha256sum <"$DEBS/$(deb_file_of "$spec")")
	[[ ${sha%% *} == "${DEB_SHA[$spec]:-}" ]]
}

# --- building ---------------------------------------------------------------

# CRC-32 (as used by zlib and U-Boot) of a file, from gzip's trailer.
crc32_of() {
	local b
	read -r -a b < <(gzip -c -n <"$1" | tail -c 8 | head -c 4 | od -An -v -tx1)
	printf '%u\n' "0x${b[3]}${b[2]}${b[1]}${b[0]}"
}
be32() {
	local h
	printf -v h '%08x' "$1"
	printf '%b' "\\x${h:0:2}\\x${h:2:2}\\x${h:4:2}\\x${h:6:2}"
}

# U-Boot legacy image of type script (what `mkimage -A riscv -O linux -T script
# -C none -d SRC OUT` makes, with time stamp 0 and an empty name).
make_uboot_script() {
	local src=$1 out=$2 work=$TMP/uimg
	local len plen dcrc hcrc
	len=$(stat -c %s "$src")
	{
		be32 "$len"
		be32 0
		cat "$src"
	} >"$work.data"
	plen=$(stat -c %s "$work.data")
	dcrc=$(crc32_of "$work.data")
	uimg_header() {
		be32 $((0x27051956)) # magic
		be32 "$1"            # header CRC
		be32 0               # time stamp
		be32 "$plen"         # data size
		be32 0               # load address
		be32 0               # entry point
		be32 "$dcrc"         # data CRC
		printf '\x05\x1a\x06\x00' # OS linux, arch RISC-V, type script, compression none
		head -c 32 /dev/zero      # name
	}
	uimg_header 0 >"$work.h0"
	hcrc=$(crc32_of "$work.h0")
	{
		uimg_header "$hcrc"
		cat "$work.data"
	} >"$out"
	[[ $(stat -c %s "$out") == $((64 + plen)) ]] || die "bad U-Boot script image size for $out"
}

# Guest /init is tests/guest/init.sh as it is; what differs per guest is in /etc/qd-guest.conf,
# which it sources.
write_init() {
	local arch=$1 boot_mods=$2 mount_mods=$3 root=$4
	cp -- "$INIT_FILE" "$root/init"
	chmod 0755 "$root/init"
	{
		printf '# written by scripts/fetch-test-guests.sh, read by /init (tests/guest/init.sh)\n'
		printf 'QD_ARCH=%s\n' "$arch"
		printf 'QD_MODULES="%s"\n' "$boot_mods"
		printf 'QD_MOUNT_MODULES="%s"\n' "$mount_mods"
	} >"$root/etc/qd-guest.conf"
}

# Path RELative to a sysroot SYS after following its symlinks inside SYS (an absolute link
# target is taken from SYS's root); fails unless it ends at a regular file.
sys_resolve() {
	local sys=$1 rel=$2 t n=0
	while [[ -L $sys/$rel ]]; do
		((n++ < 40)) || return 1
		t=$(readlink -- "$sys/$rel")
		if [[ $t == /* ]]; then rel=$t; else rel=$(dirname -- "$rel")/$t; fi
		rel=$(realpath -s -m -- "/$rel")
		rel=${rel#/}
	done
	[[ -f $sys/$rel ]] || return 1
	printf '%s\n' "$rel"
}

# Puts ELF file REL of sysroot SYS (unpacked .debs) at the same path into ROOT, then, the same
# way, its program interpreter and the shared libraries it needs (DT_NEEDED, looked up in
# SYS's library folders as the dynamic loader does: multiarch folders first). A file met
# again under another name becomes a symlink. Uses the caller's ELF_DONE, ELF_SRC, LIBDIRS.
install_elf() {
	local sys=$1 root=$2 rel=$3 src interp lib dir found
	[[ -z ${ELF_DONE[$rel]:-} ]] || return 0
	ELF_DONE[$rel]=1
	src=$(sys_resolve "$sys" "$rel") || die "$rel: not a file in the unpacked agent packages"
	mkdir -p -- "$root/$(dirname -- "$rel")"
	if [[ -n ${ELF_SRC[$src]:-} ]]; then
		ln -s -- "/${ELF_SRC[$src]}" "$root/$rel"
		return 0
	fi
	ELF_SRC[$src]=$rel
	cp -- "$sys/$src" "$root/$rel"
	interp=$(LC_ALL=C readelf -lW -- "$sys/$src" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]$/\1/p')
	if [[ -n $interp ]]; then install_elf "$sys" "$root" "${interp#/}"; fi
	for lib in $(LC_ALL=C readelf -dW -- "$sys/$src" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
		found=""
		for dir in "${LIBDIRS[@]}"; do
			if [[ -e $sys/$dir/$lib || -L $sys/$dir/$lib ]]; then
				found=$dir/$lib
				break
			fi
		done
		[[ -n $found ]] || die "$rel needs $lib, which none of the agent's packages has (${LIBDIRS[*]})"
		install_elf "$sys" "$root" "$found"
	done
}

# The guest agent (AGENT_SPECS: its package first, then those it depends on) into the
# initramfs ROOT: /usr/sbin/qemu-ga and the shared libraries it needs, nothing else.
install_agent() {
	local arch=$1 agent_specs=$2 root=$3 sys=$4 spec deb d pat
	local -A ELF_DONE=() ELF_SRC=()
	local LIBDIRS=()
	mkdir -p "$sys"
	for spec in $agent_specs; do
		deb=$DEBS/$(deb_file_of "$spec")
		STAGE="unpacking $(basename "$deb") for $arch"
		dpkg-deb -x "$deb" "$sys" || die "dpkg-deb -x failed for $deb"
	done
	STAGE="putting the guest agent into the $arch initramfs"
	[[ -f $sys/usr/sbin/qemu-ga ]] || die "no usr/sbin/qemu-ga in ${agent_specs%% *}"
	for pat in 'lib/*-linux-gnu*' 'usr/lib/*-linux-gnu*' lib64 lib usr/lib64 usr/lib; do
		for d in "$sys"/$pat; do
			if [[ -d $d ]]; then LIBDIRS+=("${d#"$sys"/}"); fi
		done
	done
	install_elf "$sys" "$root" usr/sbin/qemu-ga
	# qemu-ga keeps its state (fsfreeze) in /var/run
	mkdir -p "$root/run" "$root/var/log"
	ln -s ../run "$root/var/run"
}

# Decompress/copy a kernel module to $2.
copy_module() {
	local src=$1 dst=$2
	case $src in
	*.ko) cp -- "$src" "$dst" ;;
	*.ko.xz)
		need_cmd xz xz-utils
		xz -dc -- "$src" >"$dst"
		;;
	*.ko.zst)
		need_cmd zstd zstd
		zstd -qdc -- "$src" >"$dst"
		;;
	*.ko.gz) gzip -dc -- "$src" >"$dst" ;;
	*) die "unknown module format: $src" ;;
	esac
}

build_kernel_guest() {
	local arch=$1 kspec=$2 bbspec=$3 out=$4 sdbspec=${5:-} agentspecs=${6:-}
	local x=$TMP/x/$arch root kdeb bbdeb kernel moddirs moddir
	kdeb=$DEBS/$(deb_file_of "$kspec")
	bbdeb=$DEBS/$(deb_file_of "$bbspec")
	root=$x/initramfs
	mkdir -p "$x/k" "$x/bb" "$out" "$root"

	STAGE="unpacking $(basename "$kdeb") for $arch"
	dpkg-deb -x "$kdeb" "$x/k" || die "dpkg-deb -x failed for $kdeb"
	STAGE="unpacking $(basename "$bbdeb") for $arch"
	dpkg-deb -x "$bbdeb" "$x/bb" || die "dpkg-deb -x failed for $bbdeb"

	STAGE="building the $arch guest"
	local kernels=("$x"/k/boot/vmlinu[xz]-*)
	[[ ${#kernels[@]} == 1 && -f ${kernels[0]} ]] ||
		die "expected exactly one boot/vmlinu[xz]-* in $kdeb, found: ${kernels[*]}"
	kernel=${kernels[0]}
	[[ -x $x/bb/bin/busybox ]] || die "no bin/busybox in $bbdeb"

	for d in bin sbin usr/bin usr/sbin dev proc sys tmp root etc lib/modules; do
		mkdir -p "$root/$d"
	done
	cp -- "$x/bb/bin/busybox" "$root/bin/busybox"
	chmod 0755 "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"

	# virtio modules (if modular in this kernel), in dependency order
	moddirs=("$x"/k/lib/modules/*/kernel "$x"/k/usr/lib/modules/*/kernel)
	moddir=""
	for d in "${moddirs[@]}"; do if [[ -d $d ]]; then moddir=$d; fi; done
	local order=() loaded="" boot_order=""
	if [[ -n $moddir ]]; then
		local -A modpath=()
		local p n
		while IFS= read -r p; do
			n=${p##*/}
			n=${n%%.ko*}
			modpath[${n//-/_}]=$p
		done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
		add_module() {
			local m=${1//-/_} deps dep
			if [[ " $loaded " == *" $m "* ]]; then return 0; fi
			[[ -n ${modpath[$m]:-} ]] || return 0 # built in (or absent)
			loaded+=" $m "
			copy_module "${modpath[$m]}" "$root/lib/modules/$m.ko"
			deps=$(tr '\0' '\n' <"$root/lib/modules/$m.ko" | sed -n 's/^depends=//p')
			deps=${deps%%$'\n'*}
			for dep in ${deps//,/ }; do add_module "$dep"; done
			order+=("$m")
		}
		for n in "${BOOT_MODULES[@]}"; do add_module "$n"; done
		if ((KVM_HOST)); then
			for n in "${KVM_MODULES[@]}"; do add_module "$n"; done
		fi
		boot_order="${order[*]}"
		order=()
		for n in "${MOUNT_MODULES[@]}"; do add_module "$n"; done
	fi
	write_init "$arch" "$boot_order" "${order[*]}" "$root"
	log "$arch: modules loaded by /init: ${boot_order:-none}; for qd.mount=: ${order[*]:-none}"
	if [[ -n $agentspecs ]]; then
		install_agent "$arch" "$agentspecs" "$root" "$x/agent"
	fi

	STAGE="packing the $arch initramfs"
	find "$root" -exec touch -h -d @0 {} +
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$out/initrd.gz"
	if [[ -n $sdbspec ]]; then
		make_uefi_disk "$arch" "$kernel" "$out/initrd.gz" "$sdbspec" "$out/uefi.img"
	fi
	mv -- "$kernel" "$out/kernel"
	rm -rf -- "$x"
}

# The UEFI-bootable FAT disk of a kernel guest (see the layout at the top), made with
# mtools: no root, no loop mount. Reproducible: fixed serial number and time stamps.
make_uefi_disk() {
	local arch=$1 kernel=$2 initrd=$3 sdbspec=$4 img=$5
	local x=$TMP/x/$arch/uefi efiarch console magic size mib f
	read -r efiarch console <<<"$(uefi_of "$arch")"
	mkdir -p "$x"
	copy_from_deb "$sdbspec" "$x/sdb" "systemd/boot/efi/systemd-boot$efiarch.efi" "$x/loader.efi"

	STAGE="making the $arch UEFI disk"
	# The firmware starts the kernel's EFI stub, so it must be the PE image ("MZ"), not a
	# gzip-compressed one (as some arm64 vmlinuz are).
	cp -- "$kernel" "$x/linux"
	magic=$(head -c 2 "$x/linux" | od -An -tx1 | tr -d ' \n')
	if [[ $magic == 1f8b ]]; then
		gzip -dc <"$kernel" >"$x/linux"
		magic=$(head -c 2 "$x/linux" | od -An -tx1 | tr -d ' \n')
	fi
	[[ $magic == 4d5a ]] || die "the $arch kernel is not an EFI-stub PE image (starts with $magic, not MZ)"
	cp -- "$initrd" "$x/initrd.gz"
	printf 'timeout 0\ndefault qd.conf\n' >"$x/loader.conf"
	printf 'title qemu-direct test guest (%s)\nlinux /linux\ninitrd /initrd.gz\noptions console=%s panic=-1\n' \
		"$arch" "$console" >"$x/qd.conf"
	printf '\\linux initrd=\\initrd.gz console=%s panic=-1\r\n' "$console" >"$x/startup.nsh"

	# payload + 2 MiB for the FAT and the directories
	size=0
	for f in linux initrd.gz loader.efi loader.conf qd.conf startup.nsh; do
		size=$((size + $(stat -c %s "$x/$f")))
	done
	mib=$(((size + 1048575) / 1048576 + 2))
	truncate -s "${mib}M" "$img.new"
	mt() { TZ=UTC SOURCE_DATE_EPOCH=946684800 MTOOLS_SKIP_CHECK=1 "$@" || die "$1 failed making $img"; }
	mt mformat -i "$img.new" -N 0 -v QDUEFI ::
	mt mmd -i "$img.new" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
	mt mcopy -i "$img.new" "$x/loader.efi" "::/EFI/BOOT/BOOT${efiarch^^}.EFI"
	mt mcopy -i "$img.new" "$x/loader.conf" ::/loader/loader.conf
	mt mcopy -i "$img.new" "$x/qd.conf" ::/loader/entries/qd.conf
	mt mcopy -i "$img.new" "$x/linux" "$x/initrd.gz" "$x/startup.nsh" ::/
	mv -- "$img.new" "$img"
	rm -rf -- "$x"
}

# Unpacks a package into a scratch folder and copies the one file whose path ends in SUFFIX.
copy_from_deb() {
	local spec=$1 into=$2 suffix=$3 dest=$4 deb f
	deb=$DEBS/$(deb_file_of "$spec")
	STAGE="unpacking $(basename "$deb")"
	mkdir -p "$into"
	dpkg-deb -x "$deb" "$into" || die "dpkg-deb -x failed for $deb"
	f=$(find "$into" -path "*/$suffix" | head -n1)
	[[ -n $f ]] || die "no $suffix in $deb"
	cp -- "$f" "$dest"
}

build_riscv_guest() {
	local arch=$1 osbi_spec=$2 uboot_spec=$3 out=$4
	local x=$TMP/x/$arch
	mkdir -p "$out/boot"
	copy_from_deb "$osbi_spec" "$x/o" opensbi/generic/fw_jump.bin "$out/fw_jump.bin"
	copy_from_deb "$uboot_spec" "$x/u" qemu-riscv64_smode/u-boot.bin "$out/u-boot.bin"

	STAGE="making the riscv64 U-Boot boot script"
	printf 'echo GUEST-READY riscv64\npoweroff\n' >"$x/boot.txt"
	make_uboot_script "$x/boot.txt" "$out/boot/boot.scr.uimg"
	rm -rf -- "$x"
}

# --- main -------------------------------------------------------------------

resolve
find_stale
if ((${#STALE[@]})) && ! download; then
	if ((UPDATED)); then
		die "downloading packages failed (see above)"
	fi
	log "download failed; refreshing the apt lists and trying again"
	apt_update
	resolve
	find_stale
	download || die "downloading packages failed (see above)"
fi

if ((${#STALE[@]})); then
	STAGE="building guests"
	log "building: ${STALE[*]}"
	# Two guests at a time (unpacking the kernel packages dominates).
	JOBS=$(nproc 2>/dev/null || echo 1)
	if ((JOBS > 2)); then JOBS=2; fi
	if ((JOBS < 1)); then JOBS=1; fi
	build_one() {
		local a=$1 specs
		read -r -a specs <<<"${WANT[$a]}"
		if [[ $a == riscv64 ]]; then
			build_riscv_guest "$a" "${specs[0]}" "${specs[1]}" "$TMP/out/$a"
		else
			build_kernel_guest "$a" "${KERNEL_SPEC[$a]}" "${BUSYBOX_SPEC[$a]}" "$TMP/out/$a" \
				"${SDBOOT_SPEC[$a]}" "${AGENT_SPECS[$a]}"
		fi
	}
	wait_builds() {
		local i failed=()
		for i in "${!BUILD_PIDS[@]}"; do
			wait "${BUILD_PIDS[$i]}" || failed+=("${BUILD_ARCHES[$i]}")
		done
		BUILD_PIDS=() BUILD_ARCHES=()
		((${#failed[@]} == 0)) || die "building the guest(s) failed: ${failed[*]} (see above)"
	}
	for a in "${STALE[@]}"; do
		# own process group (set -m), so that an interrupt can stop the whole build
		set -m
		build_one "$a" &
		BUILD_PIDS+=($!)
		set +m
		BUILD_ARCHES+=("$a")
		if ((${#BUILD_PIDS[@]} >= JOBS)); then wait_builds; fi
	done
	wait_builds

	declare -A NEW_LINES=()
	for a in "${STALE[@]}"; do
		read -r -a specs <<<"${WANT[$a]}"
		STAGE="hashing the $a guest"
		lines=""
		for spec in "${specs[@]}"; do
			name=${spec%%:*} rest=${spec#*:}
			lines+="$name ${rest#*=} ${rest%%=*} ${DEB_SHA[$spec]}"$'\n'
		done
		while read -r rel; do
			sha=$(sha256sum <"$TMP/out/$rel")
			lines+="file $rel ${sha%% *}"$'\n'
		done < <(outputs_of "$a")
		NEW_LINES[$a]=$lines
	done

	STAGE="moving the new guests into $DIR"
	for a in "${STALE[@]}"; do
		if [[ -e $DIR/$a ]]; then
			mv -- "$DIR/$a" "$TMP/old-$a"
		fi
		mv -- "$TMP/out/$a" "$DIR/$a"
	done

	STAGE="writing $MANIFEST"
	{
		for a in "${ALL_ARCHES[@]}"; do
			if [[ -n ${NEW_LINES[$a]:-} ]]; then
				printf '%s' "${NEW_LINES[$a]}"
			elif [[ -f $MANIFEST ]]; then
				da=$(debarch_of "$a")
				awk -v a="$a" -v da="$da" '
					$1 == "file" { if (index($2, a "/") == 1) print; next }
					NF >= 4 && $3 == da { print }' "$MANIFEST"
			fi
		done
	} >"$TMP/manifest.txt"
	mv -f -- "$TMP/manifest.txt" "$MANIFEST"
	{
		for a in "${ALL_ARCHES[@]}"; do
			if [[ -n ${NEW_LINES[$a]:-} ]]; then
				echo "$a $RECIPE"
			elif [[ -n ${OLD_RECIPE[$a]:-} ]]; then
				echo "$a ${OLD_RECIPE[$a]}"
			fi
		done
	} >"$TMP/recipe"
	mv -f -- "$TMP/recipe" "$RECIPE_FILE"

	# Drop .debs that no guest in the manifest refers to any more.
	STAGE="pruning $DEBS"
	declare -A KEEP=()
	while read -r f1 f2 f3 f4 _; do
		if [[ $f1 != file && -n ${f4:-} ]]; then KEEP["${f1}_${f2//:/%3a}_${f3}.deb"]=1; fi
	done <"$MANIFEST"
	for f in "$DEBS"/*.deb; do
		[[ -e $f ]] || continue
		[[ -n ${KEEP[${f##*/}]:-} ]] || rm -f -- "$f"
	done
else
	log "all selected guests are up to date"
fi

STAGE="reporting"
for a in "${ARCHES[@]}"; do
	if [[ $a == riscv64 ]]; then
		echo "riscv64 bios=$DIR/riscv64/fw_jump.bin kernel=$DIR/riscv64/u-boot.bin boot-dir=$DIR/riscv64/boot"
	else
		line="$a kernel=$DIR/$a/kernel initrd=$DIR/$a/initrd.gz"
		if uefi_of "$a" >/dev/null; then line+=" uefi-disk=$DIR/$a/uefi.img"; fi
		echo "$line"
	fi
done
echo "test guests in $DIR"
