//! `manifest.json`: what a snapshot folder holds and what a restore checks before it starts
//! anything. A plain serde value, every struct `deny_unknown_fields`, with a format number.
//!
//! Paths of files inside the snapshot folder are written relative to it (`disk0.qcow2`,
//! `memory`), so the folder can move; paths outside it (the emulator, base images, kernel) are
//! absolute.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{MANIFEST, SnapshotError, method::Method};
use crate::{
    plan::LaunchPlan,
    profile::{Accel, arch::Arch},
    util::{pathser, size::MemSize},
};

/// The manifest format this qemu-direct writes and reads.
pub const FORMAT: u32 = 1;

/// A snapshot's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The instance it was taken of.
    pub source: String,
    /// Guest architecture.
    pub arch: Arch,
    /// Guest memory.
    pub memory: MemSize,
    /// The accelerator it ran under.
    pub accel: Accel,
    /// The machine type, resolved to its versioned name (`virt-7.2`, `pc-q35-7.2`).
    pub machine_type: String,
    /// The `-cpu` value, `None` for the machine's default.
    pub cpu: Option<String>,
    /// Under KVM, the host CPU it ran on (`host_cpu_identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<String>,
    /// Every `-device` of the command line.
    pub devices: Vec<String>,
    /// The QEMU that wrote it.
    pub qemu: QemuBuild,
    /// How RAM and devices were saved, and why.
    pub method: Method,
    /// The frozen disks, in the plan's order of disks.
    pub disks: Vec<FrozenDisk>,
    /// Other files outside the folder that QEMU opens at a restore (kernel, initrd, firmware).
    pub inputs: Vec<Input>,
    /// The plan a restore runs: the frozen disks and files in the folder (relative), the
    /// memory file, the versioned machine type.
    pub plan: LaunchPlan,
    /// [`crate::argv::build`] of that plan; a restore refuses if it builds another.
    pub argv: Vec<Arg>,
    /// The guest's state in the folder (`state`, and `memory` with [`super::Memory::File`]),
    /// their sizes in bytes.
    pub files: Vec<FileSize>,
    /// Things a user of the snapshot should know (what clones share, disks shown from host
    /// folders).
    pub notes: Vec<String>,
}

/// The emulator that wrote a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuBuild {
    /// Its path.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// Its version, as QEMU reports it.
    pub version: String,
    /// The sha256 of the binary.
    pub sha256: String,
}

/// A file the snapshot depends on, as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    /// Absolute path.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
}

/// A disk frozen into the folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenDisk {
    /// Its file in the folder, read-only (`disk0.qcow2`); `None` for a host folder shown as a
    /// FAT disk, which is read as it is at the restore.
    #[serde(default, with = "pathser::option")]
    pub file: Option<PathBuf>,
    /// The images below it (its backing chain), which restores read.
    pub bases: Vec<FileStamp>,
}

/// A file outside the folder QEMU opens at a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// What it is (`kernel`, `initrd`, `firmware`).
    pub what: String,
    /// The file as it was.
    #[serde(flatten)]
    pub stamp: FileStamp,
}

/// A file of the snapshot and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSize {
    /// Its name in the folder.
    pub name: String,
    /// Apparent size in bytes.
    pub bytes: u64,
    /// Bytes on disk (a memory file is sparse).
    pub allocated: u64,
}

/// One command-line argument, any bytes (a path need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Arg(#[serde(with = "pathser")] pub PathBuf);

impl Arg {
    /// The arguments of a command line.
    pub fn all(argv: Vec<OsString>) -> Vec<Arg> {
        argv.into_iter().map(|a| Arg(a.into())).collect()
    }
}

impl FileStamp {
    /// The file as it is now.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let path = std::path::absolute(path)?;
        let meta = fs::metadata(&path)?;
        Ok(FileStamp {
            size: meta.len(),
            mtime_ns: crate::util::file_stamp::mtime_ns(&meta),
            path,
        })
    }

    /// How the file differs from this stamp now: `None` if it does not.
    pub fn changed(&self) -> Option<String> {
        let now = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("is gone".into()),
            Err(e) => return Some(format!("cannot be read ({e})")),
        };
        if now.len() != self.size {
            return Some(format!("changed (size {} -> {})", self.size, now.len()));
        }
        if crate::util::file_stamp::mtime_ns(&now) != self.mtime_ns {
            return Some("changed (modified)".into());
        }
        None
    }
}

impl Manifest {
    /// Reads `DIR/manifest.json`: the folder must be one, and the format ours.
    pub fn read(dir: &Path) -> Result<Manifest, SnapshotError> {
        let not = |why: String| SnapshotError::NotASnapshot {
            dir: dir.to_owned(),
            why,
        };
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not("not a folder".into())),
            Err(e) => return Err(not(e.to_string())),
        }
        let path = dir.join(MANIFEST);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not(format!("no {MANIFEST} in it")));
            }
            Err(e) => return Err(SnapshotError::io("cannot read", &path)(e)),
        };
        // The format first, so an old or newer manifest says so rather than what it lacks.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let bad = |e: serde_json::Error| SnapshotError::Manifest {
            path: path.clone(),
            why: e.to_string(),
        };
        let head: Head = serde_json::from_slice(&text).map_err(bad)?;
        if head.format != FORMAT {
            return Err(SnapshotError::Format {
                dir: dir.to_owned(),
                found: head.format,
                supported: FORMAT,
            });
        }
        serde_json::from_slice(&text).map_err(bad)
    }

    /// Writes `DIR/manifest.json`, last of a snapshot's files: beside its place, then renamed,
    /// so a folder with a manifest is complete.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| SnapshotError::Manifest {
            path: path.clone(),
            why: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(SnapshotError::io("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(SnapshotError::io("cannot write", &path))
    }

    /// The first difference between the saved command line and `built`, if any.
    pub fn argv_differs(&self, built: &[OsString]) -> Option<String> {
        let saved: Vec<&std::ffi::OsStr> = self.argv.iter().map(|a| a.0.as_os_str()).collect();
        let n = saved.len().max(built.len());
        (0..n).find_map(|i| {
            let (a, b) = (saved.get(i), built.get(i).map(OsString::as_os_str));
            (a.copied() != b).then(|| {
                let show = |x: Option<&std::ffi::OsStr>| {
                    x.map_or("(nothing)".into(), |x| format!("{:?}", x.to_string_lossy()))
                };
                format!(
                    "argument {i}: saved {}, built {}",
                    show(a.copied()),
                    show(b)
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_a_readable_manifest_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = Manifest::read(&d.join("none")).unwrap_err();
        assert!(matches!(e, SnapshotError::NotASnapshot { .. }), "{e}");
        let e = Manifest::read(d).unwrap_err();
        assert!(e.to_string().ends_with("no manifest.json in it"), "{e}");
        fs::write(d.join(MANIFEST), r#"{"format": 7}"#).unwrap();
        let e = Manifest::read(d).unwrap_err();
        assert!(
            e.to_string()
                .contains("snapshot format 7, this qemu-direct reads format 1"),
            "{e}"
        );
        fs::write(d.join(MANIFEST), r#"{"format": 1, "created": 3}"#).unwrap();
        let e = Manifest::read(d).unwrap_err();
        assert!(
            e.to_string().contains("invalid manifest: invalid type"),
            "{e}"
        );
        fs::write(d.join(MANIFEST), "{").unwrap();
        assert!(matches!(
            Manifest::read(d),
            Err(SnapshotError::Manifest { .. })
        ));
    }

    #[test]
    fn stamps_notice_a_changed_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base");
        fs::write(&f, "abc").unwrap();
        let stamp = FileStamp::of(&f).unwrap();
        assert_eq!(stamp.changed(), None);
        fs::write(&f, "abcd").unwrap();
        assert_eq!(stamp.changed().as_deref(), Some("changed (size 3 -> 4)"));
        fs::write(&f, "abc").unwrap();
        let file = fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(stamp.changed().as_deref(), Some("changed (modified)"));
        fs::remove_file(&f).unwrap();
        assert_eq!(stamp.changed().as_deref(), Some("is gone"));
    }
}
