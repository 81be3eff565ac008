//! Bad input through the real binary: exit code 2, one `error:` line naming the field and what
//! would be valid, no QEMU started, nothing left behind.
//!
//! "No QEMU started" is observed, not assumed: each case points --emulator (or PATH) at a
//! wrapper that records its start in a file before it would exec the real QEMU.

use std::{os::unix::fs::PermissionsExt, path::Path};

use crate::common::{files_under, qd, scratch, text};

/// Writes an emulator wrapper that leaves `started` behind when run for a guest. A capability
/// probe (`-machine none`, which planning may run to learn the QEMU version) runs no guest.
pub(crate) fn tripwire(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("qemu-tripwire");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -machine none \"*) ;; *) touch '{}' ;; esac\n\
             exec qemu-system-x86_64 \"$@\"\n",
            dir.join("started").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Runs `run` with the args plus a tripwire emulator; checks exit 2, the error line, and that
/// nothing started or was written.
pub(crate) fn refused(args: &[&str], expect: &str) -> String {
    let dir = scratch();
    let wire = tripwire(dir.path());
    let state = dir.path().join("state");
    let out = crate::common::bin()
        .env("XDG_STATE_HOME", &state)
        .arg("run")
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
    assert!(
        !dir.path().join("started").exists(),
        "QEMU was started for {args:?}"
    );
    assert!(
        files_under(&state).is_empty(),
        "files left behind: {:?}",
        files_under(&state)
    );
    stderr
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
    let dir = scratch();
    let out = crate::common::bin()
        .env("PATH", dir.path())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .args(["run", "--arch", "s390x"])
        .output()
        .unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.starts_with("error: qemu-system-s390x (for s390x guests) is not installed; install the Debian package qemu-system-misc"),
        "{e}"
    );
    assert!(files_under(dir.path()).is_empty());
}

#[test]
fn spec_file_errors_name_file_and_line() {
    let dir = scratch();
    let spec = dir.path().join("vm.toml");
    std::fs::write(&spec, "arch = \"aarch64\"\nmemroy = \"1G\"\n").unwrap();
    let e = refused(&["--spec", spec.to_str().unwrap()], "vm.toml");
    assert!(e.contains("memroy") && e.contains("line 2"), "{e}");
}

#[test]
fn host_facts_files_are_validated() {
    let dir = scratch();
    let f = dir.path().join("host.json");
    std::fs::write(&f, "{\"arch\": 1}").unwrap();
    let out = qd([
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
    let dir = scratch();
    let wire = tripwire(dir.path());
    let kernel = dir.path().join("vm linuz,file=x");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    // Planning learns the tripwire's QEMU version from a capability probe: cache it here.
    let out = crate::common::bin()
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .args([
            "run".as_ref(),
            "--arch".as_ref(),
            "x86_64".as_ref(),
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--emulator".as_ref(),
            wire.as_os_str(),
            "--dry-run".as_ref(),
        ] as [&std::ffi::OsStr; 8])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        o.contains(&format!("-kernel '{}'", kernel.display())),
        "{o}"
    );
    assert!(o.contains("-append 'console=ttyS0 panic=-1'"), "{o}");
    assert!(!dir.path().join("started").exists());
}

#[test]
fn probe_and_plan_speak_json() {
    let out = qd(["probe", "--json"]);
    assert!(out.status.success());
    let facts: qemu_direct::host::HostFacts = serde_json::from_slice(&out.stdout).unwrap();
    // The recorded facts drive a plan on this or any other machine.
    let dir = scratch();
    let f = dir.path().join("host.json");
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
    let out = qd([
        "--host-facts",
        f.to_str().unwrap(),
        "plan",
        "--arch",
        "arm64",
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
    let dir = scratch();
    let profiles = dir.path().join("profiles");
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
    let out = qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "profiles".as_ref(),
    ]);
    let (o, _) = text(&out);
    assert_eq!(o.lines().count(), 1, "only the directory's profiles: {o}");
    let out = qd([
        "--profile-dir".as_ref(),
        profiles.as_os_str(),
        "run".as_ref(),
        "--arch".as_ref(),
        "aarch64".as_ref(),
        "--dry-run".as_ref(),
    ]);
    assert!(
        text(&out).0.contains("-cpu cortex-a57 -m"),
        "{}",
        text(&out).0
    );
    // An arch the directory lacks is unknown now.
    let out = qd([
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
    let out = qd([
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
