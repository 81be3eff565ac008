//! Boot once, run many: snapshots of a running guest, restores and clones of them, and local
//! live migration.
//!
//! A snapshot is a folder:
//!
//! ```text
//! DIR/manifest.json   what it is and what a restore checks (Manifest), written last
//! DIR/state           QEMU's migration stream: the devices (and the RAM, without a memory file)
//! DIR/memory          the guest's RAM, sparse, mapped copy-on-write by restores
//! DIR/diskN.qcow2     disk N frozen: the guest's writes so far over the user's image
//! DIR/vars.fd         with UEFI firmware: the variable store as it was
//! ```
//!
//! [`save()`] takes one of a running guest ([`Vm::snapshot`], `qemu-direct snapshot`); see
//! [`mod@save`] for its steps and [`method`] for how the RAM and the stream are
//! stored on each QEMU version. [`Vm::restore`] checks one and launches it
//! ([`Restore`]): the snapshot's plan started with `-incoming defer` through the ordinary
//! launcher ([`crate::vm::VmBuilder::incoming`]), new throw-away overlays over the frozen
//! disks, the RAM mapped private from the memory file, so any number of restores (clones) run
//! at once and share the pages none of them wrote. [`Vm::migrate_to`] moves a guest live into
//! a new instance ([`migrate`]).
//!
//! ```no_run
//! # async fn demo(vm: qemu_direct::vm::Vm) -> Result<(), qemu_direct::snapshot::SnapshotError> {
//! use qemu_direct::vm::Vm;
//!
//! vm.snapshot("snap").await?;
//! let clones = [Vm::restore("snap")?.launch().await?, Vm::restore("snap")?.launch().await?];
//! # Ok(()) }
//! ```

mod binhash;
mod convert;
mod disks;
mod error;
pub mod manifest;
pub mod method;
pub mod migrate;
mod outgoing;
mod reseed;
mod restore;
pub mod save;

use std::path::Path;

pub use error::SnapshotError;
pub use manifest::Manifest;
pub use method::{Memory, Method, Transport};
pub use migrate::Migrated;
pub use outgoing::Stats;
pub use reseed::{RESEED_BYTES, reseed, reseed_through};
pub use restore::Restore;
pub use save::{Saved, SnapshotOptions, Source, save};

use crate::{plan::LaunchPlan, vm::Vm};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The migration stream's file name.
pub const STATE: &str = "state";
/// The memory file's name.
pub const MEMORY: &str = "memory";
/// The frozen UEFI variable store's name.
pub const VARS: &str = "vars.fd";

impl Vm {
    /// Takes a snapshot of the guest into `dir` (a new or empty folder), resuming it
    /// afterwards: see [`save()`].
    pub async fn snapshot(&self, dir: impl AsRef<Path>) -> Result<Saved, SnapshotError> {
        self.snapshot_with(dir, &SnapshotOptions::default()).await
    }

    /// [`Vm::snapshot`] with options.
    pub async fn snapshot_with(
        &self,
        dir: impl AsRef<Path>,
        opts: &SnapshotOptions,
    ) -> Result<Saved, SnapshotError> {
        let root = self.dir().parent().unwrap_or(Path::new("/")).to_owned();
        let src = Source {
            name: self.name(),
            qmp: self.qmp(),
            plan: self.plan(),
            runtime_root: &root,
        };
        save(&src, dir.as_ref(), opts).await
    }
}

/// What every restore of one snapshot has in common, which a user running clones must know.
pub(crate) fn clone_notes(plan: &LaunchPlan) -> Vec<String> {
    let mut notes = vec![
        "clones of this snapshot share everything the guest held when it was taken: its \
         hostname, /etc/machine-id, the kernel's random pool and any user-space random \
         generator already seeded, its clock (which jumps to the host's time only if the \
         guest resyncs it)"
            .to_owned(),
    ];
    notes.push(if plan.agent.is_some() {
        "`run --restore` reseeds the kernel's random pool through the guest agent \
         (Vm::reseed); the rest stays shared"
            .to_owned()
    } else {
        "not reseeded: the plan has no guest agent channel to do it through; reseed inside \
         the guest (e.g. write fresh bytes to /dev/urandom) where clones must differ"
            .to_owned()
    });
    if !plan.nics.is_empty() {
        notes.push(
            "every clone's network card has the same MAC address; harmless on QEMU's user \
             network, where each guest has a network of its own"
                .to_owned(),
        );
    }
    notes
}

/// `57.3 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
