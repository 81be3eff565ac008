//! The guest agent of a guest: [`Vm::agent`] for a guest this process launched,
//! [`connect_agent`] for an instance found by name, and [`GuestError`], why acting inside a
//! guest failed.
//!
//! The agent's channel is the instance's [`AGENT_SOCKET`], which QEMU serves to one client at
//! a time: a [`Vm`] keeps the one [`Agent`] it connects, and concurrent callers share it.

use std::{path::PathBuf, time::Duration};

use tokio::time::Instant;

use super::{AGENT_WAIT, ConsoleContext, STARTUP_TIMEOUT, TAIL_LINES, Vm, VmError};
use crate::{
    agent::{Agent, AgentError, DEFAULT_REPLY_TIMEOUT, ExecOutput, ExecRequest},
    instance::{AGENT_SOCKET, CONSOLE, InstanceRef},
    profile::Accel,
};

/// How often an instance found by name is looked at while its agent is waited for.
const POLL: Duration = Duration::from_millis(100);

/// Why acting inside a guest failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The instance has no guest agent channel.
    #[error("instance '{instance}' was launched without a guest agent (--no-agent)")]
    NoAgent {
        /// The instance.
        instance: String,
    },
    /// QEMU exited (or the instance was stopped) before or while the agent was asked.
    #[error(
        "instance '{instance}' ended{} while its guest agent was asked{context}",
        how.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Ended {
        /// The instance.
        instance: String,
        /// How, where known: `guest kernel panicked: ...`.
        how: Option<String>,
        /// Its console log and last console lines.
        context: Box<ConsoleContext>,
    },
    /// The agent did not answer in time: no qemu-ga in the guest, or the guest is still
    /// booting (or hung).
    #[error("the guest agent of instance '{instance}' did not answer{context}")]
    NotAnswering {
        /// The instance.
        instance: String,
        /// Its console log and last console lines.
        context: Box<ConsoleContext>,
        /// How long was waited ([`AgentError::NotAnswering`]).
        #[source]
        source: AgentError,
    },
    /// The [`Vm`] cannot be used any more.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent failed, or did not answer.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A host file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Host {
        /// What was being done.
        action: &'static str,
        /// The host file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A path or copy that cannot be done as asked: a directory, a relative guest path.
    #[error("{0}")]
    Usage(String),
}

impl GuestError {
    /// What the user could do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            GuestError::NoAgent { .. } => Some(
                "launch it again without --no-agent (the guest must run qemu-ga on the \
                 virtio-serial port org.qemu.guest_agent.0)"
                    .into(),
            ),
            GuestError::Ended { .. } => Some("`qemu-direct ps` lists the running instances".into()),
            GuestError::NotAnswering { source, .. } => source.hint(),
            GuestError::Vm(e) => e.hint(),
            GuestError::Agent(e) => e.hint(),
            _ => None,
        }
    }

    /// Whether the caller's input caused this (a name, a path, an instance without an agent)
    /// rather than the guest or the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            GuestError::NoAgent { .. } | GuestError::Usage(_) => true,
            GuestError::Agent(e) => matches!(
                e,
                AgentError::MissingFolder { .. } | AgentError::MissingFile { .. }
            ),
            GuestError::Host { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl Vm {
    /// The guest agent, once it answers; waits up to [`AGENT_WAIT`] (scaled for the
    /// accelerator, [`Vm::scale`]) for it, as the guest may still be booting.
    ///
    /// Fails with [`GuestError::NoAgent`] if the guest has no agent channel, with
    /// [`AgentError::NotAnswering`] if nothing answered in time (no qemu-ga in the guest), with
    /// [`GuestError::Ended`] at once if QEMU exits meanwhile, and with [`VmError::RuntimeGone`]
    /// if the runtime that launched the guest has shut down. The agent is connected once and
    /// kept; concurrent callers wait for the same connection.
    pub async fn agent(&self) -> Result<&Agent, GuestError> {
        self.agent_within(self.scale(AGENT_WAIT)).await
    }

    /// [`Vm::agent`], waiting up to `wait` for the agent to answer.
    pub async fn agent_within(&self, wait: Duration) -> Result<&Agent, GuestError> {
        self.alive()?;
        self.agent
            .get_or_try_init(|| self.connect_agent(wait))
            .await
    }

    /// Runs `program` with `args` in the guest and waits for it: [`Vm::agent`], then
    /// [`Agent::exec`]. A non-zero exit is not an error: see [`ExecOutput::status`].
    pub async fn exec(
        &self,
        program: &str,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<ExecOutput, GuestError> {
        let agent = self.agent().await?;
        Ok(agent.exec(ExecRequest::new(program, args)).await?)
    }

    /// Connects on the runtime that launched the guest (the agent's socket is registered
    /// there, and lives as long as the guest), unless QEMU exits first.
    async fn connect_agent(&self, wait: Duration) -> Result<Agent, GuestError> {
        let path = self.dir.join(AGENT_SOCKET);
        // The launch binds the socket before QEMU starts: missing now means no agent channel.
        if !path.exists() {
            return Err(GuestError::NoAgent {
                instance: self.plan.name.clone(),
            });
        }
        let reply_timeout = self.scale(DEFAULT_REPLY_TIMEOUT);
        let connect = self.home.spawn(async move {
            Agent::connect(path, wait)
                .await
                .map(|a| a.reply_timeout(reply_timeout))
        });
        let gone = || VmError::RuntimeGone {
            name: self.plan.name.clone(),
        };
        let joined = tokio::select! {
            joined = connect => joined.map_err(|_| gone())?,
            _ = self.shared.wait_exit() => {
                if self.shared.runtime_gone() {
                    return Err(gone().into());
                }
                return Err(self.ended().await);
            }
        };
        joined.map_err(|e| match e {
            AgentError::NotAnswering { .. } => GuestError::NotAnswering {
                instance: self.plan.name.clone(),
                context: Box::new(self.console_context()),
                source: e,
            },
            e => e.into(),
        })
    }

    /// [`GuestError::Ended`] for this guest, whose QEMU has exited: how, and what the console
    /// said last.
    pub async fn ended(&self) -> GuestError {
        // Give the console a moment to take QEMU's last words, for the tail.
        let _ = tokio::time::timeout(super::DRAIN, self.console.closed()).await;
        GuestError::Ended {
            instance: self.plan.name.clone(),
            how: self.outcome().map(|o| o.to_string()),
            context: Box::new(self.console_context()),
        }
    }

    /// The instance, its console log and the console's last lines, for errors.
    pub fn console_context(&self) -> ConsoleContext {
        ConsoleContext {
            instance: self.plan.name.clone(),
            log: self.console.log_path().map(Into::into),
            tail: self.console.tail(),
        }
    }
}

/// Connects to the guest agent of an instance another process supervises, waiting up to
/// `wait` for it to answer (the guest may still be booting); `accel` scales how long each
/// command may take.
///
/// Fails with [`GuestError::NoAgent`] if the instance has no agent channel (while it is still
/// starting, its socket is waited for), and with [`GuestError::Ended`] as soon as the instance
/// ends.
pub async fn connect_agent(
    inst: &InstanceRef,
    wait: Duration,
    accel: Accel,
) -> Result<Agent, GuestError> {
    let path = inst.path(AGENT_SOCKET);
    // Known now, for an error after the instance (and its info.json) is gone.
    let log = inst.info().ok().flatten().and_then(|i| i.console_log);
    socket_of(inst, &log).await?;
    let ended = async {
        while inst.alive() {
            tokio::time::sleep(POLL).await;
        }
    };
    let reply_timeout = super::scale(accel, DEFAULT_REPLY_TIMEOUT);
    let ended_err = || instance_ended(inst, log.clone());
    tokio::select! {
        r = Agent::connect(&path, wait) => match r {
            Ok(a) => Ok(a.reply_timeout(reply_timeout)),
            // The socket went with the instance directory.
            Err(AgentError::NoChannel { .. }) if !inst.alive() => Err(ended_err()),
            Err(e @ AgentError::NotAnswering { .. }) => Err(GuestError::NotAnswering {
                instance: inst.name.clone(),
                context: Box::new(instance_context(inst)),
                source: e,
            }),
            Err(e) => Err(e.into()),
        },
        _ = ended => Err(ended_err()),
    }
}

/// The instance, its durable console log and the last lines of its live one, for errors.
pub fn instance_context(inst: &InstanceRef) -> ConsoleContext {
    ConsoleContext {
        instance: inst.name.clone(),
        log: inst.info().ok().flatten().and_then(|i| i.console_log),
        tail: last_lines(&inst.path(CONSOLE), TAIL_LINES),
    }
}

/// [`GuestError::Ended`] for an instance found by name that has ended, with the last lines of
/// its durable console log `log` (read while it ran: its directory is gone now).
pub fn instance_ended(inst: &InstanceRef, log: Option<PathBuf>) -> GuestError {
    let mut tail = last_lines(&inst.path(CONSOLE), TAIL_LINES);
    if tail.is_empty()
        && let Some(log) = &log
    {
        tail = last_lines(log, TAIL_LINES);
    }
    GuestError::Ended {
        instance: inst.name.clone(),
        how: None,
        context: Box::new(ConsoleContext {
            instance: inst.name.clone(),
            log,
            tail,
        }),
    }
}

/// The last `n` lines of a file (read from its last 64 KiB), the unfinished one included.
fn last_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err()
        || f.read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let lines = &lines[lines.len().saturating_sub(n)..];
    lines.iter().map(|l| (*l).to_owned()).collect()
}

/// Waits while the instance is starting for its agent socket; [`GuestError::NoAgent`] if it
/// has none once started.
async fn socket_of(inst: &InstanceRef, log: &Option<PathBuf>) -> Result<(), GuestError> {
    let path = inst.path(AGENT_SOCKET);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if path.exists() {
            return Ok(());
        }
        if !inst.alive() {
            return Err(instance_ended(inst, log.clone()));
        }
        let starting = inst
            .info()
            .ok()
            .flatten()
            .is_none_or(|i| i.state == "prelaunch");
        if !starting || Instant::now() >= deadline {
            return Err(GuestError::NoAgent {
                instance: inst.name.clone(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether an instance's agent answers within `within`, for `ps`: `None` without an agent
/// channel.
pub async fn agent_answers(inst: &InstanceRef, within: Duration) -> Option<bool> {
    let path = inst.path(AGENT_SOCKET);
    if !path.exists() {
        return None;
    }
    Some(
        tokio::time::timeout(within, Agent::connect(&path, within))
            .await
            .is_ok_and(|r| r.is_ok()),
    )
}
