//! This host's facts as scheduler labels: what a Kubernetes or Nomad scheduler needs to place a
//! guest on a node that runs it fast (KVM for its arch) or at all (an emulator), as `name=value`
//! pairs under [`PREFIX`], and the Node Feature Discovery "local" feature file that carries them.
//!
//! Every name and value keeps to Kubernetes' label syntax: a value (and a name after the prefix)
//! is at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric. Values from
//! data (profile names, QEMU versions) are made to fit ([`label_value`]), not trusted.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    host::{HostFacts, KvmState, firmware::FirmwareRequest},
    profile::{Accel, MachineProfile, ProfileSet},
    traits::host_traits,
};

/// The DNS prefix of every label name.
pub const PREFIX: &str = "qemu-direct.io/";
/// Where Node Feature Discovery's worker reads local feature files by default.
pub const NFD_DIR: &str = "/etc/kubernetes/node-feature-discovery/features.d";
/// The name of our feature file in that folder.
pub const NFD_FILE: &str = "qemu-direct";
/// The longest label value, and the longest name after the prefix.
pub const MAX_LEN: usize = 63;

/// One label: `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    /// The whole name, [`PREFIX`] included.
    pub name: String,
    /// The value; may be empty.
    pub value: String,
}

/// Why the feature file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The folder is missing, not a folder, or not writable: nothing was written.
    #[error("cannot write the feature file into {}: {why}", dir.display())]
    Dir {
        /// The folder given.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Writing or renaming failed part way; the temporary dot-file was removed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The feature file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl LabelError {
    /// Whether the user gave a folder that cannot take the file (rather than a failure on
    /// the way).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, LabelError::Dir { .. })
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            LabelError::Dir { .. } => Some(format!(
                "create the folder, or pass --write DIR; Node Feature Discovery reads {NFD_DIR} \
                 on the node"
            )),
            LabelError::Write { .. } => None,
        }
    }
}

/// The labels of `host`, sorted by name:
///
/// - `guest.ARCH`: `kvm` where KVM runs that guest arch here, `emulated` where TCG does;
///   absent where no emulator for it answers.
/// - `kvm`: the state of the KVM device (`usable`, `missing`, `denied`, `pvm`, ...).
/// - `host-arch`, `phys-bits`: the host's arch and physical-address bits.
/// - `qemu-version` and its `.major`/`.minor` (integers, for node affinity's `Gt`/`Lt`): the
///   newest QEMU among the emulators.
/// - `uefi.ARCH`: `true` where UEFI firmware for that guest's machine is installed.
/// - `virtiofs`: `true` where a `virtiofsd` can serve shared folders.
/// - `trait.NAME`: `true` for each of the host's os-traits ([`host_traits`]).
///
/// An emulator answers when its capabilities were probed (as `traits` and `probe` do).
pub fn node_labels(host: &HostFacts, profiles: &ProfileSet) -> Vec<Label> {
    let mut out = Vec::new();
    let mut put = |name: &str, value: &str| {
        if let Some(l) = label(name, value) {
            out.push(l);
        }
    };
    for p in profiles.iter() {
        let Some(accel) = guest_accel(host, p) else {
            continue;
        };
        put(&format!("guest.{}", p.name), accel);
        if uefi(host, p) {
            put(&format!("uefi.{}", p.name), "true");
        }
    }
    put("kvm", kvm_state(&host.kvm));
    put("host-arch", host.arch_name());
    if let Some(bits) = host.phys_bits {
        put("phys-bits", &bits.to_string());
    }
    if let Some(v) = qemu_version(host) {
        let text: Vec<String> = v.iter().map(u32::to_string).collect();
        put("qemu-version", &text.join("."));
        put("qemu-version.major", &v[0].to_string());
        put(
            "qemu-version.minor",
            &v.get(1).copied().unwrap_or(0).to_string(),
        );
    }
    if host.virtiofsd.is_some() {
        put("virtiofs", "true");
    }
    for t in host_traits(host, profiles) {
        put(&format!("trait.{}", t.name), "true");
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `kvm` or `emulated` for a guest arch whose emulator answers; `None` without one.
fn guest_accel(host: &HostFacts, p: &MachineProfile) -> Option<&'static str> {
    let e = host.emulators.get(&p.binary)?;
    if e.caps.is_empty() {
        return None;
    }
    if host.kvm_verdict(p).is_ok() {
        Some("kvm")
    } else if p.accel.contains_key(&Accel::Tcg) {
        Some("emulated")
    } else {
        None
    }
}

/// Whether `--firmware uefi` finds firmware for the machine this guest would get here.
fn uefi(host: &HostFacts, p: &MachineProfile) -> bool {
    let accel = if host.kvm_verdict(p).is_ok() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let (Some(d), Some(a)) = (&host.firmware, p.accel.get(&accel)) else {
        return false;
    };
    d.select(&FirmwareRequest {
        arch: p.qemu_arch().into(),
        machine: a.machine.clone(),
        interface: "uefi".into(),
        secure_boot: false,
    })
    .is_ok()
}

/// The KVM state as its JSON tag has it (`create-vm-failed`, ...).
fn kvm_state(k: &KvmState) -> &'static str {
    match k {
        KvmState::Missing => "missing",
        KvmState::Denied { .. } => "denied",
        KvmState::OpenFailed { .. } => "open-failed",
        KvmState::ApiMismatch { .. } => "api-mismatch",
        KvmState::CreateVmFailed { .. } => "create-vm-failed",
        KvmState::Pvm => "pvm",
        KvmState::Usable => "usable",
    }
}

/// The newest QEMU version among the emulators that answered, as numbers.
fn qemu_version(host: &HostFacts) -> Option<Vec<u32>> {
    host.emulators
        .values()
        .filter(|e| !e.caps.is_empty())
        .filter_map(|e| {
            let v: Option<Vec<u32>> = e
                .version
                .as_deref()?
                .split('.')
                .map(|n| n.parse().ok())
                .collect();
            v.filter(|v| !v.is_empty())
        })
        .max()
}

/// A label `PREFIX` + `name` = `value`, the value made to fit; `None` for a name that does not
/// fit (a profile name from `--profile-dir` could be anything).
fn label(name: &str, value: &str) -> Option<Label> {
    label_value(name).filter(|n| n == name).map(|_| Label {
        name: format!("{PREFIX}{name}"),
        value: label_value(value).unwrap_or_default(),
    })
}

/// `s` as a label value: characters outside `[A-Za-z0-9._-]` become `-`, cut to 63 characters,
/// then trimmed to start and end alphanumeric; `None` if nothing is left.
pub fn label_value(s: &str) -> Option<String> {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LEN)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The labels as `name=value` lines.
pub fn lines(labels: &[Label]) -> String {
    labels
        .iter()
        .map(|l| format!("{}={}\n", l.name, l.value))
        .collect()
}

/// A Node Feature Discovery local feature file: an `# +expiry-time=` line when `expires` is
/// given (NFD drops the labels after it), then a `name=value` line per label.
pub fn nfd_file(labels: &[Label], expires: Option<SystemTime>) -> String {
    let mut text = String::new();
    if let Some(t) = expires {
        text.push_str(&format!(
            "# +expiry-time={}\n",
            humantime::format_rfc3339_seconds(t)
        ));
    }
    text + &lines(labels)
}

/// Writes `text` as [`NFD_FILE`] in `dir` atomically: into a dot-file in `dir` (NFD skips
/// dot-files), flushed to disk, then renamed over the old file. On any failure the dot-file
/// is removed and the old file, if any, is left as it was. Returns the file's path.
pub fn write_nfd(dir: &Path, text: &str) -> Result<PathBuf, LabelError> {
    let bad = |why: String| LabelError::Dir {
        dir: dir.to_owned(),
        why,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a folder".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("no such folder".into()));
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    let path = dir.join(NFD_FILE);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{NFD_FILE}."))
        .tempfile_in(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                bad(format!("not writable ({e})"))
            }
            _ => LabelError::Write {
                path: path.clone(),
                source: e,
            },
        })?;
    let write = |f: &mut std::fs::File| -> std::io::Result<()> {
        // The temporary file is private (0600); the labels are not secret.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    let failed = |source| LabelError::Write {
        path: path.clone(),
        source,
    };
    // Dropping `tmp` on an error removes the dot-file. It is closed before the rename, so
    // that nothing happens to the file under its final name.
    write(tmp.as_file_mut()).map_err(failed)?;
    let tmp = tmp.into_temp_path();
    tmp.persist(&path).map_err(|e| failed(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_made_to_fit() {
        assert_eq!(label_value("7.2.22").as_deref(), Some("7.2.22"));
        assert_eq!(
            label_value("powerpc64 (big-endian)").as_deref(),
            Some("powerpc64--big-endian")
        );
        assert_eq!(label_value("--x--").as_deref(), Some("x"));
        assert_eq!(label_value("").as_deref(), None);
        assert_eq!(label_value(&"a".repeat(70)).unwrap().len(), MAX_LEN);
        // Cut first, then trimmed: a cut that ends in '-' still ends alphanumeric.
        let v = label_value(&format!("{}-b", "a".repeat(62))).unwrap();
        assert_eq!(v, "a".repeat(62));
    }

    #[test]
    fn a_name_that_does_not_fit_is_left_out() {
        assert!(label("guest.x86_64", "kvm").is_some());
        assert!(label("guest.my arch", "kvm").is_none());
        assert!(label(&"g".repeat(64), "kvm").is_none());
    }

    #[test]
    fn the_feature_file_starts_with_the_expiry() {
        let l = vec![Label {
            name: format!("{PREFIX}kvm"),
            value: "usable".into(),
        }];
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86400);
        assert_eq!(
            nfd_file(&l, Some(t)),
            "# +expiry-time=1970-01-02T00:00:00Z\nqemu-direct.io/kvm=usable\n"
        );
        assert_eq!(nfd_file(&l, None), "qemu-direct.io/kvm=usable\n");
    }
}
