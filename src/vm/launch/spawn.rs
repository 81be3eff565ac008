//! Starting QEMU: the QMP sockets bound first, in the instance directory, so that they exist
//! before QEMU runs; QEMU gets their listening descriptors.

use std::{
    ffi::OsString,
    os::{fd::AsRawFd, unix::net::UnixListener},
    path::Path,
};

use tokio::process::{Child, ChildStderr, ChildStdout};

use crate::{
    argv,
    instance::{self, Instance, InstanceInfo},
    plan::LaunchPlan,
    vm::{
        VmError,
        incoming::{self, Opened},
        process::{self, PidFd},
    },
};

/// QEMU just started.
pub(in crate::vm) struct Spawned {
    /// Its pid.
    pub(in crate::vm) pid: u32,
    /// A handle that a recycled pid cannot alias, where the kernel has pidfds.
    pub(in crate::vm) pidfd: Option<PidFd>,
    /// The process and its output, for the watching tasks.
    pub(in crate::vm) pipes: Pipes,
}

/// The QEMU process and its output.
pub(in crate::vm) struct Pipes {
    /// The process, to reap.
    pub(in crate::vm) child: Child,
    /// Its stdout: the serial console.
    pub(in crate::vm) stdout: ChildStdout,
    /// Its stderr.
    pub(in crate::vm) stderr: ChildStderr,
}

/// Binds both QMP sockets and the guest agent's in the instance directory and starts QEMU with
/// them. QEMU's own listening sockets have a backlog of one, which a client that gave up can
/// fill; ours have the system's. With `incoming`, QEMU waits for an incoming migration
/// (`-incoming defer`) and inherits the state file's descriptor.
pub(in crate::vm) fn qemu(
    plan: &LaunchPlan,
    inst: &Instance,
    incoming: Option<&Opened>,
) -> Result<Spawned, VmError> {
    let sup = bind(&inst.path(instance::SUPERVISOR_QMP))?;
    let client = bind(&inst.path(instance::QMP))?;
    let agent = plan.agent.as_ref().map(|a| bind(&a.socket)).transpose()?;
    let agent_fd = agent.as_ref().map(|l| l.as_raw_fd());
    let mut argv = argv::build_with(plan, argv::Fds { agent: agent_fd });
    argv.extend(argv::monitors(sup.as_raw_fd(), client.as_raw_fd()));
    let mut inherit = vec![sup.as_raw_fd(), client.as_raw_fd()];
    inherit.extend(agent_fd);
    if let Some(opened) = incoming {
        argv.extend(incoming::argv().map(OsString::from));
        inherit.extend(opened.fds());
    }
    let mut child =
        process::spawn(&argv, &argv::env(plan), &inherit).map_err(|source| VmError::Spawn {
            binary: plan.binary.clone(),
            source,
        })?;
    // QEMU has its own copies; ours would keep the sockets listening after QEMU died, and
    // a connection to them waiting forever.
    drop((sup, client, agent));
    let pid = child.id().unwrap_or_default();
    let pidfd = PidFd::open(pid).ok();
    let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
    Ok(Spawned {
        pid,
        pidfd,
        pipes: Pipes {
            child,
            stdout,
            stderr,
        },
    })
}

/// What `ps` shows of a QEMU just started, still in run state `prelaunch`.
pub(in crate::vm) fn info(
    plan: &LaunchPlan,
    pid: u32,
    console_log: Option<std::path::PathBuf>,
) -> InstanceInfo {
    InstanceInfo {
        name: plan.name.clone(),
        arch: plan.arch.to_string(),
        accel: plan.accel,
        pid,
        supervisor_pid: std::process::id(),
        started: instance::now_secs(),
        state: "prelaunch".into(),
        console_log,
        ssh_port: None,
    }
}

fn bind(path: &Path) -> Result<UnixListener, VmError> {
    UnixListener::bind(path).map_err(|source| VmError::Socket {
        path: path.to_owned(),
        source,
    })
}

fn missing(what: &str) -> VmError {
    VmError::Io(std::io::Error::other(format!(
        "QEMU's {what} is not a pipe"
    )))
}
