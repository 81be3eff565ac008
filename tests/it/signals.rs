//! The launcher and QEMU live and die together: a stopped launcher stops QEMU, and a killed
//! one cannot leave QEMU running.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::common::{guest, guest_cmd, scratch};

/// Pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == parent {
            out.push(pid);
        }
    }
    out
}

/// Whether a process is gone (or only a zombie awaiting its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

/// Starts a held guest and waits for its first heartbeat; returns the launcher and QEMU's pid.
fn held_guest(dir: &std::path::Path) -> Option<(Child, u32)> {
    let g = guest("x86_64")?;
    let mut child = guest_cmd(
        &g,
        dir,
        [
            "run",
            "--arch",
            "x86_64",
            "--append",
            "qd.hold=1",
            "--timeout",
            "300s",
            // The test guest ignores the power button; SIGTERM's ladder then quits QEMU.
            "--stop-timeout",
            "1s",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("qd-heartbeat 1") => break,
            Some(_) => continue,
            None => panic!("console ended before the first heartbeat"),
        }
    }
    // Keep draining the console so the launcher never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let qemu = children_of(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU under the launcher: {qemu:?}");
    Some((child, qemu[0]))
}

fn wait_gone(pid: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < limit,
            "QEMU {pid} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn sigterm_to_the_launcher_stops_qemu_and_exits_130() {
    let dir = scratch();
    let Some((mut launcher, qemu)) = held_guest(dir.path()) else {
        return;
    };
    kill(Pid::from_raw(launcher.id() as i32), Signal::SIGTERM).unwrap();
    let status = launcher.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_gone(qemu, Duration::from_secs(1));
}

#[test]
fn sigkill_of_the_launcher_takes_qemu_with_it() {
    let dir = scratch();
    let Some((mut launcher, qemu)) = held_guest(dir.path()) else {
        return;
    };
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    // PR_SET_PDEATHSIG: the kernel kills QEMU as soon as its parent dies.
    wait_gone(qemu, Duration::from_secs(1));
}

#[test]
fn qemu_killed_under_the_launcher_is_reported() {
    let dir = scratch();
    let Some((mut launcher, qemu)) = held_guest(dir.path()) else {
        return;
    };
    kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
    let status = launcher.wait().unwrap();
    assert_eq!(status.code(), Some(3), "QEMU failed: killed by SIGKILL");
}
