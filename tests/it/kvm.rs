//! The KVM path on this host's real /dev/kvm, whatever it is: usable KVM, PVM (opens and
//! creates VMs, but stock guests crash), or none. Each test asserts the behaviour that fits the
//! probed state, so the suite passes, and means something, on all of them.

use std::path::Path;

use qemu_direct::host::KvmState;

use crate::common::{BOOT_TIMEOUT, TestEnv, guest, guest_proto, text};

fn state() -> KvmState {
    KvmState::probe(Path::new("/dev/kvm"))
}

#[test]
fn forced_kvm_reaches_the_firmware_or_is_refused_with_the_reason() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: the firmware smoke test is written for x86_64 hosts (SeaBIOS)");
        return;
    }
    let env = TestEnv::new();
    let out = env.qd([
        "run",
        "--arch",
        "x86_64",
        "--accel",
        "kvm",
        "--memory",
        "128M",
        // SeaBIOS with nothing to boot: a boot source, so not refused as an empty guest.
        "--firmware",
        "bios",
        "--until",
        "No bootable device",
        "--timeout",
        "60s",
    ]);
    let (o, e) = text(&out);
    match state() {
        KvmState::Pvm if pvm_aborted_qemu(&out, &e) => {}
        KvmState::Usable | KvmState::Pvm => {
            assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
            // SeaBIOS itself reports the accelerator it runs under.
            assert!(o.contains("Running on KVM"), "{o}");
            assert!(o.contains("No bootable device"), "{o}");
            assert!(e.contains("guest stopped"), "{e}");
        }
        other => {
            assert_eq!(out.status.code(), Some(2), "{other:?}: {e}");
            assert!(e.starts_with("error: --accel kvm: /dev/kvm"), "{e}");
        }
    }
}

#[test]
fn a_guest_that_kvm_cannot_run_is_caught_not_left_hanging() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: written for x86_64 hosts");
        return;
    }
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = env
        .run(
            &g,
            [
                "--accel",
                "kvm",
                // PVM takes about a minute to crash the guest on an idle machine, several on a
                // busy one; the timeout only bounds a launcher that failed to notice.
                "--timeout",
                "400s",
            ],
        )
        .output()
        .unwrap();
    let (o, e) = text(&out);
    match state() {
        // PVM: the stock kernel dies with a KVM internal error; QEMU would idle in run state
        // internal-error, and the launcher must end it with its own exit code, not a timeout.
        KvmState::Pvm if pvm_aborted_qemu(&out, &e) => {}
        KvmState::Pvm => {
            assert_eq!(out.status.code(), Some(6), "stderr:\n{e}\nconsole:\n{o}");
            assert!(e.contains("guest crashed: KVM internal error"), "{e}");
        }
        KvmState::Usable => {
            assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
            assert!(o.contains(&guest_proto::ready("x86_64")));
        }
        _ => assert_eq!(out.status.code(), Some(2), "{e}"),
    }
}

#[test]
fn without_a_kvm_device_auto_emulates_and_says_why() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = env
        .run(
            &g,
            [
                "--kvm-device",
                "/nonexistent/kvm",
                "--timeout",
                BOOT_TIMEOUT,
            ],
        )
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(
        e.contains("TCG: KVM not used because /nonexistent/kvm does not exist"),
        "{e}"
    );
    assert!(o.contains(&guest_proto::ready("x86_64")));
}

#[test]
fn a_user_outside_the_kvm_group_is_told_why_and_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let dev = Path::new("/dev/kvm");
    let Ok(meta) = std::fs::metadata(dev) else {
        eprintln!("SKIPPED: no /dev/kvm on this host");
        return;
    };
    if !nix::unistd::geteuid().is_root() || meta.permissions().mode() & 0o006 == 0o006 {
        // Not root: whatever this user gets is covered by the tests above.
        eprintln!(
            "SKIPPED: needs root to drop to an unprivileged user, and a /dev/kvm closed to others"
        );
        return;
    }
    // A copy of the binary where the unprivileged user can reach it.
    let env = TestEnv::new();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = env.path("qemu-direct");
    std::fs::copy(env!("CARGO_BIN_EXE_qemu-direct"), &exe).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["run", "--arch", "x86_64", "--accel", "kvm", "--dry-run"])
        .env("HOME", env.root())
        .output()
        .expect("setpriv (util-linux)");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert_eq!(
        e,
        "error: --accel kvm: /dev/kvm cannot be opened read-write: Permission denied\n\
         hint: add your user to the group that owns /dev/kvm (usually 'kvm'), or pass --accel tcg\n"
    );
}

/// Some PVM hosts refuse the MSRs that `-cpu host` sets (seen: `failed to set MSR 0x10a`, then
/// QEMU aborts in `kvm_buf_set_msrs`) before the guest runs at all. That is QEMU failing to
/// start, and the launcher must say so promptly: exit 3 with QEMU's own error line.
fn pvm_aborted_qemu(out: &std::process::Output, stderr: &str) -> bool {
    let aborted = stderr.contains("failed to set MSR") && stderr.contains("kvm_buf_set_msrs");
    if aborted {
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("error: QEMU exited while starting (killed by SIGABRT)"),
            "{stderr}"
        );
        eprintln!(
            "this PVM host refuses -cpu host's MSRs; QEMU aborted at start, reported as such"
        );
    }
    aborted
}
