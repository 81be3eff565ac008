//! `qemu-direct ssh` and `Vm::ssh_command` on the busybox test guests, which have no SSH
//! server: the forward to port 22 made (a port the kernel picked, read back from QEMU),
//! recorded and shown by `ps`; the wait for the `SSH-` banner timing out with the console tail,
//! and failing at once when the guest ends; the refusals (no network, no forward, no such
//! instance). `cloud::` logs in for real on a Debian image.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use qemu_direct::{
    host::caps::CapsCache,
    spec::cloud_init::CloudInitInput,
    vm::{SshError, Vm},
};

use crate::{
    cloud_init::keys,
    common::{BOOT_TIMEOUT, TestEnv, guest, guest_proto::HOLD, shared_cache, text},
};

/// The guest ran with `--ssh-key` and `--net user`: the port is recorded, shown and really
/// forwarded; nothing answers with a banner, so `ssh` times out naming what it waited for,
/// the port and the console tail, without running ssh (no known_hosts written).
#[test]
fn the_forward_is_recorded_shown_and_its_banner_waited_for() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let mut c = env.run(&g, ["--timeout", BOOT_TIMEOUT, "--name", "sshd-less"]);
    c.args(["--ssh-key", &key, "--net", "user", "--append", HOLD]);
    let vm = env.launch_detached(c);
    let port = env.entry("sshd-less")["ssh_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ssh_port: {}", env.entry("sshd-less")));
    assert!(port > 0 && port <= 65535);
    // The kernel's pick, bound by QEMU's slirp on the loopback address.
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("the forward listens");
    let out = env.qd(["ps"]);
    let (ps, _) = text(&out);
    let row = ps.lines().find(|l| l.starts_with("sshd-less ")).unwrap();
    assert!(ps.lines().next().unwrap().contains(" SSH "), "{ps}");
    assert!(row.contains(&format!(" {port} ")), "{ps}");
    env.wait_for("sshd-less", "GUEST-READY", BOOT_TIMEOUT);
    let out = env.qd(["ssh", "sshd-less", "--timeout", "2s", "--", "true"]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{e}");
    for want in [
        format!("127.0.0.1:{port}"),
        "`SSH-` banner".into(),
        "instance 'sshd-less'".into(),
        "GUEST-READY x86_64".into(),
    ] {
        assert!(e.contains(&want), "no {want:?} in: {e}");
    }
    assert!(!vm.dir.join("known_hosts").exists(), "ssh ran");
}

/// `ssh` to a guest without a network, or with one but no forward, says how to start it;
/// to an unknown name, names it; nothing is waited for.
#[test]
fn ssh_without_a_forward_is_refused() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let mut c = env.run(&g, ["--timeout", BOOT_TIMEOUT, "--name", "no-net"]);
    c.args(["--ssh-key", &key, "--append", HOLD]);
    let _a = env.launch_detached(c);
    let mut c = env.run(&g, ["--timeout", BOOT_TIMEOUT, "--name", "no-key"]);
    c.args(["--net", "user", "--append", HOLD]);
    let _b = env.launch_detached(c);
    assert_eq!(env.entry("no-key")["ssh_port"], serde_json::Value::Null);
    for (name, why) in [
        ("no-net", "instance 'no-net' has no network"),
        (
            "no-key",
            "instance 'no-key' has no host port forwarded to its SSH port 22",
        ),
    ] {
        let started = Instant::now();
        let out = env.qd(["ssh", name, "--", "true"]);
        let (_, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(e.contains(why) && e.contains("--ssh-key"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30), "it waited");
    }
    let out = env.qd(["ssh", "nosuch", "--", "true"]);
    let (_, e) = text(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(e.contains("nosuch"), "{e}");
}

/// A guest that ends while `ssh` waits for its server: `ssh` fails at once, not at its
/// timeout.
#[test]
fn ssh_to_a_guest_that_ends_fails_at_once() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let mut c = env.run(&g, ["--timeout", BOOT_TIMEOUT, "--name", "ends"]);
    c.args(["--ssh-key", &key, "--net", "user", "--append", HOLD]);
    let vm = env.launch_detached(c);
    let mut ssh = env
        .cmd(["ssh", "ends", "--timeout", "10m", "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stopped = Instant::now();
    vm.stop();
    let out = loop {
        if let Some(_status) = ssh.try_wait().unwrap() {
            break ssh.wait_with_output().unwrap();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "ssh still waits for a guest that is gone"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("instance 'ends' ended"), "{e}");
}

/// The Rust API: a `Vm` with `--ssh-key`'s login and a user network knows its port, and
/// `ssh_command` waits for the banner, then fails with the console tail.
#[test]
fn ssh_command_waits_for_the_banner() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let vm = Vm::guest(&g.arch)
            .kernel(&g.kernel)
            .initrd(&g.initrd)
            .append(HOLD)
            .spec(|s| {
                s.net = Some("user".into());
                s.cloud_init = Some(CloudInitInput {
                    ssh_key: Some(key.into()),
                    ..Default::default()
                });
            })
            .runtime_dir(env.instances())
            .caps_cache(CapsCache::at(shared_cache()))
            .launch()
            .await
            .unwrap();
        let port = vm.ssh_port().expect("a forwarded port");
        let e = vm
            .ssh_command_within(["uname", "-m"], Duration::from_secs(2))
            .await
            .unwrap_err();
        let SshError::NoBanner {
            port: p, context, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*p, port);
        assert_eq!(context.instance, vm.name());
        vm.kill();
        let _ = vm.wait().await;
        let e = vm
            .ssh_command_within(["true"], Duration::from_secs(600))
            .await
            .unwrap_err();
        assert!(matches!(e, SshError::Ended { .. }), "{e:?}");
    });
}

/// The plan: an `--ssh-key` login on a user network gets a forward from a port the kernel
/// picks; where the user forwards one to 22, that one is used and no second made; no login,
/// no forward.
#[test]
fn the_plan_forwards_port_22_only_for_an_ssh_login() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let plan = |extra: &[&str]| {
        let mut c = env.guest_cmd(&g, ["plan", "--arch", "x86_64"]);
        c.args(extra);
        let out = c.output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{e}");
        o
    };
    let ours = "hostfwd=tcp:127.0.0.1:0-:22";
    let p = plan(&["--ssh-key", &key, "--net", "user"]);
    assert!(
        p.contains(ours) && p.contains("qemu-direct ssh NAME"),
        "{p}"
    );
    let p = plan(&["--ssh-key", &key, "--net", "user,hostfwd=tcp::2222-:22"]);
    assert!(
        !p.contains(ours) && p.contains("your forward of host port 2222"),
        "{p}"
    );
    let p = plan(&["--net", "user"]);
    assert!(!p.contains(ours) && !p.contains("ssh:"), "{p}");
}
