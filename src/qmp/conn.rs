//! The connection under a [`super::Qmp`]: the reader and writer tasks, the table of requests
//! awaiting replies, and line framing with a size cap.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::{Map, Value};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{broadcast, mpsc, oneshot, watch},
};

use super::{CloseReason, Event, Greeting, Notice, QmpError};

/// How much of a garbage line a [`Notice::Garbage`] keeps.
const GARBAGE_SHOWN: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;

pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) writes: mpsc::UnboundedSender<Vec<u8>>,
    pub(super) greeting: Greeting,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.lock().events = None;
        self.shared.shutdown.send_replace(true);
    }
}

/// What the reader and writer tasks share with the handles.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Turns true once the connection is closed, to stop both tasks.
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) next_id: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) closed: Option<CloseReason>,
    /// Taken on close, so that subscribers see the end of the stream.
    pub(super) events: Option<broadcast::Sender<Notice>>,
}

pub(super) struct Pending {
    pub(super) command: String,
    pub(super) reply: oneshot::Sender<Result<Value, QmpError>>,
}

/// Removes a request's entry when its caller stops waiting, answered or not.
pub(super) struct Forget<'a> {
    pub(super) shared: &'a Shared,
    pub(super) id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Shared {
    /// The state, even if a thread panicked holding it: every update leaves it consistent.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn reason(&self) -> CloseReason {
        self.lock().closed.clone().unwrap_or(CloseReason::Eof)
    }

    /// Closes once (the first reason wins): fails every pending request, ends the event
    /// streams and stops both tasks, which drops both halves of the transport.
    pub(super) fn close(&self, reason: CloseReason) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            state.events = None;
            std::mem::take(&mut state.pending)
        };
        for (_, p) in pending {
            let _ = p.reply.send(Err(QmpError::Closed(reason.clone())));
        }
        self.shutdown.send_replace(true);
    }

    pub(super) fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.lock().events {
            // An error only means nobody is subscribed.
            let _ = tx.send(notice);
        }
    }

    pub(super) fn garbage(&self, line: &[u8], problem: impl Into<String>) {
        self.notify(Notice::Garbage {
            line: shorten(line),
            problem: problem.into(),
        });
    }

    /// Routes one line: an event to the subscribers, a reply to its caller, anything else to
    /// the subscribers as garbage.
    pub(super) fn dispatch(&self, line: &[u8]) {
        if line.trim_ascii().is_empty() {
            return;
        }
        let mut msg = match serde_json::from_slice(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return self.garbage(line, "not a JSON object"),
            Err(e) => return self.garbage(line, e.to_string()),
        };
        if let Some(name) = msg.remove("event") {
            let Value::String(name) = name else {
                return self.garbage(line, "event name is not a string");
            };
            let timestamp = msg.get("timestamp").and_then(|t| {
                Some((
                    t.get("seconds")?.as_i64()?,
                    t.get("microseconds")?.as_i64()?,
                ))
            });
            let data = msg.remove("data").unwrap_or(Value::Null);
            return self.notify(Notice::Event(Event {
                name,
                data,
                timestamp,
            }));
        }
        let id = msg.get("id").and_then(Value::as_u64);
        let pending = id.and_then(|id| self.lock().pending.remove(&id));
        let Some(pending) = pending else {
            // An id we issued belongs to a caller that stopped waiting: expected, not garbage.
            if id.is_none_or(|id| id >= self.next_id.load(Ordering::Relaxed)) {
                self.garbage(line, "not an event nor a reply to a pending request");
            }
            return;
        };
        let _ = pending.reply.send(reply(msg, pending.command, line));
    }
}

/// A reply's outcome for its caller.
pub(super) fn reply(
    mut msg: Map<String, Value>,
    command: String,
    line: &[u8],
) -> Result<Value, QmpError> {
    if let Some(value) = msg.remove("return") {
        return Ok(value);
    }
    let Some(error) = msg.remove("error") else {
        return Err(QmpError::Malformed {
            command,
            reply: shorten(line),
        });
    };
    let text = |k: &str| error[k].as_str().unwrap_or_default().to_owned();
    Err(QmpError::Command {
        class: text("class"),
        desc: text("desc"),
        command,
    })
}

/// The start of a line, for messages.
pub(super) fn shorten(line: &[u8]) -> String {
    let line = line.trim_ascii();
    let mut s = String::from_utf8_lossy(&line[..line.len().min(GARBAGE_SHOWN)]).into_owned();
    if line.len() > GARBAGE_SHOWN {
        s.push_str("...");
    }
    s
}

/// Closes the connection with [`CloseReason::RuntimeGone`] when a task holding it is dropped
/// before it finished: its runtime shut down, and with it the only reader and writer, so a
/// request made later (from another runtime) would otherwise wait forever for its reply.
struct CloseOnDrop<'a>(&'a Shared);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        // After a normal end the connection is closed already and this does nothing.
        self.0.close(CloseReason::RuntimeGone);
    }
}

pub(super) async fn read_loop<R: AsyncRead + Unpin>(mut lines: Lines<R>, shared: Arc<Shared>) {
    let _gone = CloseOnDrop(&shared);
    let mut shutdown = shared.shutdown.subscribe();
    let reason = loop {
        tokio::select! {
            next = lines.next() => match next {
                Ok(Some(line)) => shared.dispatch(&line),
                Ok(None) => break CloseReason::Eof,
                Err(reason) => break reason,
            },
            _ = shutdown.wait_for(|&closed| closed) => return,
        }
    };
    shared.close(reason);
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let _gone = CloseOnDrop(&shared);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let line = tokio::select! {
            _ = shutdown.wait_for(|&closed| closed) => return,
            line = queue.recv() => match line {
                Some(line) => line,
                None => return,
            },
        };
        // Shutdown also cuts a write short: a peer that stopped reading must not keep this
        // task, and the transport, alive after close.
        let written = tokio::select! {
            r = async { writer.write_all(&line).await?; writer.flush().await } => r,
            _ = shutdown.wait_for(|&closed| closed) => return,
        };
        if let Err(e) = written {
            return shared.close(CloseReason::Io(Arc::new(e)));
        }
    }
}

/// Newline framing with a size limit. Cancel-safe: bytes read stay in `buf` across calls.
pub(super) struct Lines<R> {
    pub(super) reader: R,
    pub(super) buf: Vec<u8>,
    /// Start of the first line not yet returned.
    pub(super) start: usize,
    /// `buf[start..scanned]` holds no newline.
    pub(super) scanned: usize,
    pub(super) limit: usize,
    pub(super) eof: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(super) fn new(reader: R, limit: usize) -> Self {
        Lines {
            reader,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            limit,
            eof: false,
        }
    }

    /// The next line without its newline; at the end, a final unterminated line if any, then
    /// `None`.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<u8>>, CloseReason> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                if end - self.start > self.limit {
                    return Err(CloseReason::TooLarge { limit: self.limit });
                }
                let line = self.buf[self.start..end].to_vec();
                self.start = end + 1;
                self.scanned = self.start;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.scanned - self.start > self.limit {
                return Err(CloseReason::TooLarge { limit: self.limit });
            }
            if self.eof {
                if self.start == self.buf.len() {
                    return Ok(None);
                }
                let line = self.buf[self.start..].to_vec();
                self.start = self.buf.len();
                return Ok(Some(line));
            }
            // Compact only when more input is needed: once per read, not once per line.
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                // Do not keep a huge reply's buffer for the life of the connection.
                self.buf = Vec::new();
            }
            self.buf.reserve(READ_CHUNK);
            let n = self
                .reader
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| CloseReason::Io(Arc::new(e)))?;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}
