//! Running a plan: start QEMU, stream its console, watch for the end, and say how it ended.
//!
//! The launcher reads QEMU's stdout (the guest console) itself rather than handing QEMU the
//! terminal: it tees the console to the caller and a log file, recognises a kernel panic and an
//! optional "until" marker, and notices QEMU's "KVM internal error" on stderr, after which QEMU
//! would otherwise sit in run state `internal-error` forever.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{ExitCode, argv, plan::LaunchPlan};

/// What the kernel prints when it panics; with `panic=-1 -no-reboot` QEMU then exits 0, so
/// this line is how a panic is told from a clean power-off.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// What QEMU prints on stderr when KVM cannot go on; QEMU then stops the guest but stays up.
pub const KVM_INTERNAL_ERROR: &str = "KVM internal error";
/// How long QEMU gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long a panicking guest gets to reboot (and so end QEMU) before we stop it.
pub const PANIC_GRACE: Duration = Duration::from_secs(5);
/// Console lines kept for reports.
pub const TAIL_LINES: usize = 20;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop the guest and fail after this long.
    pub timeout: Option<Duration>,
    /// Stop the guest and succeed once the console prints this text.
    pub until: Option<String>,
    /// Also write the console here (created or truncated).
    pub console_log: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// QEMU exited 0 and the guest did not panic: a clean power-off.
    PoweredOff,
    /// The `until` text appeared; the launcher stopped QEMU.
    Reached,
    /// The guest kernel panicked.
    Panicked {
        /// The panic line.
        line: String,
    },
    /// QEMU exited with an error or was killed.
    QemuFailed {
        /// Its exit status.
        status: String,
    },
    /// The hypervisor gave up on the guest (KVM internal error).
    Crashed {
        /// What QEMU said.
        reason: String,
    },
    /// The timeout expired.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The launcher got SIGINT or SIGTERM and stopped QEMU.
    Interrupted {
        /// The signal.
        signal: String,
    },
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::PoweredOff | Outcome::Reached => ExitCode::Success,
            Outcome::Panicked { .. } => ExitCode::GuestPanicked,
            Outcome::QemuFailed { .. } => ExitCode::QemuFailed,
            Outcome::Crashed { .. } => ExitCode::GuestCrashed,
            Outcome::TimedOut { .. } => ExitCode::Timeout,
            Outcome::Interrupted { .. } => ExitCode::Interrupted,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::PoweredOff => write!(f, "guest powered off"),
            Outcome::Reached => write!(f, "console reached the expected text; guest stopped"),
            Outcome::Panicked { line } => write!(f, "guest kernel panicked: {line}"),
            Outcome::QemuFailed { status } => write!(f, "QEMU failed: {status}"),
            Outcome::Crashed { reason } => write!(f, "guest crashed: {reason}"),
            Outcome::TimedOut { after } => {
                write!(
                    f,
                    "timed out after {}; guest stopped",
                    humantime::format_duration(*after)
                )
            }
            Outcome::Interrupted { signal } => write!(f, "interrupted by {signal}; guest stopped"),
        }
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// The last part of QEMU's stderr.
    pub stderr_tail: String,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The console log could not be written.
    #[error("cannot write console log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading QEMU's output or waiting for it failed.
    #[error("lost contact with QEMU")]
    Io(#[from] std::io::Error),
}

/// Line-oriented watcher of the console stream.
struct Watcher {
    line: Vec<u8>,
    tail: VecDeque<String>,
    until: Option<String>,
    reached: bool,
    panic: Option<String>,
}

const MAX_LINE: usize = 64 * 1024;

impl Watcher {
    fn new(until: Option<String>) -> Self {
        Watcher {
            line: Vec::new(),
            tail: VecDeque::new(),
            until,
            reached: false,
            panic: None,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.check_partial();
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
        // Firmware prompts often end without a newline.
        self.check_partial();
    }

    fn check_partial(&mut self) {
        if let Some(u) = &self.until
            && !self.reached
            && String::from_utf8_lossy(&self.line).contains(u.as_str())
        {
            self.reached = true;
        }
    }

    fn tail(&self) -> Vec<String> {
        let mut t: Vec<String> = self.tail.iter().cloned().collect();
        if !self.line.is_empty() {
            t.push(String::from_utf8_lossy(&self.line).into_owned());
        }
        t
    }
}

/// Starts QEMU for `plan` and runs it to the end, copying the console to `out`.
///
/// QEMU gets its own process group (the terminal's Ctrl-C reaches only the launcher, which then
/// stops QEMU) and `PR_SET_PDEATHSIG` = SIGKILL, so it cannot outlive a launcher that is killed.
/// The death signal follows the *thread* that spawned QEMU: call this from a runtime whose
/// thread lives as long as the run, such as a current-thread runtime.
pub async fn run<W: AsyncWrite + Unpin>(
    plan: &LaunchPlan,
    opts: &RunOptions,
    out: &mut W,
) -> Result<Report, VmError> {
    let argv = argv::build(plan);
    let mut log = match &opts.console_log {
        Some(path) => {
            let log_err = |source| VmError::Log {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(log_err)?;
            }
            Some((File::create(path).map_err(log_err)?, path.clone()))
        }
        None => None,
    };

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let launcher = nix::unistd::getpid();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The launcher may have died before prctl took effect.
            if nix::unistd::getppid() != launcher {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
        binary: plan.binary.clone(),
        source,
    })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();

    let mut watcher = Watcher::new(opts.until.clone());
    let mut errbuf: Vec<u8> = Vec::new();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = opts.timeout.map_or(far, |t| Instant::now() + t);
    let mut panic_deadline = far;
    let mut buf = vec![0u8; 16 * 1024];
    let mut ebuf = vec![0u8; 4096];
    let mut stop: Option<Outcome> = None;
    let mut out_open = true;

    let status = loop {
        tokio::select! {
            n = read_some(&mut stdout, &mut buf) => {
                let n = n?;
                if n == 0 { stdout = None; continue; }
                // A reader that goes away (`run | head`) must not stop the guest.
                if out_open && (out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err()) {
                    out_open = false;
                }
                record(&mut log, &mut watcher, &buf[..n])?;
                if watcher.reached {
                    stop = Some(Outcome::Reached);
                    break terminate(&mut child).await?;
                }
                if watcher.panic.is_some() && panic_deadline == far {
                    panic_deadline = Instant::now() + PANIC_GRACE;
                }
            }
            n = read_some(&mut stderr, &mut ebuf) => {
                let n = n?;
                if n == 0 { stderr = None; continue; }
                let _ = tokio::io::stderr().write_all(&ebuf[..n]).await;
                errbuf.extend_from_slice(&ebuf[..n]);
                if errbuf.len() > 64 * 1024 {
                    errbuf.drain(..errbuf.len() - 32 * 1024);
                }
                if let Some(line) = String::from_utf8_lossy(&errbuf).lines().find(|l| l.contains(KVM_INTERNAL_ERROR)) {
                    stop = Some(Outcome::Crashed { reason: line.trim().to_owned() });
                    break terminate(&mut child).await?;
                }
            }
            status = child.wait() => break status?,
            _ = sleep_until(deadline) => {
                stop = Some(Outcome::TimedOut { after: opts.timeout.unwrap_or_default() });
                break terminate(&mut child).await?;
            }
            _ = sleep_until(panic_deadline) => break terminate(&mut child).await?,
            _ = sigint.recv() => {
                stop = Some(Outcome::Interrupted { signal: "SIGINT".into() });
                break terminate(&mut child).await?;
            }
            _ = sigterm.recv() => {
                stop = Some(Outcome::Interrupted { signal: "SIGTERM".into() });
                break terminate(&mut child).await?;
            }
        }
    };

    // QEMU is gone; what it wrote before exiting is still in the pipes.
    let mut tail = Vec::new();
    drain(&mut stdout, &mut buf, |chunk| {
        tail.extend_from_slice(chunk);
        record(&mut log, &mut watcher, chunk)
    })
    .await?;
    if out_open {
        let _ = out.write_all(&tail).await;
        let _ = out.flush().await;
    }
    let mut last_words = Vec::new();
    drain(&mut stderr, &mut ebuf, |chunk| {
        last_words.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    // QEMU acknowledges our own SIGTERM on stderr; that line would read like a failure.
    let ours = format!("terminating on signal 15 from pid {launcher} ");
    for line in last_words.split_inclusive(|&b| b == b'\n') {
        if !String::from_utf8_lossy(line).contains(&ours) {
            let _ = std::io::stderr().write_all(line);
        }
    }
    errbuf.extend_from_slice(&last_words);

    let outcome = match (stop, &watcher.panic) {
        (Some(Outcome::Reached), _) => Outcome::Reached,
        (_, Some(line)) => Outcome::Panicked { line: line.clone() },
        (Some(o), None) => o,
        (None, None) if status.success() => Outcome::PoweredOff,
        (None, None) => Outcome::QemuFailed {
            status: describe(status),
        },
    };
    let err = String::from_utf8_lossy(&errbuf);
    let lines: Vec<&str> = err.lines().collect();
    let stderr_tail = lines[lines.len().saturating_sub(10)..].join("\n");
    Ok(Report {
        outcome,
        console_tail: watcher.tail(),
        stderr_tail,
    })
}

async fn read_some<R: AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads what is left in a pipe, for a bounded time: a grandchild could hold it open.
async fn drain<R: AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> Result<(), VmError>,
) -> Result<(), VmError> {
    let Some(reader) = r else { return Ok(()) };
    let limit = Instant::now() + Duration::from_secs(2);
    loop {
        let n = tokio::select! {
            n = reader.read(buf) => n?,
            _ = sleep_until(limit) => 0,
        };
        if n == 0 {
            break;
        }
        each(&buf[..n])?;
    }
    Ok(())
}

/// Everything a console chunk feeds besides the caller's stream: the log and the watcher. The
/// same for live output and for what is drained after QEMU exits.
fn record(
    log: &mut Option<(File, PathBuf)>,
    watcher: &mut Watcher,
    chunk: &[u8],
) -> Result<(), VmError> {
    if let Some((file, path)) = log {
        file.write_all(chunk).map_err(|source| VmError::Log {
            path: path.clone(),
            source,
        })?;
    }
    watcher.feed(chunk);
    Ok(())
}

/// SIGTERM, a grace period, then SIGKILL; returns QEMU's exit status once reaped.
async fn terminate(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(TERM_GRACE, child.wait()).await {
            return status;
        }
    }
    child.kill().await?;
    child.wait().await
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_finds_panics_and_markers_across_chunks() {
        let mut w = Watcher::new(Some("GUEST-READY".into()));
        w.feed(b"booting\r\nGUEST-RE");
        assert!(!w.reached);
        w.feed(b"ADY x86_64\r\n");
        assert!(w.reached);
        w.feed(b"[ 1.0] Kernel panic - not syn");
        assert!(w.panic.is_none());
        w.feed(b"cing: Attempted to kill init!\n");
        assert_eq!(
            w.panic.as_deref(),
            Some("[ 1.0] Kernel panic - not syncing: Attempted to kill init!")
        );
        assert_eq!(w.tail().len(), 3);
    }

    #[test]
    fn watcher_bounds_lines_and_tail() {
        let mut w = Watcher::new(Some("No bootable device.".into()));
        w.feed(&vec![b'x'; MAX_LINE * 3]);
        assert!(w.line.len() <= MAX_LINE);
        for i in 0..100 {
            w.feed(format!("line {i}\n").as_bytes());
        }
        assert_eq!(w.tail().len(), TAIL_LINES);
        assert_eq!(w.tail().last().unwrap(), "line 99");
        w.feed(b"No bootable device.");
        assert!(w.reached, "a marker without a newline still counts");
    }
}
