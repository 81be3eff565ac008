//! Local live migration: a second instance with the same plan listens for the guest
//! ([`Incoming::listen`]: `-incoming defer`, `migrate-incoming unix:DIR/migrate.sock`, the
//! source's disk overlays hard-linked in, as migration with shared storage needs), the source
//! migrates to it while the guest runs, the destination is seen running, and the source quits.
//! The guest notices nothing but the pause at the end (QEMU's `downtime`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    SnapshotError,
    outgoing::{self, Stats, call},
    save::{Source, run_state},
};
use crate::{
    profile::Accel,
    qmp::Qmp,
    vm::{Incoming, MIGRATE_SOCKET, Vm},
};

/// How long the destination may take to run once the migration completed.
pub const RUNNING_WAIT: Duration = Duration::from_secs(30);

/// A live migration done: the guest in its new instance, and what QEMU reported.
#[derive(Debug)]
pub struct Migrated {
    /// The destination, running the guest.
    pub vm: Vm,
    /// The migration as QEMU reported it (its downtime: the pause the guest saw).
    pub stats: Stats,
}

impl Vm {
    /// Migrates the guest live into a new instance `name` on this host (same plan, same QEMU,
    /// the disks shared), then ends this one. The guest keeps running, paused only for QEMU's
    /// downtime at the end; a paused guest stays paused.
    pub async fn migrate_to(self, name: &str) -> Result<Migrated, SnapshotError> {
        let root = self.dir().parent().unwrap_or(Path::new("/")).to_owned();
        let src = Source {
            name: self.name(),
            qmp: self.qmp(),
            plan: self.plan(),
            runtime_root: &root,
        };
        let running = run_state(&src).await?;
        runs_here(&src)?;
        let mut plan = self.plan().clone();
        plan.name = name.to_owned();
        let dest = Vm::builder(plan)
            .runtime_dir(&root)
            .incoming(Some(Incoming::listen().resume(running)))
            .launch()
            .await?;
        let stats = match live(&src, dest.dir()).await {
            Ok(s) => s,
            Err(e) => {
                dest.kill();
                let _ = dest.wait().await;
                return Err(e);
            }
        };
        wait_state(dest.qmp(), dest.name(), running).await?;
        self.quit().await;
        let _ = self.wait().await;
        Ok(Migrated { vm: dest, stats })
    }
}

/// The destination can run the guest's CPU: on this host, with the same QEMU, a TCG guest
/// always can; a KVM one needs KVM usable, as `cpu compare` would say.
pub fn runs_here(src: &Source<'_>) -> Result<(), SnapshotError> {
    if src.plan.accel == Accel::Tcg {
        return Ok(());
    }
    let device = std::path::PathBuf::from("/dev/kvm");
    match crate::host::KvmState::probe(&device) {
        crate::host::KvmState::Usable => Ok(()),
        state => Err(SnapshotError::CannotRunHere {
            dir: device.clone(),
            why: crate::host::KvmBlocker::Device { device, state }.to_string(),
        }),
    }
}

/// Migrates `src` live to the destination listening in `dest_dir`, and waits for the end.
pub async fn live(src: &Source<'_>, dest_dir: &Path) -> Result<Stats, SnapshotError> {
    let sock = dest_dir.join(MIGRATE_SOCKET);
    let uri = format!(
        "unix:{}",
        sock.to_str().ok_or_else(|| SnapshotError::Io {
            action: "QEMU's migration URIs take UTF-8 paths only, not",
            path: sock.clone(),
            source: std::io::Error::other("not UTF-8"),
        })?
    );
    let what = format!("migrating '{}' to {}", src.name, dest_dir.display());
    outgoing::migrate(src.qmp, src.name, &uri, &[], &what, None).await
}

/// Waits until the destination runs (`running`), or is paused (`!running`) with the
/// migration completed.
pub async fn wait_state(qmp: &Qmp, name: &str, running: bool) -> Result<(), SnapshotError> {
    let start = Instant::now();
    let want = if running { "running" } else { "paused" };
    let mut last = String::new();
    while start.elapsed() < RUNNING_WAIT {
        let status = call(qmp, name, "query-status", serde_json::json!({})).await?;
        last = status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if last == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(SnapshotError::Migration {
        what: format!("the migration to '{name}'"),
        why: format!(
            "the destination is still {last} after {}",
            humantime::format_duration(RUNNING_WAIT)
        ),
        free: None,
    })
}
