//! The launcher and QEMU live and die together: a stopped launcher stops QEMU, and a killed
//! one cannot leave QEMU running.

use std::time::Duration;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::common::{
    Foreground, TestEnv, children_of, guest,
    guest_proto::{self, HOLD},
    wait_gone,
};

/// Starts a held guest and waits for its first heartbeat; returns the launcher and QEMU's pid.
fn held_guest(env: &TestEnv) -> Option<(Foreground, u32)> {
    let g = guest("x86_64")?;
    let launcher = Foreground::spawn(env.run(
        &g,
        [
            "--append",
            HOLD,
            "--timeout",
            "300s",
            // The test guest ignores the power button; SIGTERM's ladder then quits QEMU.
            "--stop-timeout",
            "1s",
        ],
    ));
    // The console is drained on a thread, so the launcher never blocks on a full pipe.
    launcher.expect_line(&guest_proto::heartbeat(1), Duration::from_secs(300));
    let qemu = children_of(launcher.pid());
    assert_eq!(qemu.len(), 1, "one QEMU under the launcher: {qemu:?}");
    Some((launcher, qemu[0]))
}

#[test]
fn sigterm_to_the_launcher_stops_qemu_and_exits_130() {
    let env = TestEnv::new();
    let Some((mut launcher, qemu)) = held_guest(&env) else {
        return;
    };
    launcher.signal(Signal::SIGTERM);
    let status = launcher.wait();
    assert_eq!(status.code(), Some(130));
    wait_gone(qemu, Duration::from_secs(1));
}

#[test]
fn sigkill_of_the_launcher_takes_qemu_with_it() {
    let env = TestEnv::new();
    let Some((mut launcher, qemu)) = held_guest(&env) else {
        return;
    };
    launcher.kill();
    launcher.wait();
    // PR_SET_PDEATHSIG: the kernel kills QEMU as soon as its parent dies.
    wait_gone(qemu, Duration::from_secs(1));
}

#[test]
fn qemu_killed_under_the_launcher_is_reported() {
    let env = TestEnv::new();
    let Some((mut launcher, qemu)) = held_guest(&env) else {
        return;
    };
    kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
    let status = launcher.wait();
    assert_eq!(status.code(), Some(3), "QEMU failed: killed by SIGKILL");
}
