//! Real guests, real QEMU. Each boot goes through the `qemu-direct` binary exactly as a user
//! runs it; under TCG on hosts where KVM is not usable (such as PVM hosts).

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, process::Output};

use qemu_direct::profile::ProfileSet;

use crate::common::{
    BOOT_TIMEOUT, Guest, TestEnv, files_under, guest, guest_files,
    guest_proto::{self, HOLD, PANIC},
    probe_host, text,
};

/// Boots a guest with extra args; returns the output. Logs go into the env's state.
fn boot(env: &TestEnv, g: &Guest, extra: &[&OsStr]) -> Output {
    env.run(g, ["--timeout", BOOT_TIMEOUT])
        .args(extra)
        .output()
        .expect("run qemu-direct")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The accelerator line the launcher must print, from the library's own verdict for this host.
fn expected_accel_line(arch: &str) -> String {
    let set = ProfileSet::embedded().unwrap();
    let host = probe_host(&set);
    match host.kvm_verdict(set.resolve("arch", arch).unwrap()) {
        Ok(()) => "KVM: /dev/kvm is usable".to_owned(),
        Err(why) => format!("TCG: KVM not used because {why}"),
    }
}

fn assert_booted(arch: &str, out: &Output, env: &TestEnv) {
    let (o, e) = text(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{arch}: stderr:\n{e}\nconsole:\n{o}"
    );
    assert!(
        o.contains(&guest_proto::ready(arch)),
        "{arch} console:\n{o}"
    );
    assert!(
        e.contains(&expected_accel_line(arch)),
        "{arch}: accel line missing:\n{e}"
    );
    assert!(e.contains("qemu-direct: guest powered off"), "{e}");
    // The console also went to the log file, whole.
    let log = env.log(arch);
    let logged = std::fs::read(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert_eq!(logged, out.stdout, "log and stdout differ");
}

#[test]
fn x86_64_guest_boots_and_powers_off() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = boot(&env, &g, &[os("--memory"), os("512M")]);
    assert_booted("x86_64", &out, &env);
}

#[test]
fn aarch64_guest_boots_on_any_host() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let out = boot(
        &env,
        &g,
        &[
            os("--memory"),
            os("512M"),
            os("--smp"),
            os("2"),
            os("--append"),
            os("console=ttyAMA0"),
        ],
    );
    assert_booted("aarch64", &out, &env);
    let (o, _) = text(&out);
    assert!(
        o.contains(&format!("{} aarch64", guest_proto::tag("uname"))),
        "{o}"
    );
}

#[test]
fn nova_properties_pick_an_emulated_aarch64_guest() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let out = env
        .guest_cmd(
            &g,
            [
                "run",
                "--property",
                "hw_emulation_architecture=aarch64",
                "--property",
                "hw_architecture=x86_64",
                "--timeout",
                BOOT_TIMEOUT,
            ],
        )
        .output()
        .unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_booted("aarch64", &out, &env);
    } else {
        // hw_architecture=x86_64 names the host; elsewhere this is refused.
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out).1.contains("asks for a host of arch x86_64"));
    }
}

#[test]
fn kernel_panic_is_reported_with_its_own_exit_code() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = boot(&env, &g, &[os("--append"), os(PANIC)]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(4), "stderr:\n{e}\nconsole:\n{o}");
    assert!(
        e.contains("guest kernel panicked: ") && e.contains("Kernel panic - not syncing"),
        "{e}"
    );
}

/// A reboot under `-no-reboot` ends QEMU with exit status 0 and the shutdown reason
/// `guest-reset`; nobody asked for it, so it is a failure of its own, not a power-off. (Nested
/// KVM showed the same for an L2 triple fault.) The guest's init is busybox's `reboot -f`.
#[test]
fn a_guest_that_resets_itself_is_a_failure_not_a_power_off() {
    for arch in ["x86_64", "aarch64"] {
        let Some(g) = guest(arch) else { return };
        let env = TestEnv::new();
        let out = boot(
            &env,
            &g,
            &[os("--append"), os("rdinit=/bin/busybox -- reboot -f")],
        );
        let (o, e) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{arch}: stderr:\n{e}\nconsole:\n{o}"
        );
        assert!(e.contains("guest reset itself (guest-reset"), "{arch}: {e}");
        assert!(!e.contains("guest powered off"), "{arch}: {e}");
    }
}

#[test]
fn timeout_stops_a_guest_that_never_finishes() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = env
        .run(&g, ["--timeout", "20s", "--append", HOLD])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(5), "stderr:\n{e}\nconsole:\n{o}");
    assert!(e.contains("timed out after 20s; guest stopped"), "{e}");
    assert!(e.contains("console log: "), "{e}");
}

#[test]
fn until_stops_the_guest_once_the_console_says_so() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let log = env.path("console.txt");
    let second = guest_proto::heartbeat(2);
    let out = boot(
        &env,
        &g,
        &[
            os("--append"),
            os(HOLD),
            os("--until"),
            os(&second),
            os("--console-log"),
            log.as_os_str(),
        ],
    );
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(e.contains("console reached the expected text"), "{e}");
    // QEMU's acknowledgement of our own SIGTERM is not shown as if something failed.
    assert!(!e.contains("terminating on signal"), "{e}");
    assert!(String::from_utf8_lossy(&std::fs::read(&log).unwrap()).contains(&second));
    // Only the named log was written.
    assert_eq!(files_under(env.root()), [log]);
}

#[test]
fn paths_with_commas_and_spaces_reach_qemu_literally() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let odd = env.path("a,file=b c");
    std::fs::create_dir(&odd).unwrap();
    // A non-UTF-8 byte, too: paths stay bytes end to end.
    let kernel = odd.join(OsStr::from_bytes(b"vmlinuz,file=\xff"));
    let initrd = odd.join("initrd,format=raw");
    std::fs::copy(&g.kernel, &kernel).unwrap();
    std::fs::copy(&g.initrd, &initrd).unwrap();
    let odd_guest = Guest {
        kernel,
        initrd,
        ..g
    };
    let out = boot(&env, &odd_guest, &[]);
    assert_booted("x86_64", &out, &env);
}

#[test]
fn ppc64le_guest_boots() {
    let Some(g) = guest("ppc64le") else { return };
    let env = TestEnv::new();
    assert_booted("ppc64le", &boot(&env, &g, &[]), &env);
}

#[test]
fn s390x_guest_boots() {
    let Some(g) = guest("s390x") else { return };
    let env = TestEnv::new();
    assert_booted("s390x", &boot(&env, &g, &[]), &env);
}

#[test]
fn mipsel_guest_boots() {
    let Some(g) = guest("mipsel") else { return };
    let env = TestEnv::new();
    assert_booted("mipsel", &boot(&env, &g, &[]), &env);
}

#[test]
fn riscv64_firmware_boots_from_a_directory_disk() {
    // No bookworm riscv64 kernel: OpenSBI (-bios) starts U-Boot (-kernel), which runs the boot
    // script it finds on the read-only FAT view of a directory.
    let Some(dir_g) = guest_files(
        "riscv64",
        &["fw_jump.bin", "u-boot.bin", "boot/boot.scr.uimg"],
    ) else {
        return;
    };
    let env = TestEnv::new();
    let out = env
        .cmd([
            "run",
            "--arch",
            "riscv64",
            "--timeout",
            BOOT_TIMEOUT,
            "--firmware",
        ])
        .arg(dir_g.join("fw_jump.bin"))
        .arg("--kernel")
        .arg(dir_g.join("u-boot.bin"))
        .arg("--disk")
        .arg(dir_g.join("boot"))
        .output()
        .unwrap();
    assert_booted("riscv64", &out, &env);
}

/// `--nested-virt` (aarch64 under TCG): the guest's CPU starts at EL2 and its kernel's KVM
/// comes up (the machine property `virtualization=on` is in the argv); without it, the same
/// kernel finds no hypervisor mode.
#[test]
fn nested_virt_gives_an_aarch64_guest_kvm() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let console = |extra: &[&str]| {
        let mut args = vec!["--accel", "tcg", "--timeout", BOOT_TIMEOUT, "--verbose"];
        args.extend(extra);
        let out = env.run(&g, args).output().expect("run qemu-direct");
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{extra:?}\n{e}\n{o}");
        assert!(o.contains(&guest_proto::ready("aarch64")), "{o}");
        (o, e)
    };
    let (o, e) = console(&["--nested-virt"]);
    assert!(e.contains("virtualization=on"), "{e}");
    assert!(
        o.lines()
            .any(|l| l.contains("kvm [") && l.contains("mode initialized successfully")),
        "no KVM in the guest:\n{o}"
    );
    let (o, e) = console(&[]);
    assert!(!e.contains("virtualization=on"), "{e}");
    assert!(o.contains("HYP mode not available"), "{o}");
}
