//! Disks at launch: the qcow2 overlays that take the guest's writes to images that do not
//! persist, and QEMU's image-lock errors in words a user can act on.
//!
//! An overlay is `qemu-img create -f qcow2 -F FORMAT -b /abs/image DIR/diskN.qcow2`, made in
//! the instance directory before QEMU starts; QEMU opens the image through it as a read-only
//! backing file, so the image stays byte-identical, and the overlay goes with the directory.
//! A disk with `size=` gets an overlay of that virtual size (`qemu-img create ... SIZE`): the
//! guest sees the image's bytes and zeroes after them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    host::firmware::vars_file_name,
    plan::{DiskPlan, LaunchPlan},
    spec::{Disk, DiskFormat},
};

use super::VmError;

/// How long `qemu-img create` may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(30);

/// `qemu-img` beside the emulator (a QEMU built elsewhere brings its own), else on `PATH`.
pub(crate) fn find_qemu_img(emulator: &Path) -> Option<PathBuf> {
    let beside = emulator.parent().map(|d| d.join("qemu-img"));
    beside
        .filter(|p| p.is_file())
        .or_else(|| which::which("qemu-img").ok())
}

/// The `qemu-img` the plan's overlays need; `None` when no disk needs one. Checked before
/// anything is made.
pub(crate) fn qemu_img_for(plan: &LaunchPlan) -> Result<Option<PathBuf>, VmError> {
    if !plan.disks.iter().any(DiskPlan::wants_overlay) {
        return Ok(None);
    }
    find_qemu_img(&plan.binary)
        .map(Some)
        .ok_or_else(|| VmError::NoQemuImg {
            emulator: plan.binary.clone(),
        })
}

/// Makes an overlay in `dir` for each disk that wants one and records it in the plan.
pub(crate) async fn create_all(
    plan: &mut LaunchPlan,
    qemu_img: &Path,
    dir: &Path,
) -> Result<(), VmError> {
    for (i, d) in plan.disks.iter_mut().enumerate() {
        if !d.wants_overlay() {
            continue;
        }
        let overlay = dir.join(DiskPlan::overlay_name(i));
        create(qemu_img, &d.disk, &overlay).await?;
        d.overlay = Some(overlay);
    }
    Ok(())
}

/// Hard-links the plan's overlays, and its UEFI variable store, made for another instance
/// into `dir`, and records the links in the plan: both instances then write the same files,
/// as a migration with shared storage needs.
pub(crate) fn adopt_all(plan: &mut LaunchPlan, dir: &Path) -> Result<(), VmError> {
    for (i, d) in plan.disks.iter_mut().enumerate() {
        if !d.wants_overlay() {
            continue;
        }
        if let Some(from) = d.overlay.as_mut() {
            *from = adopt(from, &dir.join(DiskPlan::overlay_name(i)), &d.disk.path)?;
        }
    }
    let name = plan.name.clone();
    if let Some(vars) = plan
        .descriptor_firmware
        .as_mut()
        .and_then(|fw| fw.vars.as_mut())
        .filter(|v| v.is_absolute())
    {
        *vars = adopt(vars, &dir.join(vars_file_name(&name)), vars)?;
    }
    Ok(())
}

/// Links `from` to `to`.
fn adopt(from: &Path, to: &Path, image: &Path) -> Result<PathBuf, VmError> {
    std::fs::hard_link(from, to).map_err(|e| VmError::Overlay {
        image: image.to_owned(),
        why: format!("cannot link {} to {}: {e}", from.display(), to.display()),
    })?;
    Ok(to.to_owned())
}

/// `qemu-img create` of the overlay of `disk`, as large as its `size=` if given.
async fn create(qemu_img: &Path, disk: &Disk, overlay: &Path) -> Result<(), VmError> {
    let image = &disk.path;
    let fail = |why: String| VmError::Overlay {
        image: image.to_owned(),
        why,
    };
    // The overlay records its backing file by name, relative to the overlay's own directory
    // unless absolute.
    let base = std::path::absolute(image).map_err(|e| fail(e.to_string()))?;
    let format = match disk.format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw | DiskFormat::Dir => "raw",
    };
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base)
        .arg(overlay)
        .args(disk.size.map(|s| s.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("cannot run {}: {e}", qemu_img.display()))),
        Err(_) => {
            return Err(fail(format!(
                "{} did not finish within {}",
                qemu_img.display(),
                humantime::format_duration(QEMU_IMG_TIMEOUT)
            )));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("qemu-img: ").to_owned())
        .unwrap_or_else(|| format!("qemu-img exited with {}", out.status));
    Err(fail(why))
}

/// The image named by QEMU's lock error on its stderr, and the error line:
/// `...: Failed to get "write" lock` then `Is another process using the image [PATH]?`.
pub(crate) fn locked_image(stderr: &str) -> Option<(String, String)> {
    let mut lines = stderr.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(at) = line.find("Failed to get ") else {
            continue;
        };
        if !line.ends_with(" lock") {
            continue;
        }
        let image = lines
            .next()
            .and_then(|l| l.strip_prefix("Is another process using the image ["))
            .and_then(|l| l.strip_suffix("]?"))?;
        return Some((image.to_owned(), line[at..].to_owned()));
    }
    None
}

/// The error for a lock conflict on `image` (as QEMU names it), knowing which of the plan's
/// disks it is: one that persists wants the write lock.
pub(crate) fn lock_error(plan: &LaunchPlan, image: String, detail: String) -> VmError {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let persist = plan
        .disks
        .iter()
        .find(|d| same(&d.disk.path, Path::new(&image)))
        .map(|d| d.disk.writable);
    VmError::ImageLocked {
        image,
        persist,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_errors_name_the_image() {
        let err = "qemu-system-x86_64: -device virtio-blk-pci,drive=disk0: Failed to get \"write\" lock\n\
                   Is another process using the image [/tmp/a,b.img]?\n";
        assert_eq!(
            locked_image(err),
            Some((
                "/tmp/a,b.img".to_owned(),
                "Failed to get \"write\" lock".to_owned()
            ))
        );
        let shared = "qemu-system-x86_64: -device virtio-blk-pci,drive=disk0: Failed to get shared \"write\" lock\n\
                      Is another process using the image [/x]?";
        assert_eq!(locked_image(shared).unwrap().0, "/x");
        assert_eq!(
            locked_image("qemu-system-x86_64: -drive x: Could not open 'x'"),
            None
        );
    }
}
