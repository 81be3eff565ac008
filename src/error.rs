//! The library's one error type, the exit codes of the `qemu-direct` command, and the map
//! between them.

use crate::{
    agent, cpu, host::caps::CapsError, host::prefix::PrefixError, instance, labels, libvirt, plan,
    profile, qmp, snapshot, spec, vm,
};

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
    /// The guest reset itself (reboot, triple fault) when nobody asked; QEMU runs with
    /// `-no-reboot`, so the run ended there.
    GuestReset = 7,
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
    Config(#[from] spec::config::ConfigError),
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
    /// An emulator did not answer its capability probe (boxed: it is the largest).
    #[error(transparent)]
    Caps(Box<CapsError>),
    /// Reading or writing libvirt domain XML.
    #[error(transparent)]
    Libvirt(#[from] libvirt::LibvirtError),
    /// A QEMU prefix (`--qemu-prefix`) that cannot serve (boxed: it is large and rare).
    #[error(transparent)]
    Prefix(Box<PrefixError>),
    /// Acting inside a guest: its agent, copies.
    #[error(transparent)]
    Guest(#[from] vm::GuestError),
    /// Taking or restoring a snapshot, migrating a guest.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// Writing scheduler labels.
    #[error(transparent)]
    Labels(#[from] labels::LabelError),
}

impl From<CapsError> for Error {
    fn from(e: CapsError) -> Self {
        Error::Caps(Box::new(e))
    }
}

impl From<PrefixError> for Error {
    fn from(e: PrefixError) -> Self {
        Error::Prefix(Box::new(e))
    }
}

/// The exit code of a launch error: bad input for what the user can fix, QEMU failed for
/// QEMU's failures.
fn vm_exit(v: &vm::VmError) -> ExitCode {
    use vm::VmError as V;
    match v {
        V::Plan(plan::PlanError::Caps { .. }) => ExitCode::QemuFailed,
        V::NoQemuImg { .. } | V::IncomingFile { .. } | V::Profile(_) | V::Spec(_) | V::Plan(_) => {
            ExitCode::BadInput
        }
        V::Spawn { .. }
        | V::Virtiofsd { .. }
        | V::VirtiofsdFailed { .. }
        | V::Overlay { .. }
        | V::ImageLocked { .. }
        | V::Startup { .. }
        | V::StartupTimeout(_)
        | V::Qmp(_)
        | V::Incoming { .. } => ExitCode::QemuFailed,
        V::Instance(i) if i.is_bad_input() => ExitCode::BadInput,
        _ => ExitCode::Failure,
    }
}

/// The exit code of a snapshot error: bad input for the user's, the VM's own for a launch,
/// QEMU failed for a migration QEMU refused.
fn snapshot_exit(e: &snapshot::SnapshotError) -> ExitCode {
    use snapshot::SnapshotError as S;
    match e {
        _ if e.is_bad_input() => ExitCode::BadInput,
        S::Vm(v) => vm_exit(v),
        S::Qmp {
            source: qmp::QmpError::Connect { .. },
            ..
        } => ExitCode::Failure,
        // A full file system is the system's failure, not QEMU's.
        S::Migration { free: Some(_), .. } => ExitCode::Failure,
        S::Migration { .. } | S::QemuImg { .. } | S::Qmp { .. } => ExitCode::QemuFailed,
        _ => ExitCode::Failure,
    }
}

impl Error {
    /// The exit code this error ends the command with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Plan(plan::PlanError::Caps { .. })
            | Error::Vm(vm::VmError::Plan(plan::PlanError::Caps { .. }))
            | Error::Caps(_) => ExitCode::QemuFailed,
            Error::Prefix(p) if matches!(**p, PrefixError::DoesNotRun { .. }) => {
                ExitCode::QemuFailed
            }
            Error::Prefix(_) => ExitCode::BadInput,
            Error::Vm(vm::VmError::Profile(_) | vm::VmError::Spec(_) | vm::VmError::Plan(_)) => {
                ExitCode::BadInput
            }
            Error::Guest(g) => guest_exit_code(g),
            Error::Profile(_)
            | Error::Spec(_)
            | Error::Plan(_)
            | Error::Config(_)
            | Error::Cpu(_)
            | Error::Libvirt(_) => ExitCode::BadInput,
            Error::Vm(v) => vm_exit(v),
            Error::Instance(i) if i.is_bad_input() => ExitCode::BadInput,
            // QEMU refused the command: its name or arguments were wrong.
            Error::Qmp(qmp::QmpError::Command { .. }) => ExitCode::BadInput,
            Error::Console(vm::ConsoleError::BadPattern { .. }) => ExitCode::BadInput,
            Error::Console(vm::ConsoleError::Failed { .. }) => ExitCode::GuestPanicked,
            Error::Console(vm::ConsoleError::TimedOut { .. }) => ExitCode::Timeout,
            Error::Console(vm::ConsoleError::Ended { .. }) => ExitCode::QemuFailed,
            Error::Snapshot(s) => snapshot_exit(s),
            Error::Labels(l) if l.is_bad_input() => ExitCode::BadInput,
            Error::Labels(_) => ExitCode::Failure,
            Error::Instance(_) | Error::Qmp(_) | Error::Console(_) => ExitCode::Failure,
        }
    }

    /// What the user could do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Guest(g) => g.hint(),
            Error::Plan(p) => p.hint(),
            Error::Prefix(p) => p.hint(),
            Error::Spec(spec::SpecError::Cpu(c)) | Error::Cpu(c) => c.hint(),
            Error::Config(spec::config::ConfigError::Cpu { source, .. }) => source.hint(),
            Error::Vm(v) => v.hint(),
            Error::Snapshot(s) => s.hint(),
            Error::Instance(i) => i.hint(),
            Error::Labels(l) => l.hint(),
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

/// The exit code of a failure to act inside a guest: bad input (no agent channel, a missing
/// folder, a directory to `cp`), a timeout (the agent, or the command, took too long), or the
/// code of the error inside.
fn guest_exit_code(e: &vm::GuestError) -> ExitCode {
    match e {
        e if e.is_bad_input() => ExitCode::BadInput,
        vm::GuestError::NotAnswering { .. }
        | vm::GuestError::Agent(
            agent::AgentError::NotAnswering { .. } | agent::AgentError::ExecTimeout { .. },
        ) => ExitCode::Timeout,
        vm::GuestError::Ended { .. } => ExitCode::QemuFailed,
        _ => ExitCode::Failure,
    }
}
