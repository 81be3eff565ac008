//! Why a snapshot could not be taken, restored or a guest migrated: [`SnapshotError`].

use std::path::PathBuf;

use crate::{qmp::QmpError, vm::VmError};

/// Why a snapshot could not be taken or restored, or a guest not migrated.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The folder holds no snapshot.
    #[error("{dir} is not a snapshot: {why}")]
    NotASnapshot {
        /// The folder.
        dir: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// The manifest was written by another format version of qemu-direct.
    #[error("{dir}: snapshot format {found}, this qemu-direct reads format {supported}")]
    Format {
        /// The folder.
        dir: PathBuf,
        /// The manifest's format.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// The QEMU that wrote the snapshot is not the one installed now.
    #[error(
        "{dir}: snapshot of QEMU {was_version} ({path}, sha256 {was_hash:.12}), but {path} is now {now}"
    )]
    QemuChanged {
        /// The folder.
        dir: PathBuf,
        /// The emulator.
        path: PathBuf,
        /// The version that wrote the snapshot.
        was_version: String,
        /// Its binary's sha256.
        was_hash: String,
        /// What is there now (a version and hash, or why there is none).
        now: String,
    },
    /// This qemu-direct builds another command line from the snapshot's plan than the one
    /// that wrote it: the restored QEMU would not match the saved state.
    #[error(
        "{dir}: the snapshot's command line is not what this qemu-direct builds from its plan (first difference: {diff})"
    )]
    ArgvChanged {
        /// The folder.
        dir: PathBuf,
        /// The first differing argument, saved vs built.
        diff: String,
    },
    /// A file the restore reads (a base image below the frozen disks, the kernel, firmware)
    /// changed or went away since the snapshot.
    #[error("{dir}: {what} {path} {how} since the snapshot")]
    InputChanged {
        /// The folder.
        dir: PathBuf,
        /// What the file is (`base image of disk 0`, `kernel`).
        what: String,
        /// The file.
        path: PathBuf,
        /// `is gone`, `changed (size 1024 -> 2048)`, ...
        how: String,
    },
    /// A flag given with `--restore` contradicts the snapshot.
    #[error("--{flag} {given} contradicts the snapshot {dir}, which has {saved}")]
    Contradicts {
        /// The folder.
        dir: PathBuf,
        /// The flag, without dashes.
        flag: &'static str,
        /// Its value.
        given: String,
        /// The snapshot's.
        saved: String,
    },
    /// The guest cannot run here as it ran when saved (accelerator, host CPU).
    #[error("{dir}: {why}")]
    CannotRunHere {
        /// The folder.
        dir: PathBuf,
        /// Why.
        why: String,
    },
    /// The instance to snapshot or migrate is not in a state that can be saved.
    #[error("instance '{name}' is {state}, not running or paused: nothing to save")]
    NotRunning {
        /// The instance.
        name: String,
        /// Its run state.
        state: String,
    },
    /// The snapshot's folder exists and holds something.
    #[error("{dir} exists and is not empty: a snapshot goes into a new or empty folder")]
    DirNotEmpty {
        /// The folder.
        dir: PathBuf,
    },
    /// Reading or writing the snapshot's files failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest cannot be read.
    #[error("{path}: invalid manifest: {why}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// QEMU's migration (the save, the load, the live migration) failed.
    #[error("{what} failed: {why}")]
    Migration {
        /// `saving the state to DIR/state`, `migrating to NEW`.
        what: String,
        /// QEMU's words, or ours.
        why: String,
        /// Bytes free on the snapshot's file system afterwards, when that is the likely cause.
        free: Option<u64>,
    },
    /// `qemu-img` failed on a disk.
    #[error("{what}: {why}")]
    QemuImg {
        /// What was being done.
        what: String,
        /// What it said.
        why: String,
    },
    /// Talking to the instance over QMP failed.
    #[error("QMP with instance '{name}'")]
    Qmp {
        /// The instance.
        name: String,
        /// Why.
        #[source]
        source: QmpError,
    },
    /// A clone's random pool could not be reseeded through its guest agent.
    #[error("cannot reseed the random pool of '{name}': {why}")]
    Reseed {
        /// The instance.
        name: String,
        /// Why.
        why: String,
    },
    /// Starting a QEMU (the restored guest, the helper that writes the memory file, the
    /// destination of a migration) failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl SnapshotError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SnapshotError::NotASnapshot { .. } => {
                "give a folder written by `qemu-direct snapshot NAME --to DIR`".into()
            }
            SnapshotError::Format { .. } | SnapshotError::ArgvChanged { .. } => {
                "restore it with the qemu-direct that wrote it, or take the snapshot again".into()
            }
            SnapshotError::QemuChanged { .. } => {
                "a saved state loads only into the QEMU build that wrote it: take the snapshot again with this QEMU".into()
            }
            SnapshotError::InputChanged { .. } => {
                "put the original file back, or take the snapshot again".into()
            }
            SnapshotError::Contradicts { .. } => {
                "leave the flag out: a restored guest has the snapshot's memory and architecture".into()
            }
            SnapshotError::DirNotEmpty { .. } => "choose a new folder, or empty this one".into(),
            SnapshotError::NotRunning { .. } => "qemu-direct ps shows each instance's state".into(),
            SnapshotError::Migration {
                free: Some(free), ..
            } => format!(
                "the snapshot's file system has {} left: free space, or choose a folder elsewhere",
                super::human_bytes(*free)
            ),
            SnapshotError::Vm(v) => return v.hint(),
            _ => return None,
        })
    }

    /// Whether the user's input (a folder, a flag, an instance) is at fault rather than QEMU
    /// or the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SnapshotError::NotASnapshot { .. }
                | SnapshotError::Format { .. }
                | SnapshotError::QemuChanged { .. }
                | SnapshotError::ArgvChanged { .. }
                | SnapshotError::InputChanged { .. }
                | SnapshotError::Contradicts { .. }
                | SnapshotError::CannotRunHere { .. }
                | SnapshotError::NotRunning { .. }
                | SnapshotError::DirNotEmpty { .. }
                | SnapshotError::Manifest { .. }
        )
    }

    /// An I/O error on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError + use<> {
        let path = path.to_owned();
        move |source| SnapshotError::Io {
            action,
            path,
            source,
        }
    }
}
