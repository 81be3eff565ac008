//! The client against the host's own qemu-ga (`qemu-guest-agent`), serving a Unix socket in a
//! temporary folder: the "guest" is this machine, so results can be checked from the host.
//! Each test skips, saying why, where qemu-ga is not installed.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::super::*;
use super::within;

/// A qemu-ga child with its socket, state and log in a private folder; killed on drop.
struct RealAgent {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

fn qemu_ga() -> Option<PathBuf> {
    which::which("qemu-ga")
        .ok()
        .or_else(|| Some(PathBuf::from("/usr/sbin/qemu-ga")).filter(|p| p.exists()))
}

impl RealAgent {
    fn start() -> Option<RealAgent> {
        let Some(_) = qemu_ga() else {
            println!(
                "skipping: qemu-ga not found (scripts/install-deps installs qemu-guest-agent)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let child = spawn(dir.path(), &socket, "qga.log");
        Some(RealAgent { child, dir, socket })
    }

    /// A new agent on the same socket, as after a guest reboot.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn(self.dir.path(), &self.socket, "qga-2.log");
    }

    async fn connect(&self) -> Agent {
        within(Agent::connect(&self.socket, Duration::from_secs(10)))
            .await
            .unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

/// Starts qemu-ga and waits for its socket. The state folder and the log stay in `dir`; with
/// no `--daemonize` it writes no pidfile.
fn spawn(dir: &Path, socket: &Path, log: &str) -> Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(qemu_ga().unwrap())
        .args(["-m", "unix-listen", "-p"])
        .arg(socket)
        .arg("-t")
        .arg(dir)
        .arg("-f")
        .arg(dir.join("qga.pid"))
        .arg("-l")
        .arg(dir.join(log))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "qemu-ga made no socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes that look random, all 256 values, the same every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn real_exec_keeps_output_streams_and_status_apart() {
    let Some(real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let out = within(agent.exec(ExecRequest::new("uname", ["-m"])))
        .await
        .unwrap();
    let host = Command::new("uname").arg("-m").output().unwrap().stdout;
    assert_eq!(
        (out.status, out.stdout, out.stderr),
        (ExitStatus::Code(0), host, vec![])
    );

    let script = "echo to-out; echo to-err >&2; exit 7";
    let out = within(agent.exec(ExecRequest::new("sh", ["-c", script])))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(7));
    assert_eq!(out.stdout, b"to-out\n");
    assert_eq!(out.stderr, b"to-err\n");

    let out = within(agent.exec(ExecRequest::new("sh", ["-c", "kill -9 $$"])))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Signal(9));
    assert_eq!(out.status.shell_code(), 137);

    let input = noise(200_000);
    let cat = ExecRequest {
        stdin: Some(input.clone()),
        env: vec!["PATH=/usr/bin:/bin".into(), "QD_X=from env".into()],
        ..ExecRequest::new("sh", ["-c", "cat; printf %s \"$QD_X\" >&2"])
    };
    let out = within(agent.exec(cat)).await.unwrap();
    assert!(out.stdout == input, "stdin came back changed");
    assert_eq!(out.stderr, b"from env");
}

#[tokio::test]
async fn real_exec_streams_chunks_then_the_exit() {
    let Some(real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let mut stream =
        within(agent.exec_stream(ExecRequest::new("sh", ["-c", "echo a; echo b >&2"])))
            .await
            .unwrap();
    assert!(stream.pid() > 0);
    let mut events = Vec::new();
    while let Some(event) = within(stream.next()).await {
        events.push(event.unwrap());
    }
    let exited = ExecEvent::Exited {
        status: ExitStatus::Code(0),
        stdout_truncated: false,
        stderr_truncated: false,
    };
    let expected = [
        ExecEvent::Stdout(b"a\n".to_vec()),
        ExecEvent::Stderr(b"b\n".to_vec()),
        exited,
    ];
    assert_eq!(events, expected);
}

#[tokio::test]
async fn real_exec_failures_are_typed_and_a_timeout_kills_the_process_tree() {
    let Some(real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let err = within(agent.exec(ExecRequest::new("/no/such/program", ["x"])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::ExecStart { desc, .. } if desc.contains("No such file")),
        "{err:?}"
    );

    // The `sleep` child holds stdout open: qemu-ga reports no exit until it is gone too.
    let request = ExecRequest {
        timeout: Some(Duration::from_millis(300)),
        ..ExecRequest::new("sh", ["-c", "sleep 60; echo never"])
    };
    let started = Instant::now();
    let mut stream = within(agent.exec_stream(request)).await.unwrap();
    let pid = stream.pid();
    let err = within(stream.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, AgentError::ExecTimeout { killed: true, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} lives on"
    );
    assert!(within(stream.next()).await.is_none());
    within(agent.ping()).await.unwrap();
}

#[tokio::test]
async fn real_files_round_trip_byte_exact_with_their_mode() {
    let Some(real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let path = real.path("five-megabytes.bin");
    let data = noise(5 * 1000 * 1000 + 7);
    let started = Instant::now();
    within(agent.write_file(&path, &data, Some(0o640)))
        .await
        .unwrap();
    let back = within(agent.read_file(&path)).await.unwrap();
    println!("5 MB written and read back in {:?}", started.elapsed());
    assert!(back == data, "read back {} bytes, changed", back.len());
    assert!(
        std::fs::read(&path).unwrap() == data,
        "the file on disk differs"
    );
    let on_disk = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(on_disk, 0o640);
    assert_eq!(within(agent.file_mode(&path)).await.unwrap(), 0o640);
    within(agent.set_file_mode(&path, 0o600)).await.unwrap();
    assert_eq!(within(agent.file_mode(&path)).await.unwrap(), 0o600);

    // Replacing with nothing truncates; the mode stays when none is given.
    within(agent.write_file(&path, b"", None)).await.unwrap();
    assert_eq!(within(agent.read_file(&path)).await.unwrap(), b"");
    assert_eq!(within(agent.file_mode(&path)).await.unwrap(), 0o600);
}

#[tokio::test]
async fn real_missing_folders_and_files_say_so() {
    let Some(real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let missing = real.path("no-such-folder");
    let err = within(agent.write_file(&format!("{missing}/f"), b"x", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::MissingFolder { folder } if *folder == missing),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("no such folder in the guest: {missing}")
    );
    let err = within(agent.read_file(&format!("{missing}/f")))
        .await
        .unwrap_err();
    assert!(matches!(&err, AgentError::MissingFile { .. }), "{err:?}");
    let err = within(agent.file_mode(&missing)).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Helper { stderr, .. } if stderr.contains("No such file")),
        "{err:?}"
    );
}

#[tokio::test]
async fn real_agent_restart_is_survived() {
    let Some(mut real) = RealAgent::start() else {
        return;
    };
    let agent = real.connect().await;
    let info = within(agent.info()).await.unwrap();
    assert!(!info.version.is_empty());
    assert!(
        info.supports("guest-exec") && info.supports("guest-file-open"),
        "{info:?}"
    );

    real.restart();
    // The old connection is dead: the first command may find out the hard way, and any
    // command after that reconnects and re-syncs with the new agent.
    let first = within(agent.ping()).await;
    if let Err(e) = first {
        assert!(matches!(e, AgentError::Lost { .. }), "{e:?}");
        within(agent.ping()).await.unwrap();
    }
    let out = within(agent.exec(ExecRequest::new("true", [""; 0])))
        .await
        .unwrap();
    assert!(out.status.success());
}
