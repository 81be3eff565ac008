//! What the host offers: its architecture, whether KVM is usable (and exactly why not), which
//! QEMU emulators are installed, and its `virtiofsd`.
//!
//! [`HostFacts`] is a plain value. [`HostFacts::probe`] fills it from the machine; tests and
//! `--host-facts FILE` fill it by hand, so every verdict can be checked without touching a host.

pub mod caps;
pub mod firmware;
pub mod prefix;
pub mod virtiofsd;

use std::{
    collections::BTreeMap,
    fmt,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{errno::Errno, fcntl::OFlag, sys::stat::Mode};
use serde::{Deserialize, Serialize};

use crate::{
    host::caps::{Caps, CapsCache, CapsError},
    host::firmware::Descriptors,
    host::prefix::QemuPrefix,
    host::virtiofsd::Virtiofsd,
    profile::arch::{self, Arch},
    profile::{Accel, MachineProfile, ProfileSet},
};

/// The KVM API version every kernel since 2.6.22 reports; anything else is not KVM as we know it.
pub const KVM_API_VERSION: i32 = 12;

/// Where PVM ("pagetable-based virtual machine") KVM shows itself.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

// Both take an integer argument: the kernel refuses KVM_GET_API_VERSION (EINVAL) unless it is 0,
// so the argument-less `ioctl_none!` form, which leaves it undefined, must not be used.
mod ioctl {
    nix::ioctl_write_int_bad!(kvm_get_api_version, nix::request_code_none!(0xAE, 0x00));
    nix::ioctl_write_int_bad!(kvm_create_vm, nix::request_code_none!(0xAE, 0x01));
}
use ioctl::{kvm_create_vm, kvm_get_api_version};

/// The state of the host's KVM device, as found by opening it and creating a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum KvmState {
    /// The device node does not exist.
    Missing,
    /// The device exists but this user may not open it read-write.
    Denied {
        /// The OS error.
        error: String,
    },
    /// Opening failed for another reason.
    OpenFailed {
        /// The OS error.
        error: String,
    },
    /// `KVM_GET_API_VERSION` failed or answered something other than 12.
    ApiMismatch {
        /// What the kernel answered (or the error).
        answer: String,
    },
    /// `KVM_CREATE_VM` failed (e.g. virtualisation disabled in firmware, or another hypervisor
    /// holds VT-x/SVM).
    CreateVmFailed {
        /// The OS error.
        error: String,
    },
    /// PVM KVM: it opens and creates VMs, but stock Linux guest kernels die under it with a KVM
    /// internal error while QEMU sits in run state `internal-error`.
    Pvm,
    /// Opens read-write, API 12, creates a VM.
    Usable,
}

impl KvmState {
    /// Probes a KVM device node: open read-write, check the API version, create (and drop) a VM,
    /// and look for the PVM module.
    pub fn probe(device: &Path) -> KvmState {
        Self::probe_with_pvm_marker(device, Path::new(PVM_MODULE))
    }

    fn probe_with_pvm_marker(device: &Path, pvm_marker: &Path) -> KvmState {
        let fd = match nix::fcntl::open(device, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENODEV) | Err(Errno::ENXIO) => {
                return KvmState::Missing;
            }
            Err(e @ (Errno::EACCES | Errno::EPERM | Errno::EROFS)) => {
                return KvmState::Denied {
                    error: e.desc().to_owned(),
                };
            }
            Err(e) => {
                return KvmState::OpenFailed {
                    error: e.desc().to_owned(),
                };
            }
        };
        // SAFETY: the ioctl reads nothing through its argument and only returns an int.
        match unsafe { kvm_get_api_version(fd.as_raw_fd(), 0) } {
            Ok(KVM_API_VERSION) => {}
            Ok(v) => {
                return KvmState::ApiMismatch {
                    answer: v.to_string(),
                };
            }
            Err(e) => {
                return KvmState::ApiMismatch {
                    answer: e.desc().to_owned(),
                };
            }
        }
        // SAFETY: KVM_CREATE_VM takes a machine-type integer (0 = default) and returns a new fd.
        match unsafe { kvm_create_vm(fd.as_raw_fd(), 0) } {
            Ok(vm) => {
                // SAFETY: the kernel just gave us this fd and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(vm) });
            }
            Err(e) => {
                return KvmState::CreateVmFailed {
                    error: e.desc().to_owned(),
                };
            }
        }
        if pvm_marker.exists() {
            KvmState::Pvm
        } else {
            KvmState::Usable
        }
    }
}

/// An installed QEMU emulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emulator {
    /// Where it is.
    pub path: PathBuf,
    /// Its version (`7.2.22`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What it can do under each accelerator probed (see [`crate::host::caps`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caps: BTreeMap<Accel, Caps>,
}

/// Everything qemu-direct needs to know about a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// The host's architecture, when a machine profile describes it.
    pub arch: Option<Arch>,
    /// The host's architecture as the build target names it, e.g. `x86_64` or `powerpc64 (little)`.
    pub arch_detail: String,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// What that device can do.
    pub kvm: KvmState,
    /// Installed emulators, by binary name.
    pub emulators: BTreeMap<String, Emulator>,
    /// The host CPU's physical-address bits (`/proc/cpuinfo` "address sizes"), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phys_bits: Option<u8>,
    /// QEMU's firmware descriptors on this machine, which `--firmware uefi|bios` chooses from;
    /// `None` when not read. Never recorded: files written by `probe --json` leave it out, and
    /// the command line reads this machine's descriptors for them too.
    #[serde(skip)]
    pub firmware: Option<Descriptors>,
    /// The QEMU prefix the emulators come from (`--qemu-prefix`), with its `-L` folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_prefix: Option<QemuPrefix>,
    /// The `virtiofsd` that serves shared folders over virtiofs, if one is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtiofsd: Option<Virtiofsd>,
}

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The KVM device node to try (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Also run each emulator's `--version` (slower; only `probe` shows versions).
    pub versions: bool,
    /// Also look for `virtiofsd` and ask it what it is (`--help`): an exec that only guests
    /// with shared folders and the commands that show the host need. Without it,
    /// [`HostFacts::virtiofsd`] is left unset and planning looks when a share needs it.
    pub virtiofsd: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            kvm_device: PathBuf::from("/dev/kvm"),
            versions: false,
            virtiofsd: true,
        }
    }
}

/// The host CPU's physical-address width from `/proc/cpuinfo` ("address sizes : 48 bits
/// physical, ..."); absent on arches whose cpuinfo does not say.
fn host_phys_bits() -> Option<u8> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_phys_bits(&text)
}

/// Reads "address sizes : N bits physical" from cpuinfo text.
pub fn parse_phys_bits(cpuinfo: &str) -> Option<u8> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "address sizes")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Why KVM cannot run a particular guest here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmBlocker {
    /// No host runs this guest under KVM (e.g. mipsel).
    NeverNative {
        /// The guest.
        guest: String,
    },
    /// The guest is not native to this host.
    Foreign {
        /// The guest.
        guest: String,
        /// This host.
        host: String,
        /// The hosts that would run it natively.
        native_on: Vec<String>,
    },
    /// The device is not usable (missing, denied, broken, PVM).
    Device {
        /// The device node.
        device: PathBuf,
        /// Its state.
        state: KvmState,
    },
}

impl KvmBlocker {
    /// Whether `--accel kvm` may override this verdict: only PVM, which does run some guests.
    pub fn forceable(&self) -> bool {
        matches!(
            self,
            KvmBlocker::Device {
                state: KvmState::Pvm,
                ..
            }
        )
    }

    /// What the user can do about it, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            KvmBlocker::Device {
                state: KvmState::Denied { .. },
                device,
            } => Some(format!(
                "add your user to the group that owns {} (usually 'kvm'), or pass --accel tcg",
                device.display()
            )),
            KvmBlocker::Device {
                state: KvmState::Pvm,
                ..
            } => Some("pass --accel kvm to use it anyway (PVM-aware guest kernels only)".into()),
            KvmBlocker::Device { .. } => Some("pass --accel tcg to emulate".into()),
            KvmBlocker::Foreign { .. } | KvmBlocker::NeverNative { .. } => {
                Some("pass --accel tcg (or --accel auto) to emulate".into())
            }
        }
    }
}

impl fmt::Display for KvmBlocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmBlocker::NeverNative { guest } => {
                write!(f, "no host runs {guest} guests under KVM")
            }
            KvmBlocker::Foreign {
                guest,
                host,
                native_on,
            } => write!(
                f,
                "guest arch {guest} is not native to this {host} host (KVM runs it on: {})",
                native_on.join(", ")
            ),
            KvmBlocker::Device { device, state } => {
                let d = device.display();
                match state {
                    KvmState::Missing => {
                        write!(f, "{d} does not exist (no KVM in this kernel or container)")
                    }
                    KvmState::Denied { error } => {
                        write!(f, "{d} cannot be opened read-write: {error}")
                    }
                    KvmState::OpenFailed { error } => write!(f, "{d} cannot be opened: {error}"),
                    KvmState::ApiMismatch { answer } => {
                        write!(
                            f,
                            "{d} answers KVM API version {answer}, not {KVM_API_VERSION}"
                        )
                    }
                    KvmState::CreateVmFailed { error } => {
                        write!(f, "{d} cannot create a VM: {error}")
                    }
                    KvmState::Pvm => write!(
                        f,
                        "{d} is PVM (kvm_pvm module): it creates VMs, but stock Linux guests crash under it"
                    ),
                    KvmState::Usable => write!(f, "{d} is usable"),
                }
            }
        }
    }
}

impl HostFacts {
    /// Probes this machine.
    pub fn probe(profiles: &ProfileSet, opts: &ProbeOptions) -> HostFacts {
        let (rust_arch, endian) = arch::build_target();
        let arch = profiles
            .for_host(rust_arch, endian)
            .map(MachineProfile::arch);
        let arch_detail = match endian {
            arch::Endian::Little => rust_arch.to_owned(),
            arch::Endian::Big => format!("{rust_arch} (big-endian)"),
        };
        HostFacts {
            arch,
            arch_detail,
            kvm_device: opts.kvm_device.clone(),
            kvm: KvmState::probe(&opts.kvm_device),
            emulators: find_emulators(profiles, opts.versions),
            phys_bits: host_phys_bits(),
            // A descriptor directory that cannot be listed leaves this unset; `qemu-direct
            // firmware` shows why.
            firmware: Descriptors::system().ok(),
            qemu_prefix: None,
            virtiofsd: if opts.virtiofsd {
                Virtiofsd::find()
            } else {
                None
            },
        }
    }

    /// The accelerators worth probing `guest`'s emulator under: TCG where the profile has it,
    /// and KVM where the guest is native and the device opens (PVM included: its CPU model
    /// answers are real even though stock guests crash under it).
    pub fn probe_accels(&self, guest: &MachineProfile) -> Vec<Accel> {
        let mut out = Vec::new();
        if guest.accel.contains_key(&Accel::Kvm)
            && self.is_native(guest)
            && matches!(self.kvm, KvmState::Usable | KvmState::Pvm)
        {
            out.push(Accel::Kvm);
        }
        if guest.accel.contains_key(&Accel::Tcg) {
            out.push(Accel::Tcg);
        }
        out
    }

    /// Adds capabilities of the given emulators (by binary name) under the given accelerators,
    /// through `cache`; emulators not installed are skipped. Returns the failures.
    pub async fn add_caps(
        &mut self,
        cache: &CapsCache,
        wanted: &[(String, Accel)],
    ) -> Vec<(String, Accel, CapsError)> {
        let todo: Vec<(String, PathBuf, Accel)> = wanted
            .iter()
            .filter_map(|(bin, accel)| {
                let e = self.emulators.get(bin)?;
                (!e.caps.contains_key(accel)).then(|| (bin.clone(), e.path.clone(), *accel))
            })
            .collect();
        let asks: Vec<(PathBuf, Accel)> = todo.iter().map(|(_, p, a)| (p.clone(), *a)).collect();
        let mut failed = Vec::new();
        for ((bin, _, accel), r) in todo.into_iter().zip(caps::get_many(cache, &asks).await) {
            match r {
                Ok((c, _)) => {
                    if let Some(e) = self.emulators.get_mut(&bin) {
                        if e.version.is_none() {
                            e.version = Some(c.version.clone());
                        }
                        e.caps.insert(accel, c);
                    }
                }
                Err(err) => failed.push((bin, accel, err)),
            }
        }
        failed
    }

    /// The recorded capabilities of `binary` under `accel`.
    pub fn caps(&self, binary: &str, accel: Accel) -> Option<&Caps> {
        self.emulators.get(binary)?.caps.get(&accel)
    }

    /// The host's name for messages: its profile name, else the build target.
    pub fn arch_name(&self) -> &str {
        self.arch.as_ref().map_or(&self.arch_detail, Arch::as_str)
    }

    /// Whether `guest` runs natively on this host (KVM-capable pair), regardless of `/dev/kvm`.
    pub fn is_native(&self, guest: &MachineProfile) -> bool {
        let Some(host) = self.arch.as_ref().map(Arch::as_str) else {
            return false;
        };
        guest.name == host
            || guest
                .accel
                .get(&Accel::Kvm)
                .is_some_and(|k| k.hosts.iter().any(|n| n == host))
    }

    /// Whether KVM can run `guest` here; `Err` says exactly why not.
    pub fn kvm_verdict(&self, guest: &MachineProfile) -> Result<(), KvmBlocker> {
        let Some(kvm) = guest.accel.get(&Accel::Kvm) else {
            return Err(KvmBlocker::NeverNative {
                guest: guest.name.clone(),
            });
        };
        if !self.is_native(guest) {
            return Err(KvmBlocker::Foreign {
                guest: guest.name.clone(),
                host: self.arch_name().to_owned(),
                native_on: kvm.hosts.clone(),
            });
        }
        match self.kvm {
            KvmState::Usable => Ok(()),
            ref state => Err(KvmBlocker::Device {
                device: self.kvm_device.clone(),
                state: state.clone(),
            }),
        }
    }
}

fn find_emulators(profiles: &ProfileSet, versions: bool) -> BTreeMap<String, Emulator> {
    let found: Vec<(String, PathBuf)> = profiles
        .iter()
        .filter_map(|p| {
            which::which(&p.binary)
                .ok()
                .map(|path| (p.binary.clone(), path))
        })
        .collect();
    // Start every `--version` first and only then wait, so the emulators' start-up overlaps.
    let children: Vec<_> = found
        .iter()
        .map(|(_, path)| {
            versions
                .then(|| {
                    Command::new(path)
                        .arg("--version")
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok()
                })
                .flatten()
        })
        .collect();
    found
        .into_iter()
        .zip(children)
        .map(|((name, path), child)| {
            let version = child
                .and_then(|c| c.wait_with_output().ok())
                .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
            (
                name,
                Emulator {
                    path,
                    version,
                    caps: BTreeMap::new(),
                },
            )
        })
        .collect()
}

/// Extracts `7.2.22` from `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)`.
pub fn parse_version(text: &str) -> Option<String> {
    let rest = text.split("version ").nth(1)?;
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(host: &str, kvm: KvmState) -> HostFacts {
        HostFacts {
            arch: Some(Arch::new_canonical(host)),
            arch_detail: host.into(),
            kvm_device: "/dev/kvm".into(),
            kvm,
            emulators: BTreeMap::new(),
            phys_bits: None,
            firmware: None,
            qemu_prefix: None,
            virtiofsd: None,
        }
    }

    #[test]
    fn verdicts_name_the_reason() {
        let set = ProfileSet::embedded().unwrap();
        let x86 = set.resolve("t", "x86_64").unwrap();
        let a64 = set.resolve("t", "aarch64").unwrap();
        let i686 = set.resolve("t", "i686").unwrap();
        let mips = set.resolve("t", "mipsel").unwrap();

        assert_eq!(facts("x86_64", KvmState::Usable).kvm_verdict(x86), Ok(()));
        assert_eq!(facts("x86_64", KvmState::Usable).kvm_verdict(i686), Ok(()));
        assert_eq!(facts("aarch64", KvmState::Usable).kvm_verdict(a64), Ok(()));

        let foreign = facts("x86_64", KvmState::Usable)
            .kvm_verdict(a64)
            .unwrap_err();
        assert_eq!(
            foreign.to_string(),
            "guest arch aarch64 is not native to this x86_64 host (KVM runs it on: aarch64)"
        );
        assert!(!foreign.forceable());

        let never = facts("x86_64", KvmState::Usable)
            .kvm_verdict(mips)
            .unwrap_err();
        assert_eq!(never.to_string(), "no host runs mipsel guests under KVM");

        let pvm = facts("x86_64", KvmState::Pvm).kvm_verdict(x86).unwrap_err();
        assert!(pvm.to_string().contains("PVM"));
        assert!(pvm.forceable());

        let denied = facts(
            "x86_64",
            KvmState::Denied {
                error: "Permission denied".into(),
            },
        )
        .kvm_verdict(x86)
        .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "/dev/kvm cannot be opened read-write: Permission denied"
        );
        assert!(denied.hint().unwrap().contains("kvm"));
        assert!(!denied.forceable());

        let missing = facts("x86_64", KvmState::Missing)
            .kvm_verdict(x86)
            .unwrap_err();
        assert!(missing.to_string().contains("does not exist"));
    }

    #[test]
    fn probing_a_missing_or_wrong_device() {
        assert_eq!(
            KvmState::probe(Path::new("/nonexistent/kvm")),
            KvmState::Missing
        );
        // /dev/null opens read-write, but is no KVM device: the API ioctl fails.
        assert!(matches!(
            KvmState::probe(Path::new("/dev/null")),
            KvmState::ApiMismatch { .. }
        ));
    }

    #[test]
    fn probing_the_real_device_agrees_with_the_pvm_marker() {
        let real = Path::new("/dev/kvm");
        match KvmState::probe(real) {
            KvmState::Pvm => assert!(Path::new(PVM_MODULE).exists()),
            KvmState::Usable => assert!(!Path::new(PVM_MODULE).exists()),
            // Missing, denied or broken: nothing further to compare on this host.
            _ => {}
        }
        // The same device seen without a PVM marker is plain usable KVM, whenever it works.
        let without = KvmState::probe_with_pvm_marker(real, Path::new("/nonexistent/marker"));
        assert_ne!(without, KvmState::Pvm);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"),
            Some("7.2.22".into())
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn facts_round_trip_through_json() {
        let f = facts("aarch64", KvmState::Denied { error: "x".into() });
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<HostFacts>(&json).unwrap(), f);
    }
}
