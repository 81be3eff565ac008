//! Acting inside real guests through the guest agent: `run -- CMD` on each arch whose test
//! guest has the agent, `exec`, `cp`, `wait --agent` and `ps --agent` on a detached guest, a
//! guest without an agent; and the harness API: a `Vm` whose runtime is gone, a guest that
//! serves several runtimes, `vm::run` and signal handlers, `examples/harness.rs`.

use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use qemu_direct::{
    host::caps::CapsCache,
    qmp::{CloseReason, QmpError},
    vm::{self, ConsoleError, GuestBuilder, GuestError, Outcome, RunOptions, Vm, VmError},
};
use serde_json::Value;

use crate::common::{
    BOOT_TIMEOUT, Guest, TestEnv, agent_guest, guest,
    guest_proto::{self, HOLD, READY},
    guests_dir, shared_cache, text, wait_gone,
};

#[path = "../../examples/harness.rs"]
mod harness_example;

/// How long a call on a dead guest may take before it counts as a hang.
const AT_ONCE: Duration = Duration::from_secs(5);

/// `run --arch ARCH --append qd.hold=1 -- sh -c 'uname -m; echo err >&2; exit 7'`: the
/// command's stdout and stderr apart, nothing else on either, its status ours, the console in
/// the log only, nothing left.
fn run_a_command_on(arch: &str) {
    let Some(g) = agent_guest(arch) else { return };
    let env = TestEnv::new();
    let script = "uname -m; echo err >&2; exit 7";
    let out = env
        .run(&g, ["--append", HOLD, "--timeout", BOOT_TIMEOUT])
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(7), "stdout {o:?}, stderr:\n{e}");
    assert_eq!(o, format!("{arch}\n"));
    assert_eq!(e, "err\n", "only the command's stderr");
    let log = std::fs::read_to_string(env.log(arch)).unwrap();
    assert!(
        log.contains(&guest_proto::ready(arch)),
        "the console log:\n{log}"
    );
    assert_eq!(std::fs::read_dir(env.instances()).unwrap().count(), 0);
}

#[test]
fn run_a_command_on_aarch64() {
    run_a_command_on("aarch64");
}

#[test]
fn run_a_command_on_x86_64() {
    run_a_command_on("x86_64");
}

#[test]
fn run_a_command_on_ppc64le() {
    run_a_command_on("ppc64le");
}

#[test]
fn run_a_command_on_s390x() {
    run_a_command_on("s390x");
}

#[test]
fn run_without_an_agent_answering_fails_with_the_console() {
    let Some(g) = agent_guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    // The guest panics before its agent starts.
    let out = env
        .run(
            &g,
            ["--append", guest_proto::PANIC, "--timeout", BOOT_TIMEOUT],
        )
        .args(["--", "true"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{e}");
    assert!(o.is_empty(), "{o}");
    assert!(
        e.starts_with("error: instance 'aarch64' ended (guest kernel panicked"),
        "{e}"
    );
    assert!(e.contains("last 20 console lines:"), "{e}");
    assert!(e.contains(&env.log("aarch64").display().to_string()), "{e}");
}

/// `qemu-direct ARGS` in `env`, which must exit `code`; its stdout and stderr.
fn qd_exits(env: &TestEnv, args: &[&str], code: i32) -> (String, String) {
    let out = env.qd(args);
    let (o, e) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: stdout {o:?}, stderr:\n{e}"
    );
    (o, e)
}

/// The `ps --json --agent` entry of `name`.
fn ps_agent(env: &TestEnv, name: &str) -> Value {
    let (o, _) = qd_exits(env, &["ps", "--json", "--agent"], 0);
    let rows: Vec<Value> = serde_json::from_str(&o).unwrap();
    rows.into_iter().find(|r| r["name"] == name).unwrap()
}

#[test]
fn exec_wait_and_ps_on_a_detached_guest() {
    let Some(g) = agent_guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    let vm = env.launch_detached(env.run(&g, ["--name", "a64", "--append", HOLD]));
    let (o, _) = qd_exits(
        &env,
        &["wait", "a64", "--agent", "--timeout", BOOT_TIMEOUT],
        0,
    );
    assert!(o.starts_with("guest agent 7."), "{o}");
    let row = ps_agent(&env, "a64");
    assert_eq!(
        (&row["agent"], &row["agent_channel"]),
        (&"answers".into(), &true.into())
    );
    let (table, _) = qd_exits(&env, &["ps", "--agent"], 0);
    assert!(
        table.contains(" AGENT ") && table.contains(" answers "),
        "{table}"
    );

    let (o, e) = qd_exits(
        &env,
        &[
            "exec",
            "a64",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        7,
    );
    assert_eq!((o.as_str(), e.as_str()), ("out\n", "err\n"));
    let (o, _) = qd_exits(
        &env,
        &[
            "exec",
            "a64",
            "--env",
            "QD_X=a b",
            "--",
            "sh",
            "-c",
            "echo \"$QD_X\" $PATH",
        ],
        0,
    );
    assert!(
        o.starts_with("a b /"),
        "the addition, and the agent's PATH kept: {o}"
    );
    let mut child = env
        .cmd(["exec", "a64", "--stdin", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from the host\n")
        .unwrap();
    assert_eq!(child.wait_with_output().unwrap().stdout, b"FROM THE HOST\n");
    qd_exits(&env, &["exec", "a64", "--", "sh", "-c", "kill -9 $$"], 137);
    let (_, e) = qd_exits(&env, &["exec", "a64", "--", "no-such-command"], 127);
    assert!(
        e.starts_with("error: cannot start no-such-command in the guest"),
        "{e}"
    );

    let (_, e) = qd_exits(
        &env,
        &["exec", "a64", "--timeout", "2s", "--", "sleep", "30"],
        5,
    );
    assert!(
        e.contains("sleep did not exit within 2s in the guest; it was killed"),
        "{e}"
    );
    let (o, _) = qd_exits(
        &env,
        &["exec", "a64", "--", "sh", "-c", "ps | grep -c '[s]leep 30'"],
        1,
    );
    assert_eq!(o, "0\n", "the timed-out command is gone");

    // Without its agent (killed a moment after this command returns), the guest stops
    // answering: exec times out saying so, and ps shows it.
    qd_exits(
        &env,
        &[
            "exec",
            "a64",
            "--",
            "sh",
            "-c",
            "(sleep 1; killall qemu-ga) >/dev/null 2>&1 &",
        ],
        0,
    );
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let (_, e) = qd_exits(&env, &["exec", "a64", "--timeout", "3s", "--", "true"], 5);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.starts_with("error: the guest agent of instance 'a64' did not answer"),
        "{e}"
    );
    assert!(e.contains("GUEST-READY aarch64"), "the console tail: {e}");
    assert!(
        e.contains("hint: ") && e.contains("qemu-direct wait NAME --agent"),
        "{e}"
    );
    assert_eq!(ps_agent(&env, "a64")["agent"], "no answer");
    vm.stop();
}

#[test]
fn cp_moves_a_big_file_both_ways_byte_for_byte() {
    let Some(g) = agent_guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    let vm = env.launch_detached(env.run(&g, ["--name", "a64", "--append", HOLD]));
    qd_exits(
        &env,
        &["wait", "a64", "--agent", "--timeout", BOOT_TIMEOUT],
        0,
    );
    let src = env.path("big.bin");
    let mut bytes = vec![0u8; 50_000_000];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut bytes).unwrap();
    std::fs::write(&src, &bytes).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let src = src.to_str().unwrap();

    qd_exits(&env, &["cp", src, "a64:/tmp/"], 0);
    let (o, _) = qd_exits(
        &env,
        &["exec", "a64", "--", "stat", "-c", "%s %a", "/tmp/big.bin"],
        0,
    );
    assert_eq!(o, "50000000 640\n");
    let back = env.path("back");
    std::fs::create_dir(&back).unwrap();
    qd_exits(&env, &["cp", "a64:/tmp/big.bin", back.to_str().unwrap()], 0);
    let got = std::fs::read(back.join("big.bin")).unwrap();
    assert!(got == bytes, "the copy back differs ({} bytes)", got.len());
    let mode = std::fs::metadata(back.join("big.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);

    let (_, e) = qd_exits(&env, &["cp", src, "a64:/no/such/folder/f"], 2);
    assert_eq!(
        e.lines().next().unwrap(),
        "error: no such folder in the guest: /no/such/folder"
    );
    let (_, e) = qd_exits(
        &env,
        &["cp", "a64:/no/such/file", back.to_str().unwrap()],
        2,
    );
    assert_eq!(
        e.lines().next().unwrap(),
        "error: no such file in the guest: /no/such/file"
    );
    let (_, e) = qd_exits(&env, &["cp", "a64:/etc", back.to_str().unwrap()], 2);
    assert!(
        e.starts_with("error: /etc is a directory: cp copies one file"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(&back).unwrap().count(),
        1,
        "nothing else written"
    );

    // A guest that goes away under a command is reported as ended, with its console.
    let (_, e) = qd_exits(&env, &["exec", "a64", "--", "poweroff", "-f"], 3);
    assert!(e.starts_with("error: instance 'a64' ended"), "{e}");
    assert!(e.contains("reboot: Power down"), "the console tail: {e}");
    assert!(!vm.dir.exists());
}

#[test]
fn an_instance_without_an_agent_is_refused_at_once() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let vm = env.launch_detached(env.run(&g, ["--name", "bare", "--no-agent", "--append", HOLD]));
    let started = Instant::now();
    let (o, e) = qd_exits(&env, &["exec", "bare", "--", "true"], 2);
    assert!(o.is_empty());
    assert_eq!(
        e.lines().next().unwrap(),
        "error: instance 'bare' was launched without a guest agent (--no-agent)"
    );
    qd_exits(&env, &["wait", "bare", "--agent"], 2);
    qd_exits(
        &env,
        &["cp", "bare:/etc/hostname", env.root().to_str().unwrap()],
        2,
    );
    assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
    let row = ps_agent(&env, "bare");
    assert_eq!(
        (&row["agent"], &row["agent_channel"]),
        (&"none".into(), &false.into())
    );
    vm.stop();
}

// ---------------------------------------------------------------------------------------------
// The Rust API

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The held test guest, its instance and logs in `env`, versions probed through the tests'
/// capability cache.
fn held(env: &TestEnv, g: &Guest) -> GuestBuilder {
    Vm::guest(&g.arch)
        .kernel(&g.kernel)
        .initrd(&g.initrd)
        .append(HOLD)
        .runtime_dir(env.instances())
        .console_log_dir(Some(env.logs()))
        .caps_cache(CapsCache::at(shared_cache()))
}

#[test]
fn a_vm_whose_runtime_is_gone_fails_at_once() {
    let Some(g) = agent_guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    let first = runtime();
    let vm = first.block_on(async {
        let vm = held(&env, &g).launch().await.unwrap();
        let up = vm.scale(Duration::from_secs(60));
        let m = vm
            .console()
            .wait_for_match(r"GUEST-READY (?P<arch>\w+)", up)
            .await
            .unwrap();
        assert_eq!(
            (m.get(1), m.name("arch")),
            (Some("aarch64"), Some("aarch64"))
        );
        let uname = vm.console().between("qd-uname: ", "\n", up).await.unwrap();
        assert_eq!(uname, "aarch64");
        // A wait that fails names the instance and its log, and shows what the guest printed.
        let e = vm
            .console()
            .wait_for("NEVER-PRINTED", Duration::from_secs(1))
            .await
            .unwrap_err();
        let ConsoleError::TimedOut { context, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(context.instance, "aarch64");
        assert_eq!(context.log.as_deref(), Some(env.log("aarch64").as_path()));
        assert!(e.to_string().contains("\n    GUEST-READY aarch64"), "{e}");
        vm
    });
    let (pid, dir) = (vm.pid(), vm.dir().to_owned());
    drop(first);
    wait_gone(pid, AT_ONCE);
    assert!(!dir.exists(), "the instance directory went with it");

    runtime().block_on(async {
        let started = Instant::now();
        assert!(
            matches!(vm.state(), Err(VmError::RuntimeGone { .. })),
            "{:?}",
            vm.state()
        );
        let e = tokio::time::timeout(AT_ONCE, vm.qmp().query_status())
            .await
            .expect("query-status must not hang")
            .unwrap_err();
        assert!(
            matches!(e, QmpError::Closed(CloseReason::RuntimeGone)),
            "{e:?}"
        );
        let e = tokio::time::timeout(AT_ONCE, vm.agent())
            .await
            .expect("agent must not hang")
            .unwrap_err();
        assert!(
            matches!(e, GuestError::Vm(VmError::RuntimeGone { .. })),
            "{e:?}"
        );
        let e = tokio::time::timeout(AT_ONCE, vm.wait())
            .await
            .expect("wait must not hang")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instance 'aarch64' is gone: the tokio runtime that launched it shut down, and QEMU \
             was killed with it"
        );
        assert!(e.hint().unwrap().contains("background"), "{:?}", e.hint());
        assert!(started.elapsed() < AT_ONCE);
    });
}

#[test]
fn a_guest_launched_in_the_background_serves_several_runtimes() {
    let Some(g) = agent_guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    // As a fixture in a static would be: launched from one test's runtime, used from others.
    let vm = runtime()
        .block_on(held(&env, &g).background(true).launch())
        .unwrap();
    for _ in 0..2 {
        let rt = runtime();
        let out = rt.block_on(vm.exec("uname", ["-m"])).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "aarch64\n");
        assert_eq!(
            rt.block_on(vm.qmp().query_status()).unwrap().status,
            "running"
        );
        assert_eq!(vm.state().unwrap(), "running");
    }
    let report = runtime().block_on(vm.shutdown_quick()).unwrap();
    assert!(
        matches!(report.outcome, Outcome::Stopped { .. }),
        "{:?}",
        report.outcome
    );
}

/// Set, to a runtime directory, in the child that [`vm_run_leaves_no_signal_handlers`] starts.
const SIGNAL_PROBE: &str = "QD_SIGNAL_PROBE_RUNTIME_DIR";

/// Whether SIGINT and SIGTERM have their default action (the process dies of them).
fn default_signal_actions() -> bool {
    [nix::libc::SIGINT, nix::libc::SIGTERM].iter().all(|&sig| {
        // SAFETY: with no new action, sigaction only reads the current one into `old`.
        let mut old: nix::libc::sigaction = unsafe { std::mem::zeroed() };
        let r = unsafe { nix::libc::sigaction(sig, std::ptr::null(), &mut old) };
        assert_eq!(r, 0);
        old.sa_sigaction == nix::libc::SIG_DFL
    })
}

/// `vm::run` to the ready line with and without `handle_signals`, and what the signal actions
/// are after each: run in a process of its own, whose handlers no other test touches.
#[test]
fn vm_run_leaves_no_signal_handlers() {
    let Some(g) = guest("aarch64") else { return };
    if let Some(dir) = std::env::var_os(SIGNAL_PROBE) {
        return probe_signal_actions(&g, PathBuf::from(dir));
    }
    let env = TestEnv::new();
    let mut probe = Command::new(std::env::current_exe().unwrap());
    probe
        .args([
            "--exact",
            "agent::vm_run_leaves_no_signal_handlers",
            "--nocapture",
        ])
        .env(SIGNAL_PROBE, env.runtime_dir());
    // The probe starts from the default actions whatever this process inherited: a shell runs
    // a background job (`cmd &`) with SIGINT ignored, and an ignored signal stays ignored
    // across exec.
    // SAFETY: between fork and exec only sigaction, which is async-signal-safe, is called.
    unsafe {
        probe.pre_exec(|| {
            for sig in [Signal::SIGINT, Signal::SIGTERM] {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl)?;
            }
            Ok(())
        });
    }
    let out = probe.output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "stdout:\n{o}\nstderr:\n{e}");
    assert!(
        o.contains("handle_signals false: default actions after the run: true"),
        "{o}"
    );
    assert!(
        o.contains("handle_signals true: default actions after the run: false"),
        "{o}"
    );
}

fn probe_signal_actions(g: &Guest, runtime_dir: PathBuf) {
    assert!(default_signal_actions(), "default before any run");
    let rt = runtime();
    let plan = rt
        .block_on(
            Vm::guest(&g.arch)
                .kernel(&g.kernel)
                .initrd(&g.initrd)
                .append(HOLD)
                .caps_cache(CapsCache::at(shared_cache()))
                .plan(),
        )
        .unwrap();
    for handle_signals in [false, true] {
        let opts = RunOptions {
            until: Some(READY.into()),
            timeout: Some(Duration::from_secs(240)),
            runtime_dir: Some(runtime_dir.clone()),
            handle_signals,
            ..RunOptions::default()
        };
        let report = rt
            .block_on(vm::run(&plan, &opts, &mut tokio::io::sink()))
            .unwrap();
        assert_eq!(report.outcome, Outcome::Reached);
        println!(
            "handle_signals {handle_signals}: default actions after the run: {}",
            default_signal_actions()
        );
    }
}

#[test]
fn the_harness_example_runs_guests_two_at_a_time() {
    if agent_guest("aarch64").is_none() || agent_guest("x86_64").is_none() {
        return;
    }
    let env = TestEnv::new();
    let (instances, logs) = (env.instances(), env.logs());
    let setup = Arc::new(move |b: GuestBuilder| {
        b.runtime_dir(instances.clone())
            .console_log_dir(Some(logs.clone()))
            .caps_cache(CapsCache::at(shared_cache()))
    });
    let s = runtime()
        .block_on(harness_example::run_checks(&guests_dir(), setup))
        .unwrap_or_else(|e| panic!("the example failed: {e}"));
    assert_eq!(s.results.len(), harness_example::checks().len());
    assert!(
        s.results.iter().all(|r| r.ends_with(": ok")),
        "{:?}",
        s.results
    );
    assert!(
        s.most_at_once <= 2,
        "the pool let {} run at once",
        s.most_at_once
    );
    assert_eq!(
        std::fs::read_dir(env.instances()).unwrap().count(),
        0,
        "nothing left"
    );
}
