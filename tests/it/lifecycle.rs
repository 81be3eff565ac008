//! Instances from start to end on real QEMU, through the binary as a user runs it: detached
//! guests controlled over QMP and stopped, names that clash, launchers and QEMUs killed, stale
//! directories dropped, and the library example.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::common::{Guest, bin, guest, guest_cmd, runtime_dir, scratch, text};

#[path = "../../examples/boot_aarch64.rs"]
mod example;

/// One test's world: its own XDG_STATE_HOME and XDG_RUNTIME_DIR, and the aarch64 guest.
struct World {
    dir: tempfile::TempDir,
    guest: Guest,
    /// Instances to stop if the test ends early.
    started: Vec<String>,
}

impl World {
    fn new() -> Option<World> {
        Some(World {
            dir: scratch(),
            guest: guest("aarch64")?,
            started: Vec::new(),
        })
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// The instance root: `$XDG_RUNTIME_DIR/qemu-direct`.
    fn root(&self) -> PathBuf {
        runtime_dir(self.state()).join("qemu-direct")
    }

    /// `qemu-direct ARGS` in this world.
    fn cmd<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> Command {
        let mut c = bin();
        c.env("XDG_STATE_HOME", self.state())
            .env("XDG_RUNTIME_DIR", runtime_dir(self.state()))
            .args(args);
        c
    }

    fn qd(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run qemu-direct")
    }

    /// `run --arch aarch64 ARGS --kernel K --initrd I` with a held guest.
    fn run_cmd(&self, args: &[&str]) -> Command {
        let mut all = vec!["run", "--arch", "aarch64", "--append", "qd.hold=1"];
        all.extend_from_slice(args);
        guest_cmd(&self.guest, self.state(), all)
    }

    /// Starts a detached instance; returns its name and directory from the printed line.
    fn detach(&mut self, args: &[&str]) -> (String, PathBuf) {
        let mut all = vec!["--detach"];
        all.extend_from_slice(args);
        let out = self.run_cmd(&all).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
        let (name, dir) = o.trim_end().split_once('\t').expect("NAME\\tDIR");
        self.started.push(name.to_owned());
        (name.to_owned(), PathBuf::from(dir))
    }

    /// `ps --json`.
    fn ps(&self) -> Vec<Value> {
        let out = self.qd(&["ps", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// An instance's `ps --json` entry.
    fn entry(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in ps"))
    }

    fn qmp_ok(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["qmp", name];
        all.extend_from_slice(args);
        let out = self.qd(&all);
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "qmp {args:?}: {e}");
        o.trim_end().to_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.started) {
            let _ = self.qd(&["stop", &name, "--timeout", "0s"]);
        }
    }
}

fn pid_of(entry: &Value, key: &str) -> u32 {
    entry[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {entry}")) as u32
}

/// Whether a process is gone (or only a zombie awaiting its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

fn wait_gone(pid: u32, limit: Duration) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < limit,
            "pid {pid} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `want`; returns the lines read on the way.
fn expect_line(rx: &mpsc::Receiver<String>, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => {
                seen.push(l);
                return seen;
            }
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {want:?} within {limit:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn a_detached_guest_is_paused_resumed_and_stopped_over_qmp() {
    let Some(mut w) = World::new() else { return };
    let (name, dir) = w.detach(&["--name", "a64"]);
    assert_eq!(name, "a64");
    assert_eq!(dir, w.root().join("a64"));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "instance directory is private");

    let out = w.qd(&[
        "wait",
        "a64",
        "--for",
        "GUEST-READY",
        "--fail-on",
        "Kernel panic",
        "--timeout",
        "120s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0, "GUEST-READY aarch64\n");

    let e = w.entry("a64");
    assert_eq!(e["arch"], "aarch64");
    assert_eq!(
        e["accel"], "tcg",
        "an aarch64 guest is emulated on this host: {e}"
    );
    assert_eq!(e["state"], "running");
    assert!(e["uptime_secs"].is_u64(), "{e}");
    let qemu = pid_of(&e, "pid");

    let mut follow = w
        .cmd(["qmp", "a64", "events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let events = lines_of(&mut follow);

    assert_eq!(w.qmp_ok("a64", &["status"]), "running");
    w.qmp_ok("a64", &["stop"]);
    assert_eq!(w.qmp_ok("a64", &["status"]), "paused");
    w.qmp_ok("a64", &["cont"]);
    assert_eq!(w.qmp_ok("a64", &["status"]), "running");
    let kvm: Value = serde_json::from_str(&w.qmp_ok("a64", &["execute", "query-kvm"])).unwrap();
    assert_eq!(kvm["enabled"], false, "{kvm}");

    // The first RESUME is the launch's own `cont`; then ours: STOP, RESUME.
    let seen = expect_line(&events, r#""event":"STOP""#, Duration::from_secs(10));
    assert!(seen[0].contains(r#""event":"RESUME""#), "{seen:?}");
    expect_line(&events, r#""event":"RESUME""#, Duration::from_secs(10));

    let console = text(&w.qd(&["console", "a64"])).0;
    assert!(console.contains("GUEST-READY aarch64"), "{console}");

    // The test guest ignores the power button, so the ladder goes on to quit.
    let out = w.qd(&["stop", "a64", "--timeout", "2s"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert_eq!(o, "a64: QEMU quit (the guest did not power off in time)\n");
    assert!(!dir.exists(), "instance directory removed");
    wait_gone(qemu, Duration::from_secs(1));
    assert!(w.ps().is_empty());
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
    let logs = w.state().join("qemu-direct/logs");
    let log = std::fs::read_to_string(logs.join("a64.log")).unwrap();
    assert!(log.contains("GUEST-READY aarch64"));
    let sup = std::fs::read_to_string(logs.join("a64.supervisor.log")).unwrap();
    assert!(
        sup.contains("guest stopped: QEMU quit on a QMP request"),
        "{sup}"
    );
}

#[test]
fn one_name_one_live_instance_and_unnamed_ones_get_a_free_name() {
    let Some(mut w) = World::new() else { return };
    w.detach(&["--name", "twin"]);
    for mode in [&["--detach", "--name", "twin"][..], &["--name", "twin"]] {
        let out = w.run_cmd(mode).output().unwrap();
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
    assert_eq!(w.detach(&[]).0, "aarch64");
    assert_eq!(w.detach(&[]).0, "aarch64-2");
    let names: Vec<Value> = w.ps().into_iter().map(|e| e["name"].clone()).collect();
    assert_eq!(names, ["aarch64", "aarch64-2", "twin"]);

    // `wait`'s failures have their own exit codes.
    let wait = |extra: &[&str]| {
        let mut a = vec!["wait", "twin", "--for", "never printed"];
        a.extend_from_slice(extra);
        w.qd(&a)
    };
    let out = wait(&["--fail-on", r"qd-heartbeat \d"]);
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
    let out = w.qd(&["qmp", "twin", "execute", "no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .contains("no-such-command: The command no-such-command has not been found")
    );
    let out = w.qd(&["qmp", "nobody", "status"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("no running instance named 'nobody'"));

    for name in ["twin", "aarch64", "aarch64-2"] {
        let out = w.qd(&["stop", name, "--timeout", "0s"]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    }
    assert!(w.ps().is_empty());
}

/// A foreground launcher with a held guest, after its first heartbeat; returns it, its console
/// and QEMU's pid.
fn foreground(w: &World, name: &str) -> (Child, mpsc::Receiver<String>, u32) {
    let mut launcher = w
        .run_cmd(&["--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = lines_of(&mut launcher);
    expect_line(&console, "qd-heartbeat 1", Duration::from_secs(120));
    let qemu = pid_of(&w.entry(name), "pid");
    (launcher, console, qemu)
}

#[test]
fn a_launcher_killed_with_sigkill_takes_qemu_with_it_and_ps_drops_its_directory() {
    let Some(w) = World::new() else { return };
    let (mut launcher, _console, qemu) = foreground(&w, "fg");
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    // PR_SET_PDEATHSIG: the kernel kills QEMU as soon as its parent dies.
    wait_gone(qemu, Duration::from_secs(1));
    let dir = w.root().join("fg");
    assert!(dir.exists(), "nobody was left to remove it");
    assert!(w.ps().is_empty(), "a stale instance is not listed");
    assert!(!dir.exists(), "and its directory is removed");
}

#[test]
fn qemu_killed_under_the_launcher_is_reported_with_the_console_tail() {
    let Some(w) = World::new() else { return };
    let (launcher, _console, qemu) = foreground(&w, "victim");
    kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
    let out = launcher.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(
        e.contains("qemu-direct: QEMU failed: killed by SIGKILL"),
        "{e}"
    );
    assert!(e.contains("last 20 console lines:"), "{e}");
    assert!(e.contains("  qd-heartbeat 1"), "{e}");
    assert!(!w.root().join("victim").exists());
}

#[test]
fn a_killed_supervisor_takes_qemu_with_it_and_leaves_a_stale_directory() {
    let Some(mut w) = World::new() else { return };
    let (_, dir) = w.detach(&["--name", "orphan"]);
    let e = w.entry("orphan");
    kill(
        Pid::from_raw(pid_of(&e, "supervisor_pid") as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(pid_of(&e, "pid"), Duration::from_secs(1));
    let out = w.qd(&["qmp", "orphan", "status"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(!dir.exists(), "looking it up dropped the stale directory");
}

#[test]
fn the_library_example_boots_a_guest() {
    let Some(w) = World::new() else { return };
    let guests = w
        .guest
        .kernel
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt
        .block_on(example::boot(&guests, Some(w.root())))
        .unwrap_or_else(|e| panic!("example failed: {e}"));
    assert_eq!(s.ready_line, "GUEST-READY aarch64");
    assert_eq!(s.status, "running");
    assert_eq!(s.events, ["STOP", "RESUME"]);
    assert_eq!(
        s.outcome.to_string(),
        "guest stopped: QEMU quit (the guest did not power off in time)"
    );
    assert_eq!(
        std::fs::read_dir(w.root()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn a_qemu_that_fails_to_start_is_reported_and_leaves_nothing() {
    let Some(w) = World::new() else { return };
    for detach in [false, true] {
        // More RAM than the host could ever map: QEMU itself refuses at start (a machine type
        // QEMU lacks is now refused earlier, at planning).
        let mut args = vec!["--memory", "8T"];
        if detach {
            args.push("--detach");
        }
        let out = w.run_cmd(&args).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(3), "detach {detach}: {o}{e}");
        assert!(
            e.contains("error: QEMU exited while starting (exit status 1): qemu-system-aarch64: "),
            "detach {detach}: {e}"
        );
        assert!(o.is_empty(), "{o}");
        assert_eq!(
            std::fs::read_dir(w.root()).unwrap().count(),
            0,
            "nothing left"
        );
    }
}
