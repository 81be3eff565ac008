//! Real guests, real QEMU. Each boot goes through the `qemu-direct` binary exactly as a user
//! runs it; under TCG on hosts where KVM is not usable (such as PVM hosts).

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path, process::Output};

use qemu_direct::{
    host::{HostFacts, ProbeOptions},
    profile::ProfileSet,
};

use crate::common::{Guest, bin, files_under, guest, guest_cmd, guest_files, scratch, text};

/// Boots a guest with extra args; returns the output. Logs go into `state`.
fn boot(g: &Guest, arch: &str, state: &Path, extra: &[&OsStr]) -> Output {
    guest_cmd(g, state, ["run", "--arch", arch, "--timeout", "240s"])
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
    let host = HostFacts::probe(&set, &ProbeOptions::default());
    match host.kvm_verdict(set.resolve("arch", arch).unwrap()) {
        Ok(()) => "KVM: /dev/kvm is usable".to_owned(),
        Err(why) => format!("TCG: KVM not used because {why}"),
    }
}

fn assert_booted(arch: &str, out: &Output, state: &Path) {
    let (o, e) = text(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{arch}: stderr:\n{e}\nconsole:\n{o}"
    );
    assert!(
        o.contains(&format!("GUEST-READY {arch}")),
        "{arch} console:\n{o}"
    );
    assert!(
        e.contains(&expected_accel_line(arch)),
        "{arch}: accel line missing:\n{e}"
    );
    assert!(e.contains("qemu-direct: guest powered off"), "{e}");
    // The console also went to the log file, whole.
    let log = state.join(format!("qemu-direct/logs/{arch}.log"));
    let logged = std::fs::read(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert_eq!(logged, out.stdout, "log and stdout differ");
}

#[test]
fn x86_64_guest_boots_and_powers_off() {
    let Some(g) = guest("x86_64") else { return };
    let dir = scratch();
    let out = boot(&g, "x86_64", dir.path(), &[os("--memory"), os("512M")]);
    assert_booted("x86_64", &out, dir.path());
}

#[test]
fn aarch64_guest_boots_on_any_host() {
    let Some(g) = guest("aarch64") else { return };
    let dir = scratch();
    let out = boot(
        &g,
        "aarch64",
        dir.path(),
        &[
            os("--memory"),
            os("512M"),
            os("--smp"),
            os("2"),
            os("--append"),
            os("console=ttyAMA0"),
        ],
    );
    assert_booted("aarch64", &out, dir.path());
    let (o, _) = text(&out);
    assert!(o.contains("qd-uname: aarch64"), "{o}");
}

#[test]
fn nova_properties_pick_an_emulated_aarch64_guest() {
    let Some(g) = guest("aarch64") else { return };
    let dir = scratch();
    let out = guest_cmd(
        &g,
        dir.path(),
        [
            "run",
            "--property",
            "hw_emulation_architecture=aarch64",
            "--property",
            "hw_architecture=x86_64",
            "--timeout",
            "240s",
        ],
    )
    .output()
    .unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_booted("aarch64", &out, dir.path());
    } else {
        // hw_architecture=x86_64 names the host; elsewhere this is refused.
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out).1.contains("asks for a host of arch x86_64"));
    }
}

#[test]
fn kernel_panic_is_reported_with_its_own_exit_code() {
    let Some(g) = guest("x86_64") else { return };
    let dir = scratch();
    let out = boot(
        &g,
        "x86_64",
        dir.path(),
        &[os("--append"), os("qd.panic=1")],
    );
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(4), "stderr:\n{e}\nconsole:\n{o}");
    assert!(
        e.contains("guest kernel panicked: ") && e.contains("Kernel panic - not syncing"),
        "{e}"
    );
}

#[test]
fn timeout_stops_a_guest_that_never_finishes() {
    let Some(g) = guest("x86_64") else { return };
    let dir = scratch();
    let out = guest_cmd(
        &g,
        dir.path(),
        [
            "run",
            "--arch",
            "x86_64",
            "--timeout",
            "20s",
            "--append",
            "qd.hold=1",
        ],
    )
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
    let dir = scratch();
    let log = dir.path().join("console.txt");
    let out = boot(
        &g,
        "aarch64",
        dir.path(),
        &[
            os("--append"),
            os("qd.hold=1"),
            os("--until"),
            os("qd-heartbeat 2"),
            os("--console-log"),
            log.as_os_str(),
        ],
    );
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(e.contains("console reached the expected text"), "{e}");
    // QEMU's acknowledgement of our own SIGTERM is not shown as if something failed.
    assert!(!e.contains("terminating on signal"), "{e}");
    assert!(String::from_utf8_lossy(&std::fs::read(&log).unwrap()).contains("qd-heartbeat 2"));
    // Only the named log was written.
    assert_eq!(files_under(dir.path()), [log]);
}

#[test]
fn paths_with_commas_and_spaces_reach_qemu_literally() {
    let Some(g) = guest("x86_64") else { return };
    let dir = scratch();
    let odd = dir.path().join("a,file=b c");
    std::fs::create_dir(&odd).unwrap();
    // A non-UTF-8 byte, too: paths stay bytes end to end.
    let kernel = odd.join(OsStr::from_bytes(b"vmlinuz,file=\xff"));
    let initrd = odd.join("initrd,format=raw");
    std::fs::copy(&g.kernel, &kernel).unwrap();
    std::fs::copy(&g.initrd, &initrd).unwrap();
    let out = boot(&Guest { kernel, initrd }, "x86_64", dir.path(), &[]);
    assert_booted("x86_64", &out, dir.path());
}

#[test]
fn ppc64le_guest_boots() {
    let Some(g) = guest("ppc64le") else { return };
    let dir = scratch();
    assert_booted("ppc64le", &boot(&g, "ppc64le", dir.path(), &[]), dir.path());
}

#[test]
fn s390x_guest_boots() {
    let Some(g) = guest("s390x") else { return };
    let dir = scratch();
    assert_booted("s390x", &boot(&g, "s390x", dir.path(), &[]), dir.path());
}

#[test]
fn mipsel_guest_boots() {
    let Some(g) = guest("mipsel") else { return };
    let dir = scratch();
    assert_booted("mipsel", &boot(&g, "mipsel", dir.path(), &[]), dir.path());
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
    let dir = scratch();
    let out = bin()
        .env("XDG_STATE_HOME", dir.path())
        .args([
            "run",
            "--arch",
            "riscv64",
            "--timeout",
            "240s",
            "--firmware",
        ])
        .arg(dir_g.join("fw_jump.bin"))
        .arg("--kernel")
        .arg(dir_g.join("u-boot.bin"))
        .arg("--disk")
        .arg(dir_g.join("boot"))
        .output()
        .unwrap();
    assert_booted("riscv64", &out, dir.path());
}
