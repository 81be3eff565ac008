//! Running a plan: a [`Vm`] is one QEMU process with its instance directory, its console and
//! its QMP connection, from launch to the report of how it ended.
//!
//! ```no_run
//! # async fn demo(plan: qemu_direct::plan::LaunchPlan) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use qemu_direct::vm::Vm;
//!
//! let vm = Vm::launch(plan).await?;
//! vm.console().wait_for(r"GUEST-READY", vm.scale(Duration::from_secs(30))).await?;
//! let status = vm.qmp().query_status().await?;
//! assert_eq!(status.status, "running");
//! let report = vm.shutdown(Duration::from_secs(30)).await?;
//! println!("{}", report.outcome);
//! # Ok(()) }
//! ```
//!
//! How a launch avoids races: the launcher binds both QMP sockets itself, in the instance
//! directory, and hands QEMU the listening descriptors (`-chardev socket,fd=N,server=on`), so
//! the sockets exist before QEMU runs. QEMU starts with its CPUs stopped (`-S`); the launcher
//! connects, subscribes to events, asks which accelerator QEMU uses (`query-kvm`), and only
//! then lets the guest run (`cont`), so no event is missed.
//!
//! QEMU 7.2 serves one client per monitor, so there are two: `qmp-supervisor.sock`, held by the
//! launcher for the instance's life (events, run state), and `qmp.sock`, free for clients such
//! as `qemu-direct qmp` (one at a time).
//!
//! A guest is watched for failure three ways: the console (a kernel panic line), QMP (the
//! `GUEST_PANICKED` event; the run states `guest-panicked` and `internal-error`, in which QEMU
//! stays up but the guest is finished) and QEMU's stderr ("KVM internal error"). QEMU is then
//! stopped, and [`Vm::wait`] reports the failure.

mod console;
mod events;
mod overlay;
mod process;
mod run;

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::net::UnixListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::sys::signal::Signal;
use tokio::sync::watch;

pub use console::{Console, ConsoleError, Expect, LogReader, MAX_LINE, Matcher, Verdict};
pub use run::{Outcome, Report, RunOptions, run, run_vm};

use crate::{
    argv,
    host::firmware::{self, FirmwareError},
    instance::{self, Instance, InstanceError, InstanceInfo},
    plan::LaunchPlan,
    profile::Accel,
    qmp::{Qmp, QmpError},
};
use console::{Progress, Sinks, Watcher, lock};
use process::{ErrLog, Exit, PidFd, describe};

/// What the kernel prints when it panics; with `panic=-1 -no-reboot` QEMU then exits 0, so
/// this line is how a panic is told from a clean power-off.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// What QEMU prints on stderr when KVM cannot go on; QEMU then stops the guest but stays up.
pub const KVM_INTERNAL_ERROR: &str = "KVM internal error";
/// How long a panicking guest gets to reboot (and so end QEMU) before we stop it.
pub const PANIC_GRACE: Duration = Duration::from_secs(5);
/// Console lines kept for reports.
pub const TAIL_LINES: usize = 20;
/// How long the stop ladder waits for the guest to power off, unless told otherwise.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long QEMU gets to exit after `quit` before SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How long QEMU may take to start and answer on QMP.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than under KVM things take under TCG, for default timeouts: [`scale`].
pub const TCG_SLOWDOWN: u32 = 5;
/// A QMP command the launcher itself sends gets this long.
const QMP_CALL: Duration = Duration::from_secs(5);
/// How long SIGKILL may take.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long the readers get to take what QEMU wrote before it exited.
const DRAIN: Duration = Duration::from_secs(2);

/// A default timeout for this accelerator: `base` under KVM, [`TCG_SLOWDOWN`] times `base`
/// under TCG, which emulates every instruction.
pub fn scale(accel: Accel, base: Duration) -> Duration {
    match accel {
        Accel::Kvm => base,
        Accel::Tcg => base * TCG_SLOWDOWN,
    }
}

/// Why a guest could not be launched or watched.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The console log could not be written.
    #[error("cannot write console log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The instance directory.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The UEFI variable store could not be made, or the plan's firmware is inconsistent.
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// A QMP socket could not be made.
    #[error("cannot create QMP socket {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before it answered on QMP, usually over its command line.
    #[error("QEMU exited while starting ({status}){}", stderr.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Startup {
        /// Its exit status.
        status: String,
        /// The last thing it said on stderr.
        stderr: Option<String>,
    },
    /// QEMU did not answer on QMP in time.
    #[error("QEMU did not answer on QMP within {}", humantime::format_duration(*.0))]
    StartupTimeout(Duration),
    /// The supervisor's QMP connection failed while starting.
    #[error("QMP with QEMU failed while starting")]
    Qmp(#[source] QmpError),
    /// Reading QEMU's output or waiting for it failed.
    #[error("lost contact with QEMU")]
    Io(#[from] std::io::Error),
    /// A disk that does not persist needs `qemu-img` for its overlay.
    #[error(
        "qemu-img is not installed (looked beside {} and on PATH); it makes the overlays that take the writes to disks without persist",
        emulator.display()
    )]
    NoQemuImg {
        /// The emulator beside which it was looked for.
        emulator: PathBuf,
    },
    /// `qemu-img` could not make a disk's overlay.
    #[error("cannot make the overlay of disk {}: {why}", image.display())]
    Overlay {
        /// The image.
        image: PathBuf,
        /// What qemu-img said.
        why: String,
    },
    /// QEMU could not lock a disk image: another process (a QEMU) has it open.
    #[error("disk image {image} is in use by another process (QEMU: {detail})")]
    ImageLocked {
        /// The image, as QEMU names it.
        image: String,
        /// Whether this guest's disk persists (wants the write lock); `None` if unknown.
        persist: Option<bool>,
        /// QEMU's words, e.g. `Failed to get "write" lock`.
        detail: String,
    },
}

impl VmError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            VmError::Instance(i) => i.hint(),
            VmError::NoQemuImg { .. } => Some(
                "install the Debian package qemu-utils, or give the disk persist (writes then reach the image)".into(),
            ),
            VmError::ImageLocked {
                persist: Some(true),
                ..
            } => Some(
                "drop persist from this disk (it then gets an overlay of its own, which works \
                 while the other guests only read the image), or stop the guest using the image \
                 first (qemu-direct ps)"
                    .into(),
            ),
            VmError::ImageLocked {
                persist: Some(false),
                ..
            } => Some(
                "a guest writes to this image (persist), so no overlay can be made over it: stop \
                 that guest first (qemu-direct ps), or drop its persist"
                    .into(),
            ),
            VmError::ImageLocked { .. } => {
                Some("stop the other guest using the image first (qemu-direct ps)".into())
            }
            _ => None,
        }
    }
}

/// Which step of the stop ladder ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pid: u32,
    pidfd: Option<PidFd>,
    exit: watch::Sender<Option<Exit>>,
    /// The first failure seen.
    failure: watch::Sender<Option<Failure>>,
    state: watch::Sender<String>,
    shutdown_reason: Mutex<Option<String>>,
    stop_step: Mutex<Option<StopStep>>,
    stderr_done: watch::Sender<bool>,
    log_error: Mutex<Option<VmError>>,
    instance: Mutex<Instance>,
    info: Mutex<InstanceInfo>,
}

impl Shared {
    /// The state of a QEMU just spawned (run state `prelaunch`, nothing ended yet).
    fn new(pid: u32, pidfd: Option<PidFd>, instance: Instance, info: InstanceInfo) -> Shared {
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

    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Sends SIGKILL, unless QEMU has exited; through the pidfd, so never to a recycled pid.
    fn kill(&self) {
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

    async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            // The sender lives in `self`, so this cannot fail while we wait.
            let _ = rx.changed().await;
        }
    }

    async fn wait_exit_for(&self, limit: Duration) -> Option<Exit> {
        tokio::time::timeout(limit, self.wait_exit()).await.ok()
    }

    /// `quit`, then SIGKILL. `requested` marks the stop as asked for, not a failure's doing.
    async fn hard_stop(&self, qmp: &Qmp, requested: bool) -> StopStep {
        if self.exited() {
            return StopStep::AlreadyExited;
        }
        if requested {
            *lock(&self.stop_step) = Some(StopStep::Quit);
        }
        let _ = tokio::time::timeout(QMP_CALL, qmp.quit()).await;
        if self.wait_exit_for(QUIT_GRACE).await.is_some() {
            return StopStep::Quit;
        }
        if requested {
            *lock(&self.stop_step) = Some(StopStep::Killed);
        }
        self.kill();
        let _ = self.wait_exit_for(KILL_GRACE).await;
        StopStep::Killed
    }

    fn remove_instance(&self) {
        let _ = lock(&self.instance).remove();
    }
}

/// Reaps QEMU and announces how it ended.
async fn reap(mut child: tokio::process::Child, shared: Arc<Shared>) {
    let exit = match child.wait().await {
        Ok(s) => Exit::Status(s),
        Err(e) => Exit::Lost(e.to_string()),
    };
    shared.exit.send_replace(Some(exit));
}

/// Stops QEMU once the guest has failed: at once, or after [`PANIC_GRACE`] for a console
/// panic, from which `panic=-1 -no-reboot` normally ends QEMU by itself.
async fn guard(shared: Arc<Shared>, qmp: Qmp) {
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
    shared.hard_stop(&qmp, false).await;
}

/// Settings for [`Vm::launch`]; [`Vm::builder`] makes one.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    plan: LaunchPlan,
    runtime_dir: Option<PathBuf>,
    console_log: Option<PathBuf>,
    console_log_dir: Option<PathBuf>,
    unique_name: bool,
    echo_stderr: bool,
}

impl VmBuilder {
    /// Puts the instance directory under `dir` instead of [`instance::runtime_root`]. `dir` is
    /// created 0700 if missing, and must be private to this user.
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Also writes the console to this file (created or truncated), which outlives the
    /// instance; `None` (the default) writes only the instance's own `console.log`.
    pub fn console_log(mut self, path: Option<PathBuf>) -> Self {
        self.console_log = path;
        self
    }

    /// Unless [`VmBuilder::console_log`] names a file, also writes the console to
    /// `DIR/NAME.log`, named after the instance's final name.
    pub fn console_log_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.console_log_dir = dir;
        self
    }

    /// If a live instance has the plan's name, takes `NAME-2`, `NAME-3`, ... instead of
    /// failing with [`InstanceError::NameTaken`].
    pub fn unique_name(mut self, yes: bool) -> Self {
        self.unique_name = yes;
        self
    }

    /// Copies QEMU's stderr to ours as it comes (it is kept for the report either way).
    pub fn echo_stderr(mut self, yes: bool) -> Self {
        self.echo_stderr = yes;
        self
    }

    /// Starts QEMU and returns once the guest runs: the instance directory made and locked,
    /// QMP connected and negotiated, the guest's CPUs started.
    ///
    /// QEMU dies with the thread that spawned it (`PR_SET_PDEATHSIG`): on a multi-thread
    /// runtime that is a worker thread, which lives as long as the runtime.
    pub async fn launch(self) -> Result<Vm, VmError> {
        let qemu_img = overlay::qemu_img_for(&self.plan)?;
        let root = match &self.runtime_dir {
            Some(d) => {
                instance::private_dir(d)?;
                d.clone()
            }
            None => instance::runtime_root()?,
        };
        let mut plan = self.plan;
        let inst = Instance::create(&root, &plan.name, self.unique_name)?;
        plan.name = inst.name().to_owned();
        if let Some(qemu_img) = &qemu_img {
            // On failure the instance, and so the overlays made so far, are removed.
            overlay::create_all(&mut plan, qemu_img, inst.dir()).await?;
        }
        // The VM's own UEFI variable store, beside everything else of the instance (and gone
        // with it); the descriptor's template is only read.
        if let Some(fw) = plan.descriptor_firmware.as_mut() {
            if let Some(template) = &fw.selected.nvram_template {
                fw.vars = Some(firmware::copy_vars(template, inst.dir(), &plan.name)?);
            }
        }
        inst.write_json(instance::PLAN, &plan)?;

        let log_err = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Log { path, source }
        };
        let live_path = inst.path(instance::CONSOLE);
        let live = File::create(&live_path).map_err(log_err(&live_path))?;
        let console_file = File::open(&live_path).map_err(log_err(&live_path))?;
        let durable_path = self.console_log.clone().or_else(|| {
            self.console_log_dir
                .as_ref()
                .map(|d| d.join(format!("{}.log", plan.name)))
        });
        let durable = match &durable_path {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(log_err(path))?;
                }
                Some((File::create(path).map_err(log_err(path))?, path.clone()))
            }
            None => None,
        };
        let events_path = inst.path(instance::EVENTS);
        let events_file = File::create(&events_path).map_err(log_err(&events_path))?;

        let bind = |path: &Path| {
            UnixListener::bind(path).map_err(|source| VmError::Socket {
                path: path.to_owned(),
                source,
            })
        };
        let sup_path = inst.path(instance::SUPERVISOR_QMP);
        let sup = bind(&sup_path)?;
        let client = bind(&inst.path(instance::QMP))?;
        let mut argv = argv::build(&plan);
        argv.extend(argv::monitors(sup.as_raw_fd(), client.as_raw_fd()));
        let mut child =
            process::spawn(&argv, &[sup.as_raw_fd(), client.as_raw_fd()]).map_err(|source| {
                VmError::Spawn {
                    binary: plan.binary.clone(),
                    source,
                }
            })?;
        // QEMU has its own copies; ours would keep the sockets listening after QEMU died, and
        // a connection to them waiting forever.
        drop((sup, client));
        let pid = child.id().unwrap_or_default();
        let pidfd = PidFd::open(pid).ok();
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;

        let info = InstanceInfo {
            name: plan.name.clone(),
            arch: plan.arch.to_string(),
            accel: plan.accel,
            pid,
            supervisor_pid: std::process::id(),
            started: instance::now_secs(),
            state: "prelaunch".into(),
            console_log: durable.as_ref().map(|d| d.1.clone()),
        };
        let shared = Arc::new(Shared::new(pid, pidfd, inst, info));
        let dir = lock(&shared.instance).dir().to_owned();
        // Until the Vm exists, a failure, or the caller dropping this future, must not leave
        // QEMU running: the tasks that own it would keep it alive.
        let mut abort = Abort(Some(&shared));
        // `ps` and `stop` know the pid from now on, even if QMP never answers.
        shared.set_state("prelaunch");
        let (progress, progress_rx) = watch::channel(Progress::default());
        let watcher = Arc::new(Mutex::new(Watcher::default()));
        let errlog = Arc::new(Mutex::new(ErrLog::default()));
        tokio::spawn(reap(child, shared.clone()));
        tokio::spawn(console::pump(
            stdout,
            Sinks {
                live: (live, live_path.clone()),
                durable,
            },
            progress,
            watcher.clone(),
            shared.clone(),
        ));
        tokio::spawn(process::pump_stderr(
            stderr,
            self.echo_stderr,
            errlog.clone(),
            shared.clone(),
        ));
        let console = Console::new(console_file, live_path, durable_path, progress_rx, watcher);

        let started = async {
            let qmp = connect(&sup_path, &shared, &errlog).await?;
            let accel = match tokio::time::timeout(QMP_CALL, qmp.query_kvm()).await {
                Ok(Ok(k)) if k.enabled => Accel::Kvm,
                Ok(Ok(_)) => Accel::Tcg,
                _ => plan.accel,
            };
            lock(&shared.info).accel = accel;
            shared.set_state("prelaunch");
            // Subscribed before the guest runs: no event can be missed.
            let events = qmp.events();
            tokio::spawn(events::record(
                events,
                qmp.clone(),
                events_file,
                shared.clone(),
            ));
            tokio::spawn(guard(shared.clone(), qmp.clone()));
            match tokio::time::timeout(QMP_CALL, qmp.cont()).await {
                Ok(Ok(())) => Ok((qmp, accel)),
                Ok(Err(e)) => Err(startup_error(&shared, &errlog, VmError::Qmp(e)).await),
                Err(_) => Err(VmError::StartupTimeout(QMP_CALL)),
            }
        };
        let (qmp, accel) = match started.await {
            Ok(r) => r,
            Err(e @ VmError::Startup { .. }) => {
                let locked = overlay::locked_image(&lock(&errlog).text());
                return Err(match locked {
                    Some((image, detail)) => overlay::lock_error(&plan, image, detail),
                    None => e,
                });
            }
            Err(e) => return Err(e),
        };
        abort.0 = None;
        drop(abort);
        Ok(Vm {
            plan,
            dir,
            accel,
            qmp,
            console,
            shared,
            errlog,
        })
    }
}

/// Kills QEMU and removes the instance directory when dropped, unless disarmed.
struct Abort<'a>(Option<&'a Shared>);

impl Drop for Abort<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.kill();
            shared.remove_instance();
        }
    }
}

fn missing(what: &str) -> VmError {
    VmError::Io(std::io::Error::other(format!(
        "QEMU's {what} is not a pipe"
    )))
}

/// Connects to the supervisor's QMP socket and negotiates, while watching QEMU: if it exits
/// first, the error says so with its last words.
async fn connect(path: &Path, shared: &Shared, errlog: &Mutex<ErrLog>) -> Result<Qmp, VmError> {
    let handshake = Qmp::connect_unix(path);
    tokio::select! {
        r = tokio::time::timeout(STARTUP_TIMEOUT, handshake) => match r {
            Ok(Ok(qmp)) => Ok(qmp),
            Ok(Err(e)) => Err(startup_error(shared, errlog, VmError::Qmp(e)).await),
            Err(_) => Err(VmError::StartupTimeout(STARTUP_TIMEOUT)),
        },
        _ = shared.wait_exit() => Err(startup_error(shared, errlog, VmError::StartupTimeout(STARTUP_TIMEOUT)).await),
    }
}

/// The error for a failed start: QEMU's exit and last stderr line if it exited, else `other`.
async fn startup_error(shared: &Shared, errlog: &Mutex<ErrLog>, other: VmError) -> VmError {
    let Some(exit) = shared.wait_exit_for(DRAIN).await else {
        return other;
    };
    let mut done = shared.stderr_done.subscribe();
    let _ = tokio::time::timeout(DRAIN, done.wait_for(|d| *d)).await;
    VmError::Startup {
        status: describe(&exit),
        stderr: lock(errlog).error_line(),
    }
}

/// A running guest: one QEMU process, its instance directory, console and QMP connection.
///
/// Dropping it kills QEMU (if still running) and removes the instance directory; use
/// [`Vm::shutdown`] to stop the guest gracefully first.
pub struct Vm {
    plan: LaunchPlan,
    dir: PathBuf,
    accel: Accel,
    qmp: Qmp,
    console: Console,
    shared: Arc<Shared>,
    errlog: Arc<Mutex<ErrLog>>,
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
    /// Settings for a launch of `plan`.
    pub fn builder(plan: LaunchPlan) -> VmBuilder {
        VmBuilder {
            plan,
            runtime_dir: None,
            console_log: None,
            console_log_dir: None,
            unique_name: false,
            echo_stderr: false,
        }
    }

    /// Launches `plan` with the default settings: see [`VmBuilder::launch`].
    pub async fn launch(plan: LaunchPlan) -> Result<Vm, VmError> {
        Vm::builder(plan).launch().await
    }

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
        let mut stderr_done = self.shared.stderr_done.subscribe();
        let drained = async {
            self.console.closed().await;
            let _ = stderr_done.wait_for(|d| *d).await;
        };
        let _ = tokio::time::timeout(DRAIN, drained).await;
        self.shared.remove_instance();
        if let Some(e) = lock(&self.shared.log_error).take() {
            return Err(e);
        }
        Ok(Report {
            outcome: self.outcome(&exit),
            console_tail: self.console.tail(),
            stderr_tail: lock(&self.errlog).tail(),
            console_log: self.console.log_path().map(Path::to_owned),
        })
    }

    fn outcome(&self, exit: &Exit) -> Outcome {
        let failure = self.shared.failure.borrow().clone();
        let panic_line = self.console.panic_line();
        let step = *lock(&self.shared.stop_step);
        let reason = lock(&self.shared.shutdown_reason).clone();
        match failure {
            Some(Failure::ConsolePanic(line)) => Outcome::Panicked { line },
            Some(Failure::Panicked(what)) => Outcome::Panicked {
                line: panic_line.unwrap_or(what),
            },
            Some(Failure::Crashed(what)) => Outcome::Crashed {
                reason: lock(&self.errlog).kvm_error.clone().unwrap_or(what),
            },
            Some(Failure::Log) | None if exit.success() => match (reason.as_deref(), step) {
                (Some("guest-shutdown"), _) => Outcome::PoweredOff,
                (_, Some(step)) => Outcome::Stopped {
                    by: step.to_string(),
                },
                (Some("host-qmp-quit"), None) => Outcome::Stopped {
                    by: "QEMU quit on a QMP request".into(),
                },
                (Some("host-signal"), None) => Outcome::Stopped {
                    by: "QEMU was sent a signal".into(),
                },
                _ => Outcome::PoweredOff,
            },
            _ if step == Some(StopStep::Killed) => Outcome::Stopped {
                by: StopStep::Killed.to_string(),
            },
            _ => Outcome::QemuFailed {
                status: describe(exit),
            },
        }
    }

    /// The stop ladder: `system_powerdown`, up to `timeout` for the guest to power off, then
    /// `quit`, then SIGKILL. Returns which step ended QEMU; [`Vm::wait`] then has the report.
    pub async fn stop(&self, timeout: Duration) -> StopStep {
        if self.shared.exited() {
            return StopStep::AlreadyExited;
        }
        *lock(&self.shared.stop_step) = Some(StopStep::PoweredOff);
        let _ = tokio::time::timeout(QMP_CALL, self.qmp.system_powerdown()).await;
        if self.shared.wait_exit_for(timeout).await.is_some() {
            return StopStep::PoweredOff;
        }
        self.quit().await
    }

    /// Ends QEMU without asking the guest: `quit`, then SIGKILL if QEMU does not exit.
    pub async fn quit(&self) -> StopStep {
        self.shared.hard_stop(&self.qmp, true).await
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
