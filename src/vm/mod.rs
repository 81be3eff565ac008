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
//!
//! There is one stop ladder (`system_powerdown`, `quit`, SIGKILL), for a guest this process
//! launched ([`Vm::stop`]) and for an instance another process supervises ([`stop_instance`]).
//!
//! A launch goes in steps, each its own file under `launch/`: prepare the instance directory,
//! spawn QEMU, start the tasks that watch it, and the QMP handshake. A launch may take the
//! guest's state from a migration instead of booting it ([`VmBuilder::incoming`],
//! [`incoming`]): that is how snapshots are restored.

mod background;
mod builder;
mod console;
mod copy;
mod error;
mod events;
mod expect;
mod guest;
mod guest_agent;
pub mod incoming;
mod launch;
mod outcome;
mod overlay;
mod pool;
mod process;
mod run;
mod running;
mod shared;
mod ssh;
mod stop;

use std::time::Duration;

pub use builder::VmBuilder;
pub use console::{Console, LogReader, MAX_LINE};
pub use copy::{Copied, GuestPath, copy_from_guest, copy_to_guest};
pub use error::VmError;
pub use expect::{
    ConsoleContext, ConsoleError, ConsoleMatch, Expect, MAX_BETWEEN, Matcher, Origin, Verdict,
};
pub use guest::GuestBuilder;
pub use guest_agent::{GuestError, agent_answers, connect_agent, instance_context, instance_ended};
pub use incoming::{Incoming, IncomingFrom, MIGRATE_SOCKET};
pub use pool::{Pool, PoolPermit};
pub use run::{Outcome, Report, RunOptions, run, run_vm};
pub use running::Vm;
pub use ssh::{KNOWN_HOSTS, SSH_WAIT, SshError, SshOutput, SshTarget};
pub use stop::{CLIENT_CONNECT, REAP_WAIT, StopStep, stop_instance};

use crate::profile::Accel;
pub(crate) use overlay::find_qemu_img;
pub(crate) use shared::{Failure, Shared};

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
/// How long [`Vm::agent`] waits for the guest agent to answer, before scaling for the
/// accelerator ([`scale`]): the guest may still be booting.
pub const AGENT_WAIT: Duration = Duration::from_secs(60);
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
