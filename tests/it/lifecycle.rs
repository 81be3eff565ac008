//! Instances from start to end on real QEMU, through the binary as a user runs it: detached
//! guests controlled over QMP and stopped, names that clash, launchers and QEMUs killed, stale
//! directories dropped, and the library example.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::common::{
    Detached, Foreground, Guest, TestEnv, expect_line, guest,
    guest_proto::{self, HEARTBEAT, HOLD, READY},
    guests_dir, lines_of, text, wait_gone,
};

#[path = "../../examples/boot_aarch64.rs"]
mod example;

/// `run --arch aarch64 --append qd.hold=1 ARGS --kernel K --initrd I`: the held aarch64 guest.
fn held(env: &TestEnv, g: &Guest, args: &[&str]) -> Command {
    env.run(g, [&["--append", HOLD][..], args].concat())
}

/// Starts a detached held guest.
fn detach<'e>(env: &'e TestEnv, g: &Guest, args: &[&str]) -> Detached<'e> {
    env.launch_detached(held(env, g, args))
}

fn pid_of(entry: &Value, key: &str) -> u32 {
    entry[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {entry}")) as u32
}

#[test]
fn a_detached_guest_is_paused_resumed_and_stopped_over_qmp() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let vm = detach(&env, &g, &["--name", "a64"]);
    let (name, dir) = (vm.name.clone(), vm.dir.clone());
    assert_eq!(name, "a64");
    assert_eq!(dir, env.instances().join("a64"));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "instance directory is private");

    let out = env.qd([
        "wait",
        "a64",
        "--for",
        READY,
        "--fail-on",
        "Kernel panic",
        "--timeout",
        "120s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0, guest_proto::ready("aarch64") + "\n");

    let e = env.entry("a64");
    assert_eq!(e["arch"], "aarch64");
    assert_eq!(
        e["accel"], "tcg",
        "an aarch64 guest is emulated on this host: {e}"
    );
    assert_eq!(e["state"], "running");
    assert!(e["uptime_secs"].is_u64(), "{e}");
    let qemu = pid_of(&e, "pid");

    let mut follow = env
        .cmd(["qmp", "a64", "events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let events = lines_of(follow.stdout.take().unwrap());

    assert_eq!(env.qmp_ok("a64", &["status"]), "running");
    env.qmp_ok("a64", &["stop"]);
    assert_eq!(env.qmp_ok("a64", &["status"]), "paused");
    env.qmp_ok("a64", &["cont"]);
    assert_eq!(env.qmp_ok("a64", &["status"]), "running");
    let kvm: Value = serde_json::from_str(&env.qmp_ok("a64", &["execute", "query-kvm"])).unwrap();
    assert_eq!(kvm["enabled"], false, "{kvm}");

    // The first RESUME is the launch's own `cont`; then ours: STOP, RESUME.
    let seen = expect_line(&events, r#""event":"STOP""#, Duration::from_secs(10));
    assert!(seen[0].contains(r#""event":"RESUME""#), "{seen:?}");
    expect_line(&events, r#""event":"RESUME""#, Duration::from_secs(10));

    let console = text(&env.qd(["console", "a64"])).0;
    assert!(
        console.contains(&guest_proto::ready("aarch64")),
        "{console}"
    );

    // The test guest ignores the power button, so the ladder goes on to quit.
    let out = env.qd(["stop", "a64", "--timeout", "2s"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert_eq!(o, "a64: QEMU quit (the guest did not power off in time)\n");
    assert!(!dir.exists(), "instance directory removed");
    wait_gone(qemu, Duration::from_secs(1));
    assert!(env.ps().is_empty());
    // `events --follow` ends with the instance.
    let start = Instant::now();
    while follow.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "events --follow did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The console log stays, as does the supervisor's own.
    let log = std::fs::read_to_string(env.log("a64")).unwrap();
    assert!(log.contains(&guest_proto::ready("aarch64")));
    let sup = std::fs::read_to_string(env.logs().join("a64.supervisor.log")).unwrap();
    assert!(
        sup.contains("guest stopped: QEMU quit on a QMP request"),
        "{sup}"
    );
}

#[test]
fn one_name_one_live_instance_and_unnamed_ones_get_a_free_name() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let _twin = detach(&env, &g, &["--name", "twin"]);
    for mode in [&["--detach", "--name", "twin"][..], &["--name", "twin"]] {
        let out = held(&env, &g, mode).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{mode:?}: {o}{e}");
        assert!(
            e.contains("error: instance 'twin' is already running (QEMU pid "),
            "{e}"
        );
        assert!(
            e.contains("hint: stop it first (qemu-direct stop twin)"),
            "{e}"
        );
    }
    // Without --name: the arch, then the arch with a number.
    let first = detach(&env, &g, &[]);
    assert_eq!(first.name, "aarch64");
    let second = detach(&env, &g, &[]);
    assert_eq!(second.name, "aarch64-2");
    let names: Vec<Value> = env.ps().into_iter().map(|e| e["name"].clone()).collect();
    assert_eq!(names, ["aarch64", "aarch64-2", "twin"]);

    // `wait`'s failures have their own exit codes.
    let wait =
        |extra: &[&str]| env.qd([&["wait", "twin", "--for", "never printed"][..], extra].concat());
    let out = wait(&["--fail-on", &format!(r"{HEARTBEAT} \d")]);
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("matched failure pattern"),
        "{:?}",
        text(&out)
    );
    let out = wait(&["--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
    let out = wait(&["--fail-on", "(unclosed"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out = env.qd(["qmp", "twin", "execute", "no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .contains("no-such-command: The command no-such-command has not been found")
    );
    let out = env.qd(["qmp", "nobody", "status"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("no running instance named 'nobody'"));

    for name in ["twin", "aarch64", "aarch64-2"] {
        let out = env.qd(["stop", name, "--timeout", "0s"]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    }
    assert!(env.ps().is_empty());
}

/// A foreground launcher with a held guest, after its first heartbeat; returns it and QEMU's
/// pid.
fn foreground(env: &TestEnv, g: &Guest, name: &str) -> (Foreground, u32) {
    let launcher = Foreground::spawn(held(env, g, &["--name", name]));
    launcher.expect_line(&guest_proto::heartbeat(1), Duration::from_secs(120));
    let qemu = pid_of(&env.entry(name), "pid");
    (launcher, qemu)
}

#[test]
fn a_launcher_killed_with_sigkill_takes_qemu_with_it_and_ps_drops_its_directory() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let (mut launcher, qemu) = foreground(&env, &g, "fg");
    launcher.kill();
    launcher.wait();
    // PR_SET_PDEATHSIG: the kernel kills QEMU as soon as its parent dies.
    wait_gone(qemu, Duration::from_secs(1));
    let dir = env.instances().join("fg");
    assert!(dir.exists(), "nobody was left to remove it");
    assert!(env.ps().is_empty(), "a stale instance is not listed");
    assert!(!dir.exists(), "and its directory is removed");
}

#[test]
fn qemu_killed_under_the_launcher_is_reported_with_the_console_tail() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let (launcher, qemu) = foreground(&env, &g, "victim");
    kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
    let (status, e) = launcher.finish();
    assert_eq!(status.code(), Some(3), "{e}");
    assert!(
        e.contains("qemu-direct: QEMU failed: killed by SIGKILL"),
        "{e}"
    );
    assert!(e.contains("last 20 console lines:"), "{e}");
    assert!(
        e.contains(&format!("  {}", guest_proto::heartbeat(1))),
        "{e}"
    );
    assert!(!env.instances().join("victim").exists());
}

#[test]
fn a_killed_supervisor_takes_qemu_with_it_and_leaves_a_stale_directory() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let vm = detach(&env, &g, &["--name", "orphan"]);
    let e = vm.entry();
    kill(
        Pid::from_raw(pid_of(&e, "supervisor_pid") as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(pid_of(&e, "pid"), Duration::from_secs(1));
    let out = env.qd(["qmp", "orphan", "status"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        !vm.dir.exists(),
        "looking it up dropped the stale directory"
    );
}

#[test]
fn the_library_example_boots_a_guest() {
    if guest("aarch64").is_none() {
        return;
    }
    let env = TestEnv::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt
        .block_on(example::boot(&guests_dir(), Some(env.instances())))
        .unwrap_or_else(|e| panic!("example failed: {e}"));
    assert_eq!(s.ready_line, guest_proto::ready("aarch64"));
    assert_eq!(s.status, "running");
    assert_eq!(s.events, ["STOP", "RESUME"]);
    assert_eq!(
        s.outcome.to_string(),
        "guest stopped: QEMU quit (the guest did not power off in time)"
    );
    assert_eq!(
        std::fs::read_dir(env.instances()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn a_qemu_that_fails_to_start_is_reported_and_leaves_nothing() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    for detach in [false, true] {
        // More RAM than the host could ever map: QEMU itself refuses at start (a machine type
        // QEMU lacks is now refused earlier, at planning).
        let mut args = vec!["--memory", "8T"];
        if detach {
            args.push("--detach");
        }
        let out = held(&env, &g, &args).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(3), "detach {detach}: {o}{e}");
        assert!(
            e.contains("error: QEMU exited while starting (exit status 1): qemu-system-aarch64: "),
            "detach {detach}: {e}"
        );
        assert!(o.is_empty(), "{o}");
        assert_eq!(
            std::fs::read_dir(env.instances()).unwrap().count(),
            0,
            "nothing left"
        );
    }
}
