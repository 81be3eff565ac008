//! Running a guest to its end in the foreground: the console copied to the caller, `--until`,
//! `--timeout`, and SIGINT/SIGTERM running the stop ladder.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use super::{
    STOP_TIMEOUT, Vm, VmError,
    expect::{Expect, Verdict},
};
use crate::{ExitCode, plan::LaunchPlan};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop the guest and fail after this long.
    pub timeout: Option<Duration>,
    /// Stop the guest and succeed once the console prints this text.
    pub until: Option<String>,
    /// Also write the console here (created or truncated), a copy that outlives the instance.
    pub console_log: Option<PathBuf>,
    /// Unless `console_log` is set, write the console to `DIR/NAME.log`, after the instance's
    /// final name (see `unique_name`).
    pub console_log_dir: Option<PathBuf>,
    /// How long SIGINT/SIGTERM wait for the guest to power off before QEMU is made to quit;
    /// [`STOP_TIMEOUT`] if unset.
    pub stop_timeout: Option<Duration>,
    /// If another live instance has the plan's name, take `NAME-2`, `NAME-3`, ... instead of
    /// failing.
    pub unique_name: bool,
    /// Where instance directories live, instead of [`crate::instance::runtime_root`].
    pub runtime_dir: Option<PathBuf>,
    /// Run the stop ladder on SIGINT and SIGTERM, as the `qemu-direct` command does. This
    /// installs process-wide handlers that stay installed after the run (tokio cannot remove
    /// them): the process then no longer dies of Ctrl-C. Off by default, so a library caller's
    /// signals stay its own.
    pub handle_signals: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// QEMU exited 0 and the guest did not panic: a clean power-off.
    PoweredOff,
    /// The `until` text appeared; the launcher stopped QEMU.
    Reached,
    /// QEMU was stopped on request (the stop ladder, `qmp quit`, `qemu-direct stop`).
    Stopped {
        /// Which step ended it.
        by: String,
    },
    /// The guest kernel panicked.
    Panicked {
        /// The panic line, or the event or run state that said so.
        line: String,
    },
    /// QEMU exited with an error or was killed.
    QemuFailed {
        /// Its exit status.
        status: String,
    },
    /// The hypervisor gave up on the guest (KVM internal error, run state `internal-error`).
    Crashed {
        /// What QEMU said.
        reason: String,
    },
    /// The timeout expired.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The guest reset itself (a reboot, or a triple fault) although nobody asked: QEMU runs
    /// with `-no-reboot`, so a reset ends the run, and an unexpected one is a failure.
    GuestReset {
        /// QEMU's shutdown reason (`guest-reset`, `subsystem-reset`).
        reason: String,
    },
    /// The launcher got SIGINT or SIGTERM and stopped QEMU.
    Interrupted {
        /// The signal.
        signal: String,
    },
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::PoweredOff | Outcome::Reached | Outcome::Stopped { .. } => ExitCode::Success,
            Outcome::Panicked { .. } => ExitCode::GuestPanicked,
            Outcome::QemuFailed { .. } => ExitCode::QemuFailed,
            Outcome::Crashed { .. } => ExitCode::GuestCrashed,
            Outcome::GuestReset { .. } => ExitCode::GuestReset,
            Outcome::TimedOut { .. } => ExitCode::Timeout,
            Outcome::Interrupted { .. } => ExitCode::Interrupted,
        }
    }

    /// Whether this is a failure of QEMU or the guest, where the console tail helps.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Panicked { .. }
                | Outcome::QemuFailed { .. }
                | Outcome::Crashed { .. }
                | Outcome::GuestReset { .. }
        )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::PoweredOff => write!(f, "guest powered off"),
            Outcome::Reached => write!(f, "console reached the expected text; guest stopped"),
            Outcome::Stopped { by } => write!(f, "guest stopped: {by}"),
            Outcome::Panicked { line } => write!(f, "guest kernel panicked: {line}"),
            Outcome::QemuFailed { status } => write!(f, "QEMU failed: {status}"),
            Outcome::Crashed { reason } => write!(f, "guest crashed: {reason}"),
            Outcome::GuestReset { reason } => write!(
                f,
                "guest reset itself ({reason}: a reboot or a triple fault), which ends the run \
                 under -no-reboot"
            ),
            Outcome::TimedOut { after } => {
                write!(
                    f,
                    "timed out after {}; guest stopped",
                    humantime::format_duration(*after)
                )
            }
            Outcome::Interrupted { signal } => write!(f, "interrupted by {signal}; guest stopped"),
        }
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// The last part of QEMU's stderr.
    pub stderr_tail: String,
    /// The durable console log, if one was written.
    pub console_log: Option<PathBuf>,
}

/// Starts QEMU for `plan` and runs it to the end, copying the console to `out`.
///
/// QEMU's stderr is copied to ours. The death signal that ties QEMU to this process follows the
/// *thread* that spawned it: call this from a runtime whose thread lives as long as the run,
/// such as a current-thread runtime.
pub async fn run<W: AsyncWrite + Unpin>(
    plan: &LaunchPlan,
    opts: &RunOptions,
    out: &mut W,
) -> Result<Report, VmError> {
    let mut b = Vm::builder(plan.clone())
        .console_log(opts.console_log.clone())
        .console_log_dir(opts.console_log_dir.clone())
        .unique_name(opts.unique_name)
        .echo_stderr(true);
    if let Some(dir) = &opts.runtime_dir {
        b = b.runtime_dir(dir.clone());
    }
    let vm = b.launch().await?;
    run_vm(&vm, opts, out).await
}

type Stopping<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Runs a launched guest to the end: copies its console to `out`, applies `opts.until` and
/// `opts.timeout` (both stop QEMU at once), and with `opts.handle_signals`, on SIGINT or
/// SIGTERM runs the stop ladder ([`Vm::stop`]), saying so on stderr; a second signal kills
/// QEMU. `opts`' launch settings are not used here.
pub async fn run_vm<W: AsyncWrite + Unpin>(
    vm: &Vm,
    opts: &RunOptions,
    out: &mut W,
) -> Result<Report, VmError> {
    let mut reader = vm.console().reader();
    let until = opts.until.as_deref().map(Expect::text);
    let mut matcher = until.as_ref().map(Expect::matcher);
    let mut sigint = opts
        .handle_signals
        .then(|| signal(SignalKind::interrupt()))
        .transpose()?;
    let mut sigterm = opts
        .handle_signals
        .then(|| signal(SignalKind::terminate()))
        .transpose()?;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = opts.timeout.map_or(far, |t| Instant::now() + t);
    let stop_timeout = opts.stop_timeout.unwrap_or(STOP_TIMEOUT);
    let mut stop: Option<Outcome> = None;
    let mut stopping: Option<Stopping<'_>> = None;
    let mut out_open = true;
    let mut reading = true;
    let wait = vm.wait();
    tokio::pin!(wait);

    let report = loop {
        tokio::select! {
            report = &mut wait => break report?,
            chunk = reader.next_chunk(), if reading => {
                let Some(chunk) = chunk? else { reading = false; continue };
                // A reader that goes away (`run | head`) must not stop the guest.
                if out_open && (out.write_all(&chunk).await.is_err() || out.flush().await.is_err()) {
                    out_open = false;
                }
                if stop.is_none() && matches!(matcher.as_mut().and_then(|m| m.feed(&chunk)), Some(Verdict::Found(_))) {
                    stop = Some(Outcome::Reached);
                    stopping = Some(Box::pin(async { vm.quit().await; }));
                }
            }
            _ = sleep_until(deadline), if stop.is_none() => {
                stop = Some(Outcome::TimedOut { after: opts.timeout.unwrap_or_default() });
                stopping = Some(Box::pin(async { vm.quit().await; }));
            }
            _ = received(&mut sigint) => interrupted(vm, "SIGINT", &mut stop, &mut stopping, stop_timeout),
            _ = received(&mut sigterm) => interrupted(vm, "SIGTERM", &mut stop, &mut stopping, stop_timeout),
            _ = async { stopping.as_mut().expect("guarded").await }, if stopping.is_some() => {
                stopping = None;
            }
        }
    };

    // QEMU is gone; copy what it wrote last, bounded in case a grandchild holds the pipe.
    while reading {
        match tokio::time::timeout(Duration::from_secs(2), reader.next_chunk()).await {
            Ok(Ok(Some(chunk))) if out_open => {
                if out.write_all(&chunk).await.is_err() || out.flush().await.is_err() {
                    out_open = false;
                }
            }
            Ok(Ok(Some(_))) => {}
            _ => reading = false,
        }
    }

    let outcome = match (stop, report.outcome) {
        (Some(Outcome::Reached), _) => Outcome::Reached,
        (_, failed @ (Outcome::Panicked { .. } | Outcome::Crashed { .. })) => failed,
        (Some(o), _) => o,
        (None, o) => o,
    };
    Ok(Report { outcome, ..report })
}

/// The next signal, or never without a handler.
async fn received(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The first signal starts the stop ladder; another one, or a signal during another stop,
/// kills QEMU at once.
fn interrupted<'a>(
    vm: &'a Vm,
    signal: &str,
    stop: &mut Option<Outcome>,
    stopping: &mut Option<Stopping<'a>>,
    stop_timeout: Duration,
) {
    if stop.is_none() {
        // The guest may take the whole timeout, or ignore the request: say what is going on.
        eprintln!(
            "qemu-direct: {signal}: asking the guest to power off (up to {}; {signal} again stops QEMU at once)",
            humantime::format_duration(stop_timeout)
        );
        *stop = Some(Outcome::Interrupted {
            signal: signal.into(),
        });
        *stopping = Some(Box::pin(async move {
            let _ = vm.stop(stop_timeout).await;
        }));
    } else {
        if matches!(stop, Some(Outcome::Reached | Outcome::TimedOut { .. })) {
            *stop = Some(Outcome::Interrupted {
                signal: signal.into(),
            });
        }
        vm.kill();
    }
}
