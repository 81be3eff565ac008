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

use crate::util::json::command_arguments;
use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{broadcast, mpsc, oneshot, watch},
};

mod conn;
mod error;
#[cfg(test)]
mod tests;
mod types;

use conn::{Forget, Inner, Lines, Pending, Shared, State, read_loop, shorten, write_loop};
pub use error::{CloseReason, QmpError};
pub use types::{CpuInfo, Event, Events, Greeting, Kvm, Notice, Status, Version};

/// The largest message accepted from the peer. Real replies are far smaller (the largest,
/// `query-qmp-schema`, is about 200 KiB); anything bigger means a broken or hostile peer, and
/// buffering it without bound would let it exhaust memory.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Messages an event subscriber may fall behind before it misses some and gets
/// [`Notice::Lagged`].
pub const EVENT_BUFFER: usize = 1024;

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
        let arguments = command_arguments(&command).map_err(|source| QmpError::Encode {
            command: C::NAME.to_owned(),
            source,
        })?;
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
