//! Host-wide defaults, as an operator sets `cpu_mode`/`cpu_models`/`cpu_model_extra_flags`
//! once per compute host in nova.conf: TOML files whose `[cpu.<arch>]` tables give the default
//! CPU per guest arch.
//!
//! ```toml
//! [cpu.x86_64]
//! cpu_mode = "custom"
//! cpu_models = ["Nehalem"]
//! cpu_model_extra_flags = ["-pse36"]
//! ```
//!
//! Files, lowest precedence first: the system one (`/etc/qemu-direct/config.toml`, or
//! `$QEMU_DIRECT_SYSTEM_CONFIG`), then the user's (`$XDG_CONFIG_HOME/qemu-direct/config.toml`,
//! default `~/.config/...`); a missing file is skipped. `--config FILE` names the only file used.
//! The spec and the command line win over both. Unknown keys are errors naming file and line.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    cpu::{CpuError, CpuRequest, CpuSettings},
    profile::arch::Arch,
    profile::{MachineProfile, ProfileSet},
};

/// Where the system-wide file is unless `$QEMU_DIRECT_SYSTEM_CONFIG` says otherwise.
pub const SYSTEM_CONFIG: &str = "/etc/qemu-direct/config.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    cpu: BTreeMap<String, CpuSettings>,
}

/// One file's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLayer {
    /// The file.
    pub path: PathBuf,
    /// Default CPU per guest arch.
    pub cpu: BTreeMap<Arch, CpuRequest>,
}

/// The loaded configuration, lowest precedence first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The files that exist, system first.
    pub layers: Vec<ConfigLayer>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML of the expected shape (the message names the line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// A `[cpu.<arch>]` table for an unknown arch.
    #[error("config file {path}: unknown architecture '{arch}' in [cpu.{arch}]; valid: {valid}")]
    UnknownArch {
        /// The file.
        path: PathBuf,
        /// As written.
        arch: String,
        /// Valid names.
        valid: String,
    },
    /// A CPU setting that cannot be used.
    #[error("config file {path}, [cpu.{arch}]")]
    Cpu {
        /// The file.
        path: PathBuf,
        /// The arch table.
        arch: String,
        /// What is wrong.
        #[source]
        source: Box<CpuError>,
    },
}

impl Config {
    /// The standard files, system first: those that exist are read.
    pub fn standard_paths() -> Vec<PathBuf> {
        let system = std::env::var_os("QEMU_DIRECT_SYSTEM_CONFIG")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(SYSTEM_CONFIG), PathBuf::from);
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
            .map(|d| d.join("qemu-direct/config.toml"));
        std::iter::once(system).chain(user).collect()
    }

    /// Reads the standard files (missing ones skipped).
    pub fn load_standard(profiles: &ProfileSet) -> Result<Config, ConfigError> {
        let mut layers = Vec::new();
        for path in Self::standard_paths() {
            if path.exists() {
                layers.push(ConfigLayer::load(&path, profiles)?);
            }
        }
        Ok(Config { layers })
    }

    /// Reads exactly this file (it must exist).
    pub fn load_file(path: &Path, profiles: &ProfileSet) -> Result<Config, ConfigError> {
        Ok(Config {
            layers: vec![ConfigLayer::load(path, profiles)?],
        })
    }

    /// The configured default CPU for `profile`'s arch, layers merged (empty when none says
    /// anything), feature names in QEMU's spelling.
    pub fn cpu_for(&self, profile: &MachineProfile) -> Result<CpuRequest, CpuError> {
        let aliases = &profile.cpu.feature_aliases;
        let mut acc = CpuRequest::default();
        for r in self
            .layers
            .iter()
            .filter_map(|l| l.cpu.get(&profile.arch()))
        {
            acc = acc.overlay(r.clone().canonical(aliases)?);
        }
        Ok(acc)
    }
}

impl ConfigLayer {
    /// Reads and checks one file.
    pub fn load(path: &Path, profiles: &ProfileSet) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let mut cpu = BTreeMap::new();
        for (arch, settings) in file.cpu {
            let profile =
                profiles
                    .resolve("config", &arch)
                    .map_err(|_| ConfigError::UnknownArch {
                        path: path.to_owned(),
                        arch: arch.clone(),
                        valid: profiles
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            let request = settings
                .to_request(&format!("config {}", path.display()), None)
                .map_err(|source| ConfigError::Cpu {
                    path: path.to_owned(),
                    arch: arch.clone(),
                    source: Box::new(source),
                })?;
            cpu.insert(profile.arch(), request);
        }
        Ok(ConfigLayer {
            path: path.to_owned(),
            cpu,
        })
    }
}
