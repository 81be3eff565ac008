//! Shared host folders and the guest agent's channel, on real guests.
//!
//! The guest mounts each share named by `qd.mount=TAG:/path` (virtiofs, else 9p) and says so
//! (`qd-mounted: TAG /path FS`); its qemu-ga, on the channel every launch has, then runs shell
//! commands that read the host's file and write one back ([`guest_proto::mount`]). 9p needs the
//! generic kernels ([`generic_guest`]: Debian's cloud kernels have no 9p); virtiofs runs on the
//! standard guests too. Where the host's virtiofsd cannot serve a read-only share (QEMU 7.2's C
//! one), read-only is shown over 9p, and `ro,fs=virtiofs` is refused before anything starts.

use std::{path::Path, time::Duration};

use qemu_direct::agent::{Agent, ExecRequest};
use serde_json::Value;

use crate::common::{
    BOOT_TIMEOUT, Guest, TestEnv, children_of, generic_guest, guest,
    guest_proto::{self, HOLD},
    pid_gone, text, wait_until,
};

/// A host folder with `in.txt` in it, saying `text`.
fn folder(env: &TestEnv, name: &str, text: &str) -> std::path::PathBuf {
    let dir = env.path(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("in.txt"), text).unwrap();
    dir
}

/// Runs `sh -c SCRIPT` in the guest through its agent: (exit code, stdout, stderr).
fn sh(agent_sock: &Path, script: &str) -> (i32, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let agent = Agent::connect(agent_sock, Duration::from_secs(120))
            .await
            .expect("the guest agent answers");
        let out = agent
            .exec(ExecRequest::new("sh", ["-c", script]))
            .await
            .expect("guest-exec");
        (
            out.status.shell_code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// One raw `guest-sync-delimited` over the instance's agent socket: qemu-ga answers with the
/// id, after its 0xFF delimiter.
fn raw_sync(agent_sock: &Path) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(agent_sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4711}}\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\n") {
        let n = s
            .read(&mut buf)
            .expect("qemu-ga answers guest-sync-delimited");
        assert!(n > 0, "the agent socket closed: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let at = got
        .iter()
        .rposition(|&b| b == 0xff)
        .expect("a 0xFF delimiter")
        + 1;
    let reply: Value = serde_json::from_slice(&got[at..]).unwrap();
    assert_eq!(reply["return"], 4711, "{reply}");
}

/// Boots `g` held, with `shares` (`--share` values) mounted as `mounts` (TAG:/path), and
/// checks the console says each is mounted over the transport asked for.
fn boot<'e>(
    env: &'e TestEnv,
    g: &Guest,
    shares: &[String],
    mounts: &[(&str, &str, &str)],
) -> crate::common::Detached<'e> {
    let mut append = HOLD.to_owned();
    for (tag, path, _) in mounts {
        append.push(' ');
        append.push_str(&guest_proto::mount(tag, path));
    }
    let mut cmd = env.run(g, ["--append", &append, "--memory", "512M"]);
    for s in shares {
        cmd.arg("--share").arg(s);
    }
    let d = env.launch_detached(cmd);
    d.wait_for(&guest_proto::ready(&g.arch), BOOT_TIMEOUT);
    let console = std::fs::read_to_string(d.dir.join("console.log")).unwrap();
    for (tag, path, fs) in mounts {
        let want = guest_proto::mounted(tag, path, fs);
        assert!(
            console.contains(&want),
            "no '{want}' on the console:\n{console}"
        );
    }
    d
}

/// The guest reads `in.txt` of the share at `path` and writes `out.txt` back (or fails to, for
/// a read-only share).
fn read_and_write(sock: &Path, host: &Path, path: &str, want: &str, writable: bool) {
    let (code, out, err) = sh(sock, &format!("cat {path}/in.txt"));
    assert_eq!((code, out.as_str()), (0, want), "{err}");
    let (code, _, err) = sh(sock, &format!("echo from-guest > {path}/out.txt && sync"));
    if writable {
        assert_eq!(code, 0, "writing to {path}: {err}");
        wait_until(
            "the guest's file on the host",
            Duration::from_secs(10),
            || std::fs::read_to_string(host.join("out.txt")).is_ok_and(|t| t == "from-guest\n"),
        );
    } else {
        assert_ne!(code, 0, "a read-only share took a write");
        assert!(err.contains("Read-only"), "{err}");
        assert!(!host.join("out.txt").exists());
    }
}

/// The arch's generic guest with a 9p share, a read-only 9p share and a virtiofs share (where
/// this host has a virtiofsd for it), each read and written from inside.
fn shares_over_9p_and_virtiofs(arch: &str) {
    let Some(g) = generic_guest(arch) else { return };
    let env = TestEnv::new();
    let rw = folder(&env, "rw", "to-9p\n");
    let ro = folder(&env, "ro", "to-ro\n");
    let fast = folder(&env, "fast", "to-virtiofs\n");
    let mut shares = vec![
        format!("{}:p9,fs=9p", rw.display()),
        format!("{}:ro,ro,fs=9p", ro.display()),
    ];
    let mut mounts = vec![("p9", "/mnt/p9", "9p"), ("ro", "/mnt/ro", "9p")];
    let virtiofs = host_virtiofsd().is_some();
    if virtiofs {
        shares.push(format!("{}:vfs,fs=virtiofs", fast.display()));
        mounts.push(("vfs", "/mnt/vfs", "virtiofs"));
    } else {
        eprintln!("SKIPPED: {arch} virtiofs share: this host has no virtiofsd");
    }
    let d = boot(&env, &g, &shares, &mounts);
    let sock = d.dir.join(qemu_direct::instance::AGENT_SOCKET);
    read_and_write(&sock, &rw, "/mnt/p9", "to-9p\n", true);
    read_and_write(&sock, &ro, "/mnt/ro", "to-ro\n", false);
    if virtiofs {
        read_and_write(&sock, &fast, "/mnt/vfs", "to-virtiofs\n", true);
    }
    d.stop();
}

#[test]
fn x86_64_shares_over_9p_and_virtiofs_read_and_write() {
    shares_over_9p_and_virtiofs("x86_64");
}

#[test]
fn aarch64_shares_over_9p_and_virtiofs_read_and_write() {
    shares_over_9p_and_virtiofs("aarch64");
}

/// This host's virtiofsd as `probe --json` finds it.
fn host_virtiofsd() -> Option<Value> {
    let out = TestEnv::new().qd(["probe", "--json"]);
    let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = facts.get("virtiofsd")?.clone();
    v.get("unusable").is_none().then_some(v)
}

/// The standard guest: the agent's socket answers a raw guest-sync-delimited; a virtiofs share
/// (its kernel has no 9p) mounts; the launch's virtiofsd goes with a SIGKILLed supervisor, as
/// QEMU does.
#[test]
fn the_agent_answers_and_virtiofsd_dies_with_its_supervisor() {
    let Some(g) = guest("x86_64") else { return };
    if host_virtiofsd().is_none() {
        return eprintln!("SKIPPED: virtiofs on the standard guest: this host has no virtiofsd");
    }
    let env = TestEnv::new();
    let dir = folder(&env, "data", "to-virtiofs\n");
    let d = boot(
        &env,
        &g,
        &[format!("{}:data", dir.display())],
        &[("data", "/mnt/data", "virtiofs")],
    );
    let sock = d.dir.join(qemu_direct::instance::AGENT_SOCKET);
    raw_sync(&sock);
    read_and_write(&sock, &dir, "/mnt/data", "to-virtiofs\n", true);
    let entry = d.entry();
    let (qemu, supervisor) = (pid(&entry["pid"]), pid(&entry["supervisor_pid"]));
    // The virtiofsd beside QEMU, and what it forked (QEMU's C one sandboxes a child).
    let mut daemons = Vec::new();
    let mut todo: Vec<u32> = children_of(supervisor)
        .into_iter()
        .filter(|&p| p != qemu)
        .collect();
    while let Some(p) = todo.pop() {
        todo.extend(children_of(p));
        daemons.push(p);
    }
    assert!(!daemons.is_empty(), "no virtiofsd beside QEMU");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for p in daemons.iter().chain([&qemu]) {
        wait_until("QEMU and virtiofsd gone", Duration::from_secs(10), || {
            pid_gone(*p)
        });
    }
}

fn pid(v: &Value) -> u32 {
    v.as_u64().expect("a pid") as u32
}

/// `--no-agent`: no channel on the command line, no socket in the instance directory.
#[test]
fn no_agent_leaves_the_channel_out() {
    let env = TestEnv::new();
    let k = env.kernel();
    let out = env.qd([
        "plan",
        "--arch",
        "x86_64",
        "--kernel",
        &k,
        "--no-agent",
        "--dry-run",
    ]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(!o.contains("virtserialport") && !o.contains("agent"), "{o}");
    let out = env.qd(["plan", "--arch", "s390x", "--kernel", &k, "--dry-run"]);
    let o = text(&out).0;
    assert!(
        o.contains("virtio-serial-ccw,id=qd-vser0") && o.contains("name=org.qemu.guest_agent.0"),
        "{o}"
    );
}

/// `ro` with virtiofs where this host's virtiofsd has no read-only mode (QEMU 7.2's C one) is
/// refused before anything starts; with `auto` the share goes over 9p, saying why.
#[test]
fn read_only_virtiofs_needs_a_virtiofsd_that_can() {
    let Some(v) = host_virtiofsd() else {
        return eprintln!("SKIPPED: read-only virtiofs: this host has no virtiofsd");
    };
    let env = TestEnv::new();
    let dir = folder(&env, "data", "x");
    let share = |opts: &str| format!("{}{opts}", dir.display());
    let k = env.kernel();
    let out = env.qd([
        "plan",
        "--arch",
        "x86_64",
        "--kernel",
        &k,
        "--share",
        &share(",ro,fs=virtiofs"),
    ]);
    let (o, e) = text(&out);
    if v["readonly"] == true {
        assert!(out.status.success(), "{e}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert!(e.starts_with("error: share "), "{e}");
    assert!(e.contains("has no read-only mode"), "{e}");
    assert!(e.contains("hint: share it over 9p (fs=9p)"), "{e}");
    let out = env.qd([
        "plan",
        "--arch",
        "x86_64",
        "--kernel",
        &k,
        "--share",
        &share(",ro"),
    ]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(o.contains("9p: not virtiofs: a read-only share"), "{o}");
}

/// The agent's channel and the shares on the other buses and machines: ccw (s390x), pseries
/// and malta. Each guest's qemu-ga answers on the instance's socket and reads and writes a 9p
/// share and an `auto` one, which goes over virtiofs where the profile offers it and the host
/// has a virtiofsd (not s390x: a big-endian guest cannot talk to virtiofsd), else 9p.
#[test]
fn s390x_ppc64le_and_mipsel_have_the_agent_and_their_transports() {
    let profiles = qemu_direct::ProfileSet::embedded().unwrap();
    for arch in ["s390x", "ppc64le", "mipsel"] {
        let Some(g) = guest(arch) else { return };
        let offered = profiles
            .resolve("arch", arch)
            .unwrap()
            .devices
            .vhost_user_fs
            .is_some();
        let auto_fs = if offered && host_virtiofsd().is_some() {
            "virtiofs"
        } else {
            "9p"
        };
        let env = TestEnv::new();
        let p9 = folder(&env, "p9", "to-9p\n");
        let auto = folder(&env, "auto", "to-auto\n");
        let shares = [
            format!("{}:p9,fs=9p", p9.display()),
            format!("{}:auto", auto.display()),
        ];
        let mounts = [("p9", "/mnt/p9", "9p"), ("auto", "/mnt/auto", auto_fs)];
        let d = boot(&env, &g, &shares, &mounts);
        let sock = d.dir.join(qemu_direct::instance::AGENT_SOCKET);
        raw_sync(&sock);
        read_and_write(&sock, &p9, "/mnt/p9", "to-9p\n", true);
        read_and_write(&sock, &auto, "/mnt/auto", "to-auto\n", true);
        d.stop();
    }
}

/// A virtiofsd that fails at start: the launch says so with the daemon's own words, exit 3,
/// and leaves no instance behind.
#[test]
fn a_virtiofsd_that_fails_is_named_with_its_words() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let fake = env.path("virtiofsd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'virtiofsd: cannot sandbox: Operation not permitted' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = env.qd(["probe", "--json"]);
    let mut facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    facts["virtiofsd"] = serde_json::json!({ "path": fake, "kind": "c", "readonly": false });
    let facts_file = env.path("host.json");
    std::fs::write(&facts_file, facts.to_string()).unwrap();
    let dir = folder(&env, "data", "x");
    let mut cmd = env.cmd(["--host-facts"]);
    cmd.arg(&facts_file)
        .args(["run", "--arch", "x86_64", "--timeout", "60s", "--share"])
        .arg(format!("{}:data,fs=virtiofs", dir.display()))
        .arg("--kernel")
        .arg(&g.kernel);
    let out = cmd.output().unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(
        e.contains(
            "error: the virtiofsd of share data failed: virtiofsd: cannot sandbox: Operation not \
             permitted; QEMU exited while starting (exit status 1)"
        ),
        "{e}"
    );
    assert!(crate::common::files_under(&env.instances()).is_empty());
}
