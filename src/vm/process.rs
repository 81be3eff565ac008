//! The QEMU process: spawning it tied to its supervisor, signalling it without pid-reuse
//! races, and reading its stderr.

use std::{
    ffi::OsString,
    io::{self, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
};

use nix::{libc, sys::signal::Signal};
use tokio::{
    io::AsyncReadExt,
    process::{Child, ChildStderr, Command},
};

use super::{Failure, KVM_INTERNAL_ERROR, Shared, console::lock};

/// Starts QEMU with `argv`, in its own process group (the terminal's Ctrl-C reaches only the
/// supervisor, which then stops QEMU) and with `PR_SET_PDEATHSIG` = SIGKILL, so it cannot
/// outlive a supervisor that is killed. `inherit` are descriptors QEMU gets (the QMP listening
/// sockets, named on its command line by number).
pub(crate) fn spawn(argv: &[OsString], inherit: &[RawFd]) -> io::Result<Child> {
    spawn_with(argv, inherit, Stdio::piped(), Stdio::piped())
}

/// [`spawn`] with its stdout and stderr going to `stdout` and `stderr`: for the helpers a
/// launch starts beside QEMU (`virtiofsd`), tied to the supervisor the same way.
pub(crate) fn spawn_with(
    argv: &[OsString],
    inherit: &[RawFd],
    stdout: Stdio,
    stderr: Stdio,
) -> io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .process_group(0);
    let launcher = nix::unistd::getpid();
    let inherit = inherit.to_vec();
    // SAFETY: only async-signal-safe calls (prctl, getppid, fcntl, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The launcher may have died before prctl took effect.
            if nix::unistd::getppid() != launcher {
                libc::_exit(1);
            }
            for &fd in &inherit {
                // Our descriptors are close-on-exec; these must survive the exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A pidfd: a handle on one process that a recycled pid can never alias.
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// Opens one for a child that has not been reaped yet.
    pub(crate) fn open(pid: u32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let fd =
            unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is new and nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Sends `signal`; fails with ESRCH once the process has exited.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The parent of process `pid`, from `/proc`; `None` if it is gone.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold anything.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// How QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Reaped, with this status.
    Status(ExitStatus),
    /// Waiting for it failed; it is presumed gone.
    Lost(String),
}

impl Exit {
    pub(crate) fn success(&self) -> bool {
        matches!(self, Exit::Status(s) if s.success())
    }
}

/// "exit status 1", "killed by SIGKILL".
pub(crate) fn describe(exit: &Exit) -> String {
    use std::os::unix::process::ExitStatusExt;
    let status = match exit {
        Exit::Status(s) => s,
        Exit::Lost(why) => return format!("lost track of QEMU: {why}"),
    };
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => status.to_string(),
    }
}

/// QEMU's stderr as kept: the recent part, and the KVM internal error line if one came.
#[derive(Debug, Default)]
pub(crate) struct ErrLog {
    buf: Vec<u8>,
    pub(crate) kvm_error: Option<String>,
    pub(crate) done: bool,
}

impl ErrLog {
    #[cfg(test)]
    fn of(text: &str) -> ErrLog {
        ErrLog {
            buf: text.as_bytes().to_vec(),
            ..ErrLog::default()
        }
    }

    /// All that is kept, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The last ten lines.
    pub(crate) fn tail(&self) -> String {
        let err = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The line that best says why QEMU failed, for a one-line error: its last error report
    /// (`qemu-system-x86_64: -device foo: ...`, a program name and a colon), else the last line.
    pub(crate) fn error_line(&self) -> Option<String> {
        let err = String::from_utf8_lossy(&self.buf);
        let lines = || err.lines().rev().map(str::trim).filter(|l| !l.is_empty());
        let report = |l: &&str| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.len() > 1 && w.ends_with(':'))
        };
        lines()
            .find(report)
            .or_else(|| lines().next())
            .map(str::to_owned)
    }
}

/// Reads QEMU's stderr to its end: echoes it if asked, keeps the tail, and reports a KVM
/// internal error, after which QEMU would otherwise sit in run state `internal-error`.
pub(crate) async fn pump_stderr(
    mut stderr: ChildStderr,
    echo: bool,
    log: Arc<Mutex<ErrLog>>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if echo {
            let _ = io::stderr().write_all(&buf[..n]);
        }
        let found = {
            let mut l = lock(&log);
            l.buf.extend_from_slice(&buf[..n]);
            if l.buf.len() > 64 * 1024 {
                let cut = l.buf.len() - 32 * 1024;
                l.buf.drain(..cut);
            }
            if l.kvm_error.is_none() {
                l.kvm_error = String::from_utf8_lossy(&l.buf)
                    .lines()
                    .find(|l| l.contains(KVM_INTERNAL_ERROR))
                    .map(|l| l.trim().to_owned());
            }
            l.kvm_error.clone()
        };
        if let Some(line) = found {
            shared.fail(Failure::Crashed(line));
        }
    }
    lock(&log).done = true;
    shared.stderr_done.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_report_is_picked_over_advice() {
        let e = ErrLog::of(
            "qemu-system-aarch64: unsupported machine type\nUse -machine help to list supported machines\n",
        );
        assert_eq!(
            e.error_line().as_deref(),
            Some("qemu-system-aarch64: unsupported machine type")
        );
        assert_eq!(
            ErrLog::of("just this\n\n").error_line().as_deref(),
            Some("just this")
        );
        assert_eq!(ErrLog::default().error_line(), None);
    }
}
