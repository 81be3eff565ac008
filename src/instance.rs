//! Instances: one private directory per running guest, found by name.
//!
//! ```text
//! $XDG_RUNTIME_DIR/qemu-direct/        (else /tmp/qemu-direct-<uid>/), mode 0700, ours
//!   <name>/                            mode 0700
//!     lock                 flock(2)ed by the supervisor for as long as it lives
//!     plan.json            the LaunchPlan
//!     info.json            pid, accelerator QEMU reports, run state (rewritten on each change)
//!     qmp.sock             QMP for clients (`qemu-direct qmp`, your tools): one at a time
//!     qmp-supervisor.sock  QMP held by the supervisor for events and run state
//!     console.log          the whole serial console so far
//!     events.jsonl         every QMP event, one JSON object a line
//!     agent.sock           the guest agent's channel (virtio-serial port org.qemu.guest_agent.0)
//!     diskN.qcow2          the overlay taking the guest's writes to disk N, unless it persists
//!     <name>_VARS.fd       with UEFI firmware: the VM's own variable store (firmware::copy_vars)
//! ```
//!
//! The lock is what makes an instance live: a directory whose lock nobody holds belonged to a
//! supervisor that died (SIGKILL, a crash), and is *stale*; [`list`] and [`find`] remove such
//! directories. A directory is built under a dot-name with its lock already held and only then
//! renamed into place, so every visible instance directory is complete, and two launches with
//! one name cannot both win.

use std::{
    fs::{DirBuilder, File, OpenOptions, TryLockError},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{profile::Accel, util::pathser};

/// The lock file the supervisor holds.
pub const LOCK: &str = "lock";
/// The launch plan, as `plan --json` prints it.
pub const PLAN: &str = "plan.json";
/// [`InstanceInfo`].
pub const INFO: &str = "info.json";
/// The QMP socket for clients.
pub const QMP: &str = "qmp.sock";
/// The QMP socket the supervisor holds.
pub const SUPERVISOR_QMP: &str = "qmp-supervisor.sock";
/// The live console log.
pub const CONSOLE: &str = "console.log";
/// QMP events, JSON lines.
pub const EVENTS: &str = "events.jsonl";
/// The guest agent's socket (the plan's [`AgentPlan::socket`](crate::plan::AgentPlan)), unless
/// launched with `--no-agent`: one client at a time talks to `qemu-ga` in the guest through it.
pub const AGENT_SOCKET: &str = crate::plan::AgentPlan::SOCKET;
/// A Unix socket path holds at most this many bytes (`sun_path` is 108 with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// How many `NAME-N` candidates a generated name tries.
const MAX_SUFFIX: u32 = 99;

/// Why an instance directory cannot be made, found or read.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A directory operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The runtime directory is not private to this user.
    #[error("{path} is not safe to use: {why}")]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A live instance already has this name.
    #[error("instance '{name}' is already running{}", pid.map(|p| format!(" (QEMU pid {p})")).unwrap_or_default())]
    NameTaken {
        /// The name.
        name: String,
        /// Its QEMU, if known yet.
        pid: Option<u32>,
    },
    /// Every generated name is in use.
    #[error("no free instance name from '{0}' to '{0}-{MAX_SUFFIX}'")]
    NoFreeName(String),
    /// No live instance has this name.
    #[error("no running instance named '{name}' in {root}")]
    NotFound {
        /// The name.
        name: String,
        /// Where instances live.
        root: PathBuf,
    },
    /// A socket path would not fit `sun_path`.
    #[error("socket path {path} is {len} bytes; Unix sockets take at most {MAX_SOCKET_PATH}")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// `info.json` is unreadable.
    #[error("invalid {path}")]
    Info {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl InstanceError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            InstanceError::NameTaken { name, .. } => Some(format!(
                "stop it first (qemu-direct stop {name}), or choose another --name"
            )),
            InstanceError::NotFound { .. } => Some("qemu-direct ps lists running instances".into()),
            InstanceError::SocketPathTooLong { .. } => {
                Some("use a shorter --name, or point XDG_RUNTIME_DIR at a shorter directory".into())
            }
            _ => None,
        }
    }

    /// Whether the user's input (a name) caused this, rather than the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            InstanceError::NameTaken { .. }
                | InstanceError::NoFreeName(_)
                | InstanceError::NotFound { .. }
                | InstanceError::SocketPathTooLong { .. }
        )
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstanceError + use<> {
    let path = path.to_owned();
    move |source| InstanceError::Io {
        action,
        path,
        source,
    }
}

/// What `ps` shows, kept in `info.json` and rewritten by the supervisor on each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// Guest architecture.
    pub arch: String,
    /// The accelerator QEMU reports using (`query-kvm`), not only the plan's.
    pub accel: Accel,
    /// QEMU's pid.
    pub pid: u32,
    /// The supervising `qemu-direct` process's pid.
    pub supervisor_pid: u32,
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
    /// QEMU's run state (`running`, `paused`, `internal-error`, ...), as last seen.
    pub state: String,
    /// The durable console log, kept after the instance ends.
    #[serde(default, with = "pathser::option")]
    pub console_log: Option<PathBuf>,
}

impl InstanceInfo {
    /// Seconds since [`Self::started`].
    pub fn uptime_secs(&self) -> u64 {
        now_secs().saturating_sub(self.started)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where instance directories live: `$XDG_RUNTIME_DIR/qemu-direct`, or `/tmp/qemu-direct-<uid>`
/// without one; created 0700 if missing, and refused unless it is a directory of ours that
/// nobody else can enter.
pub fn runtime_root() -> Result<PathBuf, InstanceError> {
    let root = match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
    {
        Some(xdg) => xdg.join("qemu-direct"),
        None => PathBuf::from(format!(
            "/tmp/qemu-direct-{}",
            nix::unistd::geteuid().as_raw()
        )),
    };
    private_dir(&root)?;
    Ok(root)
}

/// Where console logs that outlive their instance go by default, as `NAME.log`:
/// `$XDG_STATE_HOME/qemu-direct/logs`, else `~/.local/state/qemu-direct/logs`; `None` with
/// neither variable set.
pub fn log_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(state.join("qemu-direct/logs"))
}

/// Where `export libvirt` writes the cloud-init seeds its domains name, as `NAME/cidata.img`:
/// `$XDG_STATE_HOME/qemu-direct/seeds`, else `~/.local/state/qemu-direct/seeds`.
pub fn seed_dir() -> Option<PathBuf> {
    log_dir().map(|logs| logs.with_file_name("seeds"))
}

/// Creates `path` with mode 0700 if missing, then checks that it is a real directory owned by
/// us that nobody else can use: in a shared `/tmp`, another user could have made it first.
pub(crate) fn private_dir(path: &Path) -> Result<(), InstanceError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("cannot create", path)(e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(io_err("cannot inspect", path))?;
    let insecure = |why: String| InstanceError::Insecure {
        path: path.to_owned(),
        why,
    };
    if !meta.is_dir() {
        return Err(insecure("not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(insecure(format!("owned by uid {}, not {me}", meta.uid())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(insecure(format!(
            "mode {:o}, open to others; it must be 0700",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// Checks that a socket in `dir` fits `sun_path`.
fn check_socket_path(dir: &Path) -> Result<(), InstanceError> {
    let longest = dir.join(SUPERVISOR_QMP);
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(InstanceError::SocketPathTooLong { path: longest, len });
    }
    Ok(())
}

/// A unique dot-name in `root`, never a valid instance name (those start with a letter or digit).
fn scratch_name(root: &Path, kind: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    root.join(format!(
        ".{kind}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Whether an instance directory's lock is held.
enum Liveness {
    /// Its supervisor holds the lock.
    Live,
    /// Nobody did; now we do, so nobody else will remove or reuse it meanwhile.
    Stale(File),
    /// The directory (or its lock file) is gone.
    Gone,
}

fn liveness(dir: &Path) -> Result<Liveness, InstanceError> {
    let lock = dir.join(LOCK);
    let file = match File::open(&lock) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Liveness::Gone),
        Err(e) => return Err(io_err("cannot open", &lock)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Liveness::Stale(file)),
        Err(TryLockError::WouldBlock) => Ok(Liveness::Live),
        Err(TryLockError::Error(e)) => Err(io_err("cannot lock", &lock)(e)),
    }
}

/// Removes a directory in two steps: a rename out of sight (atomic, so the name is free at
/// once and nobody sees it half deleted), then the deletion.
fn remove_dir(root: &Path, dir: &Path, kind: &str) -> Result<(), InstanceError> {
    let away = scratch_name(root, kind);
    match std::fs::rename(dir, &away) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot remove", dir)(e)),
    }
    std::fs::remove_dir_all(&away).map_err(io_err("cannot remove", &away))
}

/// Whether a removal by supervisor `pid` is still deleting a directory it renamed out of sight
/// (see [`remove_dir`]); `stop` waits for it so that nothing is left once it returns.
pub fn removal_pending(root: &Path, pid: u32) -> bool {
    let prefix = format!(".gone-{pid}-");
    std::fs::read_dir(root).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// A stale directory: remove it while holding its lock.
fn drop_stale(root: &Path, dir: &Path, lock: File) -> Result<(), InstanceError> {
    let r = remove_dir(root, dir, "stale");
    drop(lock);
    r
}

/// The instance directory a supervisor owns: it holds the lock, and removes the directory when
/// dropped (or on [`Instance::remove`]).
#[derive(Debug)]
pub struct Instance {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    /// Held for the life of the instance; closing it is what marks the instance ended.
    _lock: File,
    removed: bool,
}

impl Instance {
    /// Creates the directory for `name` under `root`, with its lock held.
    ///
    /// A live instance with that name is an error, unless `unique` asks for a free name made
    /// from it instead (`name`, `name-2`, `name-3`, ...). A stale one is removed first.
    pub fn create(root: &Path, name: &str, unique: bool) -> Result<Instance, InstanceError> {
        check_socket_path(&root.join(name))?;
        let tmp = scratch_name(root, "new");
        DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        let lock_path = tmp.join(LOCK);
        let lock = File::create(&lock_path).map_err(io_err("cannot create", &lock_path))?;
        if let Err(e) = lock.try_lock() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err("cannot lock", &lock_path)(e.into()));
        }
        let result = Self::claim(root, &tmp, name, unique);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let name = result?;
        Ok(Instance {
            dir: root.join(&name),
            name,
            root: root.to_owned(),
            _lock: lock,
            removed: false,
        })
    }

    /// Renames the prepared `tmp` to the first free candidate name.
    fn claim(root: &Path, tmp: &Path, name: &str, unique: bool) -> Result<String, InstanceError> {
        let last = if unique { MAX_SUFFIX } else { 1 };
        for n in 1..=last {
            let candidate = if n == 1 {
                name.to_owned()
            } else {
                format!("{name}-{n}")
            };
            let dir = root.join(&candidate);
            check_socket_path(&dir)?;
            // Twice: once more after removing a stale directory of this name.
            for _ in 0..2 {
                // rename(2) fails on a non-empty target, and every instance holds its lock file.
                match std::fs::rename(tmp, &dir) {
                    Ok(()) => return Ok(candidate),
                    Err(e)
                        if e.kind() == io::ErrorKind::DirectoryNotEmpty
                            || e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("cannot create", &dir)(e)),
                }
                match liveness(&dir)? {
                    Liveness::Live if unique => break,
                    Liveness::Live => {
                        let pid = read_info(&dir).ok().flatten().map(|i| i.pid);
                        return Err(InstanceError::NameTaken {
                            name: candidate,
                            pid,
                        });
                    }
                    Liveness::Stale(lock) => drop_stale(root, &dir, lock)?,
                    // No lock file: not made by us (instances appear whole); out of the way.
                    Liveness::Gone => remove_dir(root, &dir, "stale")?,
                }
            }
        }
        Err(InstanceError::NoFreeName(name.to_owned()))
    }

    /// The instance's name (the one asked for, or the generated one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the instance directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes `value` as JSON to a file in the directory, atomically: readers see the old or
    /// the new contents, never half.
    /// Does nothing once the directory is removed: the name may belong to another instance
    /// by then.
    pub fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), InstanceError> {
        if self.removed {
            return Ok(());
        }
        let path = self.path(file);
        let tmp = self.path(&format!(".{file}.tmp"));
        let mut text = serde_json::to_vec_pretty(value).map_err(|source| InstanceError::Info {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("cannot write", &tmp))?;
        f.write_all(&text).map_err(io_err("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))
    }

    /// Removes the directory now; the lock goes with this value.
    pub fn remove(&mut self) -> Result<(), InstanceError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        remove_dir(&self.root, &self.dir, "gone")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// A live instance seen from outside its supervisor, e.g. by the CLI.
#[derive(Debug, Clone)]
pub struct InstanceRef {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl InstanceRef {
    /// A file in the instance directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Whether its supervisor still holds the lock.
    pub fn alive(&self) -> bool {
        matches!(liveness(&self.dir), Ok(Liveness::Live))
    }

    /// Its `info.json`; `None` while it is still starting.
    pub fn info(&self) -> Result<Option<InstanceInfo>, InstanceError> {
        read_info(&self.dir)
    }
}

fn read_info(dir: &Path) -> Result<Option<InstanceInfo>, InstanceError> {
    let path = dir.join(INFO);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot read", &path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| InstanceError::Info { path, source })
}

/// The live instance named `name`; a stale directory of that name is removed.
pub fn find(root: &Path, name: &str) -> Result<InstanceRef, InstanceError> {
    let not_found = || InstanceError::NotFound {
        name: name.to_owned(),
        root: root.to_owned(),
    };
    // Names are checked on launch; anything else (`..`, `a/b`) cannot be an instance.
    if !crate::util::name::is_valid(name) {
        return Err(not_found());
    }
    let dir = root.join(name);
    match liveness(&dir)? {
        Liveness::Live => Ok(InstanceRef {
            name: name.to_owned(),
            dir,
        }),
        Liveness::Stale(lock) => {
            drop_stale(root, &dir, lock)?;
            Err(not_found())
        }
        Liveness::Gone => Err(not_found()),
    }
}

/// Every live instance, by name, with its info (`None` while starting). Stale directories
/// are removed on the way, and leftovers of interrupted removals swept up.
pub fn list(root: &Path) -> Result<Vec<(InstanceRef, Option<InstanceInfo>)>, InstanceError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).map_err(io_err("cannot read", root))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if name.starts_with(".stale-") || name.starts_with(".gone-") {
            // A removal that was itself interrupted; nobody owns these any more.
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // One odd entry (not ours, unreadable) must not hide the others.
        match liveness(&dir) {
            Ok(Liveness::Live) => {
                let info = read_info(&dir).ok().flatten();
                out.push((InstanceRef { name, dir }, info));
            }
            Ok(Liveness::Stale(lock)) => {
                let _ = drop_stale(root, &dir, lock);
            }
            Ok(Liveness::Gone) | Err(_) => {}
        }
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("qd");
        private_dir(&r).unwrap();
        (t, r)
    }

    #[test]
    fn one_live_instance_per_name() {
        let (_t, root) = root();
        let a = Instance::create(&root, "vm", false).unwrap();
        assert_eq!(a.dir(), root.join("vm"));
        assert_eq!(
            std::fs::metadata(a.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let e = Instance::create(&root, "vm", false).unwrap_err();
        assert!(matches!(e, InstanceError::NameTaken { .. }), "{e}");
        assert_eq!(e.to_string(), "instance 'vm' is already running");
        // A generated name moves on instead.
        let b = Instance::create(&root, "vm", true).unwrap();
        assert_eq!(b.name(), "vm-2");
        let names: Vec<String> = list(&root).unwrap().into_iter().map(|i| i.0.name).collect();
        assert_eq!(names, ["vm", "vm-2"]);
        assert!(find(&root, "vm").unwrap().alive());
        drop(a);
        assert!(!root.join("vm").exists(), "dropped: directory gone");
        assert!(matches!(
            find(&root, "vm"),
            Err(InstanceError::NotFound { .. })
        ));
        drop(b);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn stale_directories_are_dropped_and_their_names_reused() {
        let (_t, root) = root();
        let _live = Instance::create(&root, "vm", false).unwrap();
        // What a supervisor killed with SIGKILL leaves: a directory whose lock nobody holds.
        let stale = root.join("old");
        std::fs::create_dir(&stale).unwrap();
        File::create(stale.join(LOCK)).unwrap();
        let names: Vec<String> = list(&root).unwrap().into_iter().map(|i| i.0.name).collect();
        assert_eq!(names, ["vm"]);
        assert!(!stale.exists(), "stale directory removed by list");
        std::fs::create_dir(&stale).unwrap();
        File::create(stale.join(LOCK)).unwrap();
        let again = Instance::create(&root, "old", false).unwrap();
        assert_eq!(again.name(), "old");
    }

    #[test]
    fn info_is_replaced_whole() {
        let (_t, root) = root();
        let a = Instance::create(&root, "vm", false).unwrap();
        let mut info = InstanceInfo {
            name: "vm".into(),
            arch: "aarch64".into(),
            accel: Accel::Tcg,
            pid: 42,
            supervisor_pid: 41,
            started: now_secs(),
            state: "prelaunch".into(),
            console_log: None,
        };
        a.write_json(INFO, &info).unwrap();
        info.state = "running".into();
        a.write_json(INFO, &info).unwrap();
        let r = find(&root, "vm").unwrap();
        assert_eq!(r.info().unwrap(), Some(info));
    }

    #[test]
    fn unsafe_roots_and_long_paths_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&open).unwrap_err();
        assert!(e.to_string().contains("mode 755"), "{e}");
        let deep = t.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let e = Instance::create(&deep, "vm", false).unwrap_err();
        assert!(matches!(e, InstanceError::SocketPathTooLong { .. }), "{e}");
        assert!(e.hint().unwrap().contains("XDG_RUNTIME_DIR"));
        assert!(matches!(
            find(t.path(), "../etc"),
            Err(InstanceError::NotFound { .. })
        ));
    }
}
