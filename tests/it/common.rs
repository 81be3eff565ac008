//! The one fixture of the integration tests.
//!
//! - [`TestEnv`]: a private world for one test. Its own `XDG_STATE_HOME`, `XDG_RUNTIME_DIR` and
//!   `XDG_CONFIG_HOME` (and no system config file), so logs, instance directories and config
//!   are the test's own and parallel tests never share an instance name. The capability cache
//!   (`XDG_CACHE_HOME`) is shared by the tests of a build ([`shared_cache`]) so that QEMU is
//!   probed once, not once per test; [`TestEnv::with_own_cache`] gives a test its own.
//!   [`TestEnv::qd`] runs the real binary in it; [`TestEnv::launch_detached`] starts an
//!   instance ([`Detached`]) and [`Foreground::spawn`] a launcher that stays in the foreground.
//!   Whatever a test leaves running is put down when its handle or the env is dropped: `stop`,
//!   then SIGKILL for any QEMU or supervisor still there.
//! - [`Guest`]: the test guest of an arch (`scripts/fetch-test-guests.sh`), [`agent_guest`] for
//!   one whose initramfs runs the guest agent, and [`guest_proto`] for what it prints and the
//!   switches it takes.
//! - [`sha256`] of a file, [`files_under`] a directory.
//! - [`pid_gone`] (a zombie counts as gone), [`wait_gone`], [`children_of`], [`wait_until`].
//! - [`Tripwire`]: an emulator that records whether QEMU was started.
//! - [`fake_host`]: a made-up host for planning without a probe.
//! - The QEMU under test: the system's, or the prefix in `QD_QEMU_PREFIX`
//!   (`scripts/test --qemu 10.0`), which every command of a [`TestEnv`] gets as
//!   `QEMU_DIRECT_QEMU_PREFIX`: [`qemu_prefix`], [`emulator`], [`qemu_version`],
//!   [`probe_host`]. Assertions that depend on the version ask these or the profiles' gates.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use qemu_direct::{
    host::{Emulator, HostFacts, KvmState, ProbeOptions},
    profile::ProfileSet,
    profile::gate::{Gate, ProfileOption, QemuVersion},
};
use serde_json::Value;

/// What the test guest (`scripts/fetch-test-guests.sh`, its initramfs `/init`) prints on its
/// console and the kernel command-line switches it obeys.
pub mod guest_proto {
    /// Printed as `GUEST-READY <arch>` once the guest is up; see [`ready`].
    pub const READY: &str = "GUEST-READY";
    /// Keep running, printing [`HEARTBEAT`] `N` every second, instead of powering off.
    pub const HOLD: &str = "qd.hold=1";
    /// Panic the kernel (init exits).
    pub const PANIC: &str = "qd.panic=1";
    /// `qd-heartbeat N`, N = 1, 2, ... while held; see [`heartbeat`].
    pub const HEARTBEAT: &str = "qd-heartbeat";
    /// The block [`write`] puts at the start of the device begins `QD-MARKER <arch>\n`.
    pub const MARKER: &[u8] = b"QD-MARKER ";

    /// `GUEST-READY <arch>`.
    pub fn ready(arch: &str) -> String {
        format!("{READY} {arch}")
    }

    /// `qd-heartbeat N`.
    pub fn heartbeat(n: u32) -> String {
        format!("{HEARTBEAT} {n}")
    }

    /// The N of every `qd-heartbeat N` line of a console, in order.
    pub fn heartbeats(console: &str) -> Vec<u32> {
        let prefix = format!("{HEARTBEAT} ");
        console
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&prefix)?.parse().ok())
            .collect()
    }

    /// `qd.write=DEV`: write [`MARKER`] `<arch>` to block device DEV, then print [`wrote`].
    pub fn write(dev: &str) -> String {
        format!("qd.write={dev}")
    }

    /// `qd-wrote: DEV`.
    pub fn wrote(dev: &str) -> String {
        format!("{} {dev}", tag("wrote"))
    }

    /// The start of the block [`write`] writes for an arch: `QD-MARKER <arch>` (then a line
    /// end, then zeros to 512 bytes).
    pub fn marker(arch: &str) -> Vec<u8> {
        [MARKER, arch.as_bytes()].concat()
    }

    /// `qd.mount=TAG:PATH`: mount the share TAG at PATH (virtiofs, else 9p), then print
    /// [`mounted`].
    pub fn mount(tag: &str, path: &str) -> String {
        format!("qd.mount={tag}:{path}")
    }

    /// `qd-mounted: TAG PATH FS` (`virtiofs` or `9p`).
    pub fn mounted(tag: &str, path: &str, fs: &str) -> String {
        format!("{} {tag} {path} {fs}", self::tag("mounted"))
    }

    /// `qd-NAME:`, the start of a report line (`net`, `uname`, `flags`, `address-sizes`,
    /// `cmdline`, `wrote`, `uptime`, `error`).
    pub fn tag(name: &str) -> String {
        format!("qd-{name}:")
    }

    /// The value of the `qd-NAME: ...` line on a console.
    pub fn line<'a>(console: &'a str, name: &str) -> &'a str {
        let prefix = format!("{} ", tag(name));
        console
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no qd-{name} line in:\n{console}"))
    }
}

/// The `--timeout` a test gives a boot that is expected to finish: generous, for TCG on a busy
/// machine; only a launcher that failed to notice the end ever reaches it.
pub const BOOT_TIMEOUT: &str = "240s";

// ---------------------------------------------------------------------------------------------
// The binary and its output

/// The built `qemu-direct` binary, with no stdin and nothing else set; [`TestEnv::cmd`] gives it
/// the test's own directories.
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qemu-direct"));
    c.stdin(Stdio::null());
    c
}

/// Runs the binary with args in a throwaway [`TestEnv`] and returns its output.
pub fn qd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    TestEnv::new().qd(args)
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Lists every file under a directory, recursively (directories themselves are not listed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The capability cache the tests of one build share: `$CARGO_TARGET_TMPDIR/caps-cache`. Not
/// the user's own (the tests leave `~/.cache` alone), and kept between runs like the user's:
/// entries are keyed by the emulator binary's path, size and mtime.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("caps-cache")
}

// ---------------------------------------------------------------------------------------------
// TestEnv

/// One test's world: a temporary directory holding the test's XDG directories and files.
///
/// ```text
/// ROOT/state    XDG_STATE_HOME    logs: state/qemu-direct/logs/NAME.log
/// ROOT/run      XDG_RUNTIME_DIR   instances: run/qemu-direct/NAME/ (mode 0700)
/// ROOT/config   XDG_CONFIG_HOME   empty unless the test writes one
/// ROOT/cache    XDG_CACHE_HOME    only with with_own_cache(); else shared_cache()
/// ```
///
/// `QEMU_DIRECT_SYSTEM_CONFIG` points at a file that does not exist. Dropping the env stops
/// every instance still running in it (and kills what `stop` could not).
pub struct TestEnv {
    dir: tempfile::TempDir,
    own_cache: bool,
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl TestEnv {
    /// A new world whose capability cache is [`shared_cache`].
    pub fn new() -> TestEnv {
        TestEnv::make(false)
    }

    /// A new world with its own, empty, capability cache in `ROOT/cache`.
    pub fn with_own_cache() -> TestEnv {
        TestEnv::make(true)
    }

    fn make(own_cache: bool) -> TestEnv {
        let env = TestEnv {
            dir: tempfile::tempdir().expect("tempdir"),
            own_cache,
        };
        for d in ["state", "config"] {
            std::fs::create_dir(env.path(d)).expect("create an XDG directory");
        }
        if own_cache {
            std::fs::create_dir(env.path("cache")).expect("create the cache directory");
        }
        let run = env.runtime_dir();
        std::fs::create_dir(&run).expect("create the runtime directory");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        env
    }

    /// The world's directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `ROOT/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file that passes for a kernel with `plan` and `--dry-run` (which refuse a guest with
    /// nothing to boot), as a `--kernel` argument: `ROOT/kernel`.
    pub fn kernel(&self) -> String {
        let k = self.path("kernel");
        std::fs::write(&k, b"not really a kernel").unwrap();
        k.to_str().unwrap().to_owned()
    }

    /// `XDG_STATE_HOME`.
    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// `XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// `XDG_CONFIG_HOME`.
    pub fn config(&self) -> PathBuf {
        self.path("config")
    }

    /// `XDG_CACHE_HOME`: `ROOT/cache`, or [`shared_cache`].
    pub fn cache(&self) -> PathBuf {
        if self.own_cache {
            self.path("cache")
        } else {
            shared_cache()
        }
    }

    /// Where instance directories live: `$XDG_RUNTIME_DIR/qemu-direct`.
    pub fn instances(&self) -> PathBuf {
        self.runtime_dir().join("qemu-direct")
    }

    /// The logs directory: `$XDG_STATE_HOME/qemu-direct/logs`.
    pub fn logs(&self) -> PathBuf {
        self.state().join("qemu-direct/logs")
    }

    /// The console log of an instance: `logs/NAME.log`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }

    /// `qemu-direct ARGS` in this world.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = bin();
        c.env("XDG_STATE_HOME", self.state())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("XDG_CONFIG_HOME", self.config())
            .env("XDG_CACHE_HOME", self.cache())
            .env(
                "QEMU_DIRECT_SYSTEM_CONFIG",
                self.path("no-system-config.toml"),
            )
            .args(args);
        match qemu_prefix() {
            Some(p) => c.env("QEMU_DIRECT_QEMU_PREFIX", p),
            None => c.env_remove("QEMU_DIRECT_QEMU_PREFIX"),
        };
        c
    }

    /// Runs `qemu-direct ARGS` in this world.
    pub fn qd<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).output().expect("run qemu-direct")
    }

    /// `qemu-direct ARGS --kernel K --initrd I` with a test guest.
    pub fn guest_cmd<I, S>(&self, g: &Guest, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.cmd(args);
        c.arg("--kernel")
            .arg(&g.kernel)
            .arg("--initrd")
            .arg(&g.initrd);
        c
    }

    /// `qemu-direct run --arch ARCH ARGS --kernel K --initrd I` with a test guest.
    pub fn run<I, S>(&self, g: &Guest, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.guest_cmd(g, ["run", "--arch", g.arch.as_str()]);
        c.args(args);
        c
    }

    /// Runs `cmd` (a `run` built in this world) with `--detach`: exit 0, `NAME\tDIR` on stdout.
    /// The handle stops the instance when dropped.
    pub fn launch_detached(&self, mut cmd: Command) -> Detached<'_> {
        let out = cmd.arg("--detach").output().expect("run qemu-direct");
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
        let (name, dir) = o.trim_end().split_once('\t').expect("NAME\\tDIR");
        let procs = self.procs_of(name);
        Detached {
            env: self,
            name: name.to_owned(),
            dir: PathBuf::from(dir),
            procs,
        }
    }

    /// `ps --json`, which must succeed.
    pub fn ps(&self) -> Vec<Value> {
        let out = self.qd(["ps", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// An instance's `ps --json` entry.
    pub fn entry(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in ps"))
    }

    /// `wait NAME --for PATTERN --timeout LIMIT`, which must succeed; returns what it printed
    /// (the matching line).
    pub fn wait_for(&self, name: &str, pattern: &str, limit: &str) -> String {
        let out = self.qd(["wait", name, "--for", pattern, "--timeout", limit]);
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "wait {pattern}: {e}");
        o
    }

    /// `qmp NAME ARGS`, which must succeed; returns stdout without its line end.
    pub fn qmp_ok(&self, name: &str, args: &[&str]) -> String {
        let out = self.qd([&["qmp", name][..], args].concat());
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "qmp {args:?}: {e}");
        o.trim_end().to_owned()
    }

    /// `console NAME`, which must succeed: the instance's console so far.
    pub fn console(&self, name: &str) -> String {
        let out = self.qd(["console", name]);
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "console {name}: {e}");
        o
    }

    /// `stop NAME --timeout 0s`, which must succeed.
    pub fn stop(&self, name: &str) {
        let out = self.qd(["stop", name, "--timeout", "0s"]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    }

    /// Writes an emulator wrapper into the world; see [`Tripwire`].
    pub fn tripwire(&self, kind: Tripwire) -> PathBuf {
        kind.write(self.root())
    }

    /// Whether a [`Tripwire`] of this world was started for a guest.
    pub fn qemu_started(&self) -> bool {
        self.path(Tripwire::STARTED).exists()
    }

    /// The command lines a [`Tripwire`] of this world was started with, one a line.
    pub fn qemu_starts(&self) -> String {
        std::fs::read_to_string(self.path(Tripwire::STARTED)).unwrap_or_default()
    }

    /// QEMU's and the supervisor's processes for a live instance, as `ps` lists them.
    fn procs_of(&self, name: &str) -> Vec<Proc> {
        let out = self.qd(["ps", "--json"]);
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        all.iter()
            .filter(|e| e["name"] == name)
            .flat_map(|e| [&e["pid"], &e["supervisor_pid"]])
            .filter_map(|p| Proc::of(p.as_u64()? as u32))
            .collect()
    }

    /// Stops `name` and kills what `stop` left of `procs`; never fails.
    fn put_down(&self, name: &str, procs: &[Proc]) {
        let _ = self.cmd(["stop", name, "--timeout", "0s"]).output();
        for p in procs {
            p.kill_if_alive();
        }
    }

    /// Every instance directory's name and its processes (from `ps`, else from `info.json`).
    fn leftovers(&self) -> Vec<(String, Vec<Proc>)> {
        let Ok(rd) = std::fs::read_dir(self.instances()) else {
            return Vec::new();
        };
        let names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names
            .into_iter()
            .map(|name| {
                let mut procs = self.procs_of(&name);
                if procs.is_empty() {
                    let info = std::fs::read(self.instances().join(&name).join("info.json"));
                    let info: Value = info
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    procs.extend(
                        [&info["pid"], &info["supervisor_pid"]]
                            .into_iter()
                            .filter_map(|p| Proc::of(p.as_u64()? as u32)),
                    );
                }
                (name, procs)
            })
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (name, procs) in self.leftovers() {
            self.put_down(&name, &procs);
        }
    }
}

/// A detached instance started by [`TestEnv::launch_detached`]; stopped (`stop --timeout 0s`,
/// then SIGKILL for its QEMU and supervisor if they are still there) when dropped, unless a
/// test stopped it already.
pub struct Detached<'e> {
    env: &'e TestEnv,
    /// Its name, as printed.
    pub name: String,
    /// Its instance directory, as printed.
    pub dir: PathBuf,
    procs: Vec<Proc>,
}

impl Detached<'_> {
    /// Its `ps --json` entry.
    pub fn entry(&self) -> Value {
        self.env.entry(&self.name)
    }

    /// Waits for console text; returns the matching line. See [`TestEnv::wait_for`].
    pub fn wait_for(&self, pattern: &str, limit: &str) -> String {
        self.env.wait_for(&self.name, pattern, limit)
    }

    /// `stop NAME --timeout 0s`, which must succeed.
    pub fn stop(self) {
        self.env.stop(&self.name);
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        if self.dir.exists() || self.procs.iter().any(|p| !pid_gone(p.pid)) {
            self.env.put_down(&self.name, &self.procs);
        }
    }
}

/// A launcher in the foreground (`run` without `--detach`), its console read on a thread and
/// its stderr collected. Killed (SIGKILL, which takes QEMU with it) when dropped.
pub struct Foreground {
    child: Option<Child>,
    console: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Foreground {
    /// Spawns `cmd` with its stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Foreground {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-direct");
        let console = lines_of(child.stdout.take().unwrap());
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        Foreground {
            child: Some(child),
            console,
            stderr: Some(stderr),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("a launcher")
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a launcher").id()
    }

    /// Waits for a console line containing `want`; returns the lines read on the way.
    pub fn expect_line(&self, want: &str, limit: Duration) -> Vec<String> {
        expect_line(&self.console, want, limit)
    }

    /// Sends a signal to the launcher.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGKILLs the launcher.
    pub fn kill(&mut self) {
        self.child().kill().unwrap();
    }

    /// Waits for the launcher to end.
    pub fn wait(&mut self) -> ExitStatus {
        self.child().wait().unwrap()
    }

    /// Waits for the launcher to end; returns its status and all it wrote to stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.wait();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads lines on a thread, into a channel.
pub fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
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
pub fn expect_line(rx: &mpsc::Receiver<String>, want: &str, limit: Duration) -> Vec<String> {
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
            Err(e) => panic!("no line with {want:?} within {limit:?} ({e}); saw {seen:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process as seen in `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// When it started, in clock ticks since boot: with the pid, names one process.
    pub start: u64,
}

/// `/proc/PID/stat`, if the process exists.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold anything.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        // Field 22 of the whole line; the 20th after the command name.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether a process is gone: no such process, or only a zombie awaiting its reaper.
pub fn pid_gone(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
}

/// Waits until `pid` is gone ([`pid_gone`]); fails the test after `limit`.
pub fn wait_gone(pid: u32, limit: Duration) {
    wait_until(&format!("pid {pid} gone"), limit, || pid_gone(pid));
}

/// Waits until `f` holds, polling; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids whose parent is `parent` (zombies included), from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// One process, by pid and start time, so a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        Some(Proc {
            pid,
            start: proc_stat(pid)?.start,
        })
    }

    /// SIGKILL, if it is still this process and not yet gone.
    fn kill_if_alive(&self) {
        if proc_stat(self.pid)
            .is_some_and(|s| s.start == self.start && !matches!(s.state, 'Z' | 'X'))
        {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test guests

/// A test guest built by `scripts/fetch-test-guests.sh`.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Its arch (the profile name, as `--arch` takes it).
    pub arch: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// initramfs printing `GUEST-READY <arch>` ([`guest_proto`]).
    pub initrd: PathBuf,
}

/// Where the test guests are: `$QD_TEST_GUESTS`, else the fetch script's default.
pub fn guests_dir() -> PathBuf {
    std::env::var_os("QD_TEST_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = qemu_direct::util::stamped::user_cache_root().expect("HOME");
            root.join("test-guests")
        })
}

/// Where the test guests with Debian's generic kernels are (9p, which the cloud kernels of the
/// standard x86_64 and aarch64 guests lack): `$QD_TEST_GUESTS_GENERIC`, else
/// [`guests_dir`]`-generic` (`scripts/fetch-test-guests.sh --generic-kernel --arch x86_64
/// --arch aarch64 DIR`).
pub fn generic_guests_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QD_TEST_GUESTS_GENERIC") {
        return d.into();
    }
    let mut d = guests_dir().into_os_string();
    d.push("-generic");
    d.into()
}

/// The generic-kernel test guest of an arch (x86_64, aarch64), for 9p; missing, it fails the
/// test as [`guest`] does.
pub fn generic_guest(arch: &str) -> Option<Guest> {
    let dir = generic_guests_dir().join(arch);
    let files = ["kernel", "initrd.gz"];
    if !files.iter().all(|f| dir.join(f).is_file()) {
        if std::env::var_os("QD_SKIP_BOOT").is_some_and(|v| v == "1") {
            eprintln!(
                "SKIPPED: no generic {arch} guest in {} and QD_SKIP_BOOT=1",
                dir.display()
            );
            return None;
        }
        panic!(
            "no generic-kernel {arch} test guest in {}: run scripts/fetch-test-guests.sh \
             --generic-kernel --arch {arch} {} (or set QD_TEST_GUESTS_GENERIC)",
            dir.display(),
            generic_guests_dir().display()
        );
    }
    Some(Guest {
        arch: arch.to_owned(),
        kernel: dir.join("kernel"),
        initrd: dir.join("initrd.gz"),
    })
}

/// The test guest of an arch. Missing guests fail the test loudly (run the fetch script, or
/// `scripts/test`, which does), unless QD_SKIP_BOOT=1 asks to skip boots on purpose.
pub fn guest(arch: &str) -> Option<Guest> {
    let dir = guest_files(arch, &["kernel", "initrd.gz"])?;
    Some(Guest {
        arch: arch.to_owned(),
        kernel: dir.join("kernel"),
        initrd: dir.join("initrd.gz"),
    })
}

/// The test guest of an arch whose initramfs has the guest agent (qemu-ga, which its `/init`
/// starts on the port `org.qemu.guest_agent.0`): the fetch script adds it where Debian has
/// it, and its manifest then names the package for that arch. Test guests fetched before it
/// did fail the test loudly, saying to fetch them again.
pub fn agent_guest(arch: &str) -> Option<Guest> {
    let g = guest(arch)?;
    let manifest = std::fs::read_to_string(guests_dir().join("manifest.txt")).unwrap_or_default();
    assert!(
        manifest_has_agent(&manifest, arch),
        "the {arch} test guest in {} has no qemu-guest-agent (its manifest.txt names none): \
         fetch the test guests again (scripts/fetch-test-guests.sh)",
        guests_dir().display()
    );
    Some(g)
}

/// Whether the manifest's block for `arch` (its packages, then its `file ARCH/...` lines)
/// lists `qemu-guest-agent`.
fn manifest_has_agent(manifest: &str, arch: &str) -> bool {
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    let mut after_files = false;
    for line in manifest.lines() {
        let is_file = line.starts_with("file ");
        if after_files && !is_file {
            blocks.push(Vec::new());
        }
        after_files = is_file;
        blocks.last_mut().expect("one block at least").push(line);
    }
    let file_prefix = format!("file {arch}/");
    blocks.iter().any(|b| {
        b.iter().any(|l| l.starts_with(&file_prefix))
            && b.iter().any(|l| l.starts_with("qemu-guest-agent "))
    })
}

/// The directory of an arch's test guest, once `files` are all in it; see [`guest`].
pub fn guest_files(arch: &str, files: &[&str]) -> Option<PathBuf> {
    let dir = guests_dir().join(arch);
    if files.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    if std::env::var_os("QD_SKIP_BOOT").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: no {arch} test guest in {} and QD_SKIP_BOOT=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "no {arch} test guest in {}: run scripts/fetch-test-guests.sh (or scripts/test), \
         or set QD_SKIP_BOOT=1 to skip boot tests",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Emulators that observe, and made-up hosts

/// An emulator wrapper (for `--emulator`, or a host description's emulator path) that records
/// each start for a guest in `ROOT/qemu-started` ([`TestEnv::qemu_started`]), so "no QEMU
/// started" is observed, not assumed.
#[derive(Debug, Clone, Copy)]
pub enum Tripwire {
    /// Then runs the real qemu-system-x86_64 ([`emulator`]). A capability probe (`-machine none`, which
    /// planning may run to learn the QEMU version) runs no guest and is not recorded.
    PassThrough,
    /// Runs a capability probe with the real QEMU, as [`Tripwire::PassThrough`]; a guest start is
    /// recorded and fails at once (exit 97). For refusals: one that does not happen then fails
    /// its test, instead of booting a guest that never ends and hanging the suite.
    ProbesOnly,
    /// Records every start, and fails at once (exit 97): a regression then fails fast and
    /// loudly instead of booting something.
    Fail,
}

impl Tripwire {
    /// The record of starts, in the env's directory.
    const STARTED: &'static str = "qemu-started";

    fn write(self, dir: &Path) -> PathBuf {
        let script = dir.join("qemu-tripwire");
        let started = dir.join(Tripwire::STARTED);
        let body = match self {
            Tripwire::PassThrough => format!(
                "#!/bin/sh\ncase \" $* \" in *\" -machine none \"*) ;; *) echo \"$0 $*\" >> '{}' ;; esac\n\
                 exec '{}' \"$@\"\n",
                started.display(),
                emulator("qemu-system-x86_64").display()
            ),
            Tripwire::ProbesOnly => format!(
                "#!/bin/sh\ncase \" $* \" in *\" -machine none \"*) exec '{}' \"$@\" ;; esac\n\
                 echo \"$0 $*\" >> '{}'\nexit 97\n",
                emulator("qemu-system-x86_64").display(),
                started.display()
            ),
            Tripwire::Fail => format!(
                "#!/bin/sh\necho \"$0 $*\" >> '{}'\nexit 97\n",
                started.display()
            ),
        };
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }
}

// ---------------------------------------------------------------------------------------------
// The QEMU under test

/// The QEMU prefix under test (`QD_QEMU_PREFIX`, set by `scripts/test --qemu VERSION`); `None`:
/// the system QEMU on `PATH`.
pub fn qemu_prefix() -> Option<PathBuf> {
    std::env::var_os("QD_QEMU_PREFIX")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The path of an emulator (or `qemu-img`) of the QEMU under test.
pub fn emulator(binary: &str) -> PathBuf {
    match qemu_prefix() {
        Some(p) => ["usr/bin", "bin"]
            .iter()
            .map(|b| p.join(b).join(binary))
            .find(|e| e.is_file())
            .unwrap_or_else(|| panic!("no {binary} in QD_QEMU_PREFIX {}", p.display())),
        None => which::which(binary).unwrap_or_else(|_| panic!("{binary} is not on PATH")),
    }
}

/// The version of an emulator of the QEMU under test, as it says (`--version`).
pub fn qemu_version(binary: &str) -> QemuVersion {
    let out = Command::new(emulator(binary))
        .arg("--version")
        .output()
        .expect("run the emulator");
    let text = String::from_utf8_lossy(&out.stdout);
    qemu_direct::host::parse_version(&text)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{binary} --version: {text}"))
}

/// This host as the library probes it, with the emulators of the QEMU under test.
pub fn probe_host(set: &ProfileSet) -> HostFacts {
    let mut host = HostFacts::probe(set, &ProbeOptions::default());
    if let Some(p) = qemu_prefix() {
        host.use_prefix(&p, set)
            .expect("QD_QEMU_PREFIX is a usable QEMU prefix");
    }
    host
}

/// The `key=value` options of a profile's list that its gates pass for the QEMU under test
/// on this host: what a plan for it must carry.
pub fn gated(options: &[ProfileOption], binary: &str) -> Vec<String> {
    let (rust_arch, endian) = qemu_direct::profile::arch::build_target();
    let host = ProfileSet::embedded()
        .unwrap()
        .for_host(rust_arch, endian)
        .map(|p| p.name.clone());
    let gate = Gate {
        qemu: Some(qemu_version(binary)),
        host: host.as_deref(),
    };
    options
        .iter()
        .filter(|o| gate.check(o).is_ok())
        .map(|o| o.option.clone())
        .collect()
}

/// A made-up host with every emulator "installed" under /usr/bin.
pub fn fake_host(arch: &str, kvm: KvmState) -> HostFacts {
    let set = ProfileSet::embedded().unwrap();
    HostFacts {
        arch: Some(set.resolve("host", arch).unwrap().arch()),
        arch_detail: arch.into(),
        kvm_device: "/dev/kvm".into(),
        kvm,
        emulators: set
            .iter()
            .map(|p| {
                let path = PathBuf::from(format!("/usr/bin/{}", p.binary));
                (
                    p.binary.clone(),
                    Emulator {
                        path,
                        version: None,
                        caps: BTreeMap::new(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        phys_bits: Some(48),
        firmware: None,
        qemu_prefix: None,
        virtiofsd: None,
    }
}

#[test]
fn the_manifest_says_which_guests_have_the_agent() {
    let m = "linux-image-x 1 amd64 aa\nqemu-guest-agent 1:7.2 amd64 bb\nfile x86_64/kernel cc\n\
             file x86_64/initrd.gz dd\nlinux-image-y 1 mipsel ee\nfile mipsel/kernel ff\n";
    assert!(manifest_has_agent(m, "x86_64"));
    assert!(!manifest_has_agent(m, "mipsel"));
    assert!(!manifest_has_agent(m, "s390x"));
}

#[test]
fn pid_gone_counts_a_zombie_as_gone() {
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id();
    assert!(!pid_gone(pid), "{:?}", proc_stat(pid));
    assert_eq!(proc_stat(pid).map(|s| s.ppid), Some(std::process::id()));
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // Not reaped yet: a zombie, which counts as gone.
    wait_until("a zombie", Duration::from_secs(5), || {
        proc_stat(pid).is_some_and(|s| s.state == 'Z')
    });
    assert!(pid_gone(pid));
    child.wait().unwrap();
    assert!(pid_gone(pid));
}
