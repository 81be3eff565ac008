//! What each QEMU emulator can do, asked over QMP and cached on disk.
//!
//! An emulator is started as `qemu-system-X -machine none -nodefaults -display none -accel A
//! -qmp stdio` once per accelerator that applies, and answers `query-machines`,
//! `query-cpu-definitions` (with each model's `unavailable-features` under that accelerator),
//! `query-cpu-model-expansion` of every model and of `host` (KVM) or `max` (TCG), and
//! `query-kvm`. The answers are a plain [`Caps`] value: the CPU logic in [`crate::cpu`] works on
//! it without touching a host, and `probe --json` records it so other hosts can be reasoned
//! about (`cpu baseline`, `cpu compare`).
//!
//! Replies are read as [`serde_json::Value`] and picked apart leniently: QEMU 7.2 lacks fields
//! newer schemas require (see `shared/reference/qmp.md`), and an arch may lack whole commands
//! (ppc64 has no model expansion, riscv64 7.2 not even a model list).
//!
//! The cache ([`CapsCache`]) keys each entry by the binary's path, size and mtime, the
//! accelerator, and under KVM the host CPU and kernel, so a replaced binary or a new host CPU is
//! probed again.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{profile::Accel, qmp::QmpError};

mod cache;
mod probe;

pub use cache::{CacheKey, CacheUse, CapsCache, get_many, host_cpu_identity};
pub use probe::probe;

/// How long one emulator may take to answer everything; a healthy one takes well under a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Replaces [`PROBE_TIMEOUT`] (a duration such as `90s`), for hosts that are slow on purpose:
/// a host that is itself an emulated guest (nested tests) probes tens of times slower.
pub const PROBE_TIMEOUT_ENV: &str = "QEMU_DIRECT_PROBE_TIMEOUT";

/// The time limit of one probe: [`PROBE_TIMEOUT_ENV`] where set and valid, else
/// [`PROBE_TIMEOUT`]. Probes run at most one per CPU at a time ([`get_many`]), so the limit
/// measures one emulator's own work, not a queue behind the others.
pub fn probe_timeout() -> Duration {
    std::env::var(PROBE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(PROBE_TIMEOUT)
}
/// Bumped when [`Caps`] changes shape, so old cache files are ignored rather than misread.
const CACHE_FORMAT: u32 = 2;

/// One emulator's capabilities under one accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// QEMU's version, from the QMP greeting (`7.2.22`).
    pub version: String,
    /// What `query-kvm` said.
    pub kvm: KvmInfo,
    /// Machine types.
    pub machines: Vec<MachineInfo>,
    /// CPU models, or `None` when the binary cannot list them.
    pub cpu_models: Option<Vec<CpuModel>>,
    /// What the accelerator can give a guest: the expansion of `host` (KVM) or `max` (TCG), or
    /// `None` when the binary cannot expand models.
    pub host_cpu: Option<CpuFeatures>,
    /// Every CPU feature name the binary knows (true or false in `max`'s expansion), or `None`
    /// when it cannot say.
    pub feature_names: Option<BTreeSet<String>>,
}

/// `query-kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmInfo {
    /// KVM is in use.
    pub enabled: bool,
    /// KVM is compiled in and the device exists.
    pub present: bool,
}

/// One machine type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineInfo {
    /// Its name (`pc-q35-7.2`).
    pub name: String,
    /// Its alias (`q35`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The binary's default machine.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deprecated: bool,
}

/// One CPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModel {
    /// Its name, as QEMU spells it.
    pub name: String,
    /// The versioned model this name stands for (`Nehalem` -> `Nehalem-v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
    /// Features the accelerator cannot provide: empty means the model runs here as is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
    /// Deprecated.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deprecated: bool,
    /// What the model turns on, when the binary can expand it; `None` for an alias, whose
    /// target has them (see [`Caps::features`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<CpuFeatures>,
}

/// A CPU model's expansion: its vendor and the features it turns on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// CPUID vendor (`GenuineIntel`, `AuthenticAMD`), where the arch has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Features set to true.
    pub enabled: BTreeSet<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Caps {
    /// The model named `name`, compared case-insensitively, as QEMU spells it.
    pub fn model(&self, name: &str) -> Option<&CpuModel> {
        let models = self.cpu_models.as_ref()?;
        models
            .iter()
            .find(|m| m.name == name)
            .or_else(|| models.iter().find(|m| m.name.eq_ignore_ascii_case(name)))
    }

    /// What `model` turns on: its own expansion, or its alias target's.
    pub fn features<'a>(&'a self, model: &'a CpuModel) -> Option<&'a CpuFeatures> {
        match &model.alias_of {
            Some(target) if model.features.is_none() => self.model(target)?.features.as_ref(),
            _ => model.features.as_ref(),
        }
    }

    /// The machine named `name` or carrying it as its alias.
    pub fn machine(&self, name: &str) -> Option<&MachineInfo> {
        self.machines
            .iter()
            .find(|m| m.name == name || m.alias.as_deref() == Some(name))
    }
}

/// Why an emulator could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// The emulator did not start.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QMP failed; QEMU's stderr usually says why.
    #[error("{binary} under {accel} did not answer QMP: {stderr}")]
    Qmp {
        /// The binary.
        binary: PathBuf,
        /// The accelerator.
        accel: Accel,
        /// The tail of QEMU's stderr.
        stderr: String,
        /// The QMP error.
        #[source]
        source: QmpError,
    },
    /// The emulator took longer than [`probe_timeout`].
    #[error(
        "{binary} under {accel} did not answer the capability probe within {} (a slow host \
         may set {PROBE_TIMEOUT_ENV})",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The binary.
        binary: PathBuf,
        /// The accelerator.
        accel: Accel,
        /// The limit it ran into.
        after: Duration,
    },
}
