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

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, process::Command};

use crate::{
    profile::Accel,
    qmp::{Qmp, QmpError},
};

/// How long one emulator may take to answer everything; a healthy one takes well under a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
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
    /// The emulator took longer than [`PROBE_TIMEOUT`].
    #[error("{binary} under {accel} did not answer within {PROBE_TIMEOUT:?}")]
    Timeout {
        /// The binary.
        binary: PathBuf,
        /// The accelerator.
        accel: Accel,
    },
}

/// Probes one emulator under one accelerator.
pub async fn probe(binary: &Path, accel: Accel) -> Result<Caps, CapsError> {
    let mut child = Command::new(binary)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-accel",
            accel.as_str(),
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CapsError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three streams were piped");
    };
    let work = async {
        let qmp = Qmp::handshake(stdout, stdin).await?;
        let caps = ask(&qmp, accel).await;
        // QEMU may exit before replying to quit; either way it is ending.
        let _ = qmp.quit().await;
        caps
    };
    let result = tokio::time::timeout(PROBE_TIMEOUT, work).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match result {
        Ok(Ok(caps)) => Ok(caps),
        Ok(Err(source)) => {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            Err(CapsError::Qmp {
                binary: binary.to_owned(),
                accel,
                stderr: last_line(&text),
                source,
            })
        }
        Err(_) => Err(CapsError::Timeout {
            binary: binary.to_owned(),
            accel,
        }),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing on stderr)")
        .trim()
        .to_owned()
}

/// Whether a QEMU error means "this binary has no such command": then the answer is "unknown",
/// not a failed probe.
fn unsupported(e: &QmpError) -> bool {
    matches!(e, QmpError::Command { class, desc, .. }
        if class == "CommandNotFound" || desc.contains("not supported"))
}

async fn ask(qmp: &Qmp, accel: Accel) -> Result<Caps, QmpError> {
    let g = qmp.greeting().version;
    let version = format!("{}.{}.{}", g.major, g.minor, g.micro);
    let kvm = qmp.query_kvm().await?;
    let machines = machines(&qmp.execute("query-machines", None).await?);
    let mut cpu_models = match qmp.execute("query-cpu-definitions", None).await {
        Ok(v) => Some(cpu_definitions(&v)),
        Err(e) if unsupported(&e) => None,
        Err(e) => return Err(e),
    };
    let host_name = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let (host_cpu, feature_names) = match expand(qmp, host_name).await? {
        Some((cpu, all)) => (Some(cpu), Some(all)),
        None => (None, None),
    };
    if host_cpu.is_some()
        && let Some(models) = cpu_models.as_mut()
    {
        // An alias (`Nehalem` for `Nehalem-v1`) expands like its target: ask for targets only,
        // all at once, so QEMU never waits on a round trip.
        let asks: Vec<_> = models
            .iter()
            .filter(|m| m.alias_of.is_none())
            .map(|m| {
                let (qmp, name) = (qmp.clone(), m.name.clone());
                tokio::spawn(async move { (expand(&qmp, &name).await, name) })
            })
            .collect();
        let mut expanded = std::collections::HashMap::new();
        for a in asks {
            // One model that will not expand (QEMU lists some it cannot instantiate on this
            // binary) must not cost the rest.
            if let Ok((Ok(Some((cpu, _))), name)) = a.await {
                expanded.insert(name, cpu);
            }
        }
        for m in models.iter_mut().filter(|m| m.alias_of.is_none()) {
            m.features = expanded.remove(&m.name);
        }
    }
    Ok(Caps {
        version,
        kvm: KvmInfo {
            enabled: kvm.enabled,
            present: kvm.present,
        },
        machines,
        cpu_models,
        host_cpu,
        feature_names,
    })
}

/// Expands a model: static where the arch supports it (only CPUID features and identity, no
/// tuning knobs), else full. Returns the enabled features and every boolean property name.
async fn expand(
    qmp: &Qmp,
    model: &str,
) -> Result<Option<(CpuFeatures, BTreeSet<String>)>, QmpError> {
    for kind in ["static", "full"] {
        let args = json!({"type": kind, "model": {"name": model}});
        match qmp.execute("query-cpu-model-expansion", Some(args)).await {
            Ok(v) => return Ok(Some(features(&v))),
            Err(e) if unsupported(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn features(reply: &Value) -> (CpuFeatures, BTreeSet<String>) {
    let props = reply
        .pointer("/model/props")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut enabled = BTreeSet::new();
    let mut all = BTreeSet::new();
    for (k, v) in &props {
        if let Some(on) = v.as_bool() {
            all.insert(k.clone());
            if on {
                enabled.insert(k.clone());
            }
        }
    }
    let vendor = props
        .get("vendor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (CpuFeatures { vendor, enabled }, all)
}

fn machines(reply: &Value) -> Vec<MachineInfo> {
    let mut out: Vec<MachineInfo> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(MachineInfo {
                name: m.get("name")?.as_str()?.to_owned(),
                alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                default: m
                    .get("is-default")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                deprecated: m
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn cpu_definitions(reply: &Value) -> Vec<CpuModel> {
    let mut out: Vec<CpuModel> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some(CpuModel {
                name: d.get("name")?.as_str()?.to_owned(),
                alias_of: d.get("alias-of").and_then(Value::as_str).map(str::to_owned),
                unavailable: d
                    .get("unavailable-features")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect(),
                deprecated: d
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                features: None,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What identifies a cache entry: when any of it changes, the emulator is probed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    format: u32,
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    accel: Accel,
    /// Under KVM, what the guest gets depends on the host CPU and the kernel's KVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_cpu: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheEntry {
    key: CacheKey,
    caps: Caps,
}

impl CacheKey {
    /// The key for `binary` (its real path is used) under `accel` on this host.
    pub fn for_binary(binary: &Path, accel: Accel) -> std::io::Result<CacheKey> {
        let path = fs::canonicalize(binary)?;
        let meta = fs::metadata(&path)?;
        Ok(CacheKey {
            format: CACHE_FORMAT,
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            path,
            accel,
            host_cpu: (accel == Accel::Kvm).then(host_cpu_identity),
        })
    }

    fn file_name(&self) -> String {
        let stem: String = self
            .path
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{}.json", stem.trim_start_matches('_'), self.accel)
    }
}

/// The host CPU as KVM sees it: vendor, family/model/stepping, microcode and flags from
/// `/proc/cpuinfo`, and the kernel release (KVM's supported CPUID changes with the kernel).
pub fn host_cpu_identity() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = cpuinfo.split("\n\n").next().unwrap_or("");
    let mut parts: Vec<String> = first
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            matches!(
                k.trim(),
                "vendor_id"
                    | "cpu family"
                    | "model"
                    | "stepping"
                    | "microcode"
                    | "flags"
                    | "CPU implementer"
                    | "CPU part"
                    | "CPU variant"
                    | "CPU revision"
                    | "Features"
                    | "cpu"
                    | "revision"
            )
        })
        .map(|(k, v)| format!("{}={}", k.trim(), v.trim()))
        .collect();
    if let Ok(u) = nix::sys::utsname::uname() {
        parts.push(format!("kernel={}", u.release().to_string_lossy()));
    }
    parts.join("; ")
}

/// On-disk capability cache, one JSON file per binary and accelerator.
#[derive(Debug, Clone)]
pub struct CapsCache {
    dir: Option<PathBuf>,
}

/// What a cached lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheUse {
    /// Answered from the cache.
    Hit,
    /// Probed (no entry, or a stale one) and stored.
    Probed,
}

impl CapsCache {
    /// The user's cache: `$XDG_CACHE_HOME/qemu-direct/caps`, else `~/.cache/qemu-direct/caps`.
    /// With neither variable set there is no cache and every lookup probes.
    pub fn user() -> CapsCache {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        CapsCache {
            dir: base.map(|b| b.join("qemu-direct").join("caps")),
        }
    }

    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> CapsCache {
        CapsCache {
            dir: Some(dir.into()),
        }
    }

    /// No cache: always probe.
    pub fn none() -> CapsCache {
        CapsCache { dir: None }
    }

    /// The folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Cached capabilities of `binary` under `accel` if still valid, else a fresh probe (stored
    /// for next time; a cache that cannot be written is not an error).
    pub async fn get(&self, binary: &Path, accel: Accel) -> Result<(Caps, CacheUse), CapsError> {
        let key = CacheKey::for_binary(binary, accel).ok();
        if let (Some(dir), Some(key)) = (&self.dir, &key)
            && let Some(caps) = read_entry(&dir.join(key.file_name()), key)
        {
            return Ok((caps, CacheUse::Hit));
        }
        let caps = probe(binary, accel).await?;
        if let (Some(dir), Some(key)) = (&self.dir, key) {
            let _ = write_entry(dir, key, &caps);
        }
        Ok((caps, CacheUse::Probed))
    }
}

fn read_entry(path: &Path, key: &CacheKey) -> Option<Caps> {
    let bytes = fs::read(path).ok()?;
    let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
    (entry.key == *key).then_some(entry.caps)
}

fn write_entry(dir: &Path, key: CacheKey, caps: &Caps) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(key.file_name());
    let entry = CacheEntry {
        key,
        caps: caps.clone(),
    };
    // Write then rename, so a concurrent reader sees the old entry or the new one, never half.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        entry.key.file_name(),
        std::process::id()
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(&entry)?)?;
    fs::rename(&tmp, &path)
}

/// Probes several emulators at once (each under its accelerators), through the cache.
/// Results come back in the order asked.
pub async fn get_many(
    cache: &CapsCache,
    wanted: &[(PathBuf, Accel)],
) -> Vec<Result<(Caps, CacheUse), CapsError>> {
    // Spawned, so every emulator starts at once; awaited in order, so results line up.
    let handles: Vec<_> = wanted
        .iter()
        .cloned()
        .map(|(binary, accel)| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&binary, accel).await })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (h, (binary, accel)) in handles.into_iter().zip(wanted) {
        out.push(h.await.unwrap_or_else(|_| {
            Err(CapsError::Timeout {
                binary: binary.clone(),
                accel: *accel,
            })
        }));
    }
    out
}
