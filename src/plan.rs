//! From a validated spec, the machine profiles and the host's facts to a [`LaunchPlan`]: the
//! plain value that says exactly what will run, and why. [`resolve`] is a pure function; it
//! touches nothing, so every decision can be tested with made-up hosts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    arch::Arch,
    caps::{CapsCache, CapsError},
    config::Config,
    cpu::{CpuContext, CpuError},
    host::{Emulator, HostFacts, KvmBlocker},
    net::{Net, UserNet},
    pathser,
    profile::{Accel, MachineProfile, ProfileSet},
    size::MemSize,
    spec::{AccelRequest, ArchChoice, Disk, DiskFormat, VmSpec},
};

/// Below this no Linux guest boots, and it catches unit slips such as `--memory 512K`.
pub const MIN_MEMORY: MemSize = MemSize::from_mib(16);
/// Upper bound where a profile sets none: 16 TiB, well past any host we run on.
pub const MAX_MEMORY: MemSize = MemSize::from_mib(16 * 1024 * 1024);

/// Everything needed to start one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    /// Instance name.
    pub name: String,
    /// Guest architecture.
    pub arch: Arch,
    /// The QEMU binary.
    #[serde(with = "pathser")]
    pub binary: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// Why that accelerator, in one line.
    pub accel_reason: String,
    /// Machine type and properties.
    pub machine: Machine,
    /// `-cpu` model and properties; `None` leaves the machine's default.
    pub cpu: Option<Cpu>,
    /// Guest memory.
    pub memory: MemSize,
    /// vCPUs.
    pub smp: u32,
    /// Direct kernel boot.
    pub kernel: Option<KernelPlan>,
    /// Disks, in order.
    pub disks: Vec<DiskPlan>,
    /// Network cards, in order.
    #[serde(default)]
    pub nics: Vec<NicPlan>,
    /// `-bios` image.
    #[serde(default, with = "pathser::option")]
    pub firmware: Option<PathBuf>,
    /// Where the console goes.
    pub console: ConsolePlan,
    /// Other decisions worth showing, one line each.
    pub notes: Vec<String>,
    /// The pvpanic device, which lets the guest report a panic to QEMU.
    #[serde(default)]
    pub panic_device: Option<String>,
}

/// A machine type with properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// QEMU machine type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `key=value` properties.
    pub options: Vec<String>,
}

pub use crate::cpu::Cpu;

/// A direct kernel boot, with the full command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPlan {
    /// Kernel image.
    #[serde(with = "pathser")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub append: String,
}

/// A disk and the device that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// The image.
    #[serde(flatten)]
    pub disk: Disk,
    /// QEMU device, e.g. `virtio-blk-pci`.
    pub device: String,
    /// The qcow2 overlay that takes the guest's writes to an image that does not persist, made
    /// (over the image, as its read-only backing file) in the instance directory at launch.
    /// `None` in a plan not launched yet, whose command line shows `snapshot=on` instead: the
    /// same throw-away writes, for a QEMU started by hand.
    #[serde(
        default,
        with = "pathser::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub overlay: Option<PathBuf>,
}

impl DiskPlan {
    /// The file name of the overlay of the plan's `index`th disk in the instance directory.
    pub fn overlay_name(index: usize) -> String {
        format!("disk{index}.qcow2")
    }

    /// Whether the guest's writes go to an overlay made at launch (not to the image, and not
    /// refused as for a directory).
    pub fn wants_overlay(&self) -> bool {
        !self.disk.writable && self.disk.format != DiskFormat::Dir
    }
}

/// A network card and the network behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    /// QEMU's user-mode network (the one kind there is so far).
    pub user: UserNet,
    /// QEMU device, e.g. `virtio-net-pci`.
    pub device: String,
}

/// How the guest's console reaches us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum ConsolePlan {
    /// The machine's first serial port (`-serial`).
    Serial {
        /// Its name inside a Linux guest.
        kernel_name: String,
    },
    /// A device carrying firmware messages (`-device DEV,chardev=...`).
    Device {
        /// QEMU device spelling.
        device: String,
    },
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec names a profile this set does not have (a `--profile-dir` without it).
    #[error("no machine profile for {0}")]
    NoProfile(Arch),
    /// The host's architecture is unknown and the spec names none.
    #[error("cannot tell this host's architecture ({0}); name the guest's with --arch")]
    UnknownHost(String),
    /// `hw_architecture` alone on a host that cannot run it natively.
    #[error(
        "hw_architecture={guest} needs a host that runs {guest} natively; this host is {host} \
         (set hw_emulation_architecture={guest} to emulate it)"
    )]
    NotNative {
        /// The guest.
        guest: Arch,
        /// This host.
        host: String,
    },
    /// `hw_architecture` with an emulation arch names another host.
    #[error("hw_architecture={required} asks for a host of arch {required}; this host is {host}")]
    WrongHost {
        /// The host asked for.
        required: Arch,
        /// This host.
        host: String,
    },
    /// The emulator for the guest arch is not installed.
    #[error(
        "{binary} (for {arch} guests) is not installed; install the Debian package {package}, or name one with --emulator"
    )]
    NotInstalled {
        /// The guest arch.
        arch: Arch,
        /// The binary looked for.
        binary: String,
        /// The package that ships it.
        package: String,
    },
    /// `--accel kvm` where KVM cannot run this guest.
    #[error("--accel kvm: {0}")]
    KvmUnusable(KvmBlocker),
    /// A value outside what the machine accepts.
    #[error("invalid {field} '{value}': {expected}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// The valid range.
        expected: String,
    },
    /// A machine type the emulator does not list (checked only where its capabilities are
    /// known: a host description with them, or a probe the CPU request made).
    #[error("unknown machine type '{machine}' for {binary}{nearest}")]
    UnknownMachine {
        /// The machine asked for.
        machine: String,
        /// The emulator.
        binary: String,
        /// "; did you mean ...?" or nothing.
        nearest: String,
    },
    /// The CPU asked for cannot be had here.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// The emulator's capabilities could not be probed.
    #[error("cannot probe the CPU models of {binary} under {accel}")]
    Caps {
        /// The emulator.
        binary: String,
        /// The accelerator.
        accel: Accel,
        /// Why.
        #[source]
        source: Box<CapsError>,
    },
}

impl PlanError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            PlanError::KvmUnusable(b) => b.hint(),
            PlanError::Cpu(c) => c.hint(),
            _ => None,
        }
    }
}

/// The key under which a plan's emulator is recorded in [`HostFacts::emulators`]: the profile's
/// binary name, or the `--emulator` path as given.
fn emulator_key(spec: &VmSpec, profile: &MachineProfile) -> String {
    match &spec.emulator {
        Some(path) => path.to_string_lossy().into_owned(),
        None => profile.binary.clone(),
    }
}

/// [`resolve_with`], probing the emulator's CPU capabilities (through `cache`) when the CPU
/// request needs them and `host` lacks them. With `probe` false (host facts from a file) the
/// missing capabilities are an error instead.
pub async fn resolve_probing(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &mut HostFacts,
    config: &Config,
    cache: &CapsCache,
    probe: bool,
) -> Result<LaunchPlan, PlanError> {
    match resolve_with(spec, profiles, host, config) {
        Err(PlanError::Cpu(CpuError::NoCaps { accel, .. })) if probe => {
            let profile = guest_profile(spec, profiles, host)?;
            let key = emulator_key(spec, profile);
            if let Some(path) = &spec.emulator {
                host.emulators.entry(key.clone()).or_insert(Emulator {
                    path: path.clone(),
                    version: None,
                    caps: Default::default(),
                });
            }
            if let Some((binary, accel, source)) = host
                .add_caps(cache, &[(key, accel)])
                .await
                .into_iter()
                .next()
            {
                return Err(PlanError::Caps {
                    binary,
                    accel,
                    source: Box::new(source),
                });
            }
            resolve_with(spec, profiles, host, config)
        }
        other => other,
    }
}

/// Resolves a spec into a plan for this host, with no config files.
pub fn resolve(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &HostFacts,
) -> Result<LaunchPlan, PlanError> {
    resolve_with(spec, profiles, host, &Config::default())
}

/// Resolves a spec into a plan for this host, with the config files' CPU defaults under the
/// spec's own settings.
pub fn resolve_with(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &HostFacts,
    config: &Config,
) -> Result<LaunchPlan, PlanError> {
    let profile = guest_profile(spec, profiles, host)?;
    let arch = profile.arch();
    let mut notes = Vec::new();

    let binary = match &spec.emulator {
        Some(path) => path.clone(),
        None => host
            .emulators
            .get(&profile.binary)
            .map(|e| e.path.clone())
            .ok_or_else(|| PlanError::NotInstalled {
                arch: arch.clone(),
                binary: profile.binary.clone(),
                package: profile.package.clone(),
            })?,
    };

    let (accel, accel_reason) = choose_accel(spec.accel, profile, host)?;
    // Every profile has [accel.tcg] (checked on load), and KVM is only chosen with [accel.kvm].
    let Some(ap) = profile.accel.get(&accel) else {
        return Err(PlanError::NoProfile(arch));
    };

    let machine = match &spec.machine {
        Some(m) if *m != ap.machine => {
            notes.push(format!(
                "machine {m} chosen by the spec; the profile's {} properties are not applied",
                ap.machine
            ));
            Machine {
                kind: m.clone(),
                options: Vec::new(),
            }
        }
        _ => {
            let mut options = ap.machine_options.clone();
            if spec.kernel.is_some() {
                options.extend(ap.kernel_machine_options.iter().cloned());
            }
            Machine {
                kind: ap.machine.clone(),
                options,
            }
        }
    };

    let memory = spec.memory.unwrap_or(profile.default_memory);
    let max_memory = profile.max_memory.unwrap_or(MAX_MEMORY);
    if memory < MIN_MEMORY || memory > max_memory {
        return Err(PlanError::OutOfRange {
            field: "memory",
            value: memory.to_string(),
            expected: format!("{} guests take {MIN_MEMORY} to {max_memory}", profile.name),
        });
    }
    let smp = spec.smp.unwrap_or(1);
    if smp > profile.max_cpus {
        return Err(PlanError::OutOfRange {
            field: "smp",
            value: smp.to_string(),
            expected: format!(
                "{} guests take 1 to {} vCPUs",
                profile.name, profile.max_cpus
            ),
        });
    }

    let request = config
        .cpu_for(profile)?
        .overlay(spec.cpu.clone().canonical(&profile.cpu.feature_aliases)?);
    let binary_key = emulator_key(spec, profile);
    if let (Some(m), Some(caps)) = (&spec.machine, host.caps(&binary_key, accel))
        && !caps.machines.is_empty()
        && caps.machine(m).is_none()
    {
        let names = caps
            .machines
            .iter()
            .flat_map(|i| std::iter::once(i.name.as_str()).chain(i.alias.as_deref()));
        return Err(PlanError::UnknownMachine {
            machine: m.clone(),
            binary: profile.binary.clone(),
            nearest: crate::cpu::nearest(m, names),
        });
    }
    let cpu = crate::cpu::resolve(
        &request,
        &CpuContext {
            profile,
            accel,
            binary: &profile.binary,
            caps: host.caps(&binary_key, accel),
            host_phys_bits: host.phys_bits,
            memory,
            machine: &machine.kind,
        },
    )?;
    notes.push(match (&cpu, &request.source) {
        (None, Some(src)) => format!("cpu: none, the machine's default (from {src})"),
        (None, None) => "cpu: none, the machine's default".into(),
        (Some(c), Some(src)) => format!("cpu: {} {} (from {src})", c.mode, c.model),
        (Some(c), None) => format!("cpu: {} {} (the profile's default)", c.mode, c.model),
    });

    let kernel = spec.kernel.as_ref().map(|k| KernelPlan {
        kernel: k.kernel.clone(),
        initrd: k.initrd.clone(),
        append: kernel_command_line(profile, k.append.as_deref()),
    });

    let disks = spec
        .disks
        .iter()
        .map(|d| DiskPlan {
            disk: d.clone(),
            device: format!("virtio-blk{}", profile.device_suffix),
            overlay: None,
        })
        .collect::<Vec<_>>();
    for (i, d) in disks.iter().enumerate() {
        if d.wants_overlay() {
            notes.push(format!(
                "disk {}: read-only; guest writes go to an overlay in the instance directory \
                 ({}, made with qemu-img at launch, gone with the instance); \
                 persist keeps them",
                d.disk.path.display(),
                DiskPlan::overlay_name(i)
            ));
        }
    }
    let nics = match &spec.net {
        Net::None => Vec::new(),
        Net::User(user) => vec![NicPlan {
            user: user.clone(),
            device: format!("virtio-net{}", profile.device_suffix),
        }],
    };

    let firmware_only = kernel.is_none() && disks.is_empty() && spec.firmware.is_none();
    let console = match (&profile.firmware_console, firmware_only) {
        (Some(device), true) => {
            notes.push(format!(
                "no kernel or disk: the console shows the firmware's own messages ({device})"
            ));
            ConsolePlan::Device {
                device: device.clone(),
            }
        }
        _ => ConsolePlan::Serial {
            kernel_name: profile.console.kernel.clone(),
        },
    };

    Ok(LaunchPlan {
        name: spec.name.clone().unwrap_or_else(|| arch.to_string()),
        arch,
        binary,
        accel,
        accel_reason,
        machine,
        cpu,
        memory,
        smp,
        kernel,
        disks,
        nics,
        firmware: spec.firmware.clone(),
        console,
        notes,
        panic_device: profile.panic_device.clone(),
    })
}

fn guest_profile<'p>(
    spec: &VmSpec,
    profiles: &'p ProfileSet,
    host: &HostFacts,
) -> Result<&'p MachineProfile, PlanError> {
    let lookup = |arch: &Arch| {
        profiles
            .get(arch)
            .ok_or_else(|| PlanError::NoProfile(arch.clone()))
    };
    match &spec.arch {
        ArchChoice::Given {
            arch,
            host_required,
            ..
        } => {
            if let Some(required) = host_required
                && host.arch.as_ref() != Some(required)
            {
                return Err(PlanError::WrongHost {
                    required: required.clone(),
                    host: host.arch_name().to_owned(),
                });
            }
            lookup(arch)
        }
        ArchChoice::NativeOnly { arch } => {
            let p = lookup(arch)?;
            if host.is_native(p) {
                Ok(p)
            } else {
                Err(PlanError::NotNative {
                    guest: arch.clone(),
                    host: host.arch_name().to_owned(),
                })
            }
        }
        ArchChoice::Host => match &host.arch {
            Some(a) => lookup(a),
            None => Err(PlanError::UnknownHost(host.arch_detail.clone())),
        },
    }
}

fn choose_accel(
    req: AccelRequest,
    guest: &MachineProfile,
    host: &HostFacts,
) -> Result<(Accel, String), PlanError> {
    let verdict = host.kvm_verdict(guest);
    Ok(match (req, verdict) {
        (AccelRequest::Tcg, _) => (Accel::Tcg, "TCG: asked for with --accel tcg".into()),
        (AccelRequest::Auto | AccelRequest::Kvm, Ok(())) => (
            Accel::Kvm,
            format!(
                "KVM: {} is usable and {} guests are native to this {} host",
                host.kvm_device.display(),
                guest.name,
                host.arch_name()
            ),
        ),
        (AccelRequest::Auto, Err(why)) => (Accel::Tcg, format!("TCG: KVM not used because {why}")),
        (AccelRequest::Kvm, Err(why)) if why.forceable() => (
            Accel::Kvm,
            format!("KVM: forced with --accel kvm although {why}"),
        ),
        (AccelRequest::Kvm, Err(why)) => return Err(PlanError::KvmUnusable(why)),
    })
}

/// Our part of the command line comes first so that the user's `--append` wins where the kernel
/// takes the last value; we add a console or panic setting only where the user gave none.
fn kernel_command_line(profile: &MachineProfile, user: Option<&str>) -> String {
    let user = user.unwrap_or("").trim();
    let has = |key: &str| user.split_whitespace().any(|w| w.starts_with(key));
    let mut parts = Vec::new();
    if !has("console=") {
        parts.push(format!("console={}", profile.console.kernel));
    }
    // With -no-reboot, a panicking guest reboots at once and QEMU exits instead of hanging.
    if !has("panic=") {
        parts.push("panic=-1".to_owned());
    }
    if !user.is_empty() {
        parts.push(user.to_owned());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host::{Emulator, KvmState},
        spec::SpecInput,
    };
    use std::collections::BTreeMap;

    fn host(arch: &str, kvm: KvmState) -> HostFacts {
        let set = ProfileSet::embedded().unwrap();
        HostFacts {
            arch: Some(set.resolve("host", arch).unwrap().arch()),
            arch_detail: arch.into(),
            kvm_device: "/dev/kvm".into(),
            kvm,
            emulators: set
                .iter()
                .map(|p| {
                    (
                        p.binary.clone(),
                        Emulator {
                            path: format!("/usr/bin/{}", p.binary).into(),
                            version: None,
                            caps: BTreeMap::new(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            phys_bits: Some(48),
        }
    }

    fn plan(input: SpecInput, host: &HostFacts) -> Result<LaunchPlan, PlanError> {
        let set = ProfileSet::embedded().unwrap();
        resolve(&input.validate(&set).unwrap(), &set, host)
    }

    fn arch(a: &str) -> SpecInput {
        SpecInput {
            arch: Some(a.into()),
            ..Default::default()
        }
    }

    #[test]
    fn auto_picks_kvm_only_when_usable_and_native() {
        let p = plan(arch("x86_64"), &host("x86_64", KvmState::Usable)).unwrap();
        assert_eq!(
            (p.accel, p.cpu.unwrap().model.as_str()),
            (Accel::Kvm, "host")
        );
        let p = plan(arch("aarch64"), &host("aarch64", KvmState::Usable)).unwrap();
        assert_eq!(p.accel, Accel::Kvm);
        assert_eq!(p.machine.options, ["gic-version=host"]);

        let p = plan(arch("aarch64"), &host("x86_64", KvmState::Usable)).unwrap();
        assert_eq!(p.accel, Accel::Tcg);
        assert!(
            p.accel_reason.contains("not native to this x86_64 host"),
            "{}",
            p.accel_reason
        );

        let p = plan(arch("x86_64"), &host("x86_64", KvmState::Pvm)).unwrap();
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.accel_reason.contains("PVM"), "{}", p.accel_reason);

        let p = plan(arch("x86_64"), &host("x86_64", KvmState::Missing)).unwrap();
        assert!(
            p.accel_reason
                .starts_with("TCG: KVM not used because /dev/kvm does not exist")
        );
    }

    #[test]
    fn forced_kvm() {
        let kvm = |a: &str| SpecInput {
            accel: Some(AccelRequest::Kvm),
            ..arch(a)
        };
        let p = plan(kvm("x86_64"), &host("x86_64", KvmState::Pvm)).unwrap();
        assert_eq!(p.accel, Accel::Kvm);
        assert!(p.accel_reason.contains("forced"));
        let denied = KvmState::Denied {
            error: "Permission denied".into(),
        };
        let e = plan(kvm("x86_64"), &host("x86_64", denied)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--accel kvm: /dev/kvm cannot be opened read-write: Permission denied"
        );
        assert!(e.hint().unwrap().contains("--accel tcg"));
        let e = plan(kvm("aarch64"), &host("x86_64", KvmState::Usable)).unwrap_err();
        assert!(e.to_string().contains("not native"), "{e}");
        let e = plan(kvm("mipsel"), &host("x86_64", KvmState::Usable)).unwrap_err();
        assert!(
            e.to_string()
                .contains("no host runs mipsel guests under KVM"),
            "{e}"
        );
    }

    #[test]
    fn hw_architecture_alone_needs_a_native_host() {
        let mut i = SpecInput::default();
        i.add_property("hw_architecture=aarch64").unwrap();
        let e = plan(i.clone(), &host("x86_64", KvmState::Usable)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hw_architecture=aarch64 needs a host that runs aarch64 natively; this host is x86_64 \
             (set hw_emulation_architecture=aarch64 to emulate it)"
        );
        // On an aarch64 host it runs, under TCG when KVM is missing.
        let p = plan(i, &host("aarch64", KvmState::Missing)).unwrap();
        assert_eq!((p.arch.as_str(), p.accel), ("aarch64", Accel::Tcg));

        let mut i = SpecInput::default();
        i.add_property("hw_emulation_architecture=aarch64").unwrap();
        i.add_property("hw_architecture=x86_64").unwrap();
        let p = plan(i.clone(), &host("x86_64", KvmState::Usable)).unwrap();
        assert_eq!((p.arch.as_str(), p.accel), ("aarch64", Accel::Tcg));
        let e = plan(i, &host("aarch64", KvmState::Usable)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hw_architecture=x86_64 asks for a host of arch x86_64; this host is aarch64"
        );

        // Nothing said: the host's own arch.
        let p = plan(SpecInput::default(), &host("aarch64", KvmState::Usable)).unwrap();
        assert_eq!(p.arch.as_str(), "aarch64");
    }

    #[test]
    fn missing_emulator_names_the_package() {
        let mut h = host("x86_64", KvmState::Missing);
        h.emulators.remove("qemu-system-aarch64");
        let e = plan(arch("aarch64"), &h).unwrap_err();
        assert_eq!(
            e.to_string(),
            "qemu-system-aarch64 (for aarch64 guests) is not installed; install the Debian package \
             qemu-system-arm, or name one with --emulator"
        );
    }

    #[test]
    fn memory_and_cpus_within_the_machine() {
        let h = host("x86_64", KvmState::Missing);
        let e = plan(
            SpecInput {
                memory: Some("4G".into()),
                ..arch("mipsel")
            },
            &h,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid memory '4G': mipsel guests take 16M to 2G"
        );
        let e = plan(
            SpecInput {
                memory: Some("8M".into()),
                ..arch("x86_64")
            },
            &h,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid memory '8M'"));
        let e = plan(
            SpecInput {
                smp: Some(17),
                ..arch("mipsel")
            },
            &h,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid smp '17': mipsel guests take 1 to 16 vCPUs"
        );
    }

    #[test]
    fn kernel_command_line_keeps_the_users_choices() {
        let set = ProfileSet::embedded().unwrap();
        let a64 = set.resolve("t", "aarch64").unwrap();
        assert_eq!(kernel_command_line(a64, None), "console=ttyAMA0 panic=-1");
        assert_eq!(
            kernel_command_line(a64, Some("console=ttyAMA0 quiet")),
            "panic=-1 console=ttyAMA0 quiet"
        );
        assert_eq!(
            kernel_command_line(a64, Some("panic=5")),
            "console=ttyAMA0 panic=5"
        );
    }

    #[test]
    fn firmware_only_x86_boot_shows_the_firmware_console() {
        let p = plan(arch("x86_64"), &host("x86_64", KvmState::Usable)).unwrap();
        assert!(
            matches!(p.console, ConsolePlan::Device { ref device } if device.starts_with("isa-debugcon"))
        );
        let p = plan(arch("aarch64"), &host("x86_64", KvmState::Usable)).unwrap();
        assert!(matches!(p.console, ConsolePlan::Serial { .. }));
    }

    #[test]
    fn plans_round_trip_through_json() {
        let p = plan(arch("s390x"), &host("x86_64", KvmState::Missing)).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<LaunchPlan>(&json).unwrap(), p);
    }
}
