//! From a validated spec, the machine profiles and the host's facts to a [`LaunchPlan`]: the
//! plain value that says exactly what will run, and why. [`resolve`] is a pure function; it
//! touches nothing (but for checking that chosen firmware files exist), so every decision can
//! be tested with made-up hosts. Its inputs include the emulator's QEMU version, against which
//! the profile's options are gated ([`crate::profile::gate`]), and the firmware descriptors of
//! [`HostFacts::firmware`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    cpu::{CpuContext, CpuError},
    host::caps::{CapsCache, CapsError},
    host::firmware::{self, FirmwareError, FirmwareRequest, Selected},
    host::{Emulator, HostFacts, KvmBlocker},
    profile::arch::Arch,
    profile::gate::{self, Gate, ProfileOption, QemuVersion, Unfit},
    profile::{Accel, MachineProfile, ProfileSet},
    spec::config::Config,
    spec::net::{Net, UserNet},
    spec::{AccelRequest, ArchChoice, Disk, DiskFormat, FirmwareChoice, VmSpec},
    util::pathser,
    util::size::MemSize,
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
    /// `key=value` properties of the accelerator (`thread=multi`, `tb-size=256`).
    #[serde(default)]
    pub accel_options: Vec<String>,
    /// The emulator's QEMU version, when known; the profile's options were checked against it.
    #[serde(default)]
    pub qemu_version: Option<QemuVersion>,
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
    /// `-bios` image named by the user (`--firmware FILE`).
    #[serde(default, with = "pathser::option")]
    pub firmware: Option<PathBuf>,
    /// Firmware chosen from QEMU's firmware descriptors (`--firmware uefi|bios`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_firmware: Option<DescriptorFirmware>,
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

/// Firmware chosen from QEMU's firmware descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorFirmware {
    /// The interface asked for (`uefi`, `bios`).
    pub interface: String,
    /// Whether Secure Boot was asked for.
    pub secure_boot: bool,
    /// The descriptor's firmware.
    pub selected: Selected,
    /// The VM's own UEFI variable store, a copy of [`Selected::nvram_template`]: in a plan, the
    /// file name it gets in the instance directory ([`firmware::vars_file_name`]); once launched, its
    /// path there. `None` for firmware without variables.
    #[serde(default, with = "pathser::option")]
    pub vars: Option<PathBuf>,
}

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
    /// No firmware of the kind asked for is installed.
    #[error("{}", no_firmware(error, package.as_deref()))]
    NoFirmware {
        /// What selection found.
        error: Box<FirmwareError>,
        /// The Debian package that provides it, where the profile says.
        package: Option<String>,
    },
    /// The user asked for something the installed QEMU cannot do.
    #[error("{what} {why}")]
    QemuCannot {
        /// What was asked for, as asked.
        what: String,
        /// Why not.
        why: Unfit,
    },
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
            PlanError::QemuCannot { .. } => Some(
                "install a newer QEMU (or name one with --emulator), or drop the option".into(),
            ),
            PlanError::NoFirmware { .. } => {
                Some("qemu-direct firmware lists the firmware descriptors found".into())
            }
            _ => None,
        }
    }
}

fn no_firmware(error: &FirmwareError, package: Option<&str>) -> String {
    let text = error.to_string();
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let mut s = first.to_owned();
    if let Some(p) = package {
        s.push_str(&format!("; the Debian package {p} provides it"));
    }
    if !rest.is_empty() {
        s.push('\n');
        s.push_str(rest);
    }
    s
}

/// The key under which a plan's emulator is recorded in [`HostFacts::emulators`]: the profile's
/// binary name, or the `--emulator` path as given.
fn emulator_key(spec: &VmSpec, profile: &MachineProfile) -> String {
    match &spec.emulator {
        Some(path) => path.to_string_lossy().into_owned(),
        None => profile.binary.clone(),
    }
}

/// [`resolve_with`], probing the emulator's capabilities (through `cache`) when `host` lacks
/// them and the CPU request needs them, or the emulator's QEMU version is unknown (the version
/// gates the profile's options; a probe that fails then only leaves a note). With `probe` false
/// (host facts from a file) missing CPU capabilities are an error and an unknown version stays
/// unknown.
pub async fn resolve_probing(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &mut HostFacts,
    config: &Config,
    cache: &CapsCache,
    probe: bool,
) -> Result<LaunchPlan, PlanError> {
    let (accel, unversioned) = match resolve_with(spec, profiles, host, config) {
        Err(PlanError::Cpu(CpuError::NoCaps { accel, .. })) if probe => (accel, None),
        // The QEMU version gates the profile's options; the capabilities (cached) carry it.
        Ok(plan) if probe && plan.qemu_version.is_none() => (plan.accel, Some(plan)),
        other => return other,
    };
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
        return match unversioned {
            // Only the version was wanted: plan without it, saying why.
            Some(mut plan) => {
                plan.notes.push(format!(
                    "QEMU version unknown: {binary} under {accel} did not answer the capability probe ({source})"
                ));
                Ok(plan)
            }
            None => Err(PlanError::Caps {
                binary,
                accel,
                source: Box::new(source),
            }),
        };
    }
    resolve_with(spec, profiles, host, config)
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
    let binary_key = emulator_key(spec, profile);
    let qemu_version = qemu_version(host, &binary_key);
    let gate = Gate {
        qemu: qemu_version,
        host: host.arch.as_ref().map(Arch::as_str),
    };
    if qemu_version.is_none() {
        notes.push("QEMU version unknown: the profile's options are not checked against it".into());
    }

    let mut machine = match &spec.machine {
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
            let (mut options, left_out) = gate.filter("machine option", &ap.machine_options);
            notes.extend(left_out);
            if spec.kernel.is_some() {
                let (kernel_options, left_out) =
                    gate.filter("machine option", &ap.kernel_machine_options);
                options.extend(kernel_options);
                notes.extend(left_out);
            }
            Machine {
                kind: ap.machine.clone(),
                options,
            }
        }
    };

    let accel_options = accel_options(spec, ap, accel, &gate, &mut notes)?;

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
    // The CPU code sees the profile's default CPU options after their gates.
    let (cpu_options, cpu_left_out) = gate.filter("cpu option", &ap.cpu_options);
    let mut gated = profile.clone();
    if let Some(a) = gated.accel.get_mut(&accel) {
        a.cpu_options = cpu_options.into_iter().map(ProfileOption::plain).collect();
    }
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
            profile: &gated,
            accel,
            binary: &profile.binary,
            caps: host.caps(&binary_key, accel),
            host_phys_bits: host.phys_bits,
            memory,
            machine: &machine.kind,
        },
    )?;
    if cpu.as_ref().is_some_and(|c| c.model == ap.cpu) {
        notes.extend(cpu_left_out);
    }
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

    let name = spec.name.clone().unwrap_or_else(|| arch.to_string());
    let descriptor_firmware =
        descriptor_firmware(spec, profile, host, &machine, &name, &mut notes)?;
    if let Some(f) = &descriptor_firmware {
        for o in f.selected.machine_options() {
            if !machine.options.contains(&o) {
                machine.options.push(o);
            }
        }
    }

    // A boot with no kernel, disk or firmware of its own shows the built-in firmware's messages.
    let firmware_only = kernel.is_none()
        && disks.is_empty()
        && matches!(spec.firmware, None | Some(FirmwareChoice::Bios))
        && descriptor_firmware.is_none();
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
        name,
        arch,
        binary,
        accel,
        accel_reason,
        accel_options,
        qemu_version,
        machine,
        cpu,
        memory,
        smp,
        kernel,
        disks,
        nics,
        firmware: match &spec.firmware {
            Some(FirmwareChoice::File { path }) => Some(path.clone()),
            _ => None,
        },
        descriptor_firmware,
        console,
        notes,
        panic_device: profile.panic_device.clone(),
    })
}

/// The emulator's version: as recorded, else from any of its recorded capabilities.
fn qemu_version(host: &HostFacts, binary_key: &str) -> Option<QemuVersion> {
    let e = host.emulators.get(binary_key)?;
    e.version
        .iter()
        .chain(e.caps.values().map(|c| &c.version))
        .find_map(|v| v.parse().ok())
}

/// The accelerator's options: the profile's that pass their gates, and `--tb-size`, which
/// replaces the profile's and is refused where the installed QEMU cannot take it.
fn accel_options(
    spec: &VmSpec,
    ap: &crate::profile::AccelProfile,
    accel: Accel,
    gate: &Gate,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, PlanError> {
    let explicit = match (spec.tb_size, accel) {
        (Some(mib), Accel::Tcg) => Some(format!("tb-size={mib}")),
        (Some(_), Accel::Kvm) => {
            notes.push(
                "--tb-size ignored: it sizes TCG's translation cache, and this guest runs under KVM"
                    .into(),
            );
            None
        }
        (None, _) => None,
    };
    let from_profile: Vec<ProfileOption> = ap
        .accel_options
        .iter()
        .filter(|o| explicit.as_deref().is_none_or(|e| gate::key(e) != o.key()))
        .cloned()
        .collect();
    let (mut options, left_out) = gate.filter(&format!("-accel {accel} option"), &from_profile);
    notes.extend(left_out);
    if let Some(opt) = explicit {
        gate.check_explicit(&opt, &ap.accel_options)
            .map_err(|why| PlanError::QemuCannot {
                what: format!("--tb-size (-accel {accel},{opt})"),
                why,
            })?;
        options.push(opt);
    }
    Ok(options)
}

/// `--firmware uefi|bios`: the firmware the descriptors offer for this arch and machine, with
/// where its variable store will be. `bios` without a descriptor falls back to the machine's
/// built-in BIOS (no option at all) where the profile says it has one.
fn descriptor_firmware(
    spec: &VmSpec,
    profile: &MachineProfile,
    host: &HostFacts,
    machine: &Machine,
    name: &str,
    notes: &mut Vec<String>,
) -> Result<Option<DescriptorFirmware>, PlanError> {
    let (interface, secure_boot) = match &spec.firmware {
        Some(FirmwareChoice::Uefi { secure_boot }) => ("uefi", *secure_boot),
        Some(FirmwareChoice::Bios) => ("bios", false),
        Some(FirmwareChoice::File { .. }) | None => return Ok(None),
    };
    let request = FirmwareRequest {
        arch: profile.qemu_arch().to_owned(),
        machine: machine.kind.clone(),
        interface: interface.into(),
        secure_boot,
    };
    let found = match &host.firmware {
        Some(d) => d.select(&request),
        // Nothing read: the same answer as an empty descriptor directory.
        None => crate::host::firmware::Descriptors::load(&[]).and_then(|d| d.select(&request)),
    };
    let selected = match found {
        Ok(s) => s,
        Err(_) if interface == "bios" && profile.firmware.builtin.as_deref() == Some("bios") => {
            notes.push(format!(
                "firmware: bios: the machine's built-in BIOS (no firmware descriptor offers bios for {} machine {})",
                request.arch, request.machine
            ));
            return Ok(None);
        }
        Err(error) => {
            return Err(PlanError::NoFirmware {
                error: Box::new(error),
                package: profile.firmware.interface_packages.get(interface).cloned(),
            });
        }
    };
    let vars = selected
        .nvram_template
        .as_ref()
        .map(|_| PathBuf::from(firmware::vars_file_name(name)));
    // The command line is built from what passed here, never re-checked.
    selected
        .check_vars(vars.as_deref())
        .map_err(|e| PlanError::NoFirmware {
            error: Box::new(e),
            package: None,
        })?;
    notes.push(format!(
        "firmware: {interface}{} from {} ({})",
        if secure_boot { " with Secure Boot" } else { "" },
        selected.descriptor.display(),
        selected.executable.display()
    ));
    if let (Some(t), Some(v)) = (&selected.nvram_template, &vars) {
        notes.push(format!(
            "firmware: variables in a copy of {} made at launch in the instance directory ({})",
            t.display(),
            v.display()
        ));
    }
    Ok(Some(DescriptorFirmware {
        interface: interface.into(),
        secure_boot,
        selected,
        vars,
    }))
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
            firmware: None,
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

    fn with_qemu(mut h: HostFacts, version: &str) -> HostFacts {
        for e in h.emulators.values_mut() {
            e.version = Some(version.into());
        }
        h
    }

    fn tcg(a: &str) -> SpecInput {
        SpecInput {
            accel: Some(AccelRequest::Tcg),
            ..arch(a)
        }
    }

    #[test]
    fn profile_options_are_gated_by_the_qemu_version() {
        // 7.2: everything the aarch64 profile has applies.
        let h = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
        let p = plan(arch("aarch64"), &h).unwrap();
        assert_eq!(p.qemu_version, Some("7.2.22".parse().unwrap()));
        assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"]);
        assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max,pauth-impdef=on");
        assert!(
            !p.notes.iter().any(|n| n.starts_with("left out")),
            "{:?}",
            p.notes
        );

        // 10.0 made pauth-impdef the default: left out, saying so.
        let h = with_qemu(host("x86_64", KvmState::Missing), "10.0.2");
        let p = plan(arch("aarch64"), &h).unwrap();
        assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max");
        assert!(
            p.notes.contains(
                &"left out: cpu option pauth-impdef=on: is only for QEMU < 10.0, this is 10.0.2 \
                  (the default from QEMU 10.0)"
                    .to_string()
            ),
            "{:?}",
            p.notes
        );

        // 4.2: no tb-size property yet, no VOF, no pauth-impdef.
        let h = with_qemu(host("x86_64", KvmState::Missing), "4.2.1");
        let p = plan(arch("aarch64"), &h).unwrap();
        assert_eq!(p.accel_options, ["thread=multi"]);
        assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max");
        assert!(
            p.notes.contains(
                &"left out: -accel tcg option tb-size=256: needs QEMU >= 5.0, this is 4.2.1"
                    .to_string()
            )
        );
        let kernel = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(kernel.path(), b"k").unwrap();
        let p = plan(
            SpecInput {
                kernel: Some(kernel.path().into()),
                ..arch("ppc64le")
            },
            &h,
        )
        .unwrap();
        assert!(!p.machine.options.iter().any(|o| o == "x-vof=on"));
        assert!(p.machine.options.iter().any(|o| o == "cap-ccf-assist=off"));
        assert!(
            p.notes
                .iter()
                .any(|n| n == "left out: machine option x-vof=on: needs QEMU >= 6.1, this is 4.2.1")
        );

        // Unknown version: nothing left out, and the plan says it could not check.
        let p = plan(arch("aarch64"), &host("x86_64", KvmState::Missing)).unwrap();
        assert_eq!(p.qemu_version, None);
        assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"]);
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("QEMU version unknown"))
        );
    }

    #[test]
    fn mttcg_only_where_the_host_orders_memory_as_strongly_as_the_guest() {
        let on_arm = with_qemu(host("aarch64", KvmState::Missing), "7.2.22");
        let on_x86 = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
        for guest in ["x86_64", "i686", "s390x"] {
            let p = plan(tcg(guest), &on_x86).unwrap();
            assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"], "{guest}");
            let p = plan(tcg(guest), &on_arm).unwrap();
            assert_eq!(p.accel_options, ["tb-size=256"], "{guest}");
            assert!(
                p.notes.iter().any(|n| n.starts_with(
                    "left out: -accel tcg option thread=multi: applies on x86_64, i686, s390x hosts only, this host is aarch64"
                )),
                "{guest}: {:?}",
                p.notes
            );
        }
        for guest in ["aarch64", "ppc64le", "riscv64", "mipsel"] {
            let p = plan(tcg(guest), &on_arm).unwrap();
            assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"], "{guest}");
        }
    }

    #[test]
    fn tb_size_overrides_the_profile_and_is_refused_where_qemu_lacks_it() {
        let h = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
        let p = plan(
            SpecInput {
                tb_size: Some(64),
                ..arch("aarch64")
            },
            &h,
        )
        .unwrap();
        assert_eq!(p.accel_options, ["thread=multi", "tb-size=64"]);
        let old = with_qemu(host("x86_64", KvmState::Missing), "4.2.1");
        let e = plan(
            SpecInput {
                tb_size: Some(64),
                ..arch("aarch64")
            },
            &old,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--tb-size (-accel tcg,tb-size=64) needs QEMU >= 5.0, this is 4.2.1"
        );
        assert!(e.hint().unwrap().contains("newer QEMU"));
        // Under KVM there is no translation cache: ignored, with a note.
        let kvm = with_qemu(host("x86_64", KvmState::Usable), "7.2.22");
        let p = plan(
            SpecInput {
                tb_size: Some(64),
                ..arch("x86_64")
            },
            &kvm,
        )
        .unwrap();
        assert_eq!(p.accel, Accel::Kvm);
        assert!(p.accel_options.is_empty());
        assert!(p.notes.iter().any(|n| n.starts_with("--tb-size ignored")));
    }

    #[test]
    fn firmware_from_descriptors_or_the_package_to_install() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["CODE.fd", "VARS.fd"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let desc = serde_json::json!({
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": { "filename": dir.path().join("CODE.fd") },
                "nvram-template": { "filename": dir.path().join("VARS.fd") },
            },
            "targets": [{ "architecture": "aarch64", "machines": ["virt-*"] }],
        });
        std::fs::write(dir.path().join("60-a.json"), desc.to_string()).unwrap();
        let mut h = host("x86_64", KvmState::Missing);
        h.firmware = Some(crate::host::firmware::Descriptors::load(&[dir.path().into()]).unwrap());
        let uefi = |a: &str| SpecInput {
            firmware: Some("uefi".into()),
            name: Some("vm1".into()),
            ..arch(a)
        };
        let p = plan(uefi("aarch64"), &h).unwrap();
        let fw = p.descriptor_firmware.unwrap();
        assert_eq!(fw.selected.executable, dir.path().join("CODE.fd"));
        assert_eq!(fw.vars, Some(PathBuf::from("vm1_VARS.fd")));
        assert_eq!(p.firmware, None);

        // None for x86_64 here: the error names the Debian package.
        let e = plan(uefi("x86_64"), &h).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "no uefi firmware for x86_64 machine q35; the Debian package ovmf provides it\n"
            ),
            "{e}"
        );
        let mut none = h.clone();
        none.firmware = None;
        let e = plan(uefi("aarch64"), &none).unwrap_err().to_string();
        assert_eq!(
            e,
            "no uefi firmware for aarch64 machine virt (no firmware descriptor files found); \
             the Debian package qemu-efi-aarch64 provides it"
        );

        // bios: no descriptor offers it, so x86 keeps its built-in SeaBIOS; aarch64 has none.
        let bios = |a: &str| SpecInput {
            firmware: Some("bios".into()),
            ..arch(a)
        };
        let p = plan(bios("x86_64"), &h).unwrap();
        assert!(p.descriptor_firmware.is_none() && p.firmware.is_none());
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("firmware: bios: the machine's built-in BIOS"))
        );
        assert!(plan(bios("aarch64"), &h).is_err());
    }

    #[test]
    fn plans_round_trip_through_json() {
        let p = plan(arch("s390x"), &host("x86_64", KvmState::Missing)).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<LaunchPlan>(&json).unwrap(), p);
    }
}
