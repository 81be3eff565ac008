//! How a QMP connection or command fails.

use std::{path::PathBuf, sync::Arc};

/// Why the connection ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseReason {
    /// The peer closed its end, e.g. QEMU exited.
    #[error("end of stream")]
    Eof,
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[source] Arc<std::io::Error>),
    /// The peer sent a message over the size limit; the client closed the connection because
    /// nothing after it could be trusted to be framed right.
    #[error("a message exceeded {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The tokio runtime that ran the connection's reader and writer has shut down (say the
    /// test that made it ended), so nothing can be sent or received any more.
    #[error("the tokio runtime that ran this connection has shut down")]
    RuntimeGone,
}

/// A failed QMP operation.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The Unix socket could not be connected to.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer's first message was not a QMP greeting.
    #[error("not a QMP greeting: {line}")]
    Greeting {
        /// The start of what arrived instead.
        line: String,
    },
    /// The connection is closed; every pending and later request fails with this.
    #[error("QMP connection closed")]
    Closed(#[source] CloseReason),
    /// QEMU answered the command with an error.
    #[error("{command}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class, such as `GenericError` or `CommandNotFound`.
        class: String,
        /// QEMU's description.
        desc: String,
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
    /// QEMU's reply did not have the shape the caller asked for.
    #[error("cannot decode the reply to {command}")]
    Decode {
        /// The command.
        command: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A reply carried our id but neither `return` nor `error`.
    #[error("malformed reply to {command}: {reply}")]
    Malformed {
        /// The command.
        command: String,
        /// The start of the reply.
        reply: String,
    },
}
