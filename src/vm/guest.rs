//! The one-call launch for harnesses: [`Vm::guest`] describes a guest and
//! [`GuestBuilder::launch`] does the steps of the step-by-step path (profiles, spec, host probe,
//! plan, [`VmBuilder`]) with defaults that suit tests.

use std::path::PathBuf;

use super::{Pool, Vm, VmBuilder, VmError};
use crate::{
    host::{HostFacts, ProbeOptions, caps::CapsCache},
    instance,
    plan::{self, LaunchPlan},
    profile::ProfileSet,
    spec::{AccelRequest, SpecInput, config::Config},
};

/// A guest to launch, with harness defaults; [`Vm::guest`] makes one.
///
/// The defaults: the instance takes the arch as its name, or `NAME-2`, `NAME-3`, ... when
/// that is taken (parallel tests never clash); the console also goes to a log that outlives
/// the instance, `$XDG_STATE_HOME/qemu-direct/logs/NAME.log`, which errors name; the plan is
/// made as `qemu-direct run` makes it, asking the emulator its version (through the
/// capability cache) so that version-gated options apply, but without the config files (a
/// test sees the same guest on every machine unless given a [`Config`]).
#[derive(Debug, Clone)]
pub struct GuestBuilder {
    spec: SpecInput,
    config: Config,
    console_log: Option<PathBuf>,
    console_log_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    pool: Option<Pool>,
    background: bool,
    echo_stderr: bool,
    caps_cache: CapsCache,
}

impl Vm {
    /// A guest of `arch` (`aarch64`, `x86_64`, an alias such as `arm64`) to describe, then
    /// [`GuestBuilder::launch`]:
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use qemu_direct::vm::Vm;
    ///
    /// let vm = Vm::guest("aarch64")
    ///     .kernel("guests/aarch64/kernel")
    ///     .initrd("guests/aarch64/initrd.gz")
    ///     .append("qd.hold=1")
    ///     .launch()
    ///     .await?;
    /// let out = vm.exec("uname", ["-m"]).await?;
    /// assert_eq!(out.stdout, b"aarch64\n");
    /// vm.shutdown_quick().await?;
    /// # Ok(()) }
    /// ```
    pub fn guest(arch: &str) -> GuestBuilder {
        GuestBuilder {
            spec: SpecInput {
                arch: Some(arch.to_owned()),
                ..SpecInput::default()
            },
            config: Config::default(),
            console_log: None,
            console_log_dir: instance::log_dir(),
            runtime_dir: None,
            pool: None,
            background: false,
            echo_stderr: false,
            caps_cache: CapsCache::user(),
        }
    }
}

impl GuestBuilder {
    /// The kernel image to boot.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec.kernel = Some(path.into());
        self
    }

    /// The initial ramdisk.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec.initrd = Some(path.into());
        self
    }

    /// More kernel command line, after what was appended before (`console=` and `panic=-1`
    /// are added unless given).
    pub fn append(mut self, args: &str) -> Self {
        self.spec.append = Some(match self.spec.append.take() {
            Some(before) => format!("{before} {args}"),
            None => args.to_owned(),
        });
        self
    }

    /// Guest memory, e.g. `512M`.
    pub fn memory(mut self, size: &str) -> Self {
        self.spec.memory = Some(size.to_owned());
        self
    }

    /// The number of vCPUs.
    pub fn smp(mut self, n: u32) -> Self {
        self.spec.smp = Some(n);
        self
    }

    /// The accelerator: KVM where usable (the default), or one of them.
    pub fn accel(mut self, accel: AccelRequest) -> Self {
        self.spec.accel = Some(accel);
        self
    }

    /// The instance name, instead of the arch. It is taken as is: a live instance of that
    /// name fails the launch.
    pub fn name(mut self, name: &str) -> Self {
        self.spec.name = Some(name.to_owned());
        self
    }

    /// Anything else of the guest description (disks, network, CPU, ...), as
    /// `qemu-direct run`'s flags and spec files set it.
    pub fn spec(mut self, edit: impl FnOnce(&mut SpecInput)) -> Self {
        edit(&mut self.spec);
        self
    }

    /// Host-wide defaults as the config files give them ([`Config::load_standard`]); none by
    /// default.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Where the emulator's probed capabilities (and so its version) are cached, instead of
    /// the user's cache ([`CapsCache::user`]).
    pub fn caps_cache(mut self, cache: CapsCache) -> Self {
        self.caps_cache = cache;
        self
    }

    /// Writes the console log that outlives the instance to this file instead.
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
    }

    /// Writes the console log that outlives the instance as `DIR/NAME.log`; `None` writes none.
    pub fn console_log_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.console_log_dir = dir;
        self
    }

    /// Puts the instance directory under `dir`: see [`VmBuilder::runtime_dir`].
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Waits for a place in `pool` before launching: see [`VmBuilder::pool`].
    pub fn pool(mut self, pool: &Pool) -> Self {
        self.pool = Some(pool.clone());
        self
    }

    /// Launches on a runtime that outlives the caller's: see [`VmBuilder::background`].
    pub fn background(mut self, yes: bool) -> Self {
        self.background = yes;
        self
    }

    /// Copies QEMU's stderr to ours as it comes: see [`VmBuilder::echo_stderr`].
    pub fn echo_stderr(mut self, yes: bool) -> Self {
        self.echo_stderr = yes;
        self
    }

    /// The plan this guest would be launched with. Nothing is started, apart from asking the
    /// emulator its capabilities when the cache lacks them.
    pub async fn plan(&self) -> Result<LaunchPlan, VmError> {
        let profiles = ProfileSet::embedded()?;
        let spec = self.spec.clone().validate(&profiles)?;
        // virtiofsd is looked for by the plan, only when a share needs it.
        let opts = ProbeOptions {
            virtiofsd: false,
            ..ProbeOptions::default()
        };
        let mut host = HostFacts::probe(&profiles, &opts);
        let cache = &self.caps_cache;
        let plan =
            plan::resolve_probing(&spec, &profiles, &mut host, &self.config, cache, true).await?;
        spec.check_boot_source()?;
        Ok(plan)
    }

    /// The [`VmBuilder`] of the step-by-step path, with this guest's plan and settings.
    pub async fn builder(&self) -> Result<VmBuilder, VmError> {
        let mut b = Vm::builder(self.plan().await?)
            .unique_name(self.spec.name.is_none())
            .console_log(self.console_log.clone())
            .console_log_dir(self.console_log_dir.clone())
            .echo_stderr(self.echo_stderr)
            .background(self.background);
        if let Some(dir) = &self.runtime_dir {
            b = b.runtime_dir(dir.clone());
        }
        if let Some(pool) = &self.pool {
            b = b.pool(pool);
        }
        Ok(b)
    }

    /// Plans and launches the guest: returns once it runs (see [`VmBuilder::launch`]). Bad
    /// input (an unknown arch, a missing kernel) fails before anything starts, with
    /// [`VmError::Spec`], [`VmError::Plan`] or [`VmError::Profile`].
    pub async fn launch(self) -> Result<Vm, VmError> {
        self.builder().await?.launch().await
    }
}
