//! Why a guest could not be launched, watched or stopped: [`VmError`].

use std::{path::PathBuf, time::Duration};

use crate::{
    host::firmware::FirmwareError, instance::InstanceError, plan::PlanError, profile::ProfileError,
    qmp::QmpError, spec::SpecError,
};

/// Why a guest could not be launched or watched.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The machine profiles ([`super::GuestBuilder`], which loads them).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The guest description ([`super::GuestBuilder`], which validates it).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Planning for this host ([`super::GuestBuilder`], which plans).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// QEMU could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The console log could not be written.
    #[error("cannot write console log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The instance directory.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The UEFI variable store could not be made, or the plan's firmware is inconsistent.
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// A QMP socket could not be made.
    #[error("cannot create QMP socket {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A share's `virtiofsd` could not be started.
    #[error("cannot start {} for share {tag}", binary.display())]
    Virtiofsd {
        /// The share's tag.
        tag: String,
        /// The daemon.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not start because a share's `virtiofsd` failed.
    #[error("the virtiofsd of share {tag} failed: {said}; QEMU exited while starting ({status})")]
    VirtiofsdFailed {
        /// The share's tag.
        tag: String,
        /// The daemon's last line.
        said: String,
        /// QEMU's exit status.
        status: String,
    },
    /// QEMU exited before it answered on QMP, usually over its command line.
    #[error("QEMU exited while starting ({status}){}", stderr.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Startup {
        /// Its exit status.
        status: String,
        /// The last thing it said on stderr.
        stderr: Option<String>,
    },
    /// QEMU did not answer on QMP in time.
    #[error("QEMU did not answer on QMP within {}", humantime::format_duration(*.0))]
    StartupTimeout(Duration),
    /// The supervisor's QMP connection failed while starting.
    #[error("QMP with QEMU failed while starting")]
    Qmp(#[source] QmpError),
    /// Reading QEMU's output or waiting for it failed.
    #[error("lost contact with QEMU")]
    Io(#[from] std::io::Error),
    /// A disk that does not persist needs `qemu-img` for its overlay.
    #[error(
        "qemu-img is not installed (looked beside {} and on PATH); it makes the overlays that take the writes to disks without persist",
        emulator.display()
    )]
    NoQemuImg {
        /// The emulator beside which it was looked for.
        emulator: PathBuf,
    },
    /// `qemu-img` could not make a disk's overlay.
    #[error("cannot make the overlay of disk {}: {why}", image.display())]
    Overlay {
        /// The image.
        image: PathBuf,
        /// What qemu-img said.
        why: String,
    },
    /// cloud-init's seed volume could not be written.
    #[error("cannot write the cloud-init seed {}", path.display())]
    Seed {
        /// The volume.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not lock a disk image: another process (a QEMU) has it open.
    #[error("disk image {image} is in use by another process (QEMU: {detail})")]
    ImageLocked {
        /// The image, as QEMU names it.
        image: String,
        /// Whether this guest's disk persists (wants the write lock); `None` if unknown.
        persist: Option<bool>,
        /// QEMU's words, e.g. `Failed to get "write" lock`.
        detail: String,
    },
    /// The state file of an incoming migration cannot be opened.
    #[error("cannot open the state file {path}")]
    IncomingFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest's state did not arrive (QEMU still runs; when it exits over it, the error is
    /// [`VmError::Startup`] with its words).
    #[error("the guest's state did not arrive: {why}")]
    Incoming {
        /// What went wrong.
        why: String,
    },
    /// The tokio runtime that launched the guest has shut down, and QEMU was killed with it:
    /// a [`super::Vm`] kept beyond its runtime (in a static shared by tests, say).
    #[error(
        "instance '{name}' is gone: the tokio runtime that launched it shut down, and QEMU was \
         killed with it"
    )]
    RuntimeGone {
        /// The instance.
        name: String,
    },
    /// The supervisor of an instance stopped from outside did not reap QEMU and remove the
    /// instance directory in time.
    #[error("instance '{name}' still holds its directory {after:?} after QEMU was stopped")]
    NotReaped {
        /// The instance.
        name: String,
        /// How long was waited.
        after: Duration,
    },
}

impl VmError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            VmError::Plan(p) => p.hint(),
            VmError::Spec(SpecError::Cpu(c)) => c.hint(),
            VmError::Instance(i) => i.hint(),
            VmError::NoQemuImg { .. } => Some(
                "install the Debian package qemu-utils, or give the disk persist (writes then reach the image)".into(),
            ),
            VmError::ImageLocked {
                persist: Some(true),
                ..
            } => Some(
                "drop persist from this disk (it then gets an overlay of its own, which works \
                 while the other guests only read the image), or stop the guest using the image \
                 first (qemu-direct ps)"
                    .into(),
            ),
            VmError::ImageLocked {
                persist: Some(false),
                ..
            } => Some(
                "a guest writes to this image (persist), so no overlay can be made over it: stop \
                 that guest first (qemu-direct ps), or drop its persist"
                    .into(),
            ),
            VmError::RuntimeGone { .. } => Some(
                "a guest shared by several tests must outlive each test's runtime: launch it with \
                 VmBuilder::background(true) (Vm::guest(..).background(true)); see \
                 docs/rust-api.md"
                    .into(),
            ),
            VmError::ImageLocked { .. } => {
                Some("stop the other guest using the image first (qemu-direct ps)".into())
            }
            _ => None,
        }
    }
}
