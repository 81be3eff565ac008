//! Snapshots, restores, clones and local migration with real QEMU and the test guests. A held
//! guest (`qd.hold=1`) prints `qd-heartbeat N` every second: a restored or migrated guest goes
//! on counting from where it was, a booted one would start at 1.
//!
//! - a restored guest goes on counting (aarch64, x86_64), and may be snapshotted again;
//!   `run --restore DIR -- CMD` runs a command in a throw-away clone;
//! - 8 clones of one aarch64 snapshot run at once, each mapping the snapshot's memory file;
//! - disks: the guest's writes so far are in the snapshot, the clones' writes in their own
//!   overlays, the base image and the frozen disk byte-identical afterwards; the restore
//!   refusals on that snapshot (another QEMU build, a damaged state file, a changed or missing
//!   base image, contradicting flags, a bad manifest), each leaving nothing behind;
//! - the snapshot refusals (no such instance, a folder not empty, a full file system), the
//!   guest resumed each time;
//! - `migrate` keeps the heartbeat going without a restart;
//! - the library's harness example (examples/snapshot_clones.rs).
//!
//! The refusals that need no snapshot (a folder that is none, spec flags with `--restore`) are
//! in the bad-input corpus (`tests/corpus/bad-input/`).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{
    BOOT_TIMEOUT, Detached, Guest, TestEnv, emulator, guest, guest_proto, guests_dir, qemu_version,
    sha256, text, wait_until,
};

#[path = "../../examples/snapshot_clones.rs"]
mod example;

/// How long a restored guest may take to print heartbeats: generous, for 8 guests under TCG
/// on two busy cores.
const ANSWER: Duration = Duration::from_secs(120);

/// A held guest `name` of `g` with `args`, detached, once it printed heartbeat `n`.
fn held<'e>(env: &'e TestEnv, g: &Guest, name: &str, args: &[&OsStr], n: u32) -> Detached<'e> {
    let mut c = env.run(g, ["--name", name, "--timeout", BOOT_TIMEOUT]);
    c.args(args);
    if !args.contains(&OsStr::new("--append")) {
        c.args(["--append", guest_proto::HOLD]);
    }
    let d = env.launch_detached(c);
    d.wait_for(&guest_proto::heartbeat(n), BOOT_TIMEOUT);
    d
}

/// `snapshot NAME --to DIR`, which must succeed and print DIR.
fn snapshot(env: &TestEnv, name: &str, dir: &Path) {
    let out = env.qd([
        OsStr::new("snapshot"),
        name.as_ref(),
        "--to".as_ref(),
        dir.as_os_str(),
    ]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "snapshot {name}: {e}");
    assert_eq!(o.trim_end(), dir.to_str().unwrap(), "{e}");
    assert!(e.contains("guest resumed"), "{e}");
}

/// `run --restore DIR --name NAME ARGS`.
fn restore_cmd(env: &TestEnv, dir: &Path, name: &str, args: &[&str]) -> Command {
    let mut c = env.cmd([OsStr::new("run"), "--restore".as_ref(), dir.as_os_str()]);
    c.args(["--name", name]).args(args);
    c
}

/// A detached restore of `dir` named `name`.
fn restore<'e>(env: &'e TestEnv, dir: &Path, name: &str) -> Detached<'e> {
    env.launch_detached(restore_cmd(env, dir, name, &[]))
}

/// The heartbeats `name` printed, once it printed at least `count`.
fn heartbeats(env: &TestEnv, name: &str, count: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    wait_until(&format!("{count} heartbeats from {name}"), ANSWER, || {
        seen = guest_proto::heartbeats(&env.console(name));
        seen.len() >= count
    });
    seen
}

/// Asserts that `seen` counts on by one from a number above 1 and at most `at_most`.
fn goes_on_counting(seen: &[u32], at_most: u32, what: &str) {
    assert!(
        seen[0] > 1 && seen[0] <= at_most,
        "{what}: first heartbeat {} (want 2..={at_most}): {seen:?}",
        seen[0]
    );
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: not counting on by one: {seen:?}"
    );
}

/// The last heartbeat on `name`'s console now.
fn last_heartbeat(env: &TestEnv, name: &str) -> u32 {
    *guest_proto::heartbeats(&env.console(name))
        .last()
        .expect("a heartbeat")
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Boot, snapshot, restore: the restored guest goes on counting from the snapshot's
/// heartbeat, and never boots (no `GUEST-READY`).
fn restore_goes_on_counting(arch: &str) -> Option<(TestEnv, PathBuf)> {
    let g = guest(arch)?;
    let env = TestEnv::new();
    let src = held(&env, &g, "src", &[], 2);
    let snap = env.path("snap");
    snapshot(&env, "src", &snap);
    let at_most = last_heartbeat(&env, "src") + 1;
    src.stop();
    let m = manifest(&snap);
    assert_eq!(m["format"], 1);
    assert_eq!(m["source"], "src");
    assert_eq!(m["arch"], arch);
    assert_eq!(m["memory"], "512M");
    for f in m["files"].as_array().unwrap() {
        assert!(snap.join(f["name"].as_str().unwrap()).is_file(), "{f}");
    }
    // The method the version gates choose for the QEMU under test: the file: URI from 8.2.
    let binary = format!("qemu-system-{arch}");
    let want = qemu_direct::snapshot::method::choose(
        Some(qemu_version(&binary)),
        m["method"]["capabilities"].as_array().map(|_| "ram"),
    );
    assert_eq!(
        serde_json::to_value(want.transport).unwrap(),
        m["method"]["transport"],
        "{m}"
    );
    assert_eq!(m["method"]["memory"], "file", "{m}");
    assert_eq!(
        m["qemu"]["path"],
        emulator(&binary).to_str().unwrap(),
        "{m}"
    );
    let clone = restore(&env, &snap, "clone");
    let seen = heartbeats(&env, "clone", 2);
    goes_on_counting(&seen, at_most, arch);
    let console = env.console("clone");
    assert!(!console.contains(guest_proto::READY), "{console}");
    assert_eq!(clone.entry()["state"], "running");
    assert_eq!(env.qmp_ok("clone", &["status"]), "running");
    drop(clone);
    Some((env, snap))
}

#[test]
fn a_restored_aarch64_guest_goes_on_counting_and_can_be_snapshotted_again() {
    let Some((env, snap)) = restore_goes_on_counting("aarch64") else {
        return;
    };
    // One command in a throw-away clone, through its guest agent.
    let out = restore_cmd(&env, &snap, "once", &["--", "uname", "-m"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert_eq!(o.trim(), "aarch64", "{e}");
    // A restored guest is an instance like any other: it may be snapshotted again.
    let clone = restore(&env, &snap, "again");
    let first = heartbeats(&env, "again", 2)[0];
    let snap2 = env.path("snap2");
    snapshot(&env, "again", &snap2);
    let at_most = last_heartbeat(&env, "again") + 1;
    clone.stop();
    let _second = restore(&env, &snap2, "second");
    let seen = heartbeats(&env, "second", 2);
    goes_on_counting(&seen, at_most, "a snapshot of a restored guest");
    assert!(seen[0] > first, "{seen:?} after {first}");
}

#[test]
fn a_restored_x86_64_guest_goes_on_counting() {
    restore_goes_on_counting("x86_64");
}

/// The QEMU of a detached instance.
fn qemu_pid(d: &Detached<'_>) -> u32 {
    d.entry()["pid"].as_u64().expect("a pid") as u32
}

#[test]
fn eight_clones_of_one_aarch64_snapshot_run_at_once() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let src = held(&env, &g, "template", &[], 2);
    let snap = env.path("snap");
    snapshot(&env, "template", &snap);
    src.stop();
    let names: Vec<String> = (1..=8).map(|i| format!("clone{i}")).collect();
    let clones: Vec<Detached<'_>> = std::thread::scope(|s| {
        let started: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| restore(&env, &snap, n)))
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(env.ps().len(), 8, "{:?}", env.ps());
    let memory = snap.join("memory");
    for (c, name) in clones.iter().zip(&names) {
        let seen = heartbeats(&env, name, 2);
        assert!(seen[0] > 2, "{name}: {seen:?}");
        // Each maps the snapshot's memory file (private, copy-on-write) instead of a copy.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", qemu_pid(c))).unwrap();
        assert!(
            maps.contains(memory.to_str().unwrap()),
            "{name} does not map {}",
            memory.display()
        );
    }
    assert_eq!(manifest(&snap)["method"]["memory"], "file");
}

/// A raw image with a recognisable first block.
fn raw_image(path: &Path) {
    let mut data = vec![0u8; 4 << 20];
    data[..16].copy_from_slice(b"BASE IMAGE BLOCK");
    std::fs::write(path, data).unwrap();
}

/// `qemu-io` on a restored guest's disk through its own QMP (HMP's `qemu-io`): the guest's
/// block graph writes and reads as the guest would. qemu-io reports on QEMU's stdout, the
/// console: waits there for the `n`th line starting `want`.
fn qemu_io(env: &TestEnv, name: &str, cmd: &str, want: &str, n: usize) {
    let args = serde_json::json!({ "command-line": format!("qemu-io disk0 \"{cmd}\"") });
    env.qmp_ok(
        name,
        &["execute", "human-monitor-command", &args.to_string()],
    );
    wait_until(&format!("{want} on {name}"), ANSWER, || {
        env.console(name)
            .lines()
            .filter(|l| l.starts_with(want))
            .count()
            >= n
    });
}

/// The first bytes of a qcow2 image's guest view, through `qemu-img convert`.
fn guest_view(env: &TestEnv, image: &Path) -> Vec<u8> {
    let raw = env.path("view.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let data = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    data[..512].to_vec()
}

#[test]
fn clones_write_their_own_overlays_and_refusals_leave_nothing() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    // A QEMU of our own, so that it can be "upgraded" below.
    let emulator = env.path("qemu-system-aarch64");
    std::fs::copy(which("qemu-system-aarch64"), &emulator).unwrap();
    let base = env.path("base.img");
    raw_image(&base);
    let base_hash = sha256(&base);
    let append = format!("{} {}", guest_proto::write("/dev/vda"), guest_proto::HOLD);
    let args = [
        OsStr::new("--disk"),
        base.as_os_str(),
        "--append".as_ref(),
        append.as_ref(),
        "--emulator".as_ref(),
        emulator.as_os_str(),
    ];
    let src = held(&env, &g, "src", &args, 1);
    let snap = env.path("snap");
    snapshot(&env, "src", &snap);
    src.stop();
    let frozen = snap.join("disk0.qcow2");
    let frozen_hash = sha256(&frozen);
    assert!(
        guest_view(&env, &frozen).starts_with(&guest_proto::marker("aarch64")),
        "the guest's write before the snapshot is in the frozen disk"
    );
    for (name, pattern) in [("c1", "0x11"), ("c2", "0x22")] {
        let c = restore(&env, &snap, name);
        heartbeats(&env, name, 1);
        // The other clone's write is not there; this one's is, once written.
        qemu_io(&env, name, "read -P 0 1024 512", "read 512/512", 1);
        qemu_io(
            &env,
            name,
            &format!("write -P {pattern} 1024 512"),
            "wrote 512/512",
            1,
        );
        qemu_io(
            &env,
            name,
            &format!("read -P {pattern} 1024 512"),
            "read 512/512",
            2,
        );
        let console = env.console(name);
        assert!(
            !console.contains("Pattern verification failed"),
            "{console}"
        );
        c.stop();
    }
    assert_eq!(sha256(&base), base_hash, "the base image changed");
    assert_eq!(sha256(&frozen), frozen_hash, "the frozen disk changed");
    restore_refusals(&env, &snap, &emulator, &base);
}

/// `which NAME`.
fn which(name: &str) -> PathBuf {
    let out = Command::new("which").arg(name).output().unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A restore that must fail with `code` and say `want`, leaving no instance behind.
fn refused(env: &TestEnv, snap: &Path, extra: &[&str], code: i32, want: &str) {
    let out = restore_cmd(env, snap, "refused", extra)
        .arg("--detach")
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(code), "want {want:?}: {o}{e}");
    assert!(e.contains(want), "want {want:?} in:\n{e}");
    assert!(o.is_empty(), "{o}");
    let left: Vec<_> = std::fs::read_dir(env.instances())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Runs `f` with `path`'s bytes replaced by `edit(bytes)`, then puts them back.
fn with_edited(path: &Path, edit: impl FnOnce(Vec<u8>) -> Vec<u8>, f: impl FnOnce()) {
    use std::os::unix::fs::PermissionsExt;
    let saved = std::fs::read(path).unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(path, edit(saved.clone())).unwrap();
    f();
    std::fs::write(path, saved).unwrap();
    std::fs::set_permissions(path, mode).unwrap();
}

fn json_edit(edit: impl FnOnce(&mut Value)) -> impl FnOnce(Vec<u8>) -> Vec<u8> {
    move |bytes| {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }
}

fn restore_refusals(env: &TestEnv, snap: &Path, emulator: &Path, base: &Path) {
    let manifest = snap.join("manifest.json");
    // A manifest from another QEMU version.
    let older = json_edit(|m| {
        m["qemu"]["version"] = "6.2.0".into();
        m["qemu"]["sha256"] = "0".repeat(64).into();
    });
    with_edited(&manifest, older, || {
        refused(env, snap, &[], 2, "snapshot of QEMU 6.2.0");
    });
    // A manifest with a key this format does not have.
    let unknown = json_edit(|m| m["extra"] = true.into());
    with_edited(&manifest, unknown, || {
        refused(env, snap, &[], 2, "invalid manifest: unknown field `extra`");
    });
    // A manifest of a later format.
    with_edited(&manifest, json_edit(|m| m["format"] = 99.into()), || {
        refused(env, snap, &[], 2, "snapshot format 99");
    });
    // Flags that contradict the snapshot; the same values pass.
    refused(env, snap, &["--memory", "1G"], 2, "--memory 1G contradicts");
    refused(
        env,
        snap,
        &["--arch", "x86_64"],
        2,
        "--arch x86_64 contradicts",
    );
    let out = restore_cmd(
        env,
        snap,
        "same",
        &["--memory", "512M", "--arch", "arm64", "--dry-run"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // A truncated, then a corrupted state file: QEMU's own error, nothing left.
    let state = snap.join("state");
    with_edited(
        &state,
        |b| b[..b.len() / 2].to_vec(),
        || {
            refused(env, snap, &[], 3, "load of migration failed");
        },
    );
    with_edited(
        &state,
        |mut b| {
            b[..4].copy_from_slice(b"XXXX");
            b
        },
        || refused(env, snap, &[], 3, "load of migration failed"),
    );
    // The base image changed, then went away.
    let mtime = std::fs::metadata(base).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(base).unwrap();
    f.set_modified(mtime + Duration::from_secs(1)).unwrap();
    refused(env, snap, &[], 2, "base image of disk 0");
    f.set_modified(mtime).unwrap();
    let away = base.with_extension("away");
    std::fs::rename(base, &away).unwrap();
    refused(env, snap, &[], 2, "is gone since the snapshot");
    std::fs::rename(&away, base).unwrap();
    // The QEMU binary upgraded in place: another build.
    let mut qemu = std::fs::read(emulator).unwrap();
    qemu.extend_from_slice(b"another build");
    std::fs::write(emulator, qemu).unwrap();
    refused(env, snap, &[], 2, "but ");
    refused(env, snap, &[], 2, "is now QEMU");
}

#[test]
fn snapshot_refusals_leave_the_guest_running() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let src = held(&env, &g, "src", &[], 1);
    let snap = |name: &str, dir: &Path| {
        env.qd([
            OsStr::new("snapshot"),
            name.as_ref(),
            "--to".as_ref(),
            dir.as_os_str(),
        ])
    };
    // No such instance: nothing made.
    let dir = env.path("snap");
    let out = snap("nosuch", &dir);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(!dir.exists());
    // A folder that is not empty: left as it was.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), "mine").unwrap();
    let out = snap("src", &dir);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("exists and is not empty"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(dir.join("keep")).unwrap(), "mine");
    assert_eq!(src.entry()["state"], "running");
    full_file_system(&env, &src);
}

/// A snapshot onto a file system too small for it: the partial folder goes, the guest runs on.
fn full_file_system(env: &TestEnv, src: &Detached<'_>) {
    let mnt = env.path("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: the full-disk case: cannot mount a small tmpfs (needs root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        return;
    }
    let dir = mnt.join("snap");
    let before = last_heartbeat(env, &src.name);
    let out = env.qd([
        OsStr::new("snapshot"),
        src.name.as_ref(),
        "--to".as_ref(),
        dir.as_os_str(),
    ]);
    let left = std::fs::read_dir(&mnt).unwrap().count();
    let _ = Command::new("umount").arg(&mnt).status();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("saving the guest's state"), "{e}");
    assert!(e.contains("hint: the snapshot's file system has"), "{e}");
    assert_eq!(left, 0, "the partial snapshot was left behind");
    assert_eq!(src.entry()["state"], "running");
    let next = guest_proto::heartbeat(before + 2);
    src.wait_for(&next, "60s");
}

#[test]
fn migrate_keeps_the_heartbeat_going() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let src = held(&env, &g, "src", &[], 2);
    let start = Instant::now();
    let out = env.qd(["migrate", "src", "--to", "dst"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    eprintln!("migrate took {:?}: {e}", start.elapsed());
    let (name, dir) = o.trim_end().split_once('\t').expect("NAME\\tDIR");
    assert_eq!(name, "dst");
    assert!(Path::new(dir).is_dir());
    let downtime: u64 = e
        .split("guest paused ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no downtime in {e}"));
    assert!(
        downtime < 1000,
        "downtime {downtime} ms: a heartbeat could be lost"
    );
    let ps = env.ps();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["name"], "dst");
    // The source's console ends where the destination's goes on.
    let before = guest_proto::heartbeats(&std::fs::read_to_string(env.log("src")).unwrap());
    let after = heartbeats(&env, "dst", 2);
    assert_eq!(
        after[0],
        before.last().unwrap() + 1,
        "{before:?} then {after:?}"
    );
    goes_on_counting(&after, after[0], "the destination");
    drop(src);
    env.stop("dst");
}

#[test]
fn the_harness_example_runs_eight_tests_in_eight_clones() {
    if guest("aarch64").is_none() {
        return;
    }
    let env = TestEnv::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt
        .block_on(example::run(&guests_dir(), Some(env.instances()), 8))
        .unwrap_or_else(|e| panic!("example failed: {e}"));
    assert_eq!(s.results.len(), 8);
    for r in &s.results {
        assert!(r.first_heartbeat > s.snapshot_heartbeat, "{s:?}");
        assert_eq!(r.random_after_reseed.len(), 16, "{s:?}");
    }
    let distinct = |f: fn(&example::CloneResult) -> &Vec<u8>| {
        s.results
            .iter()
            .map(f)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // Clones start with one random pool: often several read the same bytes at first (seen: 5
    // of 8). Not asserted: how many depends on when each kernel reseeds by itself.
    eprintln!(
        "distinct random reads of 8 clones: {} at restore, {} after the reseed",
        distinct(|r| &r.random_at_restore),
        distinct(|r| &r.random_after_reseed)
    );
    assert_eq!(distinct(|r| &r.random_after_reseed), 8, "{s:?}");
    assert!(s.migrated_heartbeat > s.snapshot_heartbeat, "{s:?}");
    assert_eq!(
        std::fs::read_dir(env.instances()).unwrap().count(),
        0,
        "nothing left"
    );
}
