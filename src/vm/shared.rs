//! What the tasks around one QEMU share: its exit, the first failure seen, its run state, the
//! instance directory; and the two tasks that act on them, the reaper and the guard.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::{
    PANIC_GRACE, VmError,
    console::lock,
    process::{Exit, PidFd},
    stop::{self, Owned, StopStep},
};
use crate::{
    instance::{self, Instance, InstanceInfo},
    qmp::Qmp,
};

/// A reason the guest is finished although QEMU may still run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A kernel panic line on the console; QEMU normally exits by itself soon after.
    ConsolePanic(String),
    /// QEMU says the guest panicked (event or run state).
    Panicked(String),
    /// The hypervisor gave up (KVM internal error, run state `internal-error`).
    Crashed(String),
    /// The console log could not be written.
    Log,
}

/// What the tasks around one QEMU share.
pub(crate) struct Shared {
    pub(super) pid: u32,
    pidfd: Option<PidFd>,
    pub(super) exit: watch::Sender<Option<Exit>>,
    /// The first failure seen.
    pub(super) failure: watch::Sender<Option<Failure>>,
    pub(super) state: watch::Sender<String>,
    pub(super) shutdown_reason: Mutex<Option<String>>,
    pub(super) stop_step: Mutex<Option<StopStep>>,
    pub(super) stderr_done: watch::Sender<bool>,
    pub(super) log_error: Mutex<Option<VmError>>,
    pub(super) instance: Mutex<Instance>,
    pub(super) info: Mutex<InstanceInfo>,
    /// The runtime that ran the tasks around QEMU shut down before QEMU was reaped.
    runtime_gone: AtomicBool,
}

impl Shared {
    /// The state of a QEMU just spawned (run state `prelaunch`, nothing ended yet).
    pub(super) fn new(
        pid: u32,
        pidfd: Option<PidFd>,
        instance: Instance,
        info: InstanceInfo,
    ) -> Shared {
        Shared {
            pid,
            pidfd,
            exit: watch::Sender::new(None),
            failure: watch::Sender::new(None),
            state: watch::Sender::new("prelaunch".into()),
            shutdown_reason: Mutex::new(None),
            stop_step: Mutex::new(None),
            stderr_done: watch::Sender::new(false),
            log_error: Mutex::new(None),
            instance: Mutex::new(instance),
            info: Mutex::new(info),
            runtime_gone: AtomicBool::new(false),
        }
    }

    /// Records a failure; the first one wins.
    pub(crate) fn fail(&self, f: Failure) {
        self.failure.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(f);
                true
            } else {
                false
            }
        });
    }

    /// Records the run state, also in `info.json` for `ps`.
    pub(crate) fn set_state(&self, state: &str) {
        self.state.send_replace(state.to_owned());
        let mut info = lock(&self.info);
        info.state = state.to_owned();
        // Best effort: `ps` shows a stale state rather than the guest being stopped over it.
        let _ = lock(&self.instance).write_json(instance::INFO, &*info);
    }

    /// Records the host port forwarded to the guest's 22, also in `info.json`.
    pub(crate) fn set_ssh_port(&self, port: Option<u16>) {
        let mut info = lock(&self.info);
        info.ssh_port = port;
        let _ = lock(&self.instance).write_json(instance::INFO, &*info);
    }

    /// Whether QEMU has been reaped.
    pub(super) fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Sends SIGKILL, unless QEMU has exited; through the pidfd, so never to a recycled pid.
    pub(super) fn kill(&self) {
        if self.exited() {
            return;
        }
        match &self.pidfd {
            Some(fd) => {
                let _ = fd.signal(Signal::SIGKILL);
            }
            None => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    Signal::SIGKILL,
                );
            }
        }
    }

    /// Waits for QEMU to be reaped; how it ended.
    pub(super) async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            // The sender lives in `self`, so this cannot fail while we wait.
            let _ = rx.changed().await;
        }
    }

    /// [`Shared::wait_exit`] for at most `limit`.
    pub(super) async fn wait_exit_for(&self, limit: Duration) -> Option<Exit> {
        tokio::time::timeout(limit, self.wait_exit()).await.ok()
    }

    /// Removes the instance directory (best effort: it may be gone already).
    pub(super) fn remove_instance(&self) {
        let _ = lock(&self.instance).remove();
    }

    /// Whether the runtime that launched this QEMU has shut down: then nothing watches it any
    /// more, and QEMU has been killed.
    pub(crate) fn runtime_gone(&self) -> bool {
        self.runtime_gone.load(Ordering::SeqCst)
    }
}

/// Notices the reaper being dropped before QEMU was reaped, which happens when the runtime it
/// runs on shuts down (the test that launched a guest kept in a static ended, say). With the
/// tasks gone nothing would ever report QEMU's end, so calls would wait forever: instead QEMU
/// is killed (the reaper's child, `kill_on_drop`, is too), the instance directory removed, and
/// the run marked as lost, which every later call on the [`super::Vm`] reports at once.
struct RuntimeWatch<'a>(&'a Shared);

impl Drop for RuntimeWatch<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        if shared.exited() {
            return;
        }
        shared.runtime_gone.store(true, Ordering::SeqCst);
        shared.kill();
        shared.remove_instance();
        shared.state.send_replace("runtime-gone".into());
        shared.exit.send_replace(Some(Exit::Lost(
            "the tokio runtime that launched it shut down, and QEMU was killed with it".into(),
        )));
    }
}

/// Reaps QEMU and announces how it ended.
pub(super) async fn reap(mut child: tokio::process::Child, shared: Arc<Shared>) {
    let _watch = RuntimeWatch(&shared);
    let exit = match child.wait().await {
        Ok(s) => Exit::Status(s),
        Err(e) => Exit::Lost(e.to_string()),
    };
    shared.exit.send_replace(Some(exit));
}

/// Stops QEMU once the guest has failed: at once, or after [`PANIC_GRACE`] for a console
/// panic, from which `panic=-1 -no-reboot` normally ends QEMU by itself.
pub(super) async fn guard(shared: Arc<Shared>, qmp: Qmp) {
    let mut rx = shared.failure.subscribe();
    let failure = tokio::select! {
        f = rx.wait_for(Option::is_some) => match f {
            Ok(f) => f.clone(),
            Err(_) => return,
        },
        _ = shared.wait_exit() => return,
    };
    if matches!(failure, Some(Failure::ConsolePanic(_)))
        && shared.wait_exit_for(PANIC_GRACE).await.is_some()
    {
        return;
    }
    stop::hard_stop(&qmp, &Owned::after_failure(&shared)).await;
}
