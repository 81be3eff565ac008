//! A client for the QEMU guest agent (`qemu-ga`) on tokio: run programs in the guest, move files
//! in and out.
//!
//! The agent sits behind a Unix socket that QEMU serves (a chardev wired to the virtio-serial
//! port `org.qemu.guest_agent.0`). That socket accepts connections whether or not qemu-ga runs
//! in the guest; before it does, nothing answers, and bytes sent may be delivered much later. So
//! the client never trusts the stream: it starts with `guest-sync-delimited` and a fresh id,
//! retried until a deadline, skips to the agent's 0xFF delimiter, and matches every reply to its
//! request by id, skipping the rest. After a command that failed or was cancelled, which is what
//! a guest reboot looks like from here, the next command syncs again first.
//!
//! As in [`crate::qmp`], replies are read as [`serde_json::Value`] and only decoded, into the
//! [`qapi::qga`] types where they fit or into lenient ones of ours, by the call that asked: an
//! agent from another QEMU version adds and drops fields.
//!
//! One command runs at a time per agent (qemu-ga runs them one after another anyway, and the
//! sync protocol needs a quiet stream); concurrent callers queue in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qemu_direct::agent::AgentError> {
//! use std::time::Duration;
//! use qemu_direct::agent::{Agent, ExecRequest};
//!
//! let agent = Agent::connect("/run/user/1000/vm0/qga.sock", Duration::from_secs(60)).await?;
//! let out = agent.exec(ExecRequest::new("uname", ["-m"])).await?;
//! assert!(out.status.success());
//! let motd = agent.read_file("/etc/motd").await?;
//! agent.write_file("/root/motd.bak", &motd, Some(0o600)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use crate::util::json::command_arguments;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};

mod error;
mod exec;
mod file;
mod wire;

#[cfg(test)]
mod tests;

pub use error::{AgentError, LinkError};
pub use exec::{ExecEvent, ExecOutput, ExecRequest, ExecStream, ExitStatus};
pub use file::FILE_CHUNK;

use wire::{Conn, Failure};

/// The largest line accepted from the agent. The largest real one is a `guest-exec-status`
/// carrying qemu-ga's maximum of 16 MiB of stdout and 16 MiB of stderr, base64-encoded (about
/// 43 MiB); a longer line means a broken peer, and buffering it without bound would let it
/// exhaust memory.
pub const MAX_MESSAGE: usize = 48 << 20;
/// How long a command may wait for its reply once the agent is in sync, unless changed with
/// [`Agent::reply_timeout`].
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one guest agent. Share it by reference or in an `Arc`; commands from several
/// tasks queue and run one at a time.
///
/// Every method is cancel-safe in the sense that dropping its future leaves the agent usable:
/// the next command re-syncs. Methods of several commands (files, exec) may leave work behind in
/// the guest when cancelled, as their docs say.
pub struct Agent {
    path: PathBuf,
    conn: tokio::sync::Mutex<Conn>,
    sync_wait: Duration,
    reply_timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("path", &self.path)
            .field("sync_wait", &self.sync_wait)
            .field("reply_timeout", &self.reply_timeout)
            .finish_non_exhaustive()
    }
}

/// What `guest-info` says about the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AgentInfo {
    /// The agent's version, e.g. `7.2.22`.
    pub version: String,
    /// The commands it knows.
    #[serde(rename = "supported_commands", deserialize_with = "skip_odd_entries")]
    pub commands: Vec<CommandInfo>,
}

/// A list from which entries of the wrong shape are dropped, so that one odd entry from an
/// unfamiliar agent does not hide all the others.
fn skip_odd_entries<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    let entries = Vec::<Value>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .filter_map(|e| serde_json::from_value(e).ok())
        .collect())
}

/// One command in [`AgentInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CommandInfo {
    /// The command's name, e.g. `guest-exec`.
    pub name: String,
    /// False if the guest's administrator blocked it (`qemu-ga --block-rpcs`).
    pub enabled: bool,
}

impl AgentInfo {
    /// Whether the agent knows `command` and it is not blocked.
    pub fn supports(&self, command: &str) -> bool {
        self.commands.iter().any(|c| c.name == command && c.enabled)
    }
}

impl Agent {
    /// Connects to the agent's socket and waits up to `wait` for the agent to answer.
    ///
    /// A socket that accepts but stays silent (qemu-ga not started yet, the guest still
    /// booting) is retried with fresh sync ids until `wait` has passed; only then does this fail
    /// with [`AgentError::NotAnswering`]. A missing socket fails at once with
    /// [`AgentError::NoChannel`]. `wait` is also how long later commands wait for the agent to
    /// answer again after a reboot.
    pub async fn connect(path: impl AsRef<Path>, wait: Duration) -> Result<Agent, AgentError> {
        Agent::connect_limited(path.as_ref(), wait, MAX_MESSAGE).await
    }

    async fn connect_limited(
        path: &Path,
        wait: Duration,
        limit: usize,
    ) -> Result<Agent, AgentError> {
        let mut conn = Conn::new(path.to_owned(), limit);
        conn.sync(wait).await?;
        Ok(Agent {
            path: path.to_owned(),
            conn: tokio::sync::Mutex::new(conn),
            sync_wait: wait,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// Sets how long a command waits for its reply once the agent is in sync (default
    /// [`DEFAULT_REPLY_TIMEOUT`]). A long `guest-exec` is not one command: its polls each get
    /// this long.
    pub fn reply_timeout(mut self, timeout: Duration) -> Agent {
        self.reply_timeout = timeout;
        self
    }

    /// The agent's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs any command, with `arguments` (a JSON object) if given, and returns its `return`
    /// value as is. Queued behind other commands of this agent; re-syncs first if the last
    /// command did not end cleanly.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, AgentError> {
        let mut conn = self.conn.lock().await;
        if !conn.synced {
            conn.sync(self.sync_wait).await?;
        }
        conn.synced = false;
        let id = conn.next_id();
        let line = wire::encode(command, arguments, id);
        let outcome = tokio::time::timeout(self.reply_timeout, conn.exchange(&line, id))
            .await
            .unwrap_or(Err(Failure::TimedOut));
        match outcome {
            Ok(msg) => {
                conn.synced = true;
                reply(msg, command)
            }
            Err(Failure::TimedOut) => Err(AgentError::Timeout {
                command: command.to_owned(),
                after: self.reply_timeout,
            }),
            Err(Failure::Link(source)) => {
                conn.drop_stream();
                Err(AgentError::Lost {
                    command: command.to_owned(),
                    source,
                })
            }
        }
    }

    /// Runs a command from [`qapi::qga`] and decodes its reply into the crate's return type.
    pub async fn call<C: qapi::Command>(&self, command: C) -> Result<C::Ok, AgentError> {
        self.call_as::<C, C::Ok>(command).await
    }

    /// Runs a command from [`qapi::qga`] and decodes its reply into a type of the caller's.
    pub async fn call_as<C: qapi::Command, T: DeserializeOwned>(
        &self,
        command: C,
    ) -> Result<T, AgentError> {
        let arguments = command_arguments(&command).map_err(|source| AgentError::Encode {
            command: C::NAME.to_owned(),
            source,
        })?;
        let reply = self.execute(C::NAME, arguments).await?;
        serde_json::from_value(reply).map_err(|source| AgentError::Decode {
            command: C::NAME.to_owned(),
            source,
        })
    }

    /// `guest-ping`: succeeds if the agent answers.
    pub async fn ping(&self) -> Result<(), AgentError> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// `guest-info`: the agent's version and the commands it supports.
    pub async fn info(&self) -> Result<AgentInfo, AgentError> {
        self.call_as(qapi::qga::guest_info {}).await
    }
}

/// A reply's outcome for its caller.
fn reply(mut msg: Map<String, Value>, command: &str) -> Result<Value, AgentError> {
    if let Some(value) = msg.remove("return") {
        return Ok(value);
    }
    let Some(error) = msg.remove("error") else {
        return Err(AgentError::Malformed {
            command: command.to_owned(),
            reply: shorten(&Value::Object(msg).to_string()),
        });
    };
    let text = |k: &str| error[k].as_str().unwrap_or_default().to_owned();
    Err(AgentError::Guest {
        command: command.to_owned(),
        class: text("class"),
        desc: text("desc"),
    })
}

/// The start of a text, for messages.
fn shorten(s: &str) -> String {
    const SHOWN: usize = 1024;
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
