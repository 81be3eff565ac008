//! Step 4 of a snapshot: the guest's RAM out of the stream into a memory file.
//!
//! A helper QEMU is started with the snapshot's plan, its RAM the folder's `memory` file mapped
//! shared (`share=on`, under the machine type's default RAM id, so that it is the stream's RAM
//! block), and loads `state`: every page it receives lands in the file. It then saves its
//! devices alone (`x-ignore-shared` leaves shared RAM out) into a new `state`. The helper never
//! runs the guest; it is an instance like any other while it lives (`ps` shows it as
//! `NAME-snapshot`).
//!
//! Loading into a shared file mapping is slower than into anonymous memory (each page the
//! stream says is zero is read, and reading a hole of a file mapping faults a page in): this
//! step takes seconds where the pause took a fraction of one, which is why the guest is
//! resumed before it.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use super::{
    MEMORY, STATE, SnapshotError,
    manifest::Manifest,
    method::IGNORE_SHARED,
    outgoing::{self, file_uri},
    restore::resolved_plan,
};
use crate::{
    plan::{LaunchPlan, MemoryBackend},
    vm::{Incoming, Vm, VmError},
};

/// The stream's name while the helper writes it.
const DEVICES: &str = ".state.devices";

/// Turns the folder's `state` (devices and RAM) into `memory` (RAM) and `state` (devices).
/// Returns whether that worked without the plan's boot files (see [`launch_helper`]): then
/// restores start without them too.
pub(super) async fn to_memory_file(
    manifest: &Manifest,
    dir: &Path,
    ram_id: &str,
    runtime_root: &Path,
) -> Result<bool, SnapshotError> {
    let mut plan = resolved_plan(&manifest.plan, dir);
    plan.name = format!("{}-snapshot", manifest.source);
    let memory = dir.join(MEMORY);
    plan.memory_backend = Some(MemoryBackend::file(ram_id, &memory, true));
    let (helper, bootless) = launch_helper(plan, dir, runtime_root).await?;
    let devices = dir.join(DEVICES);
    let uri = file_uri(manifest.method.transport, &devices)?;
    let what = format!("saving the devices to {}", devices.display());
    let caps = [IGNORE_SHARED.to_owned()];
    let saved = outgoing::migrate(
        helper.qmp(),
        helper.name(),
        &uri,
        &caps,
        &what,
        Some(&devices),
    )
    .await;
    helper.quit().await;
    let _ = helper.wait().await;
    saved?;
    let state = dir.join(STATE);
    fs::rename(&devices, &state).map_err(SnapshotError::io("cannot write", &state))?;
    for (file, mode) in [(&state, 0o400), (&memory, 0o600)] {
        // The memory file stays writable by its owner: QEMU before 8.2 opens a memory
        // backend's file read-write even to map it private.
        fs::set_permissions(file, fs::Permissions::from_mode(mode))
            .map_err(SnapshotError::io("cannot set the mode of", file))?;
    }
    Ok(bootless)
}

/// Starts the helper, loading the stream, first without the plan's kernel, initrd and
/// command line: a restored guest runs the kernel in its memory, and a QEMU that need not read
/// a 30 MB kernel at start restores in half the time. Whether QEMU can load the state without
/// them depends on the machine (x86's `-kernel` adds an option ROM, a RAM block the stream
/// has): the helper's load is the test, and on failure it starts again with them. Returns the
/// helper and whether it runs without them.
async fn launch_helper(
    mut plan: LaunchPlan,
    dir: &Path,
    runtime_root: &Path,
) -> Result<(Vm, bool), SnapshotError> {
    let memory = dir.join(MEMORY);
    let launch = |plan: LaunchPlan, echo: bool| {
        Vm::builder(plan)
            .runtime_dir(runtime_root)
            .unique_name(true)
            // Quiet unless something goes wrong, and then its words are wanted.
            .echo_stderr(echo)
            .incoming(Some(Incoming::file(dir.join(STATE)).resume(false)))
            .launch()
    };
    if let Some(kernel) = plan.kernel.take() {
        if let Ok(helper) = launch(plan.clone(), false).await {
            return Ok((helper, true));
        }
        plan.kernel = Some(kernel);
        let _ = fs::remove_file(&memory);
    }
    let helper = launch(plan, true)
        .await
        .map_err(|e| helper_failed(e, &memory))?;
    Ok((helper, false))
}

/// A helper that died while loading: most likely of SIGBUS, its memory file's file system
/// full.
fn helper_failed(e: VmError, memory: &Path) -> SnapshotError {
    match (&e, outgoing::low_space(memory)) {
        (VmError::Startup { status, .. }, Some(free)) => SnapshotError::Migration {
            what: format!("writing the guest's memory to {}", memory.display()),
            why: format!("the QEMU writing it ended ({status})"),
            free: Some(free),
        },
        _ => SnapshotError::Vm(e),
    }
}
