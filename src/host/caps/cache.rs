//! The on-disk cache of probed capabilities, keyed so that a replaced binary or a new host CPU
//! is probed again.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{CACHE_FORMAT, Caps, CapsError, probe, probe_timeout};
use crate::{
    profile::Accel,
    util::{
        file_stamp,
        stamped::{file_stem, user_cache_root},
    },
};
use std::sync::Arc;
use tokio::sync::Semaphore;

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
            mtime_ns: file_stamp::mtime_ns(&meta),
            path,
            accel,
            host_cpu: (accel == Accel::Kvm).then(host_cpu_identity),
        })
    }

    fn file_name(&self) -> String {
        format!("{}.{}.json", file_stem(&self.path), self.accel)
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
        CapsCache {
            dir: user_cache_root().map(|r| r.join("caps")),
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

/// Probes several emulators (each under its accelerators) through the cache, as many at once
/// as there are CPUs: all at once, nine emulators on two cores each took several times their
/// own time and ran into the limit. Results come back in the order asked.
pub async fn get_many(
    cache: &CapsCache,
    wanted: &[(PathBuf, Accel)],
) -> Vec<Result<(Caps, CacheUse), CapsError>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = Arc::new(Semaphore::new(cpus));
    // Spawned, so the probes overlap up to the slots; awaited in order, so results line up.
    let handles: Vec<_> = wanted
        .iter()
        .cloned()
        .map(|(binary, accel)| {
            let (cache, slots) = (cache.clone(), slots.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                cache.get(&binary, accel).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (h, (binary, accel)) in handles.into_iter().zip(wanted) {
        out.push(h.await.unwrap_or_else(|_| {
            Err(CapsError::Timeout {
                binary: binary.clone(),
                accel: *accel,
                after: probe_timeout(),
            })
        }));
    }
    out
}
