//! A QMP (QEMU Machine Protocol) client on tokio.
//!
//! Commands and their arguments come from the [`qapi`] crate, but its generated types never sit
//! on the read path: they are closed enums and structs from one QEMU version's schema, so a newer
//! QEMU's unknown event or enum value, or an older QEMU's missing field, would end the stream
//! (see `shared/reference/qmp.md`). Instead each incoming line is parsed as a
//! [`serde_json::Value`], replies are matched to requests by `id`, events go to every subscriber,
//! and only a reply is decoded into a typed value, by the caller that asked for it. A reply that
//! does not decode fails that one call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qemu_direct::qmp::QmpError> {
//! use qemu_direct::qmp::Qmp;
//!
//! let qmp = Qmp::connect_unix("/run/user/1000/vm0/qmp.sock").await?;
//! let mut events = qmp.events();
//! qmp.stop().await?;
//! let stop = events.next_event().await;
//! assert_eq!(stop.map(|e| e.name).as_deref(), Some("STOP"));
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{broadcast, mpsc, oneshot, watch},
};

#[cfg(test)]
mod tests;

/// The largest message accepted from the peer. Real replies are far smaller (the largest,
/// `query-qmp-schema`, is about 200 KiB); anything bigger means a broken or hostile peer, and
/// buffering it without bound would let it exhaust memory.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Messages an event subscriber may fall behind before it misses some and gets
/// [`Notice::Lagged`].
pub const EVENT_BUFFER: usize = 1024;
/// How much of a garbage line a [`Notice::Garbage`] keeps.
const GARBAGE_SHOWN: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;

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

/// A QEMU version, ordered so that `greeting.version >= Version::new(8, 0, 0)` reads naturally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl Version {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        Version {
            major,
            minor,
            micro,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What QEMU announced on connecting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: Version,
    /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`; may be empty.
    pub package: String,
    /// Capabilities offered, such as `oob`; none are enabled by this client.
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// Reads `{"QMP": {"version": {"qemu": {..}, "package": ..}, "capabilities": [..]}}`,
    /// tolerating missing parts inside `QMP`: only its presence marks a QMP peer.
    fn parse(line: &[u8]) -> Option<Greeting> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let qmp = v.get("QMP")?;
        let qemu = &qmp["version"]["qemu"];
        let part = |k: &str| qemu[k].as_u64().unwrap_or(0) as u32;
        Some(Greeting {
            version: Version::new(part("major"), part("minor"), part("micro")),
            package: qmp["version"]["package"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            capabilities: qmp["capabilities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// An asynchronous event from QEMU, such as `STOP`, `RESUME` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name. Any name is accepted: QEMU adds events over time.
    pub name: String,
    /// The event's `data`, or `Null` for events without any (e.g. `STOP`).
    pub data: Value,
    /// When QEMU emitted it: seconds and microseconds since the Unix epoch.
    pub timestamp: Option<(i64, i64)>,
}

/// What an event subscriber receives: an event, or news about the stream itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An event from QEMU.
    Event(Event),
    /// This subscriber fell behind and missed this many messages; later ones follow.
    Lagged(u64),
    /// A line that was not a QMP message or could not be matched to a request. Nothing else
    /// failed because of it; it is reported so that it is not lost silently.
    Garbage {
        /// The start of the line.
        line: String,
        /// What was wrong with it.
        problem: String,
    },
}

/// A subscription to the connection's events, from the moment it was made.
///
/// Ends (returns `None`) once the connection is closed and everything before that was read, or
/// once every [`Qmp`] handle is dropped.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Notice>,
}

impl Events {
    /// The next notice, or `None` at the end of the stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Notice> {
        match self.rx.recv().await {
            Ok(n) => Some(n),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Notice::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next QEMU event, skipping other notices. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Notice::Event(e) = self.next().await? {
                return Some(e);
            }
        }
    }
}

/// `query-status`, kept lenient: QEMU adds run states, and removed `singlestep` in 8.1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Whether the guest's CPUs are running.
    pub running: bool,
    /// The run state, e.g. `prelaunch`, `running`, `paused`, `shutdown`, `internal-error`.
    pub status: String,
    /// Whether single-stepping is on (QEMU before 8.1 only).
    pub singlestep: Option<bool>,
}

/// `query-kvm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Kvm {
    /// This VM uses KVM.
    pub enabled: bool,
    /// This QEMU binary was built with KVM support.
    pub present: bool,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CpuInfo {
    /// QEMU's index of the CPU.
    pub cpu_index: i64,
    /// The CPU's QOM path.
    pub qom_path: String,
    /// The host thread running this vCPU.
    pub thread_id: i64,
    /// The target architecture, e.g. `x86_64`; a string because QEMU adds targets.
    pub target: String,
    /// Topology properties (`socket-id`, `core-id`, ...), which differ by target.
    pub props: Value,
    /// Target-specific fields, e.g. s390x's `cpu-state`.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A connected, negotiated QMP client.
///
/// Cheap to clone; clones share the connection, and any number of tasks may have requests in
/// flight at once. A request future that is dropped (say by a timeout) is forgotten cleanly and
/// its late reply ignored. Dropping the last clone closes the connection.
///
/// A request waits as long as QEMU takes to answer, which is unbounded if QEMU hangs; wrap calls
/// in `tokio::time::timeout` where that matters.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writes: mpsc::UnboundedSender<Vec<u8>>,
    greeting: Greeting,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.lock().events = None;
        self.shared.shutdown.send_replace(true);
    }
}

/// What the reader and writer tasks share with the handles.
struct Shared {
    state: Mutex<State>,
    /// Turns true once the connection is closed, to stop both tasks.
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    closed: Option<CloseReason>,
    /// Taken on close, so that subscribers see the end of the stream.
    events: Option<broadcast::Sender<Notice>>,
}

struct Pending {
    command: String,
    reply: oneshot::Sender<Result<Value, QmpError>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.inner.greeting)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to QEMU's QMP Unix socket (`-qmp unix:PATH,server=on,wait=off`) and negotiates.
    ///
    /// QEMU creates the socket a little after it starts; callers that race it should retry.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Qmp, QmpError> {
        let path = path.as_ref();
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        Qmp::handshake(reader, writer).await
    }

    /// Reads the greeting from `reader`, starts the reader and writer tasks and negotiates
    /// capabilities (none enabled). Works over any byte stream, such as a child's stdout and
    /// stdin with `-qmp stdio`. Must run inside a tokio runtime, of either flavour.
    ///
    /// A peer that never greets keeps this waiting; wrap it in a timeout if that matters.
    pub async fn handshake<R, W>(reader: R, writer: W) -> Result<Qmp, QmpError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Qmp::handshake_limited(reader, writer, MAX_MESSAGE).await
    }

    async fn handshake_limited<R, W>(reader: R, writer: W, limit: usize) -> Result<Qmp, QmpError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut lines = Lines::new(reader, limit);
        let greeting = loop {
            match lines.next().await {
                Ok(Some(line)) if line.trim_ascii().is_empty() => continue,
                Ok(Some(line)) => {
                    break Greeting::parse(&line).ok_or_else(|| QmpError::Greeting {
                        line: shorten(&line),
                    })?;
                }
                Ok(None) => return Err(QmpError::Closed(CloseReason::Eof)),
                Err(reason) => return Err(QmpError::Closed(reason)),
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                events: Some(broadcast::channel(EVENT_BUFFER).0),
                ..State::default()
            }),
            shutdown: watch::Sender::new(false),
            next_id: AtomicU64::new(0),
        });
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(lines, shared.clone()));
        tokio::spawn(write_loop(writer, queue, shared.clone()));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                shared,
                writes,
                greeting,
            }),
        };
        qmp.call(qapi::qmp::qmp_capabilities { enable: None })
            .await?;
        Ok(qmp)
    }

    /// What QEMU announced on connecting.
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// A new subscription to events from now on.
    pub fn events(&self) -> Events {
        let rx = match &self.inner.shared.lock().events {
            Some(tx) => tx.subscribe(),
            // Closed: a receiver whose sender is gone ends at once.
            None => broadcast::channel(1).1,
        };
        Events { rx }
    }

    /// Waits until the connection is closed, and says why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.inner.shared.shutdown.subscribe();
        let _ = rx.wait_for(|&closed| closed).await;
        self.inner.shared.reason()
    }

    /// Runs any command, with `arguments` (a JSON object) if given, and returns its `return`
    /// value as is. Cancel-safe.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("execute".into(), command.into());
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), id.into());
        let mut line = serde_json::to_vec(&msg).map_err(|source| QmpError::Encode {
            command: command.to_owned(),
            source,
        })?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut state = shared.lock();
            // Checked under the same lock that close() drains under, so no request is missed.
            if let Some(reason) = &state.closed {
                return Err(QmpError::Closed(reason.clone()));
            }
            state.pending.insert(
                id,
                Pending {
                    command: command.to_owned(),
                    reply: tx,
                },
            );
        }
        let _forget = Forget { shared, id };
        // Lines go through the writer task, so a caller cancelled mid-write cannot leave half a
        // request on the wire. If it is gone, the connection is closed and `rx` says so.
        let _ = self.inner.writes.send(line);
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Closed(shared.reason())),
        }
    }

    /// Runs a command from [`qapi::qmp`] and decodes its reply into the crate's return type.
    ///
    /// The crate's types follow a newer QEMU than some in use (its `query-machines` fails on
    /// 7.2); use [`Qmp::call_as`] with a lenient type where that bites.
    pub async fn call<C: qapi::Command>(&self, command: C) -> Result<C::Ok, QmpError> {
        self.call_as::<C, C::Ok>(command).await
    }

    /// Runs a command from [`qapi::qmp`] and decodes its reply into a type of the caller's.
    pub async fn call_as<C: qapi::Command, T: DeserializeOwned>(
        &self,
        command: C,
    ) -> Result<T, QmpError> {
        let arguments = serde_json::to_value(&command).map_err(|source| QmpError::Encode {
            command: C::NAME.to_owned(),
            source,
        })?;
        let arguments = match arguments {
            Value::Object(m) if m.is_empty() => None,
            Value::Null => None,
            a => Some(a),
        };
        let reply = self.execute(C::NAME, arguments).await?;
        serde_json::from_value(reply).map_err(|source| QmpError::Decode {
            command: C::NAME.to_owned(),
            source,
        })
    }

    /// `query-status`: whether the guest runs, and its run state.
    pub async fn query_status(&self) -> Result<Status, QmpError> {
        self.call_as(qapi::qmp::query_status {}).await
    }

    /// `query-kvm`: whether KVM is built in and in use.
    pub async fn query_kvm(&self) -> Result<Kvm, QmpError> {
        self.call_as(qapi::qmp::query_kvm {}).await
    }

    /// `query-cpus-fast`: the vCPUs, without interrupting them.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuInfo>, QmpError> {
        self.call_as(qapi::qmp::query_cpus_fast {}).await
    }

    /// `stop`: pauses the guest's CPUs. QEMU emits `STOP` if they were running.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.call(qapi::qmp::stop {}).await.map(drop)
    }

    /// `cont`: starts or resumes the guest's CPUs, also out of `-S`. QEMU emits `RESUME`.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.call(qapi::qmp::cont {}).await.map(drop)
    }

    /// `system_reset`: resets the machine, like the reset button. QEMU emits `RESET`.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.call(qapi::qmp::system_reset {}).await.map(drop)
    }

    /// `system_powerdown`: asks the guest to power off (ACPI button); it may ignore this.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.call(qapi::qmp::system_powerdown {}).await.map(drop)
    }

    /// `quit`: QEMU exits at once, without the guest's cooperation.
    ///
    /// The connection closing before the reply arrives counts as success: QEMU may exit before
    /// its monitor thread has flushed the reply, and exiting is what was asked for.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.call(qapi::qmp::quit {}).await {
            Ok(_) | Err(QmpError::Closed(CloseReason::Eof)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes a request's entry when its caller stops waiting, answered or not.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Shared {
    /// The state, even if a thread panicked holding it: every update leaves it consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reason(&self) -> CloseReason {
        self.lock().closed.clone().unwrap_or(CloseReason::Eof)
    }

    /// Closes once (the first reason wins): fails every pending request, ends the event
    /// streams and stops both tasks, which drops both halves of the transport.
    fn close(&self, reason: CloseReason) {
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

    fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.lock().events {
            // An error only means nobody is subscribed.
            let _ = tx.send(notice);
        }
    }

    fn garbage(&self, line: &[u8], problem: impl Into<String>) {
        self.notify(Notice::Garbage {
            line: shorten(line),
            problem: problem.into(),
        });
    }

    /// Routes one line: an event to the subscribers, a reply to its caller, anything else to
    /// the subscribers as garbage.
    fn dispatch(&self, line: &[u8]) {
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
fn reply(mut msg: Map<String, Value>, command: String, line: &[u8]) -> Result<Value, QmpError> {
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
fn shorten(line: &[u8]) -> String {
    let line = line.trim_ascii();
    let mut s = String::from_utf8_lossy(&line[..line.len().min(GARBAGE_SHOWN)]).into_owned();
    if line.len() > GARBAGE_SHOWN {
        s.push_str("...");
    }
    s
}

async fn read_loop<R: AsyncRead + Unpin>(mut lines: Lines<R>, shared: Arc<Shared>) {
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

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
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
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the first line not yet returned.
    start: usize,
    /// `buf[start..scanned]` holds no newline.
    scanned: usize,
    limit: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R, limit: usize) -> Self {
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
    async fn next(&mut self) -> Result<Option<Vec<u8>>, CloseReason> {
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
