//! qemu-direct: launch and control QEMU virtual machines directly, with no libvirt in between.
//!
//! Data flows one way:
//!
//! ```text
//! CLI flags / TOML / Nova properties -> SpecInput -> VmSpec -> (HostFacts) -> LaunchPlan -> argv -> running QEMU
//! ```
//!
//! - [`spec`]: the user's description, validated ([`spec::SpecInput::validate`]).
//! - [`profile`]: per-architecture facts from `machine-profiles/*.toml`.
//! - [`disk`], [`net`]: the `--disk` and `--net` syntax, checked.
//! - [`host`]: what this host offers (arch, KVM verdict, emulators), as a plain value.
//! - [`plan`]: the pure decision ([`plan::resolve`]) of what to run and why.
//! - [`argv`]: the QEMU command line for a plan.
//! - [`cpu`]: the guest CPU: modes, models, features, physical-address bits, baselines.
//! - [`caps`]: what each emulator can do (machines, CPU models, features), probed over QMP and cached.
//! - [`firmware`]: UEFI/BIOS firmware chosen from QEMU's firmware descriptor files.
//! - [`gate`]: profile options that need a QEMU version range or a kind of host.
//! - [`traits`]: os-traits names for this host, and whether a guest runs here.
//! - [`config`]: host-wide CPU defaults from config files.
//! - [`vm`]: running a plan ([`vm::Vm`]): console, QMP, failure detection, the stop ladder, and
//!   the report of how it ended.
//! - [`libvirt`]: a plan as libvirt domain XML, and a libvirt domain as a guest description.
//! - [`instance`]: the private directory of each running guest, found by name (`ps`).
//! - [`qmp`]: talking to a running QEMU over its machine protocol.
//!
//! ```no_run
//! use qemu_direct::{host::{HostFacts, ProbeOptions}, plan, profile::ProfileSet, spec::SpecInput, vm};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let profiles = ProfileSet::embedded()?;
//! let spec = SpecInput {
//!     arch: Some("aarch64".into()),
//!     kernel: Some("guests/aarch64/kernel".into()),
//!     initrd: Some("guests/aarch64/initrd.gz".into()),
//!     ..Default::default()
//! }
//! .validate(&profiles)?;
//! let host = HostFacts::probe(&profiles, &ProbeOptions::default());
//! let plan = plan::resolve(&spec, &profiles, &host)?;
//! let report = vm::run(&plan, &vm::RunOptions::default(), &mut tokio::io::sink()).await?;
//! assert_eq!(report.outcome, vm::Outcome::PoweredOff);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod arch;
pub mod argv;
pub mod caps;
pub mod config;
pub mod cpu;
pub mod disk;
pub mod firmware;
pub mod gate;
pub mod host;
pub mod instance;
pub mod libvirt;
pub mod net;
pub mod pathser;
pub mod plan;
pub mod profile;
pub mod qmp;
pub mod size;
pub mod spec;
pub mod traits;
pub mod vm;

/// Process exit codes of the `qemu-direct` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest powered off cleanly, the `--until` text appeared, or the guest was stopped on
    /// request (`stop`, `qmp quit`); for the other commands, they did what was asked.
    Success = 0,
    /// An unexpected failure of the launcher itself (I/O, resources).
    Failure = 1,
    /// Bad input: an invalid spec, flag, file or host requirement, an instance name that is
    /// taken or not running, a QMP command QEMU refused. Nothing was started.
    BadInput = 2,
    /// QEMU failed to start or exited with an error; for `wait`, the instance ended first.
    QemuFailed = 3,
    /// The guest kernel panicked; for `wait`, a failure pattern matched.
    GuestPanicked = 4,
    /// `--timeout` expired; the guest was stopped. For `wait`, the pattern did not appear in
    /// time.
    Timeout = 5,
    /// The hypervisor stopped the guest (e.g. KVM internal error).
    GuestCrashed = 6,
    /// SIGINT or SIGTERM stopped the run.
    Interrupted = 130,
}

/// Any error of the library, with its exit code and a hint where one is known.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Machine profiles.
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// The guest description.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Planning for this host.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Running.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// A config file.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A CPU question (baseline, compare) with no good answer.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// Finding or reading an instance.
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    /// Talking to an instance over QMP.
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    /// Waiting for console text.
    #[error(transparent)]
    Console(#[from] vm::ConsoleError),
    /// Reading or writing libvirt domain XML.
    #[error(transparent)]
    Libvirt(#[from] libvirt::LibvirtError),
}

impl Error {
    /// The exit code this error ends the command with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Plan(plan::PlanError::Caps { .. }) => ExitCode::QemuFailed,
            Error::Profile(_)
            | Error::Spec(_)
            | Error::Plan(_)
            | Error::Config(_)
            | Error::Cpu(_)
            | Error::Libvirt(_) => ExitCode::BadInput,
            Error::Vm(vm::VmError::NoQemuImg { .. }) => ExitCode::BadInput,
            Error::Vm(
                vm::VmError::Spawn { .. }
                | vm::VmError::Overlay { .. }
                | vm::VmError::ImageLocked { .. }
                | vm::VmError::Startup { .. }
                | vm::VmError::StartupTimeout(_)
                | vm::VmError::Qmp(_),
            ) => ExitCode::QemuFailed,
            Error::Vm(vm::VmError::Instance(i)) | Error::Instance(i) if i.is_bad_input() => {
                ExitCode::BadInput
            }
            // QEMU refused the command: its name or arguments were wrong.
            Error::Qmp(qmp::QmpError::Command { .. }) => ExitCode::BadInput,
            Error::Console(vm::ConsoleError::BadPattern { .. }) => ExitCode::BadInput,
            Error::Console(vm::ConsoleError::Failed { .. }) => ExitCode::GuestPanicked,
            Error::Console(vm::ConsoleError::TimedOut { .. }) => ExitCode::Timeout,
            Error::Console(vm::ConsoleError::Ended { .. }) => ExitCode::QemuFailed,
            Error::Vm(_) | Error::Instance(_) | Error::Qmp(_) | Error::Console(_) => {
                ExitCode::Failure
            }
        }
    }

    /// What the user could do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Plan(p) => p.hint(),
            Error::Spec(spec::SpecError::Cpu(c)) | Error::Cpu(c) => c.hint(),
            Error::Config(config::ConfigError::Cpu { source, .. }) => source.hint(),
            Error::Vm(v) => v.hint(),
            Error::Instance(i) => i.hint(),
            Error::Qmp(qmp::QmpError::Connect { .. }) => Some(
                "the instance's QMP socket is gone or dead; `qemu-direct stop NAME` still \
                 stops it (with SIGKILL when QMP cannot ask QEMU to quit), and \
                 `qemu-direct ps` shows whether it runs"
                    .into(),
            ),
            _ => None,
        }
    }
}
