//! Taking a snapshot of a running guest, in steps:
//!
//! 1. Before the pause: the run state (running or paused), the folder (new or empty), the
//!    QEMU build (version, sha256), the machine type's versioned name and default RAM id, and
//!    from those the [`super::method`].
//! 2. The guest paused (`stop`, which flushes QEMU's disk caches): the disks frozen into the
//!    folder (`disks.rs`), then the whole state (devices and RAM) streamed into
//!    `state` with no bandwidth cap.
//! 3. The guest resumed (unless asked to stay paused), also when step 2 failed.
//! 4. With a memory file: a helper QEMU, its RAM the folder's `memory` file mapped shared,
//!    loads `state`, which writes the RAM into the file, and saves its devices alone
//!    (`x-ignore-shared`) back into `state`. The guest runs meanwhile.
//! 5. `manifest.json`, written last: a folder with one is complete. On any failure the files
//!    made so far go (and the folder, if it was made here).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    MEMORY, STATE, SnapshotError, binhash, convert, disks,
    manifest::{Arg, FileSize, Manifest, QemuBuild},
    method::{self, Memory, Method},
    outgoing::{self, call},
};
use crate::{
    argv,
    host::caps::host_cpu_identity,
    plan::{LaunchPlan, MemoryBackend},
    profile::{Accel, gate::QemuVersion},
    qmp::Qmp,
};

/// The running guest a snapshot is taken of: its QMP connection and its plan as launched.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The instance name.
    pub name: &'a str,
    /// A QMP connection to it.
    pub qmp: &'a Qmp,
    /// Its plan as launched (with its overlays in the instance directory).
    pub plan: &'a LaunchPlan,
    /// Where instance directories live: the helper QEMU's goes there too.
    pub runtime_root: &'a Path,
}

/// How to take a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotOptions {
    /// Leave the guest paused afterwards (to stop it, as `snapshot --stop` does), instead of
    /// resuming it. A failed snapshot resumes it either way.
    pub stay_paused: bool,
}

/// A snapshot taken.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Its folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// How long the guest was paused.
    pub paused: Duration,
    /// How long the whole snapshot took.
    pub total: Duration,
}

/// Takes a snapshot of `src` into `dir` (new, or an empty folder).
pub async fn save(
    src: &Source<'_>,
    dir: &Path,
    opts: &SnapshotOptions,
) -> Result<Saved, SnapshotError> {
    let start = Instant::now();
    let running = run_state(src).await?;
    let folder = Folder::claim(dir)?;
    let dir = folder.path.clone();
    let qemu = qemu_build(src)?;
    let (machine_type, default_ram_id) = machine_facts(src).await?;
    // The stream names the RAM block after the guest's memory backend, if it has one.
    let ram_id = match &src.plan.memory_backend {
        Some(m) => Some(m.id.clone()),
        None => default_ram_id,
    };
    let version = qemu.version.parse::<QemuVersion>().ok();
    let method = method::choose(version, ram_id.as_deref());
    let mut manifest = draft(src, qemu, machine_type, method.clone());

    let paused = Instant::now();
    if running {
        call(src.qmp, src.name, "stop", json!({})).await?;
    }
    let frozen = freeze_and_stream(src, &dir, &method, &mut manifest).await;
    let paused = paused.elapsed();
    let resumed = if running && (frozen.is_err() || !opts.stay_paused) {
        call(src.qmp, src.name, "cont", json!({})).await.map(drop)
    } else {
        Ok(())
    };
    frozen?;
    resumed?;

    if let (Memory::File, Some(id)) = (method.memory, ram_id) {
        if convert::to_memory_file(&manifest, &dir, &id, src.runtime_root).await? {
            without_boot_files(&mut manifest);
        }
        manifest.plan.memory_backend = Some(MemoryBackend::file(&id, MEMORY, false));
    }
    manifest.argv = Arg::all(argv::build(&manifest.plan));
    manifest.files = sizes(&dir, &method)?;
    manifest.write(&dir)?;
    folder.keep();
    Ok(Saved {
        dir,
        manifest,
        paused,
        total: start.elapsed(),
    })
}

/// Whether the guest runs (`true`) or is paused (`false`); any other state is refused.
pub async fn run_state(src: &Source<'_>) -> Result<bool, SnapshotError> {
    let status = call(src.qmp, src.name, "query-status", json!({})).await?;
    match status.get("status").and_then(Value::as_str) {
        Some("running") => Ok(true),
        Some("paused") => Ok(false),
        other => Err(SnapshotError::NotRunning {
            name: src.name.to_owned(),
            state: other.unwrap_or("in an unknown state").to_owned(),
        }),
    }
}

/// The emulator's version (from the QMP greeting) and its binary's hash.
fn qemu_build(src: &Source<'_>) -> Result<QemuBuild, SnapshotError> {
    let v = src.qmp.greeting().version;
    let path = &src.plan.binary;
    let sha256 = binhash::sha256_of(path).map_err(SnapshotError::io("cannot read", path))?;
    Ok(QemuBuild {
        path: path.clone(),
        version: format!("{}.{}.{}", v.major, v.minor, v.micro),
        sha256,
    })
}

/// The machine type's versioned name and its default RAM id, from the running QEMU.
async fn machine_facts(src: &Source<'_>) -> Result<(String, Option<String>), SnapshotError> {
    let kind = &src.plan.machine.kind;
    let machines = call(src.qmp, src.name, "query-machines", json!({})).await?;
    let found = machines.as_array().into_iter().flatten().find(|m| {
        m.get("name").and_then(Value::as_str) == Some(kind)
            || m.get("alias").and_then(Value::as_str) == Some(kind)
    });
    let field = |k: &str| found.and_then(|m| m.get(k)?.as_str().map(str::to_owned));
    Ok((
        field("name").unwrap_or_else(|| kind.clone()),
        field("default-ram-id"),
    ))
}

/// The manifest as far as it is known before the pause.
fn draft(src: &Source<'_>, qemu: QemuBuild, machine_type: String, method: Method) -> Manifest {
    let plan = src.plan;
    let mut restore = plan.clone();
    restore.machine.kind = machine_type.clone();
    restore.notes.clear();
    // Sockets are placed in each instance's own directory at launch: by file name here.
    if let Some(a) = restore.agent.as_mut() {
        a.socket = crate::plan::AgentPlan::SOCKET.into();
    }
    let built = argv::build(plan);
    let devices = built
        .windows(2)
        .filter(|w| w[0] == "-device")
        .map(|w| w[1].to_string_lossy().into_owned())
        .collect();
    Manifest {
        format: super::manifest::FORMAT,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        source: src.name.to_owned(),
        arch: plan.arch.clone(),
        memory: plan.memory,
        accel: plan.accel,
        machine_type,
        cpu: plan.cpu.as_ref().map(|c| c.qemu_value()),
        host_cpu: (plan.accel == Accel::Kvm).then(host_cpu_identity),
        devices,
        qemu,
        method,
        disks: Vec::new(),
        inputs: Vec::new(),
        plan: restore,
        argv: Vec::new(),
        files: Vec::new(),
        notes: super::clone_notes(plan),
    }
}

/// Restores start QEMU without the kernel, initrd and command line (the conversion found it
/// loads the state without them): the guest runs the kernel in its memory.
fn without_boot_files(m: &mut Manifest) {
    let Some(k) = m.plan.kernel.take() else {
        return;
    };
    m.inputs
        .retain(|i| !matches!(i.what.as_str(), "kernel" | "initrd"));
    m.method.why.push(
        "restores start QEMU without -kernel, -initrd and -append: the guest runs the kernel \
         in its memory, and QEMU loads the state without them (the conversion did)"
            .into(),
    );
    m.notes.push(format!(
        "booted from kernel {}{}, command line {:?}",
        k.kernel.display(),
        k.initrd
            .map(|i| format!(", initrd {}", i.display()))
            .unwrap_or_default(),
        k.append
    ));
}

/// Step 2: the disks, the UEFI variable store and the stream, while the guest is paused.
async fn freeze_and_stream(
    src: &Source<'_>,
    dir: &Path,
    method: &Method,
    manifest: &mut Manifest,
) -> Result<(), SnapshotError> {
    let qemu_img = crate::vm::find_qemu_img(&src.plan.binary);
    let (disks, frozen) = disks::freeze(src.plan, dir, qemu_img.as_deref()).await?;
    manifest.plan.disks = disks;
    manifest.disks = frozen;
    manifest.inputs = disks::inputs(src.plan)?;
    freeze_vars(src.plan, dir, &mut manifest.plan)?;
    let state = dir.join(STATE);
    let uri = outgoing::file_uri(method.transport, &state)?;
    let what = format!("saving the guest's state to {}", state.display());
    outgoing::migrate(src.qmp, src.name, &uri, &[], &what, Some(&state)).await?;
    private(&state, 0o400)
}

/// The UEFI variable store as it is now, into the folder as `vars.fd`: restores copy it as
/// their own store, as a launch copies the firmware's template.
fn freeze_vars(
    plan: &LaunchPlan,
    dir: &Path,
    restore: &mut LaunchPlan,
) -> Result<(), SnapshotError> {
    let (Some(fw), Some(restore_fw)) =
        (&plan.descriptor_firmware, &mut restore.descriptor_firmware)
    else {
        return Ok(());
    };
    let Some(vars) = &fw.vars else {
        return Ok(());
    };
    let to = dir.join(super::VARS);
    fs::copy(vars, &to).map_err(SnapshotError::io(
        "cannot copy the UEFI variable store to",
        &to,
    ))?;
    private(&to, 0o400)?;
    restore_fw.selected.nvram_template = Some(super::VARS.into());
    restore_fw.vars = Some(crate::host::firmware::vars_file_name(&plan.name).into());
    Ok(())
}

/// Sets a file's mode: a snapshot holds the guest's memory, which is nobody else's business.
fn private(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(SnapshotError::io("cannot set the mode of", path))
}

/// The sizes of the state files.
fn sizes(dir: &Path, method: &Method) -> Result<Vec<FileSize>, SnapshotError> {
    let mut names = vec![STATE];
    if method.memory == Memory::File {
        names.push(MEMORY);
    }
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(n);
            let m = fs::metadata(&p).map_err(SnapshotError::io("cannot read", &p))?;
            Ok(FileSize {
                name: n.to_owned(),
                bytes: m.len(),
                allocated: m.blocks() * 512,
            })
        })
        .collect()
}

/// The snapshot's folder while it is being written: removed again, with what was made in
/// it, unless [`Folder::keep`] is called.
struct Folder {
    path: PathBuf,
    /// Whether the folder itself was made here (else it existed, empty, and stays).
    made: bool,
    kept: bool,
}

impl Folder {
    /// A new folder at `dir` (its parent must exist), or `dir` if it is an empty folder.
    fn claim(dir: &Path) -> Result<Folder, SnapshotError> {
        let path = std::path::absolute(dir).map_err(SnapshotError::io("cannot use", dir))?;
        let made = match fs::read_dir(&path) {
            Ok(entries) => {
                if entries.into_iter().next().is_some() {
                    return Err(SnapshotError::DirNotEmpty { dir: path });
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(SnapshotError::io("cannot make the folder", &path))?;
                true
            }
            Err(e) => return Err(SnapshotError::io("cannot use the folder", &path)(e)),
        };
        Ok(Folder {
            path,
            made,
            kept: false,
        })
    }

    /// The snapshot is complete: keep it.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if self.made {
            let _ = fs::remove_dir_all(&self.path);
        } else if let Ok(entries) = fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A QMP peer whose guest is in run state `state`.
    async fn qmp_in_state(state: &'static str) -> Qmp {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(client);
        let (sr, mut sw) = tokio::io::split(server);
        tokio::spawn(async move {
            let mut lines = BufReader::new(sr).lines();
            sw.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&line).unwrap();
                let ret = match req["execute"].as_str() {
                    Some("query-status") => json!({"status": state, "running": false}),
                    _ => json!({}),
                };
                let reply = json!({"return": ret, "id": req["id"]}).to_string() + "\n";
                sw.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        Qmp::handshake(cr, cw).await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_running_or_paused_guest_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let plan: LaunchPlan = serde_json::from_value(json!({
            "name": "vm", "arch": "x86_64", "binary": "/usr/bin/qemu-system-x86_64",
            "accel": "tcg", "accel_reason": "", "machine": {"type": "q35", "options": []},
            "cpu": null, "memory": "512M", "smp": 1, "kernel": null, "disks": [],
            "console": {"via": "serial", "kernel_name": "ttyS0"}, "notes": []
        }))
        .unwrap();
        for (state, ok) in [
            ("running", true),
            ("paused", true),
            ("inmigrate", false),
            ("postmigrate", false),
            ("shutdown", false),
        ] {
            let qmp = qmp_in_state(state).await;
            let src = Source {
                name: "vm",
                qmp: &qmp,
                plan: &plan,
                runtime_root: dir.path(),
            };
            assert_eq!(run_state(&src).await.is_ok(), ok, "{state}");
            if ok {
                continue;
            }
            let snap = dir.path().join(state);
            let e = save(&src, &snap, &SnapshotOptions::default())
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("instance 'vm' is {state}, not running or paused: nothing to save")
            );
            assert!(!snap.exists(), "nothing made for {state}");
        }
    }

    #[test]
    fn a_folder_is_new_or_empty_and_goes_again_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        drop(Folder::claim(&new).unwrap());
        assert!(!new.exists(), "a folder made here goes again");
        std::fs::create_dir(&new).unwrap();
        let f = Folder::claim(&new).unwrap();
        std::fs::write(new.join("state"), "partial").unwrap();
        drop(f);
        assert!(new.is_dir(), "an empty folder that was there stays");
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 0, "emptied again");
        std::fs::write(new.join("mine"), "x").unwrap();
        assert!(matches!(
            Folder::claim(&new),
            Err(SnapshotError::DirNotEmpty { .. })
        ));
        let kept = dir.path().join("kept");
        Folder::claim(&kept).unwrap().keep();
        assert!(kept.is_dir());
    }
}
