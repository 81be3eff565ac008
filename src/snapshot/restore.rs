//! Restoring a snapshot: [`Restore`] checks the folder against this host and emulator before
//! anything starts, then launches its plan through [`VmBuilder`] with an incoming state
//! ([`Incoming`]), so the restored guest is an instance like a booted one.

use std::path::{Path, PathBuf};

use super::{MEMORY, STATE, SnapshotError, binhash, disks, manifest::Manifest, method::Memory};
use crate::{
    argv,
    host::{KvmBlocker, KvmState, caps::host_cpu_identity},
    plan::LaunchPlan,
    profile::{Accel, arch::Arch},
    util::size::MemSize,
    vm::{Incoming, Vm, VmBuilder},
};

/// A snapshot about to be restored: [`Vm::restore`] makes one, checked; settings as on
/// [`VmBuilder`], then [`Restore::launch`].
///
/// ```no_run
/// # async fn demo() -> Result<(), qemu_direct::snapshot::SnapshotError> {
/// use qemu_direct::vm::Vm;
///
/// let vm = Vm::restore("snap")?.name("clone-1").launch().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Restore {
    dir: PathBuf,
    manifest: Manifest,
    name: Option<String>,
    builder: Option<VmBuilderSettings>,
    notes: Vec<String>,
}

/// Settings passed through to the [`VmBuilder`].
#[derive(Debug, Clone, Default)]
struct VmBuilderSettings {
    runtime_dir: Option<PathBuf>,
    console_log: Option<PathBuf>,
    console_log_dir: Option<PathBuf>,
    echo_stderr: bool,
}

impl Vm {
    /// A restore of the snapshot in `dir`, checked against this host and emulator: see
    /// [`Restore`].
    pub fn restore(dir: impl AsRef<Path>) -> Result<Restore, SnapshotError> {
        Restore::open(dir.as_ref())
    }
}

impl Restore {
    /// Reads the snapshot in `dir` and checks it: the manifest's format, the command line its
    /// plan builds, the QEMU binary (same build: its sha256), the frozen disks and the files
    /// below them, the kernel and firmware, the state files, and that the guest can run here
    /// (its accelerator; under KVM, the same host CPU).
    pub fn open(dir: &Path) -> Result<Restore, SnapshotError> {
        let dir = std::path::absolute(dir).map_err(SnapshotError::io("cannot use", dir))?;
        let manifest = Manifest::read(&dir)?;
        let notes = check(&dir, &manifest)?;
        Ok(Restore {
            dir,
            manifest,
            name: None,
            builder: None,
            notes,
        })
    }

    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The snapshot's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance's name; without one, the snapshot's source name, or `NAME-2`, `NAME-3`,
    /// ... while that is taken.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// See [`VmBuilder::runtime_dir`].
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings().runtime_dir = Some(dir.into());
        self
    }

    /// See [`VmBuilder::console_log`].
    pub fn console_log(mut self, path: Option<PathBuf>) -> Self {
        self.settings().console_log = path;
        self
    }

    /// See [`VmBuilder::console_log_dir`].
    pub fn console_log_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.settings().console_log_dir = dir;
        self
    }

    /// See [`VmBuilder::echo_stderr`].
    pub fn echo_stderr(mut self, yes: bool) -> Self {
        self.settings().echo_stderr = yes;
        self
    }

    fn settings(&mut self) -> &mut VmBuilderSettings {
        self.builder.get_or_insert_with(Default::default)
    }

    /// Refuses a memory size other than the snapshot's (`--memory` with `--restore`).
    pub fn check_memory(&self, given: MemSize) -> Result<(), SnapshotError> {
        self.contradicts("memory", given, self.manifest.memory)
    }

    /// Refuses an architecture other than the snapshot's (`--arch` with `--restore`).
    pub fn check_arch(&self, given: Arch) -> Result<(), SnapshotError> {
        self.contradicts("arch", given, self.manifest.arch.clone())
    }

    fn contradicts<T: PartialEq + std::fmt::Display>(
        &self,
        flag: &'static str,
        given: T,
        saved: T,
    ) -> Result<(), SnapshotError> {
        if given == saved {
            return Ok(());
        }
        Err(SnapshotError::Contradicts {
            dir: self.dir.clone(),
            flag,
            given: given.to_string(),
            saved: saved.to_string(),
        })
    }

    /// The plan a restore runs: the snapshot's, its files in the snapshot's folder, under
    /// its instance name.
    pub fn plan(&self) -> LaunchPlan {
        let mut plan = resolved_plan(&self.manifest.plan, &self.dir);
        if let Some(name) = &self.name {
            plan.name = name.clone();
        }
        plan.notes.push(format!(
            "restored from {} (snapshot of '{}' taken {})",
            self.dir.display(),
            self.manifest.source,
            self.manifest.created
        ));
        plan.notes.extend(self.notes.iter().cloned());
        plan
    }

    /// Whether the instance name was chosen ([`Restore::name`]); if not, a taken default
    /// name moves on to `NAME-2`, ...
    pub fn named(&self) -> bool {
        self.name.is_some()
    }

    /// Where the state comes from, and how QEMU reads it.
    pub fn incoming(&self) -> Incoming {
        let mut incoming = Incoming::file(self.dir.join(STATE));
        for c in &self.manifest.method.capabilities {
            incoming = incoming.capability(c);
        }
        incoming
    }

    /// The [`VmBuilder`] for the restore, with the settings given here.
    pub fn builder(&self) -> VmBuilder {
        let s = self.builder.clone().unwrap_or_default();
        let mut b = Vm::builder(self.plan())
            .unique_name(!self.named())
            .console_log(s.console_log)
            .console_log_dir(s.console_log_dir)
            .echo_stderr(s.echo_stderr)
            .incoming(Some(self.incoming()));
        if let Some(d) = s.runtime_dir {
            b = b.runtime_dir(d);
        }
        b
    }

    /// Starts QEMU with the snapshot's plan, loads its state, and lets the guest run; returns
    /// once it runs. A state QEMU cannot load fails with QEMU's own words, and leaves nothing.
    pub async fn launch(self) -> Result<Vm, SnapshotError> {
        Ok(self.builder().launch().await?)
    }
}

/// The snapshot's plan with its files (named relative to the folder) at their place in `dir`.
pub(super) fn resolved_plan(saved: &LaunchPlan, dir: &Path) -> LaunchPlan {
    let mut plan = saved.clone();
    let inside = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    for d in &mut plan.disks {
        inside(&mut d.disk.path);
    }
    if let Some(p) = plan.memory_backend.as_mut().and_then(|m| m.path.as_mut()) {
        inside(p);
    }
    if let Some(t) = plan
        .descriptor_firmware
        .as_mut()
        .and_then(|f| f.selected.nvram_template.as_mut())
    {
        inside(t);
    }
    plan
}

/// Everything [`Restore::open`] checks, in order; notes on what changed without mattering.
fn check(dir: &Path, m: &Manifest) -> Result<Vec<String>, SnapshotError> {
    if let Some(diff) = m.argv_differs(&argv::build(&m.plan)) {
        return Err(SnapshotError::ArgvChanged {
            dir: dir.to_owned(),
            diff,
        });
    }
    check_qemu(dir, m)?;
    let mut files = vec![STATE];
    if m.method.memory == Memory::File {
        files.push(MEMORY);
    }
    for f in files {
        if !dir.join(f).is_file() {
            return Err(SnapshotError::NotASnapshot {
                dir: dir.to_owned(),
                why: format!("its {f} file is missing"),
            });
        }
    }
    let notes = disks::check(dir, &m.disks, &m.inputs)?;
    check_host(dir, m)?;
    Ok(notes)
}

/// The same QEMU build: the binary at the manifest's path, with the same sha256.
fn check_qemu(dir: &Path, m: &Manifest) -> Result<(), SnapshotError> {
    let changed = |now: String| SnapshotError::QemuChanged {
        dir: dir.to_owned(),
        path: m.qemu.path.clone(),
        was_version: m.qemu.version.clone(),
        was_hash: m.qemu.sha256.clone(),
        now,
    };
    if m.qemu.path != m.plan.binary {
        return Err(SnapshotError::Manifest {
            path: dir.join(super::MANIFEST),
            why: format!(
                "its QEMU {} is not its plan's {}",
                m.qemu.path.display(),
                m.plan.binary.display()
            ),
        });
    }
    match binhash::sha256_of(&m.qemu.path) {
        Ok(h) if h == m.qemu.sha256 => Ok(()),
        Ok(h) => {
            let version = version_of(&m.qemu.path)
                .map_or_else(|| "another build".to_owned(), |v| format!("QEMU {v}"));
            Err(changed(format!("{version} (sha256 {:.12})", h)))
        }
        Err(e) => Err(changed(format!("unreadable ({e})"))),
    }
}

/// What `binary --version` says its version is.
fn version_of(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    crate::host::parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The guest runs here as it ran: under TCG the same QEMU build runs any CPU it ran; under
/// KVM, KVM must be usable and the host CPU the same, as a saved CPU state holds the host's
/// features.
pub(super) fn check_host(dir: &Path, m: &Manifest) -> Result<(), SnapshotError> {
    if m.accel == Accel::Tcg {
        return Ok(());
    }
    let refuse = |why: String| SnapshotError::CannotRunHere {
        dir: dir.to_owned(),
        why,
    };
    let device = PathBuf::from("/dev/kvm");
    match KvmState::probe(&device) {
        KvmState::Usable => {}
        state => {
            let why = KvmBlocker::Device { device, state };
            return Err(refuse(format!(
                "the snapshot ran under KVM, which is not usable here: {why}"
            )));
        }
    }
    if m.host_cpu.as_deref() != Some(host_cpu_identity().as_str()) {
        return Err(refuse(
            "the snapshot ran under KVM on another host CPU (or kernel): its CPU state may \
             hold features this one lacks"
                .into(),
        ));
    }
    Ok(())
}
