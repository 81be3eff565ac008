//! The stop ladder, one copy for every QEMU: `system_powerdown`, time for the guest to power
//! off, `quit`, [`QUIT_GRACE`] for QEMU to exit, SIGKILL.
//!
//! A guest this process launched ([`super::Vm::stop`], and the launcher's own stop of a failed
//! guest) and an instance another process supervises ([`stop_instance`], `qemu-direct stop`)
//! are asked the same way, over QMP; they differ only in how QEMU is seen to be gone and how
//! it is killed, which a [`Target`] says.

use std::time::Duration;

use tokio::time::timeout;

use super::{KILL_GRACE, QMP_CALL, QUIT_GRACE, Shared, VmError, console::lock, process};
use crate::{
    instance::{self, InstanceInfo, InstanceRef},
    qmp::Qmp,
};

/// How long a client waits for an instance's QMP socket: QEMU serves one client at a time.
pub const CLIENT_CONNECT: Duration = Duration::from_secs(10);
/// How long [`stop_instance`] waits for the supervisor to reap QEMU and remove the directory.
pub const REAP_WAIT: Duration = Duration::from_secs(15);
/// How often [`stop_instance`] looks whether the supervisor is done.
const REAP_POLL: Duration = Duration::from_millis(50);

/// Which step of the stop ladder ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopStep {
    /// The guest powered off after `system_powerdown`.
    PoweredOff,
    /// The guest did not power off in time; QEMU quit on `quit`.
    Quit,
    /// QEMU did not quit either; SIGKILL ended it.
    Killed,
    /// QEMU had exited before the stop.
    AlreadyExited,
}

impl std::fmt::Display for StopStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopStep::PoweredOff => "the guest powered off after system_powerdown",
            StopStep::Quit => "QEMU quit (the guest did not power off in time)",
            StopStep::Killed => "QEMU was killed with SIGKILL (it did not quit)",
            StopStep::AlreadyExited => "QEMU had already exited",
        })
    }
}

/// The QEMU a ladder stops: how to tell it is gone, and how to kill it.
pub(crate) trait Target {
    /// Whether QEMU is known to have exited, without waiting.
    fn exited(&self) -> bool;

    /// Waits up to `limit` for QEMU to exit; whether it did.
    async fn gone_within(&self, limit: Duration) -> bool;

    /// Notes the step about to be taken, for a report that says what ended QEMU.
    fn taking(&self, _step: StopStep) {}

    /// SIGKILL, where QEMU is still there to be killed; the step that then ended it.
    async fn kill(&self) -> StopStep;
}

/// The whole ladder: `system_powerdown`, up to `timeout` for the guest to power off, then
/// [`hard_stop`].
pub(crate) async fn ladder(qmp: &Qmp, target: &impl Target, limit: Duration) -> StopStep {
    if target.exited() {
        return StopStep::AlreadyExited;
    }
    target.taking(StopStep::PoweredOff);
    let _ = timeout(QMP_CALL, qmp.system_powerdown()).await;
    if target.gone_within(limit).await {
        return StopStep::PoweredOff;
    }
    hard_stop(qmp, target).await
}

/// The ladder without asking the guest: `quit`, up to [`QUIT_GRACE`] for QEMU to exit, then
/// SIGKILL.
pub(crate) async fn hard_stop(qmp: &Qmp, target: &impl Target) -> StopStep {
    if target.exited() {
        return StopStep::AlreadyExited;
    }
    target.taking(StopStep::Quit);
    let _ = timeout(QMP_CALL, qmp.quit()).await;
    if target.gone_within(QUIT_GRACE).await {
        return StopStep::Quit;
    }
    target.taking(StopStep::Killed);
    target.kill().await
}

/// A QEMU this process spawned and reaps: its exit is seen directly, and its pidfd kills it.
pub(crate) struct Owned<'a> {
    shared: &'a Shared,
    /// A stop asked for is noted for the report; one the launcher makes after a failure is
    /// not, so that the report names the failure.
    requested: bool,
}

impl<'a> Owned<'a> {
    /// A stop the user asked for.
    pub(crate) fn requested(shared: &'a Shared) -> Owned<'a> {
        Owned {
            shared,
            requested: true,
        }
    }

    /// The launcher's stop of a guest that has failed.
    pub(crate) fn after_failure(shared: &'a Shared) -> Owned<'a> {
        Owned {
            shared,
            requested: false,
        }
    }
}

impl Target for Owned<'_> {
    fn exited(&self) -> bool {
        self.shared.exited()
    }

    async fn gone_within(&self, limit: Duration) -> bool {
        self.shared.wait_exit_for(limit).await.is_some()
    }

    fn taking(&self, step: StopStep) {
        if self.requested {
            *lock(&self.shared.stop_step) = Some(step);
        }
    }

    async fn kill(&self) -> StopStep {
        self.shared.kill();
        let _ = self.shared.wait_exit_for(KILL_GRACE).await;
        StopStep::Killed
    }
}

/// An instance another process supervises, found by name: QEMU is gone when the QMP
/// connection ends, and is killed only while it is still the supervisor's child.
struct Found<'a> {
    inst: &'a InstanceRef,
    info: Option<&'a InstanceInfo>,
    qmp: &'a Qmp,
}

impl Target for Found<'_> {
    /// Only the connection tells, by ending, which takes waiting.
    fn exited(&self) -> bool {
        false
    }

    async fn gone_within(&self, limit: Duration) -> bool {
        timeout(limit, self.qmp.closed()).await.is_ok()
    }

    async fn kill(&self) -> StopStep {
        kill_found(self.inst, self.info)
    }
}

/// Stops an instance another process supervises (`run --detach`): the stop ladder over its
/// client QMP socket, straight to SIGKILL when that does not answer. Returns once the
/// supervisor has reaped QEMU and removed the instance directory.
pub async fn stop_instance(inst: &InstanceRef, limit: Duration) -> Result<StopStep, VmError> {
    let info = inst.info()?;
    let step = match timeout(CLIENT_CONNECT, Qmp::connect_unix(&inst.path(instance::QMP))).await {
        Ok(Ok(qmp)) => {
            let found = Found {
                inst,
                info: info.as_ref(),
                qmp: &qmp,
            };
            ladder(&qmp, &found, limit).await
        }
        // No QMP (QEMU hung, or still starting): straight to SIGKILL.
        _ => kill_found(inst, info.as_ref()),
    };
    reaped(inst, info.as_ref()).await?;
    // A supervisor killed meanwhile leaves its directory behind; drop it.
    if let Some(root) = inst.dir.parent() {
        let _ = instance::find(root, &inst.name);
    }
    Ok(step)
}

/// Waits up to [`REAP_WAIT`] for the supervisor to let go of the instance and finish deleting
/// its directory (renamed out of sight first, so the name alone does not tell).
async fn reaped(inst: &InstanceRef, info: Option<&InstanceInfo>) -> Result<(), VmError> {
    let root = inst.dir.parent();
    let deleting = || match (root, info) {
        (Some(root), Some(info)) => instance::removal_pending(root, info.supervisor_pid),
        _ => false,
    };
    let gone = async {
        while inst.alive() || deleting() {
            tokio::time::sleep(REAP_POLL).await;
        }
    };
    timeout(REAP_WAIT, gone)
        .await
        .map_err(|_| VmError::NotReaped {
            name: inst.name.clone(),
            after: REAP_WAIT,
        })
}

/// SIGKILL to the instance's QEMU, if that pid is still the supervisor's child (and so not a
/// recycled pid).
fn kill_found(inst: &InstanceRef, info: Option<&InstanceInfo>) -> StopStep {
    let Some(info) = info else {
        return StopStep::AlreadyExited;
    };
    if process::parent_of(info.pid) == Some(info.supervisor_pid) && inst.alive() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(info.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        return StopStep::Killed;
    }
    StopStep::AlreadyExited
}
