//! The guest console: QEMU's stdout, written whole to the instance's `console.log` (and the
//! durable log), and read back from there by anyone who waits for text in it.
//!
//! Waiting reads the file from its start, so [`Console::wait_for`] sees everything the guest
//! printed, also before the call; a line that arrives in pieces is matched whole, and the
//! unfinished last line is matched too (firmware prompts end without a newline). The same
//! reader follows the file of another process's instance ([`LogReader::follow`]), which is how
//! `qemu-direct wait` and `console --follow` work.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::AsyncReadExt, process::ChildStdout, sync::watch};

use super::{
    Failure, PANIC_MARKER, Shared, TAIL_LINES, VmError,
    expect::{self, ConsoleError, ConsoleMatch, Expect, Origin},
};

/// Longest line kept whole; longer ones are split, so a guest without newlines cannot grow
/// memory without bound.
pub const MAX_LINE: usize = 64 * 1024;
/// How often a [`LogReader::follow`]ing reader looks for more.
pub const POLL: Duration = Duration::from_millis(100);
const CHUNK: usize = 16 * 1024;
/// How long the console pump waits after a small read for more bytes to gather.
const COALESCE: Duration = Duration::from_millis(2);

/// How far the console task has got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Bytes written to the live log.
    written: u64,
    /// QEMU's stdout is closed: nothing more will come.
    closed: bool,
}

/// What the guest printed: the live log, the durable log, and waiting for text.
///
/// Cheap to clone; clones share one log.
#[derive(Debug, Clone)]
pub struct Console {
    inner: Arc<ConsoleInner>,
}

#[derive(Debug)]
struct ConsoleInner {
    /// A read handle opened at launch: it outlives the instance directory.
    file: Arc<File>,
    path: PathBuf,
    origin: Origin,
    progress: watch::Receiver<Progress>,
    watcher: Arc<Mutex<Watcher>>,
}

impl Console {
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        origin: Origin,
        progress: watch::Receiver<Progress>,
        watcher: Arc<Mutex<Watcher>>,
    ) -> Console {
        Console {
            inner: Arc::new(ConsoleInner {
                file: Arc::new(file),
                path,
                origin,
                progress,
                watcher,
            }),
        }
    }

    /// The live log in the instance directory (removed with it when the instance ends).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The durable copy that outlives the instance, if one is written.
    pub fn log_path(&self) -> Option<&Path> {
        self.inner.origin.log.as_deref()
    }

    /// The last [`TAIL_LINES`] lines, the unfinished one included.
    pub fn tail(&self) -> Vec<String> {
        lock(&self.inner.watcher).tail()
    }

    /// The first kernel panic line seen, if any.
    pub fn panic_line(&self) -> Option<String> {
        lock(&self.inner.watcher).panic.clone()
    }

    /// Waits until QEMU's output has ended and all of it is in the log.
    pub(crate) async fn closed(&self) {
        let mut rx = self.inner.progress.clone();
        let _ = rx.wait_for(|p| p.closed).await;
    }

    /// A reader of the whole console from its first byte, which waits for more until QEMU's
    /// output ends.
    pub fn reader(&self) -> LogReader {
        LogReader {
            file: self.inner.file.clone(),
            offset: 0,
            wake: Wake::Local(self.inner.progress.clone()),
            origin: self.inner.origin.clone(),
        }
    }

    /// Waits until a line matches `pattern` (a regular expression) and returns that line.
    ///
    /// Fails at once if a kernel panic line ([`PANIC_MARKER`]) appears first, at `timeout`, or
    /// when the console ends. Use [`Console::expect`] for other failure patterns.
    ///
    /// Its errors carry the console's last lines, the log and the instance's name, and show
    /// them: a failed test says what the guest printed.
    pub async fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, ConsoleError> {
        self.wait_for_match(pattern, timeout).await.map(|m| m.line)
    }

    /// [`Console::wait_for`], returning the pattern's capture groups too.
    pub async fn wait_for_match(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<ConsoleMatch, ConsoleError> {
        let e = Expect::new(pattern)?.fail_on(&regex::escape(PANIC_MARKER))?;
        e.run_match(self.reader(), timeout).await
    }

    /// Waits for the literal text `start`, then for `end` after it, and returns what the
    /// console printed between them (it may span lines; carriage returns are dropped, so
    /// `"\n"` as `end` means the end of the line). Like
    /// [`Console::wait_for`] it reads from the console's first byte, and fails on a kernel
    /// panic line, at `timeout`, or when the console ends.
    pub async fn between(
        &self,
        start: &str,
        end: &str,
        timeout: Duration,
    ) -> Result<String, ConsoleError> {
        expect::between(self.reader(), start, end, timeout).await
    }

    /// Waits until a line matches `expect`'s pattern, failing if one of its failure patterns
    /// matches first, at `timeout`, or when the console ends.
    pub async fn expect(&self, expect: &Expect, timeout: Duration) -> Result<String, ConsoleError> {
        expect.run(self.reader(), timeout).await
    }
}

/// What [`LogReader`] waits on for more.
enum Wake {
    /// The console task in this process.
    Local(watch::Receiver<Progress>),
    /// Another process's instance: poll while it lives.
    Poll(Box<dyn FnMut() -> bool + Send>),
}

/// Reads a growing log from its start, waiting for more until the writer is done. Cancel-safe.
pub struct LogReader {
    file: Arc<File>,
    offset: u64,
    wake: Wake,
    origin: Origin,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    /// Follows a file another process writes, for as long as `alive` says the writer lives.
    /// Once it says no, the reader returns what is left and then ends.
    pub fn follow(file: File, alive: impl FnMut() -> bool + Send + 'static) -> LogReader {
        LogReader {
            file: Arc::new(file),
            offset: 0,
            wake: Wake::Poll(Box::new(alive)),
            origin: Origin::default(),
        }
    }

    /// Names the instance whose console this is, and its durable log, for the messages of a
    /// wait that fails ([`ConsoleError`]).
    pub fn describing(mut self, instance: &str, log: Option<PathBuf>) -> LogReader {
        self.origin = Origin {
            instance: instance.to_owned(),
            log,
        };
        self
    }

    /// Which instance's console this is, as far as known.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The next bytes, or `None` at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = self.file.read_at(&mut buf, self.offset)?;
            if n > 0 {
                self.offset += n as u64;
                buf.truncate(n);
                return Ok(Some(buf));
            }
            match &mut self.wake {
                Wake::Local(rx) => {
                    let p = *rx.borrow_and_update();
                    if p.written > self.offset {
                        // Written before it was announced; read it.
                        continue;
                    }
                    if p.closed {
                        return Ok(None);
                    }
                    if rx.changed().await.is_err() {
                        // The console task is gone; what it wrote is all there will be.
                        self.wake = Wake::Poll(Box::new(|| false));
                    }
                }
                Wake::Poll(alive) => {
                    if !alive() {
                        // The writer is gone: one last read catches its final bytes.
                        let n = self.file.read_at(&mut buf, self.offset)?;
                        if n == 0 {
                            return Ok(None);
                        }
                        continue;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// Keeps the last lines and notices a kernel panic.
#[derive(Debug, Default)]
pub(crate) struct Watcher {
    line: Vec<u8>,
    tail: VecDeque<String>,
    /// The first panic line.
    pub(crate) panic: Option<String>,
}

impl Watcher {
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&self.line)
                    .trim_end_matches('\r')
                    .to_string();
                if self.panic.is_none() && line.contains(PANIC_MARKER) {
                    self.panic = Some(line.trim().to_owned());
                }
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(line);
                self.line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            self.line.push(b);
        }
    }

    pub(crate) fn tail(&self) -> Vec<String> {
        let mut t: Vec<String> = self.tail.iter().cloned().collect();
        if !self.line.is_empty() {
            t.push(String::from_utf8_lossy(&self.line).into_owned());
        }
        if t.len() > TAIL_LINES {
            t.drain(..t.len() - TAIL_LINES);
        }
        t
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's sinks: the live log, the durable log if any.
pub(crate) struct Sinks {
    pub(crate) live: (File, PathBuf),
    pub(crate) durable: Option<(File, PathBuf)>,
}

/// Copies QEMU's stdout into the logs until it closes, feeding the watcher and waking readers.
/// A log that cannot be written is a failure of the run, as QEMU's output would be lost.
pub(crate) async fn pump(
    mut stdout: ChildStdout,
    mut sinks: Sinks,
    progress: watch::Sender<Progress>,
    watcher: Arc<Mutex<Watcher>>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let mut written = sinks
            .live
            .0
            .write_all(chunk)
            .map_err(|e| (e, &sinks.live.1));
        if let Some((f, p)) = &mut sinks.durable
            && written.is_ok()
        {
            written = f.write_all(chunk).map_err(|e| (e, &*p));
        }
        if let Err((source, path)) = written {
            *lock(&shared.log_error) = Some(VmError::Log {
                path: path.clone(),
                source,
            });
            shared.fail(Failure::Log);
            break;
        }
        progress.send_modify(|p| p.written += n as u64);
        let panic = {
            let mut w = lock(&watcher);
            w.feed(chunk);
            w.panic.clone()
        };
        if let Some(line) = panic {
            shared.fail(Failure::ConsolePanic(line));
        }
        // QEMU writes a serial console a byte at a time, and each read here costs a handful of
        // syscalls in this task and the readers it wakes: per byte, a booting kernel's log
        // makes that a tenth of a CPU second, taken from the guest on a small machine. A short
        // pause after a small read lets a burst gather, for at most this much latency.
        if n < CHUNK / 4 {
            tokio::time::sleep(COALESCE).await;
        }
    }
    progress.send_modify(|p| p.closed = true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_finds_panics_and_keeps_a_bounded_tail() {
        let mut w = Watcher::default();
        w.feed(b"[ 1.0] Kernel panic - not syn");
        assert!(w.panic.is_none());
        w.feed(b"cing: Attempted to kill init!\n");
        assert_eq!(
            w.panic.as_deref(),
            Some("[ 1.0] Kernel panic - not syncing: Attempted to kill init!")
        );
        w.feed(&vec![b'x'; MAX_LINE * 3]);
        assert!(w.line.len() <= MAX_LINE);
        for i in 0..100 {
            w.feed(format!("line {i}\n").as_bytes());
        }
        assert_eq!(w.tail().len(), TAIL_LINES);
        assert_eq!(w.tail().last().unwrap(), "line 99");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_followed_file_is_read_to_the_end_once_its_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"one\ntw").unwrap();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let a = alive.clone();
        let reader = LogReader::follow(File::open(&path).unwrap(), move || {
            a.load(std::sync::atomic::Ordering::SeqCst)
        });
        let wait = tokio::spawn(async move {
            Expect::new("^two$")
                .unwrap()
                .run(reader, Duration::from_secs(10))
                .await
        });
        tokio::time::sleep(POLL * 2).await;
        w.write_all(b"o\nthree\n").unwrap();
        alive.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(wait.await.unwrap().unwrap(), "two");

        let reader = LogReader::follow(File::open(&path).unwrap(), || false);
        let e = Expect::new("four")
            .unwrap()
            .run(reader, Duration::from_secs(10))
            .await;
        assert!(matches!(e, Err(ConsoleError::Ended { .. })), "{e:?}");
        let reader = LogReader::follow(File::open(&path).unwrap(), || true);
        let e = Expect::new("four")
            .unwrap()
            .run(reader, Duration::from_millis(300))
            .await;
        assert!(matches!(e, Err(ConsoleError::TimedOut { .. })), "{e:?}");
    }
}
