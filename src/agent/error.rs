//! The errors of the guest-agent client.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::exec::ExitStatus;

/// Why the byte stream to the agent broke in the middle of a command.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The peer closed its end, e.g. QEMU exited.
    #[error("end of stream")]
    Eof,
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[source] Arc<std::io::Error>),
    /// A line exceeded the size limit; nothing after it could be trusted to be framed right, so
    /// the connection was dropped.
    #[error("a message exceeded {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// A failed guest-agent operation.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// There is no socket at the path: the instance is not running, or it was started without
    /// a guest agent channel.
    #[error("no guest agent socket at {path}")]
    NoChannel {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket exists but could not be connected to for a reason retrying would not cure.
    #[error("cannot connect to the guest agent socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nothing answered `guest-sync-delimited` in time: qemu-ga is not (yet) running in the
    /// guest, or the guest is still booting.
    #[error(
        "the guest agent at {path} did not answer guest-sync-delimited within {} \
         ({attempts} attempts)",
        humantime::format_duration(*waited)
    )]
    NotAnswering {
        /// The socket path.
        path: PathBuf,
        /// How long the client was to keep trying.
        waited: Duration,
        /// How many sync requests it sent.
        attempts: u32,
    },
    /// The agent was in sync but did not answer this command in time. The guest may be
    /// rebooting or busy; the next command re-syncs first.
    #[error(
        "the guest agent did not answer {command} within {}",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The command.
        command: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The connection broke during the command; the next command reconnects and re-syncs.
    #[error("lost the connection to the guest agent during {command}")]
    Lost {
        /// The command.
        command: String,
        /// How it broke.
        #[source]
        source: LinkError,
    },
    /// The agent answered the command with an error.
    #[error("{command}: {desc}")]
    Guest {
        /// The command.
        command: String,
        /// The agent's error class, usually `GenericError`.
        class: String,
        /// The agent's description.
        desc: String,
    },
    /// `guest-exec` could not start the program, e.g. because it does not exist in the guest.
    #[error("cannot start {path} in the guest: {desc}")]
    ExecStart {
        /// The program.
        path: String,
        /// The agent's description.
        desc: String,
    },
    /// The guest process did not exit within its timeout.
    #[error(
        "{path} did not exit within {} in the guest{}",
        humantime::format_duration(*after),
        if *killed { "; it was killed" } else { "; killing it failed" }
    )]
    ExecTimeout {
        /// The program.
        path: String,
        /// The timeout.
        after: Duration,
        /// Whether the agent confirmed that the process is gone.
        killed: bool,
    },
    /// A helper program this client runs in the guest (`stat`, `chmod`) failed.
    #[error("`{command}` failed in the guest ({status}): {stderr}")]
    Helper {
        /// The command line, for messages.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr, lossily decoded.
        stderr: String,
    },
    /// The folder a file was to be written into does not exist in the guest.
    #[error("no such folder in the guest: {folder}")]
    MissingFolder {
        /// The folder.
        folder: String,
    },
    /// The file to read does not exist in the guest (or one of the folders leading to it).
    #[error("no such file in the guest: {path}")]
    MissingFile {
        /// The path.
        path: String,
    },
    /// The command's arguments could not be serialised.
    #[error("cannot encode the arguments of {command}")]
    Encode {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The agent's reply did not have the shape asked for.
    #[error("cannot decode the reply to {command}")]
    Decode {
        /// The command.
        command: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A reply that carried our id but made no sense, such as neither `return` nor `error`.
    #[error("malformed reply to {command}: {reply}")]
    Malformed {
        /// The command.
        command: String,
        /// The start of the reply, or what was wrong with it.
        reply: String,
    },
}

impl AgentError {
    /// What the user could do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            AgentError::NoChannel { .. } => Some(
                "start the instance with a guest agent channel; `qemu-direct ps` shows whether \
                 it runs"
                    .into(),
            ),
            AgentError::NotAnswering { .. } => Some(
                "is qemu-ga installed and enabled in the guest? `qemu-direct wait NAME --agent` \
                 waits until it answers"
                    .into(),
            ),
            AgentError::Timeout { .. } | AgentError::Lost { .. } => Some(
                "the guest may be rebooting; the next command waits for the agent to answer \
                 again (`qemu-direct wait NAME --agent`)"
                    .into(),
            ),
            AgentError::ExecStart { .. } => Some(
                "give the program's full path, or check that it is installed in the guest".into(),
            ),
            _ => None,
        }
    }
}
