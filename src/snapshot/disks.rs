//! Disks at a snapshot: frozen into the folder as read-only bases while the guest is paused,
//! and checked at a restore.
//!
//! A disk whose writes go to an overlay (the default) is frozen as a copy of that overlay: a
//! small qcow2 file holding the guest's writes so far, whose backing file is still the user's
//! image, which is only ever read. A disk that persists (its writes reach the image) is frozen
//! as a copy of the whole image, since the image keeps changing after the snapshot. `stop`
//! has flushed QEMU's caches to the files, so the copies are consistent. Restores put a new
//! throw-away overlay over each frozen file, so clones never write to the snapshot, and
//! the manifest records every image below a frozen file (size and mtime), so a restore can
//! refuse one that changed.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;

use super::{
    SnapshotError,
    manifest::{FileStamp, FrozenDisk, Input},
};
use crate::{
    plan::{DiskPlan, LaunchPlan},
    spec::DiskFormat,
};

/// How long one `qemu-img` call may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// Freezes the disks of `plan` (as launched: overlays in the instance directory) into `dir`.
/// Returns the disks for the restore plan (relative to `dir`) and what the manifest records.
pub(super) async fn freeze(
    plan: &LaunchPlan,
    dir: &Path,
    qemu_img: Option<&Path>,
) -> Result<(Vec<DiskPlan>, Vec<FrozenDisk>), SnapshotError> {
    let mut disks = Vec::new();
    let mut frozen = Vec::new();
    for (i, d) in plan.disks.iter().enumerate() {
        if d.disk.format == DiskFormat::Dir {
            disks.push(DiskPlan {
                overlay: None,
                ..d.clone()
            });
            frozen.push(FrozenDisk {
                file: None,
                bases: Vec::new(),
            });
            continue;
        }
        let qemu_img = qemu_img.ok_or_else(|| SnapshotError::QemuImg {
            what: format!("disk {i}"),
            why:
                "qemu-img is not installed (Debian: qemu-utils); it reads the disks' backing chains"
                    .into(),
        })?;
        let (from, format) = match (&d.overlay, d.wants_overlay()) {
            (Some(overlay), true) => (overlay.clone(), DiskFormat::Qcow2),
            (None, true) => {
                return Err(SnapshotError::QemuImg {
                    what: format!("disk {i}"),
                    why:
                        "it has no overlay file to freeze (was the guest launched by qemu-direct?)"
                            .into(),
                });
            }
            (_, false) => (d.disk.path.clone(), d.disk.format),
        };
        let name = frozen_name(i, format);
        let to = dir.join(&name);
        copy_frozen(qemu_img, &from, &to, format).await?;
        let bases = bases(qemu_img, &to).await?;
        disks.push(DiskPlan {
            disk: crate::spec::Disk {
                path: PathBuf::from(&name),
                format,
                writable: false,
                // The overlay copied into the snapshot has the size already.
                size: None,
            },
            device: d.device.clone(),
            overlay: None,
        });
        frozen.push(FrozenDisk {
            file: Some(PathBuf::from(name)),
            bases,
        });
    }
    Ok((disks, frozen))
}

/// `diskN.qcow2` or `diskN.raw`.
fn frozen_name(index: usize, format: DiskFormat) -> String {
    match format {
        DiskFormat::Qcow2 => DiskPlan::overlay_name(index),
        DiskFormat::Raw | DiskFormat::Dir => format!("disk{index}.raw"),
    }
}

/// Copies `from` to `to`, read-only; a qcow2 file whose backing file is named relative to its
/// own folder is pointed at it by absolute path, which stays right from the snapshot's folder.
async fn copy_frozen(
    qemu_img: &Path,
    from: &Path,
    to: &Path,
    format: DiskFormat,
) -> Result<(), SnapshotError> {
    fs::copy(from, to).map_err(SnapshotError::io("cannot copy a disk to", to))?;
    if format == DiskFormat::Qcow2 {
        let info = info(qemu_img, from, false).await?;
        let top = info.first().cloned().unwrap_or_default();
        if let (Some(named), Some(full)) = (
            top.get("backing-filename").and_then(Value::as_str),
            top.get("full-backing-filename").and_then(Value::as_str),
        ) && named != full
        {
            let fmt = top
                .get("backing-filename-format")
                .and_then(Value::as_str)
                .unwrap_or("raw");
            let args = ["rebase", "-u", "-f", "qcow2", "-F", fmt, "-b", full];
            run(
                qemu_img,
                &args,
                to,
                "cannot point the frozen disk at its base",
            )
            .await?;
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(0o400))
        .map_err(SnapshotError::io("cannot make read-only", to))
}

/// The images below `file`, stamped.
async fn bases(qemu_img: &Path, file: &Path) -> Result<Vec<FileStamp>, SnapshotError> {
    let chain = info(qemu_img, file, true).await?;
    chain
        .iter()
        .skip(1)
        .filter_map(|i| i.get("filename").and_then(Value::as_str))
        .map(|f| {
            FileStamp::of(Path::new(f)).map_err(SnapshotError::io(
                "cannot read the base image",
                Path::new(f),
            ))
        })
        .collect()
}

/// `qemu-img info -U --output=json [--backing-chain] FILE`, as a list of images.
async fn info(qemu_img: &Path, file: &Path, chain: bool) -> Result<Vec<Value>, SnapshotError> {
    let mut args = vec!["info", "-U", "--output=json"];
    if chain {
        args.push("--backing-chain");
    }
    let out = run(
        qemu_img,
        &args,
        file,
        "cannot read the disk's backing chain",
    )
    .await?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| SnapshotError::QemuImg {
        what: format!("qemu-img info {}", file.display()),
        why: e.to_string(),
    })?;
    Ok(match v {
        Value::Array(a) => a,
        one => vec![one],
    })
}

/// Runs `qemu-img ARGS FILE`; its stdout.
async fn run(
    qemu_img: &Path,
    args: &[&str],
    file: &Path,
    what: &str,
) -> Result<Vec<u8>, SnapshotError> {
    let fail = |why: String| SnapshotError::QemuImg {
        what: format!("{what} ({})", file.display()),
        why,
    };
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("cannot run {}: {e}", qemu_img.display()))),
        Err(_) => return Err(fail("qemu-img did not finish in time".into())),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(
            err.lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("qemu-img failed")
                .trim_start_matches("qemu-img: ")
                .to_owned(),
        ));
    }
    Ok(out.stdout)
}

/// The files outside the folder QEMU opens at a restore besides the disks: kernel, initrd,
/// firmware images.
pub(super) fn inputs(plan: &LaunchPlan) -> Result<Vec<Input>, SnapshotError> {
    let mut files: Vec<(&str, &Path)> = Vec::new();
    if let Some(k) = &plan.kernel {
        files.push(("kernel", &k.kernel));
        if let Some(i) = &k.initrd {
            files.push(("initrd", i));
        }
    }
    if let Some(f) = &plan.firmware {
        files.push(("firmware", f));
    }
    if let Some(f) = &plan.descriptor_firmware {
        files.push(("firmware", &f.selected.executable));
    }
    files
        .into_iter()
        .map(|(what, path)| {
            Ok(Input {
                what: what.to_owned(),
                stamp: FileStamp::of(path).map_err(SnapshotError::io("cannot read", path))?,
            })
        })
        .collect()
}

/// Refuses a restore whose frozen disks are missing, whose base images or firmware changed
/// since the snapshot, or whose kernel or initrd is gone. A kernel or initrd that changed is
/// only noted: QEMU reads them at start, but the restored guest runs the ones in its memory.
pub(super) fn check(
    dir: &Path,
    disks: &[FrozenDisk],
    inputs: &[Input],
) -> Result<Vec<String>, SnapshotError> {
    for (i, d) in disks.iter().enumerate() {
        if let Some(file) = &d.file
            && !dir.join(file).is_file()
        {
            return Err(SnapshotError::NotASnapshot {
                dir: dir.to_owned(),
                why: format!("disk {i}'s frozen file {} is missing", file.display()),
            });
        }
        for b in &d.bases {
            changed(dir, &format!("base image of disk {i}"), b)?;
        }
    }
    let mut notes = Vec::new();
    for input in inputs {
        let loaded = matches!(input.what.as_str(), "kernel" | "initrd");
        match (loaded, input.stamp.changed()) {
            (true, Some(how)) if input.stamp.path.is_file() => notes.push(format!(
                "the {} {} {how} since the snapshot: the restored guest runs the one in its memory",
                input.what,
                input.stamp.path.display()
            )),
            _ => changed(dir, &input.what, &input.stamp)?,
        }
    }
    Ok(notes)
}

fn changed(dir: &Path, what: &str, stamp: &FileStamp) -> Result<(), SnapshotError> {
    match stamp.changed() {
        None => Ok(()),
        Some(how) => Err(SnapshotError::InputChanged {
            dir: dir.to_owned(),
            what: what.to_owned(),
            path: stamp.path.clone(),
            how,
        }),
    }
}
