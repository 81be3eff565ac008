//! Bad input through the real binary: exit code 2, one `error:` line naming the field and what
//! would be valid, no QEMU started, nothing left behind.
//!
//! "No QEMU started" is observed, not assumed: each case points --emulator (or PATH) at a
//! wrapper that records its start in a file before it would exec the real QEMU.

use std::path::Path;

use crate::common::{TestEnv, Tripwire, files_under, qd, text};

/// Runs `run` with the args plus a tripwire emulator; checks exit 2, the error line, and that
/// nothing started or was written.
pub(crate) fn refused(args: &[&str], expect: &str) -> String {
    let env = TestEnv::with_own_cache();
    let wire = env.tripwire(Tripwire::ProbesOnly);
    let state = env.state();
    let out = env
        .cmd(["run"])
        .args(args)
        .arg("--emulator")
        .arg(&wire)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}\nstderr: {stderr}"
    );
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{stderr}");
    assert!(
        first.contains(expect),
        "args {args:?}: want {expect:?} in {first:?}"
    );
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    assert!(!env.qemu_started(), "QEMU was started for {args:?}");
    assert!(
        files_under(&state).is_empty(),
        "files left behind: {:?}",
        files_under(&state)
    );
    stderr
}

/// No kernel, no disk, no firmware: refused before QEMU starts (it would spin on an empty
/// machine), by `run` and `plan`. A disk without a kernel boots through the profile's firmware,
/// and the plan says which and why.
#[test]
fn nothing_to_boot_is_refused_and_a_disk_boots_through_the_firmware() {
    let want = "nothing to boot: no kernel, no disk and no firmware given; give --kernel FILE";
    refused(&["--arch", "aarch64"], want);
    refused(&["--arch", "x86_64", "--memory", "1G"], want);
    let env = TestEnv::new();
    let out = env.qd(["plan", "--arch", "riscv64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains(want), "{}", text(&out).1);
    let disk = env.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk = disk.to_str().unwrap();
    let plan = |arch: &str| env.qd(["plan", "--arch", arch, "--disk", disk]);
    let out = plan("aarch64");
    let (o, e) = text(&out);
    match out.status.code() {
        Some(0) => {
            assert!(o.contains("firmware: uefi, as the disk has no kernel given and aarch64 virt has no firmware of its own to boot a disk"), "{o}");
            assert!(o.contains("if=pflash"), "{o}");
        }
        // No UEFI for aarch64 installed here: the error says which package brings it.
        _ => assert!(e.contains("qemu-efi-aarch64"), "{e}"),
    }
    let (o, e) = text(&plan("x86_64"));
    assert!(o.contains("firmware: the machine's built-in bios boots the disk, as no kernel or firmware is given (--firmware uefi for UEFI)"), "{o}{e}");
    assert!(!o.contains("if=pflash"), "{o}");
    let (o, e) = text(&plan("riscv64"));
    assert!(
        o.contains("firmware: QEMU's default for riscv64 virt"),
        "{o}{e}"
    );
}

#[test]
fn unknown_arch() {
    let e = refused(
        &["--arch", "sparc64"],
        "unknown architecture 'sparc64' in arch; valid: aarch64 (arm64)",
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn unknown_property_key() {
    refused(
        &["--arch", "x86_64", "--property", "hw_cpu_model=Nehalem"],
        "invalid property 'hw_cpu_model': unknown key; valid: hw_emulation_architecture, hw_architecture, hw_machine_type",
    );
    refused(
        &["--property", "hw_architecture"],
        "invalid --property 'hw_architecture': write KEY=VALUE",
    );
}

#[test]
fn malformed_memory_size() {
    refused(
        &["--arch", "x86_64", "--memory", "12XB"],
        "invalid memory '12XB': '12XB' is not a size",
    );
    refused(
        &["--arch", "x86_64", "--memory", "1P"],
        "invalid memory '1P'",
    );
    refused(
        &["--arch", "mipsel", "--memory", "3G"],
        "invalid memory '3G': mipsel guests take 16M to 2G",
    );
}

#[test]
fn missing_kernel_file() {
    refused(
        &["--arch", "x86_64", "--kernel", "/nonexistent/vmlinuz"],
        "kernel /nonexistent/vmlinuz: no such file",
    );
    refused(
        &["--arch", "x86_64", "--kernel", "/"],
        "kernel /: not a regular file",
    );
}

#[test]
fn kvm_forced_without_usable_kvm() {
    let e = refused(
        &[
            "--arch",
            "x86_64",
            "--accel",
            "kvm",
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        "--accel kvm: /nonexistent/kvm does not exist",
    );
    assert!(e.contains("hint: pass --accel tcg"), "{e}");
    refused(
        &["--arch", "aarch64", "--accel", "kvm"],
        "not native to this",
    );
    refused(
        &["--arch", "mipsel", "--accel", "kvm"],
        "no host runs mipsel guests under KVM",
    );
}

#[test]
fn native_only_arch_on_a_foreign_host() {
    // hw_architecture alone asks for a native host; this one is x86_64 (or else the check
    // below is about another foreign arch).
    let foreign = if cfg!(target_arch = "aarch64") {
        "x86_64"
    } else {
        "aarch64"
    };
    refused(
        &["--property", &format!("hw_architecture={foreign}")],
        &format!("hw_architecture={foreign} needs a host that runs {foreign} natively"),
    );
}

#[test]
fn bad_accel_and_flags_are_usage_errors() {
    let out = qd(["run", "--arch", "x86_64", "--accel", "fast"]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        e.contains("'fast' is not an accelerator; valid: auto, kvm, tcg"),
        "{e}"
    );
    let out = qd(["run", "--arch", "x86_64", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn emulator_not_installed() {
    let env = TestEnv::new();
    let out = env
        .cmd(["run", "--arch", "s390x"])
        .env("PATH", env.root())
        .env_remove("QEMU_DIRECT_QEMU_PREFIX")
        .output()
        .unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.starts_with("error: qemu-system-s390x (for s390x guests) is not installed; install the Debian package qemu-system-misc"),
        "{e}"
    );
    assert!(files_under(env.root()).is_empty());
}

#[test]
fn spec_file_errors_name_file_and_line() {
    let env = TestEnv::new();
    let spec = env.path("vm.toml");
    std::fs::write(&spec, "arch = \"aarch64\"\nmemroy = \"1G\"\n").unwrap();
    let e = refused(&["--spec", spec.to_str().unwrap()], "vm.toml");
    assert!(e.contains("memroy") && e.contains("line 2"), "{e}");
}

#[test]
fn host_facts_files_are_validated() {
    let env = TestEnv::new();
    let f = env.path("host.json");
    std::fs::write(&f, "{\"arch\": 1}").unwrap();
    let out = env.qd([
        "--host-facts",
        f.to_str().unwrap(),
        "plan",
        "--arch",
        "x86_64",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.starts_with("error: invalid --host-facts"));
}

#[test]
fn dry_run_prints_the_argv_and_starts_nothing() {
    // Planning learns the tripwire's QEMU version from a capability probe: cache it here.
    let env = TestEnv::with_own_cache();
    let wire = env.tripwire(Tripwire::ProbesOnly);
    let kernel = env.path("vm linuz,file=x");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let out = env
        .cmd(["run", "--arch", "x86_64", "--kernel"])
        .arg(&kernel)
        .arg("--emulator")
        .arg(&wire)
        .arg("--dry-run")
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        o.contains(&format!("-kernel '{}'", kernel.display())),
        "{o}"
    );
    assert!(o.contains("-append 'console=ttyS0 panic=-1'"), "{o}");
    assert!(!env.qemu_started());
}

#[test]
fn probe_and_plan_speak_json() {
    let env = TestEnv::new();
    let out = env.qd(["probe", "--json"]);
    assert!(out.status.success());
    let facts: qemu_direct::host::HostFacts = serde_json::from_slice(&out.stdout).unwrap();
    // The recorded facts drive a plan on this or any other machine.
    let f = env.path("host.json");
    let mut other = facts.clone();
    other.arch = Some(
        qemu_direct::profile::ProfileSet::embedded()
            .unwrap()
            .resolve("h", "aarch64")
            .unwrap()
            .arch(),
    );
    other.kvm = qemu_direct::host::KvmState::Usable;
    other.emulators.insert(
        "qemu-system-aarch64".into(),
        qemu_direct::host::Emulator {
            path: "/opt/qemu/bin/qemu-system-aarch64".into(),
            version: None,
            caps: Default::default(),
        },
    );
    std::fs::write(&f, serde_json::to_string(&other).unwrap()).unwrap();
    let out = env.qd([
        "--host-facts",
        f.to_str().unwrap(),
        "plan",
        "--arch",
        "arm64",
        "--kernel",
        &env.kernel(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["accel"], "kvm");
    assert_eq!(plan["binary"], "/opt/qemu/bin/qemu-system-aarch64");
    assert_eq!(plan["cpu"]["model"], "host");
}

#[test]
fn profile_dir_replaces_the_built_in_profiles() {
    let env = TestEnv::new();
    let profiles = env.path("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("machine-profiles/aarch64.toml");
    let profile: String = std::fs::read_to_string(src)
        .unwrap()
        .replace("cpu = \"max\"", "cpu = \"cortex-a57\"")
        .lines()
        .map(|l| match l.starts_with("cpu_options = ") {
            true => "cpu_options = []\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(profiles.join("aarch64.toml"), profile).unwrap();
    let out = env.qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "profiles".as_ref(),
    ]);
    let (o, _) = text(&out);
    assert_eq!(o.lines().count(), 1, "only the directory's profiles: {o}");
    let out = env.qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "run".as_ref(),
        "--arch".as_ref(),
        "aarch64".as_ref(),
        "--kernel".as_ref(),
        env.kernel().as_ref(),
        "--dry-run".as_ref(),
    ]);
    assert!(
        text(&out).0.contains("-cpu cortex-a57 -m"),
        "{}",
        text(&out).0
    );
    // An arch the directory lacks is unknown now.
    let out = env.qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "plan".as_ref(),
        "--arch".as_ref(),
        "x86_64".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A typo in a profile is an error naming the file, the key and the line.
    std::fs::write(
        profiles.join("bad.toml"),
        "name = \"bad\"\nbinnary = \"x\"\n",
    )
    .unwrap();
    let out = env.qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "profiles".as_ref(),
    ]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        e.contains("bad.toml") && e.contains("binnary") && e.contains("line 2"),
        "{e}"
    );
}

/// `exec`, `cp` and `wait --agent` refuse what cannot work before looking for a guest: one
/// error line, exit 2, nothing written. (Those that need a running guest are in `agent`.)
#[test]
fn exec_cp_and_wait_agent_refuse_bad_input() {
    let env = TestEnv::new();
    let dir = env.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["exec", "nosuch", "--", "true"],
            "no running instance named 'nosuch'",
        ),
        (
            &["exec", "vm", "--env", "X", "--", "true"],
            "invalid --env 'X': expected NAME=VALUE",
        ),
        (
            &["cp", "a:/x", "b:/y"],
            "both 'a:/x' and 'b:/y' name a guest",
        ),
        (
            &["cp", "/etc/hostname", "./y"],
            "neither '/etc/hostname' nor './y' names a guest",
        ),
        (
            &["cp", "/etc/hostname", "vm:etc/x"],
            "the guest path in 'vm:etc/x' is not absolute",
        ),
        (
            &["cp", dir, "vm:/tmp/"],
            "is a directory: cp copies one file",
        ),
        (
            &["cp", "nosuch:/etc/hostname", dir],
            "no running instance named 'nosuch'",
        ),
        (
            &["wait", "nosuch", "--agent"],
            "no running instance named 'nosuch'",
        ),
        (
            &["wait", "vm", "--agent", "--for", "x"],
            "cannot be used with",
        ),
    ];
    for (args, expect) in cases {
        let out = env.qd(*args);
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        assert!(o.is_empty(), "{args:?}: {o}");
        let first = e.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(expect),
            "{args:?}: {e}"
        );
        assert_eq!(e.matches("error: ").count(), 1, "{args:?}: {e}");
    }
    assert!(files_under(&env.state()).is_empty());
}
