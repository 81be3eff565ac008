//! The guest description a user gives: from command-line flags, a TOML file (`--spec`), and
//! Nova image properties (`--property KEY=VALUE`). [`SpecInput`] is the raw, mergeable form;
//! [`VmSpec`] is the validated one: names resolved, sizes parsed, files checked.

pub mod config;
pub mod disk;
pub mod net;

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{
    cpu::{CpuCheck, CpuError, CpuRequest, CpuSettings, MaxPhysAddr},
    profile::arch::Arch,
    profile::{ProfileError, ProfileSet},
    spec::disk::DiskInput,
    spec::net::Net,
    util::name,
    util::pathser,
    util::size::MemSize,
};

/// Nova image properties qemu-direct understands, with what each means here.
pub const PROPERTIES: &[(&str, &str)] = &[
    (
        "hw_emulation_architecture",
        "guest arch to emulate on any host (wins over hw_architecture)",
    ),
    (
        "hw_architecture",
        "guest arch that must run natively; with hw_emulation_architecture, the host arch required",
    ),
    ("hw_machine_type", "QEMU machine type"),
    (
        "hw:maxphysaddr_mode",
        "flavor extra spec: guest physical-address bits, emulate or passthrough",
    ),
    (
        "hw:maxphysaddr_bits",
        "flavor extra spec: the bits for hw:maxphysaddr_mode=emulate",
    ),
];

/// Which accelerator the user asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    /// KVM when it is usable for this guest here, else TCG, saying why.
    #[default]
    Auto,
    /// KVM or an error saying why it cannot be used.
    Kvm,
    /// TCG even where KVM would work.
    Tcg,
}

impl FromStr for AccelRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelRequest::Auto),
            "kvm" => Ok(AccelRequest::Kvm),
            "tcg" => Ok(AccelRequest::Tcg),
            _ => Err(format!(
                "'{s}' is not an accelerator; valid: auto, kvm, tcg"
            )),
        }
    }
}

impl fmt::Display for AccelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelRequest::Auto => "auto",
            AccelRequest::Kvm => "kvm",
            AccelRequest::Tcg => "tcg",
        })
    }
}

/// A guest description before validation: every field optional, so a TOML file and
/// command-line flags can be layered ([`SpecInput::overlay`]). Also the `--spec` file format.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecInput {
    /// Instance name.
    pub name: Option<String>,
    /// Guest architecture (name or alias).
    pub arch: Option<String>,
    /// `auto`, `kvm` or `tcg`.
    pub accel: Option<AccelRequest>,
    /// QEMU machine type, overriding the profile's.
    pub machine: Option<String>,
    /// Guest memory, e.g. `512M`.
    pub memory: Option<String>,
    /// vCPU count.
    pub smp: Option<u32>,
    /// Kernel image for a direct kernel boot.
    #[serde(default, with = "pathser::option")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line.
    pub append: Option<String>,
    /// Disk image (raw or qcow2), or a directory shown to the guest as a read-only FAT disk; a
    /// plain path. Attached before [`SpecInput::disks`].
    #[serde(default, with = "pathser::option")]
    pub disk: Option<PathBuf>,
    /// Disks with options (`[[disks]]` tables: `path`, `format`, `persist`); see [`crate::spec::disk`].
    pub disks: Option<Vec<DiskInput>>,
    /// Every disk persists: guest writes reach the images (the old `--disk-writable`; default:
    /// writes go to a throw-away overlay).
    pub disk_writable: Option<bool>,
    /// The network: `none` (default) or `user[,hostfwd=RULE]...`; see [`crate::spec::net`].
    pub net: Option<String>,
    /// `uefi` or `bios` (chosen from QEMU's firmware descriptors), or a firmware image passed as
    /// `-bios`.
    #[serde(default, with = "pathser::option")]
    pub firmware: Option<PathBuf>,
    /// With `firmware = "uefi"`: only firmware with Secure Boot.
    pub secure_boot: Option<bool>,
    /// TCG translation cache size in MiB, instead of the profile's.
    pub tb_size: Option<u32>,
    /// A QEMU binary to use instead of the profile's from `PATH`.
    #[serde(default, with = "pathser::option")]
    pub emulator: Option<PathBuf>,
    /// CPU mode (Nova's `cpu_mode`): host-passthrough, maximum, host-model, custom, none.
    pub cpu_mode: Option<String>,
    /// CPU models, most preferred first (Nova's `cpu_models`).
    pub cpu_models: Option<Vec<String>>,
    /// Extra CPU features, `+f`/`f`/`-f` (Nova's `cpu_model_extra_flags`).
    pub cpu_model_extra_flags: Option<Vec<String>>,
    /// `enforce` (refuse unavailable features; default) or `none`.
    pub cpu_check: Option<String>,
    /// Physical-address bits: `emulate:N`, `passthrough` or `passthrough:LIMIT`.
    pub maxphysaddr: Option<String>,
    /// Nova image properties and flavor extra specs, `KEY = "VALUE"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Errors in a guest description. Each names the field, the value and what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A spec file could not be read.
    #[error("cannot read spec file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A spec file is not valid TOML of the expected shape.
    #[error("invalid spec file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words, with the line.
        message: String,
    },
    /// A field with a value that is not valid.
    #[error("invalid {field} '{value}': {expected}")]
    Invalid {
        /// The field (`--memory`, `memory`, `--property`...).
        field: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// An unknown architecture.
    #[error(transparent)]
    Arch(#[from] ProfileError),
    /// Two fields that cannot both hold.
    #[error("{first} conflicts with {second}: {why}")]
    Conflict {
        /// One field and its value.
        first: String,
        /// The other.
        second: String,
        /// Why.
        why: String,
    },
    /// A file the spec names cannot be used.
    #[error("{field} {path}: {problem}")]
    File {
        /// The field.
        field: String,
        /// The path, as given.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A CPU setting of the wrong form or contradicting another.
    #[error(transparent)]
    Cpu(#[from] CpuError),
}

/// Where the guest architecture comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum ArchChoice {
    /// Named to be run here, emulated if need be (`--arch`, `hw_emulation_architecture`).
    Given {
        /// The guest arch.
        arch: Arch,
        /// The field that named it.
        field: String,
        /// With `hw_emulation_architecture`, `hw_architecture` names the host it must run on.
        host_required: Option<Arch>,
    },
    /// `hw_architecture` alone: the guest must be native to the host.
    NativeOnly {
        /// The guest arch.
        arch: Arch,
    },
    /// Nothing said: the host's own arch.
    Host,
}

/// The firmware a guest asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FirmwareChoice {
    /// UEFI, chosen from QEMU's firmware descriptors (`--firmware uefi`).
    Uefi {
        /// Only firmware with Secure Boot (`--secure-boot`); without it, none with it.
        secure_boot: bool,
    },
    /// BIOS (`--firmware bios`): a descriptor that offers it, else the machine's own (SeaBIOS).
    Bios,
    /// An image passed as `-bios` (`--firmware FILE`).
    File {
        /// The image.
        #[serde(with = "pathser")]
        path: PathBuf,
    },
}

impl FirmwareChoice {
    /// `uefi` or `bios` when the `--firmware` value is one of those words (a file of that name
    /// is written `./uefi`).
    pub fn keyword(value: &Path) -> Option<&'static str> {
        match value.to_str() {
            Some("uefi") => Some("uefi"),
            Some("bios") => Some("bios"),
            _ => None,
        }
    }
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
    /// A host directory shown as a FAT disk (QEMU vvfat), read-only.
    Dir,
}

/// A disk to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The image or directory.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// Its format: as given, else read from the file's header.
    pub format: DiskFormat,
    /// Whether guest writes reach the image (`persist`); if not, they go to a throw-away
    /// overlay and the image is only read.
    pub writable: bool,
}

/// A direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    /// Kernel image.
    #[serde(with = "pathser")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// The user's part of the kernel command line.
    pub append: Option<String>,
}

/// A validated guest description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Instance name, if given.
    pub name: Option<String>,
    /// Guest architecture and where it came from.
    pub arch: ArchChoice,
    /// Accelerator request.
    pub accel: AccelRequest,
    /// Machine type override (`--machine` or `hw_machine_type`).
    pub machine: Option<String>,
    /// Memory, if given.
    pub memory: Option<MemSize>,
    /// vCPUs, if given.
    pub smp: Option<u32>,
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
    /// Disks.
    pub disks: Vec<Disk>,
    /// The network.
    #[serde(default)]
    pub net: Net,
    /// Firmware asked for; `None`: the machine's default.
    #[serde(default)]
    pub firmware: Option<FirmwareChoice>,
    /// TCG translation cache size in MiB, instead of the profile's.
    #[serde(default)]
    pub tb_size: Option<u32>,
    /// QEMU binary override.
    #[serde(default, with = "pathser::option")]
    pub emulator: Option<PathBuf>,
    /// The CPU asked for; empty means the config files' or the profile's default.
    #[serde(default)]
    pub cpu: CpuRequest,
}

impl SpecInput {
    /// Reads a `--spec` TOML file. Relative paths in it are taken relative to the file.
    pub fn from_file(path: &Path) -> Result<SpecInput, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut input: SpecInput = toml::from_str(&text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // `firmware = "uefi"` names a kind of firmware, not a file.
        let firmware_file = input
            .firmware
            .as_mut()
            .filter(|f| FirmwareChoice::keyword(f).is_none());
        for p in [
            &mut input.kernel,
            &mut input.initrd,
            &mut input.disk,
            &mut input.emulator,
        ]
        .into_iter()
        .flatten()
        .chain(input.disks.iter_mut().flatten().map(|d| &mut d.path))
        .chain(firmware_file)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(input)
    }

    /// Layers `top` over `self`: every field `top` sets wins; properties merge key by key.
    pub fn overlay(mut self, top: SpecInput) -> SpecInput {
        macro_rules! take {
            ($($f:ident),*) => { $( if top.$f.is_some() { self.$f = top.$f; } )* };
        }
        take!(
            name,
            arch,
            accel,
            machine,
            memory,
            smp,
            kernel,
            initrd,
            append,
            disk_writable,
            net,
            firmware,
            secure_boot,
            tb_size,
            emulator,
            cpu_check,
            maxphysaddr
        );
        // Disks given on top replace all disks below, in either form.
        if top.disk.is_some() || top.disks.is_some() {
            self.disk = top.disk;
            self.disks = top.disks;
        }
        // A mode or model replaces the CPU below it, features and all (see CpuRequest::overlay).
        if top.cpu_mode.is_some() || top.cpu_models.is_some() {
            self.cpu_mode = top.cpu_mode;
            self.cpu_models = top.cpu_models;
            self.cpu_model_extra_flags = None;
        }
        // Features on top win over the same feature below (`-pse36` over the file's `+pse36`).
        if let Some(flags) = top.cpu_model_extra_flags {
            let name = |f: &str| f.trim().trim_start_matches(['+', '-']).to_ascii_lowercase();
            let below = self.cpu_model_extra_flags.get_or_insert_with(Vec::new);
            below.retain(|b| !flags.iter().any(|t| name(t) == name(b)));
            below.extend(flags);
        }
        self.properties.extend(top.properties);
        self
    }

    /// Adds a `KEY=VALUE` property as given on the command line.
    pub fn add_property(&mut self, kv: &str) -> Result<(), SpecError> {
        let (k, v) = kv.split_once('=').ok_or_else(|| SpecError::Invalid {
            field: "--property".into(),
            value: kv.into(),
            expected: "write KEY=VALUE, e.g. hw_architecture=aarch64".into(),
        })?;
        self.properties
            .insert(k.trim().to_owned(), v.trim().to_owned());
        Ok(())
    }

    /// Validates against the known architectures and the file system.
    pub fn validate(&self, profiles: &ProfileSet) -> Result<VmSpec, SpecError> {
        for (k, v) in &self.properties {
            if !PROPERTIES.iter().any(|(name, _)| name == k) {
                return Err(SpecError::Invalid {
                    field: "property".into(),
                    value: k.clone(),
                    expected: format!(
                        "unknown key; valid: {}",
                        PROPERTIES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if v.is_empty() {
                return Err(SpecError::Invalid {
                    field: format!("property {k}"),
                    value: v.clone(),
                    expected: "a value is required".into(),
                });
            }
        }
        let prop = |k: &str| self.properties.get(k).map(String::as_str);
        let arch = self.arch_choice(
            profiles,
            prop("hw_emulation_architecture"),
            prop("hw_architecture"),
        )?;

        let machine = match (self.machine.as_deref(), prop("hw_machine_type")) {
            (Some(m), Some(p)) if m != p => {
                return Err(SpecError::Conflict {
                    first: format!("--machine {m}"),
                    second: format!("hw_machine_type={p}"),
                    why: "they name different machine types; give one".into(),
                });
            }
            (Some(m), _) => Some(check_machine("machine", m)?),
            (None, Some(p)) => Some(check_machine("hw_machine_type", p)?),
            (None, None) => None,
        };

        let memory = self
            .memory
            .as_deref()
            .map(|m| {
                m.parse::<MemSize>().map_err(|e| SpecError::Invalid {
                    field: "memory".into(),
                    value: m.into(),
                    expected: e.to_string(),
                })
            })
            .transpose()?;

        if self.smp == Some(0) {
            return Err(SpecError::Invalid {
                field: "smp".into(),
                value: "0".into(),
                expected: "at least 1 vCPU".into(),
            });
        }

        if let Some(name) = &self.name {
            check_name(name)?;
        }

        let kernel = match &self.kernel {
            Some(k) => Some(KernelBoot {
                kernel: readable_file("kernel", k)?,
                initrd: self
                    .initrd
                    .as_deref()
                    .map(|i| readable_file("initrd", i))
                    .transpose()?,
                append: self.append.clone(),
            }),
            None => {
                for (field, set) in [
                    ("initrd", self.initrd.is_some()),
                    ("append", self.append.is_some()),
                ] {
                    if set {
                        return Err(SpecError::Conflict {
                            first: field.into(),
                            second: "no kernel".into(),
                            why: format!(
                                "{field} only applies to a direct kernel boot; add --kernel"
                            ),
                        });
                    }
                }
                None
            }
        };
        if let Some(append) = &self.append
            && (append.contains('\n') || append.contains('\0'))
        {
            return Err(SpecError::Invalid {
                field: "append".into(),
                value: append.escape_default().to_string(),
                expected: "one line without NUL bytes".into(),
            });
        }

        let persist_all = self.disk_writable.unwrap_or(false);
        let disks = self
            .disk
            .iter()
            .map(|d| disk::validate("disk", &DiskInput::plain(d), persist_all))
            .chain(
                self.disks
                    .iter()
                    .flatten()
                    .map(|d| disk::validate("disks", d, persist_all)),
            )
            .collect::<Result<Vec<_>, _>>()?;
        disk::check_distinct(&disks)?;
        let net = self
            .net
            .as_deref()
            .map(|n| Net::parse("net", n))
            .transpose()?
            .unwrap_or_default();

        let firmware = self
            .firmware
            .as_deref()
            .map(|f| {
                Ok::<_, SpecError>(match FirmwareChoice::keyword(f) {
                    Some("uefi") => FirmwareChoice::Uefi {
                        secure_boot: self.secure_boot.unwrap_or(false),
                    },
                    Some(_) => FirmwareChoice::Bios,
                    None => FirmwareChoice::File {
                        path: readable_file("firmware", f)?,
                    },
                })
            })
            .transpose()?;
        if self.secure_boot == Some(true) && !matches!(firmware, Some(FirmwareChoice::Uefi { .. }))
        {
            return Err(SpecError::Conflict {
                first: "secure_boot".into(),
                second: match &self.firmware {
                    Some(f) => format!("firmware {}", f.display()),
                    None => "no firmware".into(),
                },
                why: "Secure Boot is a UEFI feature; add --firmware uefi".into(),
            });
        }
        if self.tb_size == Some(0) {
            return Err(SpecError::Invalid {
                field: "tb_size".into(),
                value: "0".into(),
                expected: "the TCG translation cache in MiB, at least 1 (e.g. 128)".into(),
            });
        }
        let emulator = self.emulator.as_deref().map(executable).transpose()?;
        let cpu = self.cpu_request()?;

        Ok(VmSpec {
            name: self.name.clone(),
            arch,
            accel: self.accel.unwrap_or_default(),
            machine,
            memory,
            smp: self.smp,
            kernel,
            disks,
            net,
            firmware,
            tb_size: self.tb_size,
            emulator,
            cpu,
        })
    }

    /// The CPU settings, with the flavor's `hw:maxphysaddr_*` merged into `maxphysaddr`.
    fn cpu_request(&self) -> Result<CpuRequest, SpecError> {
        let prop = |k: &str| self.properties.get(k).map(String::as_str);
        let flavor = match (prop("hw:maxphysaddr_mode"), prop("hw:maxphysaddr_bits")) {
            (None, None) => None,
            (None, Some(b)) => {
                return Err(SpecError::Conflict {
                    first: format!("hw:maxphysaddr_bits={b}"),
                    second: "no hw:maxphysaddr_mode".into(),
                    why: "bits need hw:maxphysaddr_mode=emulate".into(),
                });
            }
            (Some(mode), bits) => {
                let value = format!(
                    "{mode}{}",
                    bits.map(|b| format!(":{b}")).unwrap_or_default()
                );
                let bits = bits
                    .map(|b| {
                        b.trim().parse::<u8>().map_err(|_| SpecError::Invalid {
                            field: "property hw:maxphysaddr_bits".into(),
                            value: b.into(),
                            expected: "a whole number of bits, e.g. 42".into(),
                        })
                    })
                    .transpose()?;
                if bits.is_some() && mode.trim().eq_ignore_ascii_case("passthrough") {
                    return Err(SpecError::Conflict {
                        first: "hw:maxphysaddr_mode=passthrough".into(),
                        second: format!("hw:maxphysaddr_bits={}", bits.unwrap_or(0)),
                        why: "bits apply only with mode emulate (libvirt: cannot be used with mode='passthrough')".into(),
                    });
                }
                Some(MaxPhysAddr::from_parts(
                    "hw:maxphysaddr_mode",
                    &value,
                    mode,
                    bits,
                )?)
            }
        };
        let given = self
            .maxphysaddr
            .as_deref()
            .map(|m| MaxPhysAddr::parse("maxphysaddr", m))
            .transpose()?;
        let maxphysaddr = match (given, flavor) {
            (Some(g), Some(f)) if g != f => {
                return Err(SpecError::Conflict {
                    first: format!("--maxphysaddr {g}"),
                    second: format!("hw:maxphysaddr_* = {f}"),
                    why: "they ask for different physical-address bits; give one".into(),
                });
            }
            (g, f) => g.or(f),
        };
        let settings = CpuSettings {
            cpu_mode: self.cpu_mode.clone(),
            cpu_models: self.cpu_models.clone(),
            cpu_model_extra_flags: self.cpu_model_extra_flags.clone(),
            cpu_check: self.cpu_check.clone(),
        };
        let mut req = settings.to_request("the command line or spec file", maxphysaddr)?;
        if req.is_default() && req.check == CpuCheck::default() {
            req.source = None;
        }
        Ok(req)
    }

    fn arch_choice(
        &self,
        profiles: &ProfileSet,
        emulation: Option<&str>,
        hw: Option<&str>,
    ) -> Result<ArchChoice, SpecError> {
        let resolve = |field: &str, v: &str| profiles.resolve(field, v).map(|p| p.arch());
        let cli = self
            .arch
            .as_deref()
            .map(|a| resolve("arch", a))
            .transpose()?;
        let emulation = emulation
            .map(|a| resolve("hw_emulation_architecture", a))
            .transpose()?;
        let hw = hw.map(|a| resolve("hw_architecture", a)).transpose()?;
        if let (Some(c), Some(e)) = (&cli, &emulation)
            && c != e
        {
            return Err(SpecError::Conflict {
                first: format!("--arch {c}"),
                second: format!("hw_emulation_architecture={e}"),
                why: "they name different guest architectures; give one".into(),
            });
        }
        Ok(match (cli, emulation, hw) {
            (_, Some(arch), host_required) => ArchChoice::Given {
                arch,
                field: "hw_emulation_architecture".into(),
                host_required,
            },
            (Some(arch), None, hw) => {
                if let Some(h) = hw
                    && h != arch
                {
                    return Err(SpecError::Conflict {
                        first: format!("--arch {arch}"),
                        second: format!("hw_architecture={h}"),
                        why: format!(
                            "hw_architecture names the guest arch unless hw_emulation_architecture is set; \
                             to emulate {arch} on a {h} host set hw_emulation_architecture={arch}"
                        ),
                    });
                }
                ArchChoice::Given {
                    arch,
                    field: "arch".into(),
                    host_required: None,
                }
            }
            (None, None, Some(arch)) => ArchChoice::NativeOnly { arch },
            (None, None, None) => ArchChoice::Host,
        })
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_machine(field: &str, m: &str) -> Result<String, SpecError> {
    let ok = !m.is_empty()
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(m.to_owned())
    } else {
        Err(SpecError::Invalid {
            field: field.into(),
            value: m.into(),
            expected: "a QEMU machine type name (letters, digits, '.', '_', '-'), e.g. q35 or virt"
                .into(),
        })
    }
}

/// Checks an instance name: it becomes part of file names and QEMU's `-name`.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if name::is_valid(name) {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field: "name".into(),
            value: name.into(),
            expected: name::RULE.into(),
        })
    }
}

pub(crate) fn file_error(field: &str, path: &Path, problem: impl Into<String>) -> SpecError {
    SpecError::File {
        field: field.into(),
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

pub(crate) fn open_error(field: &str, path: &Path, e: std::io::Error) -> SpecError {
    let problem = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    file_error(field, path, problem)
}

fn readable_file(field: &str, path: &Path) -> Result<PathBuf, SpecError> {
    let f = File::open(path).map_err(|e| open_error(field, path, e))?;
    let meta = f.metadata().map_err(|e| open_error(field, path, e))?;
    if !meta.is_file() {
        return Err(file_error(field, path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(file_error(field, path, "the file is empty"));
    }
    Ok(path.to_owned())
}

fn executable(path: &Path) -> Result<PathBuf, SpecError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| open_error("emulator", path, e))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(file_error("emulator", path, "not an executable file"));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests;
