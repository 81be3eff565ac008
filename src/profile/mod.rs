//! Machine profiles: every per-architecture fact qemu-direct uses, read from
//! `machine-profiles/<arch>.toml` (embedded at build time, or a directory given at run time).

pub mod arch;
mod check;
pub mod gate;

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    profile::arch::{Arch, Endian},
    profile::gate::{ProfileOption, QemuVersion},
    util::size::MemSize,
};

include!(concat!(env!("OUT_DIR"), "/embedded_profiles.rs"));

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Linux KVM: the guest runs on the host CPU; only for guests native to the host.
    Kvm,
    /// QEMU's Tiny Code Generator: emulation, for any guest on any host.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One guest architecture, as written in its profile file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineProfile {
    /// Canonical name; also the file's stem.
    pub name: String,
    /// One line for listings.
    pub summary: String,
    /// Other spellings users and Nova images use (`amd64`, `arm64`, `ppc64el`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The `qemu-system-*` binary that emulates this architecture.
    pub binary: String,
    /// The Debian package that ships [`Self::binary`], named in "not installed" errors.
    pub package: String,
    /// Where Debian moved [`Self::binary`] to another package from some QEMU version on
    /// (QEMU 8.0 split `qemu-system-misc`); see [`MachineProfile::package_for`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub package_from: Vec<PackageFrom>,
    /// How a host of this architecture is recognised from the build target.
    pub host: HostMatch,
    /// Guest memory when the spec gives none.
    pub default_memory: MemSize,
    /// The most memory the machine type accepts, where QEMU sets a limit below the host's.
    #[serde(default)]
    pub max_memory: Option<MemSize>,
    /// The most vCPUs the machine type accepts.
    pub max_cpus: u32,
    /// Suffix of virtio device names on this machine's bus: `-pci`, `-ccw` or `-device` (MMIO).
    pub device_suffix: String,
    /// A device (QEMU `-device` spelling, without `chardev=`) that carries the firmware's own
    /// messages when nothing else would show them, used for firmware-only boots.
    #[serde(default)]
    pub firmware_console: Option<String>,
    /// The pvpanic device (QEMU `-device` spelling) through which a guest reports its panic to
    /// QEMU (the `GUEST_PANICKED` event); absent where the machine has none.
    #[serde(default)]
    pub panic_device: Option<String>,
    /// The guest's serial console.
    pub console: ConsoleProfile,
    /// Firmware facts.
    pub firmware: FirmwareProfile,
    /// Names libvirt uses for this guest.
    pub libvirt: LibvirtNames,
    /// Machine and CPU per accelerator; an accelerator absent here is never used for this arch.
    pub accel: BTreeMap<Accel, AccelProfile>,
    /// CPU facts: host-model, feature spellings, physical-address bits.
    #[serde(default)]
    pub cpu: CpuProfile,
    /// os-traits names for this architecture.
    #[serde(default)]
    pub traits: TraitNames,
    /// The devices of the guest agent's channel and of shared folders.
    #[serde(default)]
    pub devices: DeviceNames,
}

/// Devices (QEMU `-device` spellings) for the guest agent's channel and shared host folders, on
/// this machine's bus; one left out is not offered for this arch.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceNames {
    /// The virtio-serial controller whose port carries the guest agent (`virtio-serial-pci`,
    /// `virtio-serial-ccw`).
    #[serde(default)]
    pub virtio_serial: Option<String>,
    /// The 9p transport of shared folders (`virtio-9p-pci`, `virtio-9p-ccw`).
    #[serde(default)]
    pub virtio_9p: Option<String>,
    /// The vhost-user file system device of virtiofs shared folders (`vhost-user-fs-pci`,
    /// `vhost-user-fs-ccw`).
    #[serde(default)]
    pub vhost_user_fs: Option<String>,
}

/// How `host-model` is answered for an architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostModelRule {
    /// Computed: the runnable named model closest to the host CPU, plus the host's extra
    /// features (what libvirt does on x86).
    Compute,
    /// `-cpu host`, under a hardware accelerator only (ppc64).
    Host,
    /// No such thing for this architecture.
    #[default]
    Unsupported,
}

/// CPU facts for one architecture.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    /// How `host-model` is answered.
    #[serde(default)]
    pub host_model: HostModelRule,
    /// What to tell a user who asks for `host-model` where it is unsupported.
    #[serde(default)]
    pub host_model_hint: Option<String>,
    /// Feature spellings libvirt (and so Nova) uses, mapped to QEMU's.
    #[serde(default)]
    pub feature_aliases: BTreeMap<String, String>,
    /// Guest physical-address bits QEMU accepts; absent where `maxphysaddr` does not apply.
    #[serde(default)]
    pub phys_bits: Option<PhysBitsRange>,
    /// How QEMU lays out guest RAM per machine family, to check that RAM fits the address bits.
    #[serde(default)]
    pub memory_map: Vec<MemoryMap>,
}

/// The range of `phys-bits` QEMU accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhysBitsRange {
    /// Smallest value.
    pub min: u8,
    /// Largest value.
    pub max: u8,
}

/// The Debian package that ships a profile's binary from a QEMU version on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFrom {
    /// The first QEMU version packaged so.
    pub qemu: QemuVersion,
    /// The package.
    pub package: String,
}

/// Where QEMU places guest RAM and the 64-bit PCI hole on one machine family (QEMU's
/// `pc_pci_hole64_start` and friends): the highest guest-physical address in use must fit in
/// `2^phys-bits`, or QEMU refuses to start ("phys-bits too low").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryMap {
    /// Machine types this applies to: exact names or `prefix*`.
    pub machines: Vec<String>,
    /// RAM at or above this size is split: `below_4g` under 4 GiB, the rest from 4 GiB up.
    pub split_at: MemSize,
    /// RAM kept under 4 GiB once RAM is split.
    pub below_4g: MemSize,
    /// Size of the 64-bit PCI hole, placed (1 GiB aligned) after RAM above 4 GiB.
    pub pci_hole64: MemSize,
    /// With an AMD CPU vendor, a map reaching this address moves RAM above 4 GiB to
    /// `amd_relocate_to`, clear of the HyperTransport hole.
    #[serde(default)]
    pub amd_ht_start: Option<MemSize>,
    /// Where RAM above 4 GiB starts after that move.
    #[serde(default)]
    pub amd_relocate_to: Option<MemSize>,
    /// The QEMU versions this layout was checked against (a newer QEMU may move things).
    #[serde(default)]
    pub checked_on: Vec<QemuVersion>,
}

impl MemoryMap {
    /// Whether this map describes `machine`.
    pub fn matches(&self, machine: &str) -> bool {
        self.machines.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => machine.starts_with(prefix),
            None => machine == m,
        })
    }
}

/// os-traits names (as Nova's placement service uses them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraitNames {
    /// `COMPUTE_ARCH_*`: a host can run this guest arch.
    #[serde(default)]
    pub compute_arch: Option<String>,
    /// `HW_ARCH_*`: a host is of this arch (os-traits has none for some, e.g. riscv64).
    #[serde(default)]
    pub hw_arch: Option<String>,
}

/// Recognises the host a binary runs on.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostMatch {
    /// Rust's `std::env::consts::ARCH` on such a host.
    pub rust_arch: String,
    /// Byte order of such a host.
    pub endian: Endian,
}

/// The guest's serial console.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleProfile {
    /// Device name for the kernel's `console=` (`ttyS0`, `ttyAMA0`, `hvc0`, `ttysclp0`).
    pub kernel: String,
}

/// Firmware facts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareProfile {
    /// Debian packages that provide firmware for this architecture.
    pub packages: Vec<String>,
    /// The interface (descriptor spelling: `bios`, `openfirmware`, ...) of the firmware QEMU
    /// loads by itself when none is named (SeaBIOS on x86); absent where there is none to boot
    /// a disk with. `--firmware bios` falls back to it when no descriptor offers `bios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// The interface (`uefi`) chosen from the firmware descriptors for a disk booted with no
    /// kernel and no firmware named, where the machine has no firmware of its own that boots a
    /// disk (aarch64 `virt`); absent: such a disk boots through [`builtin`](Self::builtin), or
    /// QEMU's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_boot: Option<String>,
    /// The Debian package whose descriptors provide each interface (`uefi = "ovmf"`), named
    /// when `--firmware uefi|bios` finds none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interface_packages: BTreeMap<String, String>,
}

/// libvirt's names for this guest, and what its domain XML can say about it (read by
/// [`crate::libvirt`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtNames {
    /// `<type arch=...>`.
    pub arch: String,
    /// `<type machine=...>`.
    pub machine: String,
    /// `<features>` elements for what QEMU's machine has on by default (x86: `acpi`, `apic`),
    /// which libvirt turns off unless named: export writes them, import accepts them.
    #[serde(default)]
    pub features: Vec<String>,
    /// More `<features>` elements import accepts as QEMU's default, though export does not
    /// write them (libvirt refuses them in some configurations).
    #[serde(default)]
    pub accepted_features: Vec<String>,
    /// `<console><target type=...>` of the guest's console: `serial`, or `sclp` on s390x.
    #[serde(default = "default_console_target")]
    pub console_target: String,
    /// Whether libvirt has a CPU driver for this arch; without one it refuses a `<cpu>` with a
    /// mode or model.
    #[serde(default = "default_true")]
    pub cpu_driver: bool,
    /// libvirt's spelling of CPU models, where it differs from QEMU's (`power9` -> `POWER9`).
    #[serde(default)]
    pub cpu_models: BTreeMap<String, String>,
    /// libvirt's spelling of CPU features, where it differs from QEMU's (`lahf-lm` ->
    /// `lahf_lm`); import maps them back through [`CpuProfile::feature_aliases`].
    #[serde(default)]
    pub cpu_features: BTreeMap<String, String>,
    /// `<panic model=...>` for the way this machine reports a guest panic (`isa` for x86's
    /// pvpanic, `pseries`, `s390`); absent where libvirt has no model for it.
    #[serde(default)]
    pub panic_model: Option<String>,
}

fn default_console_target() -> String {
    "serial".into()
}

fn default_true() -> bool {
    true
}

/// Machine type and CPU under one accelerator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccelProfile {
    /// Host architectures on which this accelerator runs the guest (KVM: the native hosts).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// QEMU machine type.
    pub machine: String,
    /// `key=value` machine properties always set under this accelerator.
    #[serde(
        default,
        deserialize_with = "gate::deserialize_options",
        serialize_with = "gate::serialize_options"
    )]
    pub machine_options: Vec<ProfileOption>,
    /// Machine properties added only when booting a kernel directly (`-kernel`).
    #[serde(
        default,
        deserialize_with = "gate::deserialize_options",
        serialize_with = "gate::serialize_options"
    )]
    pub kernel_machine_options: Vec<ProfileOption>,
    /// Machine properties that give the guest virtualization extensions, added only when the
    /// spec asks for them (`nested_virt`); none: this accelerator cannot.
    #[serde(
        default,
        deserialize_with = "gate::deserialize_options",
        serialize_with = "gate::serialize_options"
    )]
    pub nested_machine_options: Vec<ProfileOption>,
    /// Default `-cpu` model.
    pub cpu: String,
    /// `key=value` properties appended to the default CPU model.
    #[serde(
        default,
        deserialize_with = "gate::deserialize_options",
        serialize_with = "gate::serialize_options"
    )]
    pub cpu_options: Vec<ProfileOption>,
    /// `key=value` properties of the accelerator (`-accel tcg,thread=multi,tb-size=256`).
    #[serde(
        default,
        deserialize_with = "gate::deserialize_options",
        serialize_with = "gate::serialize_options"
    )]
    pub accel_options: Vec<ProfileOption>,
}

/// Errors reading or using machine profiles.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A profile file could not be read.
    #[error("cannot read machine profile {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A profile file is not valid.
    #[error("invalid machine profile {file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, with the line where the parser knows it.
        message: String,
    },
    /// Two profiles claim one name.
    #[error("machine profiles {first} and {second} both claim the name '{name}'")]
    Duplicate {
        /// The name.
        name: String,
        /// One file.
        first: String,
        /// The other file.
        second: String,
    },
    /// A profile directory with no profiles in it.
    #[error("no machine profiles (*.toml) in {0}")]
    Empty(PathBuf),
    /// A name no profile answers to.
    #[error("unknown architecture '{given}' in {field}; valid: {valid}")]
    UnknownArch {
        /// Where the name came from (`--arch`, `hw_architecture`, ...).
        field: String,
        /// The name as given.
        given: String,
        /// The valid names and aliases.
        valid: String,
    },
}

/// All known guest architectures.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: Vec<MachineProfile>,
}

impl ProfileSet {
    /// The profiles built into the binary.
    pub fn embedded() -> Result<Self, ProfileError> {
        Self::from_sources(EMBEDDED.iter().map(|(n, t)| (n.to_string(), t.to_string())))
    }

    /// File names of the embedded profiles, for checking that none was left out.
    pub fn embedded_file_names() -> Vec<&'static str> {
        EMBEDDED.iter().map(|(n, _)| *n).collect()
    }

    /// The profiles in a directory (`--profile-dir`), replacing the embedded ones.
    pub fn from_dir(dir: &Path) -> Result<Self, ProfileError> {
        let read_err = |source| ProfileError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                    path: path.clone(),
                    source,
                })?;
                files.push((path.display().to_string(), text));
            }
        }
        if files.is_empty() {
            return Err(ProfileError::Empty(dir.to_owned()));
        }
        files.sort();
        Self::from_sources(files)
    }

    fn from_sources(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ProfileError> {
        let mut profiles = Vec::new();
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for (file, text) in files {
            let p: MachineProfile = toml::from_str(&text).map_err(|e| ProfileError::Invalid {
                file: file.clone(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
            check::check_profile(&file, &p)?;
            for name in std::iter::once(&p.name).chain(&p.aliases) {
                if let Some(first) = claimed.insert(arch::fold(name), file.clone()) {
                    return Err(ProfileError::Duplicate {
                        name: name.clone(),
                        first,
                        second: file,
                    });
                }
            }
            profiles.push(p);
        }
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ProfileSet { profiles })
    }

    /// Every profile, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &MachineProfile> {
        self.profiles.iter()
    }

    /// Looks up an architecture by name or alias, case-insensitively. `field` names where the
    /// value came from, for the error.
    pub fn resolve(&self, field: &str, given: &str) -> Result<&MachineProfile, ProfileError> {
        let folded = arch::fold(given);
        self.profiles
            .iter()
            .find(|p| {
                std::iter::once(&p.name)
                    .chain(&p.aliases)
                    .any(|n| arch::fold(n) == folded)
            })
            .ok_or_else(|| ProfileError::UnknownArch {
                field: field.to_owned(),
                given: given.to_owned(),
                valid: self.valid_names(),
            })
    }

    /// The profile of a canonical arch. `None` when this set lacks it: an `Arch` read from
    /// another set (or from `--host-facts`) need not be in this one.
    pub fn get(&self, arch: &Arch) -> Option<&MachineProfile> {
        self.profiles.iter().find(|p| p.name == arch.as_str())
    }

    /// The profile matching a host build target, if any.
    pub fn for_host(&self, rust_arch: &str, endian: Endian) -> Option<&MachineProfile> {
        self.profiles
            .iter()
            .find(|p| p.host.rust_arch == rust_arch && p.host.endian == endian)
    }

    fn valid_names(&self) -> String {
        self.profiles
            .iter()
            .map(|p| {
                if p.aliases.is_empty() {
                    p.name.clone()
                } else {
                    format!("{} ({})", p.name, p.aliases.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl MachineProfile {
    /// The canonical arch this profile describes.
    pub fn arch(&self) -> Arch {
        Arch::new_canonical(&self.name)
    }

    /// The Debian package that ships the binary for QEMU `qemu`; for an unknown version, every
    /// candidate with the versions it serves (`qemu-system-misc (QEMU < 8.0) or
    /// qemu-system-riscv (QEMU >= 8.0)`).
    pub fn package_for(&self, qemu: Option<QemuVersion>) -> String {
        match qemu {
            Some(v) => self
                .package_from
                .iter()
                .filter(|p| p.qemu <= v)
                .max_by_key(|p| p.qemu)
                .map_or(&self.package, |p| &p.package)
                .clone(),
            None => {
                let mut s = self.package.clone();
                if let Some(first) = self.package_from.iter().map(|p| p.qemu).min() {
                    s.push_str(&format!(" (QEMU < {first})"));
                }
                for p in &self.package_from {
                    s.push_str(&format!(" or {} (QEMU >= {})", p.package, p.qemu));
                }
                s
            }
        }
    }

    /// QEMU's name for the guest architecture, as firmware descriptors spell it: the binary's
    /// name after `qemu-system-` (`x86_64`, `i386`, `aarch64`, `ppc64`).
    pub fn qemu_arch(&self) -> &str {
        self.binary
            .rsplit('/')
            .next()
            .and_then(|b| b.strip_prefix("qemu-system-"))
            .unwrap_or(&self.binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_file_is_embedded_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("machine-profiles");
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, ProfileSet::embedded_file_names());
        let set = ProfileSet::embedded().unwrap();
        assert_eq!(set.iter().count(), on_disk.len());
        let from_dir = ProfileSet::from_dir(&dir).unwrap();
        assert_eq!(from_dir.iter().count(), on_disk.len());
    }

    #[test]
    fn packages_follow_the_qemu_version() {
        let set = ProfileSet::embedded().unwrap();
        let riscv = set.resolve("arch", "riscv64").unwrap();
        let v = |s: &str| Some(s.parse::<QemuVersion>().unwrap());
        assert_eq!(riscv.package_for(v("7.2.22")), "qemu-system-misc");
        assert_eq!(riscv.package_for(v("8.0")), "qemu-system-riscv");
        assert_eq!(riscv.package_for(v("10.0.2")), "qemu-system-riscv");
        assert_eq!(
            riscv.package_for(None),
            "qemu-system-misc (QEMU < 8.0) or qemu-system-riscv (QEMU >= 8.0)"
        );
        let s390x = set.resolve("arch", "s390x").unwrap();
        assert_eq!(s390x.package_for(v("10.0")), "qemu-system-s390x");
        // Where Debian never moved it: the one package, whatever the version.
        let x86 = set.resolve("arch", "x86_64").unwrap();
        assert_eq!(x86.package_for(None), "qemu-system-x86");
        assert_eq!(x86.package_for(v("10.0")), "qemu-system-x86");
    }

    #[test]
    fn resolves_aliases_case_insensitively() {
        let set = ProfileSet::embedded().unwrap();
        for (given, want) in [
            ("AMD64", "x86_64"),
            ("arm64", "aarch64"),
            ("ppc64el", "ppc64le"),
            ("i386", "i686"),
            ("X86-64", "x86_64"),
            ("s390x", "s390x"),
            ("mipsel", "mipsel"),
            ("riscv64", "riscv64"),
        ] {
            assert_eq!(set.resolve("--arch", given).unwrap().name, want, "{given}");
        }
        let err = set.resolve("--arch", "sparc").unwrap_err().to_string();
        assert!(
            err.contains("unknown architecture 'sparc' in --arch"),
            "{err}"
        );
        assert!(err.contains("aarch64 (arm64)"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file_and_line() {
        let good = EMBEDDED
            .iter()
            .find(|(n, _)| *n == "x86_64.toml")
            .unwrap()
            .1;
        let bad = good.replace("summary =", "sumary =");
        let err = ProfileSet::from_sources([("x86_64.toml".into(), bad)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x86_64.toml") && err.contains("sumary"),
            "{err}"
        );
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn rejects_malformed_options_and_duplicate_names() {
        let good = EMBEDDED
            .iter()
            .find(|(n, _)| *n == "aarch64.toml")
            .unwrap()
            .1;
        let bad = good.replace("\"gic-version=max\"", "\"gic-version\"");
        let err = ProfileSet::from_sources([("aarch64.toml".into(), bad)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'gic-version' is not key=value"), "{err}");
        let twin = good.replace("name = \"aarch64\"", "name = \"arm64x\"");
        let err = ProfileSet::from_sources([
            ("aarch64.toml".into(), good.to_string()),
            ("arm64x.toml".into(), twin),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("both claim the name 'arm64'"), "{err}");
    }

    #[test]
    fn host_matching_uses_arch_and_endianness() {
        let set = ProfileSet::embedded().unwrap();
        assert_eq!(
            set.for_host("powerpc64", Endian::Little).unwrap().name,
            "ppc64le"
        );
        assert!(set.for_host("powerpc64", Endian::Big).is_none());
        assert_eq!(set.for_host("mips", Endian::Little).unwrap().name, "mipsel");
        assert_eq!(
            set.for_host("x86_64", Endian::Little).unwrap().name,
            "x86_64"
        );
    }
}
