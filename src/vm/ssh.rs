//! `qemu-direct ssh` and [`Vm::ssh_command`]: the system `ssh` into a guest started with an
//! `--ssh-key` login, through the host port forwarded to its port 22 (recorded in the
//! instance's info, shown by `ps`), once its SSH server answers with its `SSH-` banner. Host
//! keys go to a `known_hosts` of the instance's own (accepted on first use, no prompt), never
//! to `~/.ssh`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpStream, time::Instant};

use crate::{
    instance::{self, InstanceError, InstanceRef},
    plan::{LaunchPlan, NicPlan},
    qmp::Qmp,
    spec::cloud_init::DEFAULT_USER,
    vm::{ConsoleContext, Vm, VmError, console::lock, instance_context},
};

/// How long [`Vm::ssh_command`] waits for the SSH server, before scaling for the accelerator
/// ([`super::scale`]): a cloud image runs cloud-init before sshd.
pub const SSH_WAIT: Duration = Duration::from_secs(120);
/// The `known_hosts` file in the instance directory.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// How often the port is tried.
const RETRY: Duration = Duration::from_millis(500);
/// How long one try may take, connect and banner.
const TRY: Duration = Duration::from_secs(3);

/// Why `ssh` cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The instance has no port forwarded to its 22.
    #[error(
        "instance '{instance}' {why}: start it with --ssh or --ssh-key FILE.pub and --net user \
         for `qemu-direct ssh`"
    )]
    NoForward {
        /// The instance.
        instance: String,
        /// What it lacks.
        why: &'static str,
    },
    /// Nothing answered with an SSH banner in time.
    #[error(
        "no SSH server answered on 127.0.0.1:{port} (forwarded to port 22 of instance \
         '{instance}') within {}: waited for its `SSH-` banner{context}",
        humantime::format_duration(*waited)
    )]
    NoBanner {
        /// The instance.
        instance: String,
        /// The host port.
        port: u16,
        /// How long it was waited for.
        waited: Duration,
        /// The console's last lines.
        context: Box<ConsoleContext>,
    },
    /// The guest ended while its SSH server was waited for.
    #[error("instance '{instance}' ended while its SSH server was waited for{context}")]
    Ended {
        /// The instance.
        instance: String,
        /// The console's last lines.
        context: Box<ConsoleContext>,
    },
    /// The system `ssh` cannot be run.
    #[error("cannot run the system `ssh` (is openssh-client installed?)")]
    Spawn(#[source] std::io::Error),
    /// The instance cannot be found or read.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// Where and as whom `ssh` logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The instance.
    pub instance: String,
    /// The host port on 127.0.0.1 forwarded to the guest's 22.
    pub port: u16,
    /// The guest user: [`DEFAULT_USER`].
    pub user: String,
    /// The private key beside `--ssh-key`'s `.pub`, if there is one; else ssh's own defaults
    /// (its agent, `~/.ssh/id_*`).
    pub identity: Option<PathBuf>,
    /// The instance's own `known_hosts`.
    pub known_hosts: PathBuf,
}

impl SshTarget {
    /// The target of instance `name` in `dir` launched with `plan`, whose forward is `port`.
    pub fn of(
        name: &str,
        dir: &Path,
        plan: Option<&LaunchPlan>,
        port: Option<u16>,
    ) -> Result<SshTarget, SshError> {
        let no = |why| SshError::NoForward {
            instance: name.into(),
            why,
        };
        let Some(port) = port else {
            return Err(match plan {
                Some(p) if p.nics.is_empty() => no("has no network"),
                _ => no("has no host port forwarded to its SSH port 22"),
            });
        };
        let login = plan.and_then(|p| p.seed.as_ref()?.data.ssh.as_ref());
        Ok(SshTarget {
            instance: name.into(),
            port,
            user: login.map_or(DEFAULT_USER.into(), |l| l.user.clone()),
            identity: login.and_then(|l| l.identity.clone()),
            known_hosts: dir.join(KNOWN_HOSTS),
        })
    }

    /// The target of an instance another process supervises, from its `info.json` and
    /// `plan.json`.
    pub fn of_instance(inst: &InstanceRef) -> Result<SshTarget, SshError> {
        let port = inst.info()?.and_then(|i| i.ssh_port);
        let plan = std::fs::read(inst.path(instance::PLAN))
            .ok()
            .and_then(|b| serde_json::from_slice::<LaunchPlan>(&b).ok());
        SshTarget::of(&inst.name, &inst.dir, plan.as_ref(), port)
    }

    /// `ssh`'s arguments: port, user, key, the private `known_hosts` (new host keys accepted
    /// without a prompt), and `command` if any (then also `BatchMode`: no prompt at all).
    pub fn args(&self, command: &[OsString]) -> Vec<OsString> {
        let mut known = OsString::from("UserKnownHostsFile=");
        known.push(&self.known_hosts);
        let mut v: Vec<OsString> = vec!["-p".into(), self.port.to_string().into()];
        for o in [
            known,
            "StrictHostKeyChecking=accept-new".into(),
            // Not "Permanently added ... to the list of known hosts" on each new instance.
            "LogLevel=ERROR".into(),
        ] {
            v.extend(["-o".into(), o]);
        }
        if !command.is_empty() {
            v.extend(["-o".into(), "BatchMode=yes".into()]);
        }
        if let Some(key) = &self.identity {
            v.extend(["-i".into(), key.into()]);
            v.extend(["-o".into(), "IdentitiesOnly=yes".into()]);
        }
        v.extend(["-l".into(), self.user.clone().into(), "127.0.0.1".into()]);
        v.extend(command.iter().cloned());
        v
    }

    /// Waits up to `wait` for an `SSH-` banner on the port; fails at once when `alive` says
    /// the guest is gone. `context` gives the console tail for the errors.
    pub async fn wait_banner(
        &self,
        wait: Duration,
        alive: impl Fn() -> bool,
        context: impl Fn() -> ConsoleContext,
    ) -> Result<(), SshError> {
        let deadline = Instant::now() + wait;
        loop {
            if !alive() {
                return Err(SshError::Ended {
                    instance: self.instance.clone(),
                    context: Box::new(context()),
                });
            }
            if banner(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SshError::NoBanner {
                    instance: self.instance.clone(),
                    port: self.port,
                    waited: wait,
                    context: Box::new(context()),
                });
            }
            tokio::time::sleep(RETRY.min(deadline - Instant::now())).await;
        }
    }

    /// [`SshTarget::wait_banner`] for an instance another process supervises.
    pub async fn wait_instance(&self, inst: &InstanceRef, wait: Duration) -> Result<(), SshError> {
        self.wait_banner(wait, || inst.alive(), || instance_context(inst))
            .await
    }
}

/// Whether an SSH server answers on the port: slirp accepts every connection to a forwarded
/// port, and closes it when nothing listens in the guest, so only the banner tells.
async fn banner(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut start = [0u8; 4];
        s.read_exact(&mut start).await.ok()?;
        Some(&start == b"SSH-")
    };
    matches!(tokio::time::timeout(TRY, attempt).await, Ok(Some(true)))
}

/// What a command run with [`Vm::ssh_command`] did.
#[derive(Debug)]
pub struct SshOutput {
    /// `ssh`'s exit status: the command's, or 255 when ssh itself failed.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error (ssh's own errors included).
    pub stderr: Vec<u8>,
}

impl Vm {
    /// The host port on 127.0.0.1 forwarded to the guest's port 22, if there is one.
    pub fn ssh_port(&self) -> Option<u16> {
        lock(&self.shared.info).ssh_port
    }

    /// Runs `args` in the guest through the system `ssh` as [`SshTarget`] says, once its SSH
    /// server answers (waiting up to [`SSH_WAIT`], scaled for the accelerator). As with `ssh`
    /// itself, the guest's shell gets `args` joined by spaces as one command line: quote for
    /// it (`["echo err >&2; exit 7"]`). Never prompts (`BatchMode`).
    pub async fn ssh_command<I, S>(&self, args: I) -> Result<SshOutput, SshError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.ssh_command_within(args, super::scale(self.accel, SSH_WAIT))
            .await
    }

    /// [`Vm::ssh_command`], waiting up to `wait` for the SSH server.
    pub async fn ssh_command_within<I, S>(
        &self,
        args: I,
        wait: Duration,
    ) -> Result<SshOutput, SshError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let command: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let target = SshTarget::of(
            &self.plan.name,
            &self.dir,
            Some(&self.plan),
            self.ssh_port(),
        )?;
        target
            .wait_banner(wait, || !self.exited(), || self.console_context())
            .await?;
        let mut args = target.args(&command);
        if command.is_empty() {
            // Never interactive from the library.
            args.splice(0..0, ["-o".into(), "BatchMode=yes".into()]);
        }
        let out = tokio::process::Command::new("ssh")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(SshError::Spawn)?;
        Ok(SshOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// The host port of the forward to the guest's 22: the user's own rule, else the one the
/// kernel picked for ours, read back from QEMU (`info usernet`).
pub(in crate::vm) async fn forwarded_port(
    plan: &LaunchPlan,
    qmp: &Qmp,
) -> Result<Option<u16>, VmError> {
    let Some(nic) = plan.nics.first() else {
        return Ok(None);
    };
    if !nic.ssh_forward {
        return Ok(NicPlan::ssh_rule_of(&nic.user));
    }
    let args = serde_json::json!({"command-line": "info usernet"});
    let text = tokio::time::timeout(
        super::QMP_CALL,
        qmp.execute("human-monitor-command", Some(args)),
    )
    .await
    .map_err(|_| VmError::Io(std::io::Error::other("QEMU did not answer `info usernet`")))?
    .map_err(VmError::Qmp)?;
    Ok(usernet_port(text.as_str().unwrap_or_default()))
}

/// The host port of the TCP forward from 127.0.0.1 to guest port 22 in `info usernet`'s
/// table (`TCP[HOST_FORWARD]  FD  127.0.0.1 33365  10.0.2.15  22 ...`).
fn usernet_port(text: &str) -> Option<u16> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [kind, _fd, "127.0.0.1", port, _guest, "22", ..]
                if kind.starts_with("TCP[HOST_FORWARD]") =>
            {
                port.parse().ok()
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `info usernet` as QEMU 7.2 and 10.0 print it.
    #[test]
    fn the_picked_port_is_read_from_info_usernet() {
        let text = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. \
                    Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]  13         * 8080       \
                    10.0.2.15    80     0     0\r\n  TCP[HOST_FORWARD]   3       127.0.0.1 \
                    33365       10.0.2.15    22     0     0\r\n";
        assert_eq!(usernet_port(text), Some(33365));
        assert_eq!(usernet_port("Hub -1 (net0):\r\n"), None);
    }

    #[test]
    fn ssh_gets_the_private_known_hosts_and_batch_mode_with_a_command() {
        let t = SshTarget {
            instance: "vm".into(),
            port: 40022,
            user: "qd".into(),
            identity: Some("/k/id".into()),
            known_hosts: "/run/vm/known_hosts".into(),
        };
        let args = |c: &[&str]| {
            let c: Vec<OsString> = c.iter().map(OsString::from).collect();
            t.args(&c)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            args(&["uname", "-m"]),
            "-p 40022 -o UserKnownHostsFile=/run/vm/known_hosts \
             -o StrictHostKeyChecking=accept-new -o LogLevel=ERROR -o BatchMode=yes \
             -i /k/id -o IdentitiesOnly=yes -l qd 127.0.0.1 uname -m"
        );
        assert!(!args(&[]).contains("BatchMode"));
    }
}
