//! Shared host folders: over 9p or virtiofs, each choice with its reason, and the shared guest
//! memory virtiofs needs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    host::virtiofsd::{C_PACKAGE, RUST_PACKAGE, Virtiofsd, VirtiofsdKind},
    spec::share::{MAX_TAG_9P, Share, ShareFs},
    util::pathser,
};

use super::{PlanError, context::Context};

/// A host folder the guest mounts by its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePlan {
    /// The host folder.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// The tag the guest mounts.
    pub tag: String,
    /// The guest may only read.
    pub readonly: bool,
    /// How it reaches the guest.
    #[serde(flatten)]
    pub transport: ShareTransport,
    /// Why that way, in one line.
    pub why: String,
}

/// How a shared folder reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fs", rename_all = "lowercase")]
pub enum ShareTransport {
    /// 9p over virtio: QEMU serves the folder itself (`-fsdev local`).
    #[serde(rename = "9p")]
    NineP {
        /// The device (`virtio-9p-pci`, `virtio-9p-ccw`).
        device: String,
    },
    /// virtiofs: a `virtiofsd` serves the folder, QEMU connects the guest to it.
    Virtiofs {
        /// The device (`vhost-user-fs-pci`, `vhost-user-fs-ccw`).
        device: String,
        /// The daemon the launch starts for this folder.
        daemon: Virtiofsd,
        /// Its vhost-user socket: in a plan, its file name in the instance directory
        /// ([`SharePlan::socket_name`]); once launched, its path there.
        #[serde(with = "pathser")]
        socket: PathBuf,
    },
}

impl SharePlan {
    /// The file name of the `index`th share's virtiofsd socket in the instance directory.
    pub fn socket_name(index: usize) -> String {
        format!("virtiofs{index}.sock")
    }

    /// The file name of the `index`th share's virtiofsd log in the instance directory.
    pub fn log_name(index: usize) -> String {
        format!("virtiofs{index}.log")
    }

    /// `fs=9p` or `fs=virtiofs`, as the user writes it.
    pub fn fs(&self) -> ShareFs {
        match self.transport {
            ShareTransport::NineP { .. } => ShareFs::NineP,
            ShareTransport::Virtiofs { .. } => ShareFs::Virtiofs,
        }
    }
}

/// Guest RAM as a memory object of its own, which virtiofs needs shared (`virtiofsd` maps it):
/// `-object memory-backend-memfd,id=ID,size=RAM,share=on -machine memory-backend=ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// The QEMU object type.
    pub object: String,
    /// Its id.
    pub id: String,
    /// Whether other processes may map it.
    pub share: bool,
}

impl MemoryBackend {
    /// Shared memfd memory, what virtiofs needs.
    pub fn shared_memfd() -> MemoryBackend {
        MemoryBackend {
            object: "memory-backend-memfd".into(),
            id: "qd-mem".into(),
            share: true,
        }
    }
}

/// The spec's shares, each over 9p or virtiofs with the reason noted; and the shared memory
/// backend when one goes over virtiofs.
pub(super) fn shares(
    cx: &mut Context,
) -> Result<(Vec<SharePlan>, Option<MemoryBackend>), PlanError> {
    let mut out = Vec::new();
    for (i, share) in cx.spec.shares.iter().enumerate() {
        let plan = choose(cx, share, i)?;
        cx.notes.push(format!(
            "share {} (tag {}{}): {}: {}",
            plan.path.display(),
            plan.tag,
            if plan.readonly { ", read-only" } else { "" },
            plan.fs(),
            plan.why
        ));
        out.push(plan);
    }
    let backend = out
        .iter()
        .any(|s| s.fs() == ShareFs::Virtiofs)
        .then(MemoryBackend::shared_memfd);
    Ok((out, backend))
}

/// 9p or virtiofs for one share, as asked, or for `auto` virtiofs where it can run.
fn choose(cx: &Context, share: &Share, index: usize) -> Result<SharePlan, PlanError> {
    let virtiofs = virtiofsd_for(cx, share);
    let (transport, why) = match (share.fs, virtiofs) {
        (ShareFs::Virtiofs | ShareFs::Auto, Ok(daemon)) => {
            let why = format!("{} ({})", daemon.kind, daemon.path.display());
            let why = match share.fs {
                ShareFs::Auto => format!("virtiofs, faster than 9p, can run: {why}"),
                _ => format!("asked for; {why}"),
            };
            (virtiofs_transport(cx, daemon, index), why)
        }
        (ShareFs::Virtiofs, Err(blocker)) => return Err(share_error(share, blocker)),
        (ShareFs::NineP, _) => (nine_p(cx, share)?, "asked for (fs=9p)".to_owned()),
        (ShareFs::Auto, Err(blocker)) => {
            (nine_p(cx, share)?, format!("not virtiofs: {}", blocker.0))
        }
    };
    Ok(SharePlan {
        path: share.path.clone(),
        tag: share.tag.clone(),
        readonly: share.readonly,
        transport,
        why,
    })
}

/// Why virtiofs cannot serve a share here, and the hint.
struct Blocker(String, Option<String>);

/// The `virtiofsd` that can serve `share`, or why there is none.
fn virtiofsd_for<'a>(cx: &'a Context, share: &Share) -> Result<&'a Virtiofsd, Blocker> {
    if cx.profile.devices.vhost_user_fs.is_none() {
        return Err(Blocker(
            format!("the {} profile names no virtiofs device", cx.profile.name),
            None,
        ));
    }
    let Some(daemon) = &cx.host.virtiofsd else {
        return Err(Blocker(
            "no virtiofsd is installed (looked on PATH, in /usr/libexec and /usr/lib/qemu)".into(),
            Some(format!(
                "install the Debian package {RUST_PACKAGE} (the Rust virtiofsd), or \
                 {C_PACKAGE} for QEMU 7.2's own; or share over 9p (fs=9p)"
            )),
        ));
    };
    if let Some(why) = &daemon.unusable {
        return Err(Blocker(
            why.clone(),
            Some("or share over 9p (fs=9p)".into()),
        ));
    }
    if share.readonly && !daemon.readonly {
        let why = match daemon.kind {
            VirtiofsdKind::C => "has no read-only mode",
            VirtiofsdKind::Rust => "is too old for --readonly",
        };
        return Err(Blocker(
            format!(
                "a read-only share, and {} ({}) {why}",
                daemon.kind,
                daemon.path.display()
            ),
            Some(format!(
                "share it over 9p (fs=9p), which can, or install a newer Rust virtiofsd \
                 (Debian package {RUST_PACKAGE})"
            )),
        ));
    }
    Ok(daemon)
}

fn virtiofs_transport(cx: &Context, daemon: &Virtiofsd, index: usize) -> ShareTransport {
    ShareTransport::Virtiofs {
        device: cx.profile.devices.vhost_user_fs.clone().unwrap_or_default(),
        daemon: daemon.clone(),
        socket: PathBuf::from(SharePlan::socket_name(index)),
    }
}

/// 9p, where the profile has it and the tag fits.
fn nine_p(cx: &Context, share: &Share) -> Result<ShareTransport, PlanError> {
    let Some(device) = &cx.profile.devices.virtio_9p else {
        return Err(share_error(
            share,
            Blocker(
                format!("the {} profile names no 9p device", cx.profile.name),
                None,
            ),
        ));
    };
    if share.tag.len() > MAX_TAG_9P {
        return Err(share_error(
            share,
            Blocker(
                format!(
                    "its tag '{}' is {} bytes, over 9p's {MAX_TAG_9P}",
                    share.tag,
                    share.tag.len()
                ),
                Some("give it a shorter tag (HOSTDIR:TAG)".into()),
            ),
        ));
    }
    Ok(ShareTransport::NineP {
        device: device.clone(),
    })
}

fn share_error(share: &Share, b: Blocker) -> PlanError {
    PlanError::Share {
        path: share.path.display().to_string(),
        fs: share.fs,
        problem: b.0,
        hint: b.1,
    }
}
