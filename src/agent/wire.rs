//! The byte stream to the agent: connecting, line framing with a size limit, the
//! `guest-sync-delimited` handshake, and one request/reply round trip.

use std::{
    hash::{BuildHasher, Hasher},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    time::Instant,
};

use super::error::{AgentError, LinkError};

/// The sentinel qemu-ga writes before the reply to `guest-sync-delimited`. It never occurs in
/// UTF-8, so neither in a JSON reply: a client that lost track of the stream can skip to it.
/// Sent the other way it makes the agent's JSON parser drop any half-received request.
pub(super) const DELIMITER: u8 = 0xFF;
const READ_CHUNK: usize = 64 * 1024;
/// The first wait for a sync reply; a running agent answers within milliseconds, a booting
/// guest not at all, and a slow (emulated) one somewhere between, so the wait doubles.
const FIRST_ATTEMPT: Duration = Duration::from_millis(200);
const LONGEST_ATTEMPT: Duration = Duration::from_secs(2);
/// Pause before reconnecting after the socket refused or hung up, so that a dead peer is not
/// hammered in a loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// One connection's state. Lives behind the agent's mutex, so only one command uses it at a
/// time.
pub(super) struct Conn {
    path: PathBuf,
    stream: Option<UnixStream>,
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline (nor, while syncing, no delimiter).
    scanned: usize,
    limit: usize,
    /// Whether the last exchange ended cleanly, so the next reply on the stream is the reply to
    /// the next request. Cleared before every exchange and set again after it, so a failure or
    /// a cancelled caller leaves it false and the next command re-syncs.
    pub(super) synced: bool,
    ids: Ids,
}

/// Request and sync ids: a random start, so that a reply meant for an earlier client of the same
/// socket (a killed `qemu-direct` whose command finished later) never matches, then counting.
struct Ids {
    next: u64,
}

impl Ids {
    fn new() -> Ids {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        // Below 2^52, leaving room to count while staying exact in any JSON parser.
        Ids {
            next: h.finish() >> 12,
        }
    }

    fn take(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// How a sync attempt or an exchange failed, before it is put in terms of a command.
pub(super) enum Failure {
    Link(LinkError),
    TimedOut,
}

impl From<LinkError> for Failure {
    fn from(e: LinkError) -> Self {
        Failure::Link(e)
    }
}

impl Conn {
    pub(super) fn new(path: PathBuf, limit: usize) -> Conn {
        Conn {
            path,
            stream: None,
            buf: Vec::new(),
            scanned: 0,
            limit,
            synced: false,
            ids: Ids::new(),
        }
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.ids.take()
    }

    /// Forgets the connection; the next sync connects anew.
    pub(super) fn drop_stream(&mut self) {
        self.stream = None;
        self.buf = Vec::new();
        self.scanned = 0;
        self.synced = false;
    }

    /// Connects if not connected. A refused connection is retried until `deadline`: QEMU's
    /// chardev listens with a backlog of one, so a connect can fail while it is busy.
    async fn ensure_connected(&mut self, deadline: Instant) -> Result<(), AgentError> {
        while self.stream.is_none() {
            match UnixStream::connect(&self.path).await {
                Ok(s) => self.stream = Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(AgentError::NoChannel {
                        path: self.path.clone(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    if Instant::now() + RECONNECT_PAUSE >= deadline {
                        return Err(AgentError::Connect {
                            path: self.path.clone(),
                            source: e,
                        });
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(source) => {
                    return Err(AgentError::Connect {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Brings the stream into a known state: sends `guest-sync-delimited` with a fresh id,
    /// waits a while for the reply, and repeats until one arrives or `wait` has passed.
    ///
    /// An agent that starts late receives all the earlier attempts at once and answers each;
    /// a reply to any of them proves the agent is there, and the rest, carrying request ids
    /// nobody waits for, are skipped by later exchanges.
    pub(super) async fn sync(&mut self, wait: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + wait;
        let mut sent = Vec::new();
        let mut attempt_wait = FIRST_ATTEMPT;
        self.synced = false;
        loop {
            self.ensure_connected(deadline).await?;
            let sync_id = self.ids.take();
            let request_id = self.ids.take();
            sent.push(sync_id);
            let mut line = vec![DELIMITER];
            line.extend(encode(
                "guest-sync-delimited",
                Some(json!({ "id": sync_id })),
                request_id,
            ));
            let end = (Instant::now() + attempt_wait).min(deadline);
            // The write is bounded too: a peer that reads nothing fills the socket buffer.
            let attempt = async {
                self.write(&line).await?;
                self.await_sync(&sent).await
            };
            let outcome = tokio::time::timeout_at(end, attempt)
                .await
                .unwrap_or(Err(Failure::TimedOut));
            match outcome {
                Ok(()) => {
                    self.synced = true;
                    return Ok(());
                }
                Err(Failure::TimedOut) => {}
                Err(Failure::Link(_)) => {
                    // The peer hung up (the agent side restarting, say): try a new connection.
                    self.drop_stream();
                    tokio::time::sleep_until(end.min(Instant::now() + RECONNECT_PAUSE)).await;
                }
            }
            if Instant::now() >= deadline {
                return Err(AgentError::NotAnswering {
                    path: self.path.clone(),
                    waited: wait,
                    attempts: sent.len() as u32,
                });
            }
            attempt_wait = (attempt_wait * 2).min(LONGEST_ATTEMPT);
        }
    }

    /// Skips to a delimiter, then takes the line after it as a sync reply if it answers one of
    /// `sent`; anything else (stale replies, garbage, a partial line) is skipped.
    async fn await_sync(&mut self, sent: &[u64]) -> Result<(), Failure> {
        loop {
            self.skip_to_delimiter().await?;
            let line = self.next_line().await?;
            let answered = serde_json::from_slice::<Value>(after_delimiter(&line))
                .ok()
                .and_then(|v| v.get("return")?.as_u64())
                .is_some_and(|id| sent.contains(&id));
            if answered {
                return Ok(());
            }
        }
    }

    /// Sends one request and returns the reply carrying its id, skipping any other line: late
    /// replies to requests whose caller gave up, the agent's complaints about a half-sent
    /// request, garbage from a guest that rebooted.
    pub(super) async fn exchange(
        &mut self,
        line: &[u8],
        id: u64,
    ) -> Result<Map<String, Value>, Failure> {
        self.write(line).await?;
        loop {
            let line = self.next_line().await?;
            let Ok(Value::Object(msg)) = serde_json::from_slice(after_delimiter(&line)) else {
                continue;
            };
            if msg.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(msg);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(LinkError::Eof);
        };
        let io = |e| LinkError::Io(Arc::new(e));
        stream.write_all(bytes).await.map_err(io)?;
        stream.flush().await.map_err(io)
    }

    /// Reads more bytes into the buffer; the end of the stream is an error, since every caller
    /// is waiting for something.
    async fn fill(&mut self) -> Result<(), LinkError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(LinkError::Eof);
        };
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            // Do not keep a huge reply's buffer for the life of the connection.
            self.buf = Vec::new();
        }
        self.buf.reserve(READ_CHUNK);
        match stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(LinkError::Eof),
            Ok(_) => Ok(()),
            Err(e) => Err(LinkError::Io(Arc::new(e))),
        }
    }

    /// Drops everything up to and including the next delimiter.
    async fn skip_to_delimiter(&mut self) -> Result<(), LinkError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == DELIMITER) {
                self.buf.drain(..=i);
                self.scanned = 0;
                return Ok(());
            }
            self.buf.clear();
            self.scanned = 0;
            self.fill().await?;
        }
    }

    /// The next line without its newline. Bytes read stay in the buffer across calls, and the
    /// scan resumes where it stopped, so a long reply arriving in many reads costs one pass.
    async fn next_line(&mut self) -> Result<Vec<u8>, LinkError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                if end > self.limit {
                    return Err(LinkError::TooLarge { limit: self.limit });
                }
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                self.scanned = 0;
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.scanned > self.limit {
                return Err(LinkError::TooLarge { limit: self.limit });
            }
            self.fill().await?;
        }
    }
}

/// What follows the last delimiter in a line: a sync reply (stale or awaited) starts with one,
/// and garbage without a newline before it ends up in the same line.
fn after_delimiter(line: &[u8]) -> &[u8] {
    match line.iter().rposition(|&b| b == DELIMITER) {
        Some(i) => &line[i + 1..],
        None => line,
    }
}

/// A request line: `{"execute": .., "arguments": .., "id": ..}` and a newline.
pub(super) fn encode(command: &str, arguments: Option<Value>, id: u64) -> Vec<u8> {
    let mut msg = Map::new();
    msg.insert("execute".into(), command.into());
    if let Some(a) = arguments {
        msg.insert("arguments".into(), a);
    }
    msg.insert("id".into(), id.into());
    let mut line = Value::Object(msg).to_string().into_bytes();
    line.push(b'\n');
    line
}
