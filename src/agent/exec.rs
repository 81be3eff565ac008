//! Running programs in the guest: `guest-exec`, then polling `guest-exec-status`.
//!
//! qemu-ga (7.2, and upstream's `qga/commands.c` as of QEMU 10) collects a process's stdout and stderr in memory and hands
//! them over only in the `guest-exec-status` reply that reports the exit, capped at 16 MiB each;
//! before that every reply is `{"exited": false}`. So output cannot be streamed while the
//! process runs. [`ExecStream`] has the shape of a stream anyway, so that its callers (the CLI)
//! already work with chunks when a later version gets them earlier, e.g. by sending output to
//! guest files and reading them with `guest-file-read` while the process runs.

use std::{collections::VecDeque, time::Duration};

use qapi::qga::{GuestExecCaptureOutput, GuestExecStatus, guest_exec, guest_exec_status};
use serde_json::json;
use tokio::time::Instant;

use super::{Agent, AgentError};

const FIRST_POLL: Duration = Duration::from_millis(5);
const SLOWEST_POLL: Duration = Duration::from_millis(100);
/// How long to wait for a killed process (and the killer) to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Kills a process and its descendants, stopping each before walking its children so that
/// none can fork away in between. Uses `/proc/PID/task/*/children` (Linux 3.5+ with
/// `CONFIG_PROC_CHILDREN`, which distribution kernels have); without it only the process
/// itself is killed. A surviving descendant would keep the output pipes open, and qemu-ga
/// reports no exit until they close.
const KILL_TREE: &str = r#"k() { kill -STOP "$1" 2>/dev/null
for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do k "$c"; done
kill -KILL "$1" 2>/dev/null; }; k "$1""#;

/// A program to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program; looked up in the agent's `PATH` (or in `env`'s, if that sets one) unless
    /// it contains a `/`.
    pub path: String,
    /// Its arguments, without the program name.
    pub args: Vec<String>,
    /// Its whole environment as `NAME=value` entries; empty means the agent's own.
    pub env: Vec<String>,
    /// Bytes for its stdin, after which stdin is closed; `None` leaves stdin unconnected.
    pub stdin: Option<Vec<u8>>,
    /// How long it may run; once passed it is killed and [`AgentError::ExecTimeout`] returned.
    /// `None` waits as long as it takes.
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    /// A request to run `path` with `args`, with no stdin, the agent's environment and no
    /// timeout.
    pub fn new(path: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ExecRequest {
            path: path.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number ended it.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        }
    }

    /// The signal number, if a signal ended it.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Code(_) => None,
            ExitStatus::Signal(n) => Some(n),
        }
    }

    /// The status as a shell reports it in `$?`: the exit code, or 128 + N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(n) => 128 + n,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(n) => write!(f, "killed by signal {n}"),
        }
    }
}

/// What a finished guest process left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (up to the agent's cap).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (up to the agent's cap).
    pub stderr: Vec<u8>,
    /// The agent dropped stdout past its cap (16 MiB in qemu-ga).
    pub stdout_truncated: bool,
    /// The agent dropped stderr past its cap.
    pub stderr_truncated: bool,
}

/// One step of a running guest process, from [`ExecStream::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes it wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes it wrote to stderr.
    Stderr(Vec<u8>),
    /// It ended; always the last event.
    Exited {
        /// How.
        status: ExitStatus,
        /// The agent dropped stdout past its cap.
        stdout_truncated: bool,
        /// The agent dropped stderr past its cap.
        stderr_truncated: bool,
    },
}

/// A guest process started by [`Agent::exec_stream`], yielding its output and then its exit.
///
/// Dropping it before the end leaves the process running in the guest (use
/// [`ExecStream::kill`] first). Cancelling [`ExecStream::next`] may lose the output and status,
/// since the agent forgets a process once it has reported its exit.
#[derive(Debug)]
pub struct ExecStream<'a> {
    agent: &'a Agent,
    path: String,
    pid: i64,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    interval: Duration,
    ready: VecDeque<ExecEvent>,
    done: bool,
}

impl Agent {
    /// Runs a program in the guest and waits for it to end.
    ///
    /// Fails with [`AgentError::ExecStart`] if the program cannot be started, and with
    /// [`AgentError::ExecTimeout`] (after killing it) if it outlives `request.timeout`. A
    /// non-zero exit is not an error: see [`ExecOutput::status`].
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecOutput, AgentError> {
        let path = request.path.clone();
        let mut stream = self.exec_stream(request).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = stream.next().await {
            match event? {
                ExecEvent::Stdout(b) => stdout.extend(b),
                ExecEvent::Stderr(b) => stderr.extend(b),
                ExecEvent::Exited {
                    status,
                    stdout_truncated,
                    stderr_truncated,
                } => {
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr,
                        stdout_truncated,
                        stderr_truncated,
                    });
                }
            }
        }
        Err(AgentError::Malformed {
            command: "guest-exec-status".into(),
            reply: format!("{path} ended without an exit status"),
        })
    }

    /// Starts a program in the guest and returns a stream of its output and exit.
    ///
    /// With qemu-ga the output comes all at once when the process has ended (see the module
    /// docs); the poll interval grows from 5 ms to 100 ms, so short commands return quickly.
    pub async fn exec_stream(&self, request: ExecRequest) -> Result<ExecStream<'_>, AgentError> {
        let ExecRequest {
            path,
            args,
            env,
            stdin,
            timeout,
        } = request;
        let started = Instant::now();
        let command = guest_exec {
            path: path.clone(),
            arg: Some(args),
            env: (!env.is_empty()).then_some(env),
            input_data: stdin,
            // A flag, not the "separated" mode: agents before QEMU 8.0 take only a boolean.
            capture_output: Some(GuestExecCaptureOutput::flag(true)),
        };
        let pid = match self.call(command).await {
            Ok(started) => started.pid,
            Err(AgentError::Guest { class, desc, .. }) if class == "GenericError" => {
                return Err(AgentError::ExecStart { path, desc });
            }
            Err(e) => return Err(e),
        };
        Ok(ExecStream {
            agent: self,
            path,
            pid,
            timeout,
            deadline: timeout.map(|t| started + t),
            interval: FIRST_POLL,
            ready: VecDeque::new(),
            done: false,
        })
    }

    /// Polls until the process has exited, for at most `within`; `None` if it has not.
    async fn wait_exited(
        &self,
        pid: i64,
        within: Duration,
    ) -> Result<Option<GuestExecStatus>, AgentError> {
        let deadline = Instant::now() + within;
        let mut interval = FIRST_POLL;
        loop {
            let status = self.call(guest_exec_status { pid }).await?;
            if status.exited {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
            interval = (interval * 2).min(SLOWEST_POLL);
        }
    }

    /// Kills a process this agent started, with `guest-exec-terminate` where the agent has it
    /// and with a shell's `kill` otherwise, then waits until the agent reports it gone (which
    /// also makes the agent forget it). Returns whether it is gone.
    async fn kill_process(&self, pid: i64) -> Result<bool, AgentError> {
        if self.info().await?.supports("guest-exec-terminate") {
            self.execute("guest-exec-terminate", Some(json!({ "pid": pid })))
                .await?;
        } else {
            let killer = self
                .call(guest_exec {
                    path: "/bin/sh".into(),
                    arg: Some(vec![
                        "-c".into(),
                        KILL_TREE.into(),
                        "sh".into(),
                        pid.to_string(),
                    ]),
                    env: None,
                    input_data: None,
                    capture_output: None,
                })
                .await?;
            self.wait_exited(killer.pid, KILL_WAIT).await?;
        }
        Ok(self.wait_exited(pid, KILL_WAIT).await?.is_some())
    }
}

impl ExecStream<'_> {
    /// The process id in the guest.
    pub fn pid(&self) -> i64 {
        self.pid
    }

    /// The next chunk of output or the exit; `None` after the exit or an error.
    pub async fn next(&mut self) -> Option<Result<ExecEvent, AgentError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.poll().await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    /// Kills the process (and its descendants, where the guest allows finding them) and ends
    /// the stream. Returns whether the agent reports it gone.
    pub async fn kill(&mut self) -> Result<bool, AgentError> {
        self.done = true;
        self.ready.clear();
        self.agent.kill_process(self.pid).await
    }

    /// Waits one poll interval (less if the deadline comes first) and asks for the status.
    async fn poll(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        let wake = match self.deadline {
            Some(deadline) if now >= deadline => return Err(self.time_out().await),
            Some(deadline) => (now + self.interval).min(deadline),
            None => now + self.interval,
        };
        tokio::time::sleep_until(wake).await;
        self.interval = (self.interval * 2).min(SLOWEST_POLL);
        let status = self.agent.call(guest_exec_status { pid: self.pid }).await?;
        if status.exited {
            self.finish(status)?;
        }
        Ok(())
    }

    fn finish(&mut self, status: GuestExecStatus) -> Result<(), AgentError> {
        self.done = true;
        let exit = match (status.exitcode, status.signal) {
            (Some(c), _) => ExitStatus::Code(c as i32),
            (None, Some(n)) => ExitStatus::Signal(n as i32),
            (None, None) => {
                return Err(AgentError::Malformed {
                    command: "guest-exec-status".into(),
                    reply: format!("{} exited with neither a code nor a signal", self.path),
                });
            }
        };
        let stdout = status.out_data.unwrap_or_default();
        let stderr = status.err_data.unwrap_or_default();
        if !stdout.is_empty() {
            self.ready.push_back(ExecEvent::Stdout(stdout));
        }
        if !stderr.is_empty() {
            self.ready.push_back(ExecEvent::Stderr(stderr));
        }
        self.ready.push_back(ExecEvent::Exited {
            status: exit,
            stdout_truncated: status.out_truncated.unwrap_or(false),
            stderr_truncated: status.err_truncated.unwrap_or(false),
        });
        Ok(())
    }

    /// Kills the process and says so; the error to return for the timeout.
    async fn time_out(&mut self) -> AgentError {
        let killed = self.kill().await.unwrap_or(false);
        AgentError::ExecTimeout {
            path: self.path.clone(),
            after: self.timeout.unwrap_or_default(),
            killed,
        }
    }
}
