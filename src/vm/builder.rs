//! How a guest is launched: [`VmBuilder`], its settings, and [`VmBuilder::launch`] as its
//! steps (see [`super::launch`]).

use std::{path::PathBuf, sync::Arc};

use super::{
    Pool, Vm, VmError, background,
    console::lock,
    incoming::{Incoming, Opened},
    launch::{handshake, prepare, spawn, virtiofs, watch},
    shared::Shared,
};
use crate::{instance, plan::LaunchPlan};

/// Settings for [`Vm::launch`]; [`Vm::builder`] makes one.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    plan: LaunchPlan,
    runtime_dir: Option<PathBuf>,
    console_log: Option<PathBuf>,
    console_log_dir: Option<PathBuf>,
    unique_name: bool,
    echo_stderr: bool,
    pool: Option<Pool>,
    background: bool,
    incoming: Option<Incoming>,
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
    /// failing with [`InstanceError::NameTaken`](crate::instance::InstanceError::NameTaken).
    pub fn unique_name(mut self, yes: bool) -> Self {
        self.unique_name = yes;
        self
    }

    /// Copies QEMU's stderr to ours as it comes (it is kept for the report either way).
    pub fn echo_stderr(mut self, yes: bool) -> Self {
        self.echo_stderr = yes;
        self
    }

    /// Takes the guest's state from a migration instead of booting it: a snapshot's state
    /// file, or a live migration to listen for (see [`Incoming`]).
    pub fn incoming(mut self, incoming: Option<Incoming>) -> Self {
        self.incoming = incoming;
        self
    }

    /// Whether the guest's state comes from a snapshot's state file (a restore, a clone),
    /// rather than a boot or a live migration.
    pub fn restores(&self) -> bool {
        self.incoming
            .as_ref()
            .is_some_and(|i| matches!(i.from, super::IncomingFrom::File(_)))
    }

    /// Waits for a place in `pool` before launching; the [`Vm`] holds it until dropped.
    pub fn pool(mut self, pool: &Pool) -> Self {
        self.pool = Some(pool.clone());
        self
    }

    /// Launches on the library's own runtime, a thread that lives as long as the process,
    /// instead of the caller's: the guest then outlives the caller's runtime, as a guest that
    /// several tests share (kept in a static) must. See docs/rust-api.md.
    pub fn background(mut self, yes: bool) -> Self {
        self.background = yes;
        self
    }

    /// Starts QEMU and returns once the guest runs: the instance directory made and locked,
    /// QMP connected and negotiated, the guest's CPUs started.
    ///
    /// QEMU dies with the thread that spawned it (`PR_SET_PDEATHSIG`), and the tasks that
    /// watch it run on the launching runtime: when that runtime shuts down, QEMU is killed and
    /// the [`Vm`]'s calls fail with [`VmError::RuntimeGone`]. [`VmBuilder::background`] launches
    /// on a runtime that lives as long as the process.
    pub async fn launch(mut self) -> Result<Vm, VmError> {
        let permit = match &self.pool {
            Some(pool) => Some(pool.acquire().await),
            None => None,
        };
        let mut vm = if std::mem::take(&mut self.background) {
            let handle = background::handle()?;
            match handle.spawn(self.launch_here()).await {
                Ok(launched) => launched?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(VmError::Io(std::io::Error::other(e))),
            }
        } else {
            self.launch_here().await?
        };
        vm.permit = permit;
        Ok(vm)
    }

    /// [`VmBuilder::launch`] on the current runtime.
    async fn launch_here(self) -> Result<Vm, VmError> {
        // A state file that cannot be read fails before anything is made.
        let opened = self.incoming.as_ref().map(Opened::open).transpose()?;
        let adopt = self.incoming.as_ref().is_some_and(|i| i.adopt_disks);
        let (plan, inst) = prepare::instance(
            self.plan,
            self.runtime_dir.as_deref(),
            self.unique_name,
            adopt,
        )
        .await?;
        let logs = prepare::Logs::create(
            &inst,
            &plan.name,
            self.console_log,
            self.console_log_dir.as_deref(),
        )?;
        let events = prepare::events(&inst)?;
        let sup_path = inst.path(instance::SUPERVISOR_QMP);
        // Until they are supervised, the daemons die with this vector (kill on drop).
        let daemons = virtiofs::start(&plan, &inst)?;
        let spawned = spawn::qemu(&plan, &inst, opened.as_ref())?;
        let info = spawn::info(&plan, spawned.pid, logs.durable_path());
        let shared = Arc::new(Shared::new(spawned.pid, spawned.pidfd, inst, info));
        let dir = lock(&shared.instance).dir().to_owned();
        // Until the Vm exists, a failure, or the caller dropping this future, must not leave
        // QEMU running: the tasks that own it would keep it alive.
        let abort = Abort(Some(&shared));
        virtiofs::supervise(daemons, &shared);
        // `ps` and `stop` know the pid from now on, even if QMP never answers.
        shared.set_state("prelaunch");
        let (console, errlog) =
            watch::start(&plan.name, spawned.pipes, logs, self.echo_stderr, &shared);
        let start = match (self.incoming, opened) {
            (Some(i), Some(o)) => handshake::Start::Incoming(i, o),
            _ => handshake::Start::Boot,
        };
        let (qmp, accel) = handshake::run(&sup_path, &shared, &errlog, events, plan.accel, start)
            .await
            .map_err(|e| handshake::explain(e, &plan, &errlog, &dir))?;
        shared.set_ssh_port(super::ssh::forwarded_port(&plan, &qmp).await?);
        abort.disarm();
        Ok(Vm {
            plan,
            dir,
            accel,
            qmp,
            console,
            shared,
            errlog,
            home: tokio::runtime::Handle::current(),
            agent: tokio::sync::OnceCell::new(),
            permit: None,
        })
    }
}

/// Kills QEMU and removes the instance directory when dropped, unless disarmed.
struct Abort<'a>(Option<&'a Shared>);

impl Abort<'_> {
    /// The launch succeeded: the [`Vm`] owns QEMU from now on.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abort<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.kill();
            shared.remove_instance();
        }
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
            pool: None,
            background: false,
            incoming: None,
        }
    }

    /// Launches `plan` with the default settings: see [`VmBuilder::launch`].
    pub async fn launch(plan: LaunchPlan) -> Result<Vm, VmError> {
        Vm::builder(plan).launch().await
    }
}
