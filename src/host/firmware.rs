//! Guest firmware (UEFI, BIOS) chosen the way QEMU's management tools choose it: from the JSON
//! descriptor files of QEMU's `docs/interop/firmware.json`, which distributions install with
//! their firmware packages (Debian: `ovmf`, `qemu-efi-aarch64`).
//!
//! [`Descriptors::load`] reads the descriptor directories, [`Descriptors::select`] picks the first
//! descriptor (in file-name order) that fits a [`FirmwareRequest`], [`copy_vars`] gives a VM its
//! own writable UEFI variable store; `crate::argv` turns the choice into QEMU options.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{host::prefix::QemuPrefix, util::pathser};

/// The descriptor directories QEMU documents, most specific (highest priority) first: the
/// user's, the administrator's, then the distribution's. Missing ones are fine.
pub fn search_dirs() -> Vec<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    let mut dirs = Vec::new();
    if let Some(c) = config_home {
        dirs.push(c.join("qemu/firmware"));
    }
    dirs.push(PathBuf::from("/etc/qemu/firmware"));
    dirs.push(PathBuf::from("/usr/share/qemu/firmware"));
    dirs
}

/// [`search_dirs`] for the emulators of a QEMU prefix: the prefix's own folders
/// ([`QemuPrefix::firmware_dirs`]) come before the system's `/etc` and `/usr/share` ones (a
/// file there overrides the system's of the same name), the user's still first.
pub fn search_dirs_with(prefix: Option<&QemuPrefix>) -> Vec<PathBuf> {
    let mut dirs = search_dirs();
    if let Some(p) = prefix {
        let at = dirs.len() - 2;
        dirs.splice(at..at, p.firmware_dirs());
    }
    dirs
}

/// QEMU's unversioned machine aliases and the family of versioned machine types each stands for
/// (QEMU 7.2: `pc` is `pc-i440fx-7.2`, `q35` is `pc-q35-7.2`, Arm's `virt` is `virt-7.2`).
/// Descriptors name machines by such family patterns, so an alias matches a descriptor whose
/// pattern covers the whole family; which version the alias means today does not matter.
pub fn machine_family(alias: &str) -> Option<&'static str> {
    match alias {
        "pc" => Some("pc-i440fx-*"),
        "q35" => Some("pc-q35-*"),
        "virt" => Some("virt-*"),
        _ => None,
    }
}

mod descriptor;
mod select;
mod vars;

pub use descriptor::{Descriptor, ImageFile, Mapping, Target};
use select::check;
pub use vars::{copy_vars, vars_file_name};

/// The firmware a VM needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareRequest {
    /// QEMU's architecture name, as descriptors spell it (`x86_64`, `i386`, `aarch64`).
    pub arch: String,
    /// The machine type (`pc-q35-7.2`) or one of the aliases of [`machine_family`] (`q35`).
    pub machine: String,
    /// The interface the guest boots through (`uefi`, `bios`).
    pub interface: String,
    /// Only firmware with Secure Boot; without it, firmware with Secure Boot, enrolled keys or
    /// an SMM requirement is passed over, since it refuses unsigned guests or needs `smm=on`.
    pub secure_boot: bool,
}

/// How the chosen firmware is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// Parallel flash: a read-only code image and, usually, a writable variable store.
    Flash,
    /// An image QEMU loads into memory (`-bios`).
    Memory,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Flash => "flash",
            Device::Memory => "memory",
        })
    }
}

/// The firmware chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selected {
    /// The descriptor file that described it.
    #[serde(with = "pathser")]
    pub descriptor: PathBuf,
    /// Its description.
    pub description: String,
    /// How it is attached.
    pub device: Device,
    /// The code image (flash) or the image to load (memory).
    pub executable: PathBuf,
    /// The variable store template to copy per VM ([`copy_vars`]); `None` for stateless
    /// firmware.
    pub nvram_template: Option<PathBuf>,
    /// Block format of the code image and of the variable store (`raw`, `qcow2`).
    pub format: String,
    /// The descriptor's features.
    pub features: Vec<String>,
}

impl Selected {
    /// Whether the descriptor lists a feature.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// `key=value` machine properties the firmware needs (`smm=on` for SMM-protected variable
    /// stores), to add to `-machine`.
    pub fn machine_options(&self) -> Vec<String> {
        if self.has_feature("requires-smm") {
            vec!["smm=on".into()]
        } else {
            Vec::new()
        }
    }
}

/// One descriptor as `qemu-direct firmware` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The descriptor file.
    #[serde(with = "pathser")]
    pub file: PathBuf,
    /// Its description.
    pub description: String,
    /// Interface types.
    pub interfaces: Vec<String>,
    /// Architectures and machine patterns.
    pub targets: Vec<Target>,
    /// Features.
    pub features: Vec<String>,
    /// `flash`, `memory`, ... (empty when the file is invalid).
    pub device: String,
    /// The images it names, and whether they are there.
    pub files: Vec<ListedFile>,
    /// Why the file cannot be used at all (unreadable, not a descriptor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// An image a descriptor names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedFile {
    /// `executable`, `nvram-template` or `filename`, as in the descriptor.
    pub role: String,
    /// The path.
    pub path: PathBuf,
    /// Whether it is an existing file.
    pub exists: bool,
}

/// Errors finding, copying and attaching firmware.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// A descriptor directory exists but cannot be listed.
    #[error("cannot read firmware descriptor directory {}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No descriptor fits the request.
    #[error("{}", not_found(arch, machine, interface, *secure_boot, considered))]
    NotFound {
        /// The requested architecture.
        arch: String,
        /// The requested machine.
        machine: String,
        /// The requested interface.
        interface: String,
        /// Whether Secure Boot was asked for.
        secure_boot: bool,
        /// Every descriptor file looked at, in priority order, with why it was passed over.
        considered: Vec<(PathBuf, String)>,
    },
    /// A VM name that cannot be part of a file name.
    #[error("VM name {0:?} cannot name a variable store file")]
    VmName(String),
    /// The variable store copy could not be made.
    #[error("cannot copy UEFI variable store {} to {}", template.display(), dest.display())]
    CopyVars {
        /// The template.
        template: PathBuf,
        /// The copy.
        dest: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The per-VM variable store would be the shared template itself.
    #[error("variable store {} is the template itself", dest.display())]
    VarsIsTemplate {
        /// The path.
        dest: PathBuf,
    },
    /// Split-flash firmware was given no variable store, or stateless firmware was given one.
    #[error(
        "firmware {} {}",
        descriptor.display(),
        if *needed { "needs a per-VM variable store" } else { "takes no variable store" }
    )]
    Vars {
        /// The descriptor of the firmware.
        descriptor: PathBuf,
        /// Whether the firmware needs one.
        needed: bool,
    },
}

fn not_found(
    arch: &str,
    machine: &str,
    interface: &str,
    secure_boot: bool,
    considered: &[(PathBuf, String)],
) -> String {
    let secure = if secure_boot { " with Secure Boot" } else { "" };
    let mut s = format!("no {interface} firmware{secure} for {arch} machine {machine}");
    if considered.is_empty() {
        s.push_str(" (no firmware descriptor files found)");
    }
    for (path, why) in considered {
        s.push_str(&format!("\n  {}: {why}", path.display()));
    }
    s
}

/// Every descriptor file in the search directories, after overrides, in priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptors {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pub(super) path: PathBuf,
    pub(super) body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// A zero-length file: it hides the same name in less specific directories.
    Disabled,
    /// Unreadable or not a descriptor; kept so the reason can be shown.
    Invalid(String),
    Parsed(Box<Descriptor>),
}

impl Descriptors {
    /// The descriptors of [`search_dirs`].
    pub fn system() -> Result<Self, FirmwareError> {
        Self::load(&search_dirs())
    }

    /// The descriptors of [`search_dirs_with`] the prefix: the system's when `None`.
    pub fn with_prefix(prefix: Option<&QemuPrefix>) -> Result<Self, FirmwareError> {
        Self::load(&search_dirs_with(prefix))
    }

    /// Reads `*.json` from `dirs`, given most specific first. A name found in an earlier
    /// directory hides the same name in later ones; the result is ordered by file name alone,
    /// whose numeric prefix is the priority. A directory that does not exist is skipped.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, FirmwareError> {
        let mut by_name: BTreeMap<OsString, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let read_err = |source| FirmwareError::ReadDir {
                dir: dir.clone(),
                source,
            };
            let listing = match fs::read_dir(dir) {
                Ok(l) => l,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(read_err(e)),
            };
            for entry in listing {
                let name = entry.map_err(read_err)?.file_name();
                if Path::new(&name).extension().is_some_and(|e| e == "json") {
                    by_name
                        .entry(name.clone())
                        .or_insert_with(|| dir.join(&name));
                }
            }
        }
        let entries = by_name
            .into_values()
            .map(|path| {
                let body = match fs::read(&path) {
                    Err(e) => Body::Invalid(format!("cannot read: {e}")),
                    Ok(bytes) if bytes.is_empty() => Body::Disabled,
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(d) => Body::Parsed(Box::new(d)),
                        Err(e) => Body::Invalid(format!("not a firmware descriptor: {e}")),
                    },
                };
                Entry { path, body }
            })
            .collect();
        Ok(Descriptors { entries })
    }

    /// The first descriptor, in priority order, that fits `req` and whose files exist.
    pub fn select(&self, req: &FirmwareRequest) -> Result<Selected, FirmwareError> {
        let mut considered = Vec::new();
        for entry in &self.entries {
            match check(entry, req) {
                Ok(sel) => return Ok(sel),
                Err(why) => considered.push((entry.path.clone(), why)),
            }
        }
        Err(FirmwareError::NotFound {
            arch: req.arch.clone(),
            machine: req.machine.clone(),
            interface: req.interface.clone(),
            secure_boot: req.secure_boot,
            considered,
        })
    }

    /// Every usable-looking descriptor (disabled ones left out, invalid ones with their
    /// problem), for one architecture or all, in priority order.
    pub fn list(&self, arch: Option<&str>) -> Vec<Listing> {
        self.entries
            .iter()
            .filter_map(|e| match &e.body {
                Body::Disabled => None,
                Body::Invalid(why) => Some(Listing {
                    file: e.path.clone(),
                    description: String::new(),
                    interfaces: Vec::new(),
                    targets: Vec::new(),
                    features: Vec::new(),
                    device: String::new(),
                    files: Vec::new(),
                    problem: Some(why.clone()),
                }),
                Body::Parsed(d) => {
                    let wanted = arch.is_none_or(|a| d.targets.iter().any(|t| t.architecture == a));
                    wanted.then(|| listing(&e.path, d))
                }
            })
            .collect()
    }
}

fn listing(path: &Path, d: &Descriptor) -> Listing {
    let m = &d.mapping;
    let files = [
        ("executable", m.executable.as_ref().map(|i| &i.filename)),
        (
            "nvram-template",
            m.nvram_template.as_ref().map(|i| &i.filename),
        ),
        ("filename", m.filename.as_ref()),
    ]
    .into_iter()
    .filter_map(|(role, p)| {
        p.map(|p| ListedFile {
            role: role.into(),
            path: p.clone(),
            exists: p.is_file(),
        })
    })
    .collect();
    Listing {
        file: path.to_owned(),
        description: d.description.clone(),
        interfaces: d.interface_types.clone(),
        targets: d.targets.clone(),
        features: d.features.clone(),
        device: m.device.clone(),
        files,
        problem: None,
    }
}

#[cfg(test)]
mod tests;
