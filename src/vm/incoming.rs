//! A launch that takes the guest's state from a migration instead of booting it: QEMU starts
//! with `-incoming defer`, and the handshake's `cont` becomes migration capabilities,
//! `migrate-incoming`, the wait for the state to arrive, then `cont`. Everything else (the
//! instance directory, console, QMP, events, `ps`/`stop`/`wait`) is the launch of a booted
//! guest. Snapshots restore this way, and local migration's destination listens this way.

use std::{
    fs::File,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{QMP_CALL, VmError, launch::handshake::startup_error, process::ErrLog, shared::Shared};
use crate::{qmp::Qmp, util::pathser};

/// The socket a destination listening for a live migration ([`IncomingFrom::Listen`]) makes in
/// its instance directory.
pub const MIGRATE_SOCKET: &str = "migrate.sock";
/// How long a state file may take to load.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a launched QEMU takes the guest's state from: [`super::VmBuilder::incoming`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incoming {
    /// The state's source.
    pub from: IncomingFrom,
    /// Migration capabilities to turn on first, as QEMU names them (`x-ignore-shared`); they
    /// must match those the state was written with.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Let the guest run once its state has arrived (`cont`); `false` leaves it paused.
    pub resume: bool,
    /// Use the plan's disk overlays and UEFI variable store as they are, hard-linked into the
    /// new instance directory, instead of making new ones: the disks of an instance migrating
    /// to this one, shared as migration with shared storage needs (the source writes them until
    /// the migration completes, then lets go).
    #[serde(default)]
    pub adopt_disks: bool,
}

/// The source of an [`Incoming`] state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IncomingFrom {
    /// A file an outgoing migration wrote (a snapshot's state), handed to QEMU open
    /// (`fd:N`). The launch returns once it has loaded.
    File(#[serde(with = "pathser")] PathBuf),
    /// A live migration: QEMU listens on [`MIGRATE_SOCKET`] in the instance directory. The
    /// launch returns once it listens; the guest runs when the migration completes.
    Listen,
}

impl Incoming {
    /// A snapshot's state file, the guest running once it has loaded.
    pub fn file(path: impl Into<PathBuf>) -> Incoming {
        Incoming {
            from: IncomingFrom::File(path.into()),
            capabilities: Vec::new(),
            resume: true,
            adopt_disks: false,
        }
    }

    /// The destination of a live migration: listens, shares the plan's disks.
    pub fn listen() -> Incoming {
        Incoming {
            from: IncomingFrom::Listen,
            capabilities: Vec::new(),
            resume: true,
            adopt_disks: true,
        }
    }

    /// Turns on a migration capability first.
    pub fn capability(mut self, name: &str) -> Incoming {
        self.capabilities.push(name.to_owned());
        self
    }

    /// Whether to let the guest run once its state has arrived.
    pub fn resume(mut self, yes: bool) -> Incoming {
        self.resume = yes;
        self
    }
}

/// What QEMU needs at spawn: the open state file, whose descriptor it inherits.
pub(in crate::vm) struct Opened {
    file: Option<File>,
}

impl Opened {
    /// Opens the state file, if there is one. A missing or unreadable file fails here, before
    /// QEMU starts.
    pub(in crate::vm) fn open(incoming: &Incoming) -> Result<Opened, VmError> {
        let file = match &incoming.from {
            IncomingFrom::File(path) => {
                Some(File::open(path).map_err(|source| VmError::IncomingFile {
                    path: path.clone(),
                    source,
                })?)
            }
            IncomingFrom::Listen => None,
        };
        Ok(Opened { file })
    }

    /// The descriptors QEMU inherits.
    pub(in crate::vm) fn fds(&self) -> Vec<RawFd> {
        self.file.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The URI `migrate-incoming` takes for it, given the instance directory.
    fn uri(&self, dir: &Path) -> String {
        match &self.file {
            Some(f) => format!("fd:{}", f.as_raw_fd()),
            None => format!("unix:{}", dir.join(MIGRATE_SOCKET).display()),
        }
    }
}

/// The argument QEMU starts with: the state comes once `migrate-incoming` says from where.
pub(in crate::vm) fn argv() -> [&'static str; 2] {
    ["-incoming", "defer"]
}

/// Instead of `cont`: sets the capabilities, starts the incoming migration, and for a file
/// waits for it to load and resumes the guest; for a live migration leaves a task that
/// resumes it once the migration completes.
pub(in crate::vm) async fn start(
    qmp: &Qmp,
    incoming: &Incoming,
    opened: Opened,
    dir: &Path,
    shared: &Arc<Shared>,
    errlog: &Mutex<ErrLog>,
) -> Result<(), VmError> {
    let mut caps: Vec<Value> = incoming
        .capabilities
        .iter()
        .map(|c| json!({"capability": c, "state": true}))
        .collect();
    // MIGRATION events say when the state has arrived.
    caps.push(json!({"capability": "events", "state": true}));
    call(
        qmp,
        "migrate-set-capabilities",
        json!({ "capabilities": caps }),
    )
    .await?;
    let events = qmp.events();
    call(qmp, "migrate-incoming", json!({ "uri": opened.uri(dir) })).await?;
    shared.set_state("inmigrate");
    let arrived = Arrival {
        qmp: qmp.clone(),
        events,
        resume: incoming.resume,
    };
    if opened.file.is_none() {
        tokio::spawn(arrived.wait(None));
        return Ok(());
    }
    let loaded = tokio::select! {
        r = arrived.wait(Some(LOAD_TIMEOUT)) => r,
        _ = shared.wait_exit() => Err(VmError::Incoming {
            why: "QEMU exited while loading the state".into(),
        }),
    };
    match loaded {
        Ok(()) => Ok(()),
        // QEMU exits when a load fails: its own words are better than ours.
        Err(e) => Err(startup_error(shared, errlog, e).await),
    }
}

/// Waiting for the state to arrive.
struct Arrival {
    qmp: Qmp,
    events: crate::qmp::Events,
    resume: bool,
}

impl Arrival {
    /// Waits (up to `limit`) for the MIGRATION event that says the state has arrived, then
    /// resumes the guest if asked.
    async fn wait(mut self, limit: Option<Duration>) -> Result<(), VmError> {
        let arrived = async {
            while let Some(e) = self.events.next_event().await {
                if e.name != "MIGRATION" {
                    continue;
                }
                match e.data.get("status").and_then(Value::as_str) {
                    Some("completed") => return Ok(()),
                    Some(s @ ("failed" | "cancelled")) => return Err(failed(&self.qmp, s).await),
                    _ => {}
                }
            }
            Err(VmError::Incoming {
                why: "QMP closed while the state was arriving".into(),
            })
        };
        match limit {
            Some(l) => {
                tokio::time::timeout(l, arrived)
                    .await
                    .map_err(|_| VmError::Incoming {
                        why: format!(
                            "the state did not arrive within {}",
                            humantime::format_duration(l)
                        ),
                    })??
            }
            None => arrived.await?,
        }
        if self.resume {
            call(&self.qmp, "cont", json!({})).await?;
        }
        Ok(())
    }
}

/// The error for a migration QEMU reports failed, with its own words where it has them.
async fn failed(qmp: &Qmp, status: &str) -> VmError {
    let desc = tokio::time::timeout(QMP_CALL, qmp.execute("query-migrate", None))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|v| v.get("error-desc")?.as_str().map(str::to_owned));
    VmError::Incoming {
        why: match desc {
            Some(d) => format!("migration {status}: {d}"),
            None => format!("migration {status}"),
        },
    }
}

/// A QMP command the launcher sends, with [`QMP_CALL`] to answer.
async fn call(qmp: &Qmp, command: &str, args: Value) -> Result<Value, VmError> {
    match tokio::time::timeout(QMP_CALL, qmp.execute(command, Some(args))).await {
        Ok(r) => r.map_err(VmError::Qmp),
        Err(_) => Err(VmError::StartupTimeout(QMP_CALL)),
    }
}
