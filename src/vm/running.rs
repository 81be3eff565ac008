//! A running guest, [`Vm`]: what it is, waiting for its end, and stopping it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    Console, DRAIN, Report, VmError,
    console::lock,
    outcome::Ending,
    process::ErrLog,
    scale,
    shared::Shared,
    stop::{self, Owned, StopStep},
};
use crate::{agent::Agent, plan::LaunchPlan, profile::Accel, qmp::Qmp, vm::PoolPermit};

/// A running guest: one QEMU process, its instance directory, console and QMP connection.
///
/// Dropping it kills QEMU (if still running) and removes the instance directory; use
/// [`Vm::shutdown`] to stop the guest gracefully first.
pub struct Vm {
    pub(super) plan: LaunchPlan,
    pub(super) dir: PathBuf,
    pub(super) accel: Accel,
    pub(super) qmp: Qmp,
    pub(super) console: Console,
    pub(super) shared: Arc<Shared>,
    pub(super) errlog: Arc<Mutex<ErrLog>>,
    /// The runtime that launched it, which runs the tasks around QEMU.
    pub(super) home: tokio::runtime::Handle,
    /// The guest agent, once connected ([`Vm::agent`]).
    pub(super) agent: tokio::sync::OnceCell<Agent>,
    /// Its place in a [`super::Pool`], if it was launched through one.
    pub(super) permit: Option<PoolPermit>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.plan.name)
            .field("dir", &self.dir)
            .field("pid", &self.shared.pid)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// The plan it runs, with the instance's final name.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The instance directory (gone once QEMU has exited and [`Vm::wait`] returned).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The accelerator QEMU reports using (`query-kvm`).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// A default timeout scaled for this guest's accelerator: see [`scale`].
    pub fn scale(&self, base: Duration) -> Duration {
        scale(self.accel, base)
    }

    /// The console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The QMP connection (the supervisor's; it is shared with the launcher's own watching,
    /// which it does not disturb).
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// Whether QEMU has exited (and been reaped).
    pub fn exited(&self) -> bool {
        self.shared.exited()
    }

    /// The run state last seen (`running`, `paused`, `shutdown`, ...). Fails with
    /// [`VmError::RuntimeGone`] once the runtime that launched the guest has shut down.
    pub fn state(&self) -> Result<String, VmError> {
        self.alive()?;
        Ok(self.shared.state.borrow().clone())
    }

    /// Fails with [`VmError::RuntimeGone`] if the runtime that launched the guest has shut
    /// down (which killed QEMU); every call that needs the guest's tasks checks this first.
    pub fn alive(&self) -> Result<(), VmError> {
        if self.shared.runtime_gone() {
            return Err(VmError::RuntimeGone {
                name: self.plan.name.clone(),
            });
        }
        Ok(())
    }

    /// Waits for QEMU to exit and reports how the run ended; then removes the instance
    /// directory. Cancel-safe, and may be called again.
    pub async fn wait(&self) -> Result<Report, VmError> {
        self.alive()?;
        let exit = self.shared.wait_exit().await;
        self.drained().await;
        self.shared.remove_instance();
        if let Some(e) = lock(&self.shared.log_error).take() {
            return Err(e);
        }
        Ok(Report {
            outcome: self.ending().outcome(&exit),
            console_tail: self.console.tail(),
            stderr_tail: lock(&self.errlog).tail(),
            console_log: self.console.log_path().map(Path::to_owned),
        })
    }

    /// Gives the readers up to [`DRAIN`] to take what QEMU wrote before it exited.
    async fn drained(&self) {
        let mut stderr_done = self.shared.stderr_done.subscribe();
        let drained = async {
            self.console.closed().await;
            let _ = stderr_done.wait_for(|d| *d).await;
        };
        let _ = tokio::time::timeout(DRAIN, drained).await;
    }

    /// How the run ended, once QEMU has exited.
    pub(super) fn outcome(&self) -> Option<super::Outcome> {
        let exit = self.shared.exit.borrow().clone()?;
        Some(self.ending().outcome(&exit))
    }

    /// What was seen of the run, for its outcome.
    fn ending(&self) -> Ending {
        Ending {
            failure: self.shared.failure.borrow().clone(),
            panic_line: self.console.panic_line(),
            step: *lock(&self.shared.stop_step),
            reason: lock(&self.shared.shutdown_reason).clone(),
            kvm_error: lock(&self.errlog).kvm_error.clone(),
        }
    }

    /// The stop ladder: `system_powerdown`, up to `timeout` for the guest to power off, then
    /// `quit`, then SIGKILL. Returns which step ended QEMU; [`Vm::wait`] then has the report.
    pub async fn stop(&self, timeout: Duration) -> StopStep {
        stop::ladder(&self.qmp, &Owned::requested(&self.shared), timeout).await
    }

    /// Ends QEMU without asking the guest: `quit`, then SIGKILL if QEMU does not exit.
    pub async fn quit(&self) -> StopStep {
        stop::hard_stop(&self.qmp, &Owned::requested(&self.shared)).await
    }

    /// Sends QEMU SIGKILL now (nothing if it has exited).
    pub fn kill(&self) {
        *lock(&self.shared.stop_step) = Some(StopStep::Killed);
        self.shared.kill();
    }

    /// Stops the guest with the stop ladder ([`Vm::stop`]) and reports how the run ended.
    pub async fn shutdown(self, timeout: Duration) -> Result<Report, VmError> {
        self.stop(timeout).await;
        self.wait().await
    }

    /// Ends QEMU at once without asking the guest ([`Vm::quit`]) and reports how the run
    /// ended: for a throw-away guest, or one that ignores the power button, where
    /// [`Vm::shutdown`] would wait its whole timeout.
    pub async fn shutdown_quick(self) -> Result<Report, VmError> {
        self.quit().await;
        self.wait().await
    }

    /// Whether it holds a place in a [`super::Pool`].
    pub fn pooled(&self) -> bool {
        self.permit.is_some()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shared.kill();
        self.shared.remove_instance();
    }
}
