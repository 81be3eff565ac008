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
use crate::{plan::LaunchPlan, profile::Accel, qmp::Qmp};

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

    /// The run state last seen (`running`, `paused`, `shutdown`, ...).
    pub fn state(&self) -> String {
        self.shared.state.borrow().clone()
    }

    /// Waits for QEMU to exit and reports how the run ended; then removes the instance
    /// directory. Cancel-safe, and may be called again.
    pub async fn wait(&self) -> Result<Report, VmError> {
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
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shared.kill();
        self.shared.remove_instance();
    }
}
