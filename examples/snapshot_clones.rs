//! Boot once, run many: boots the aarch64 test guest, snapshots it, and runs N tests at once,
//! each in its own clone restored from the snapshot (memory shared copy-on-write, the random
//! pool reseeded through the guest agent); then moves one clone live into a new instance.
//!
//!     scripts/fetch-test-guests.sh --arch aarch64
//!     cargo run --example snapshot_clones
//!
//! The guest comes from `$QD_TEST_GUESTS/aarch64` (default:
//! `~/.cache/qemu-direct/test-guests/aarch64`). The integration tests run [`run`] too.

use std::{
    error::Error,
    path::{Path, PathBuf},
    time::Duration,
};

use qemu_direct::{
    agent::ExecRequest,
    host::{HostFacts, ProbeOptions},
    plan,
    profile::ProfileSet,
    spec::SpecInput,
    util::stamped::user_cache_root,
    vm::Vm,
};

/// What one test in one clone saw.
#[derive(Debug)]
pub struct CloneResult {
    /// The clone's instance name.
    pub name: String,
    /// The first heartbeat it printed: the snapshot's counter went on.
    pub first_heartbeat: u32,
    /// 16 bytes the guest read from /dev/urandom as soon as its agent answered: clones start
    /// with the same random pool, so these are often the same in several clones.
    pub random_at_restore: Vec<u8>,
    /// 16 bytes read after the reseed and 5 s more, once the kernel has taken the new bytes in.
    pub random_after_reseed: Vec<u8>,
}

/// What the run saw.
#[derive(Debug)]
pub struct Summary {
    /// The heartbeat the guest had printed when the snapshot was taken (at least).
    pub snapshot_heartbeat: u32,
    /// One per clone.
    pub results: Vec<CloneResult>,
    /// The first heartbeat of the clone moved live into a new instance.
    pub migrated_heartbeat: u32,
}

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Boots the guest in `guests/aarch64` once, snapshots it, and runs `n` tests in `n` clones,
/// instance directories under `runtime_dir` (default: `$XDG_RUNTIME_DIR/qemu-direct`).
pub async fn run(guests: &Path, runtime_dir: Option<PathBuf>, n: usize) -> Res<Summary> {
    let vm = boot(guests, runtime_dir.clone()).await?;
    let snapshot_heartbeat = 2;
    vm.console()
        .wait_for(
            &format!("qd-heartbeat {snapshot_heartbeat}"),
            vm.scale(Duration::from_secs(60)),
        )
        .await?;
    let snap = std::env::temp_dir().join(format!("qd-example-snapshot-{}", std::process::id()));
    // The snapshot goes when this does, whatever happens below.
    let _cleanup = RemoveOnDrop(snap.clone());
    let saved = vm.snapshot(&snap).await?;
    println!(
        "snapshot in {}: guest paused {:?}, {:?} in all",
        snap.display(),
        saved.paused,
        saved.total
    );
    // The template is no longer needed: every test runs in a clone.
    vm.shutdown(Duration::ZERO).await?;

    let mut tests = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut restore = Vm::restore(&snap)?.name(format!("clone-{i}"));
        if let Some(d) = &runtime_dir {
            restore = restore.runtime_dir(d);
        }
        tests.spawn(async move {
            let vm = restore.launch().await?;
            let result = one_test(&vm).await?;
            Res::Ok((vm, result))
        });
    }
    let mut clones = Vec::new();
    let mut results = Vec::new();
    while let Some(done) = tests.join_next().await {
        let (vm, result) = done??;
        results.push(result);
        clones.push(vm);
    }
    let moved = clones.pop().ok_or("no clone")?.migrate_to("moved").await?;
    println!("moved a clone live, paused {:?}", moved.stats.downtime);
    let migrated_heartbeat = next_heartbeat(&moved.vm, 0).await?;
    for vm in clones.into_iter().chain([moved.vm]) {
        vm.shutdown(Duration::ZERO).await?;
    }
    Ok(Summary {
        snapshot_heartbeat,
        results,
        migrated_heartbeat,
    })
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest, held (`qd.hold=1`: a heartbeat every second instead of powering off).
async fn boot(guests: &Path, runtime_dir: Option<PathBuf>) -> Res<Vm> {
    let profiles = ProfileSet::embedded()?;
    let spec = SpecInput {
        arch: Some("aarch64".into()),
        kernel: Some(guests.join("aarch64/kernel")),
        initrd: Some(guests.join("aarch64/initrd.gz")),
        append: Some("qd.hold=1".into()),
        ..Default::default()
    }
    .validate(&profiles)?;
    let host = HostFacts::probe(&profiles, &ProbeOptions::default());
    let plan = plan::resolve(&spec, &profiles, &host)?;
    let mut builder = Vm::builder(plan).unique_name(true);
    if let Some(dir) = runtime_dir {
        builder = builder.runtime_dir(dir);
    }
    Ok(builder.launch().await?)
}

/// A test in a clone: here, that the guest runs and goes on counting, and that its agent
/// answers; first the clone's random pool is reseeded, as every clone starts with the same.
async fn one_test(vm: &Vm) -> Res<CloneResult> {
    let status = vm.qmp().query_status().await?;
    if status.status != "running" {
        return Err(format!("{} is {}", vm.name(), status.status).into());
    }
    let first_heartbeat = next_heartbeat(vm, 0).await?;
    let wait = vm.scale(Duration::from_secs(30));
    let agent = vm.agent_within(wait).await?;
    let random = || agent.exec(ExecRequest::new("head", ["-c", "16", "/dev/urandom"]));
    let random_at_restore = random().await?.stdout;
    vm.reseed(wait).await?;
    // The kernel mixes the new bytes into its generator at its next reseed: seconds after a
    // snapshot taken early in a boot, like this one (docs/snapshots.md).
    let later = format!("qd-heartbeat {}", first_heartbeat + 5);
    vm.console().wait_for(&later, wait).await?;
    let random_after_reseed = random().await?.stdout;
    Ok(CloneResult {
        name: vm.name().to_owned(),
        first_heartbeat,
        random_at_restore,
        random_after_reseed,
    })
}

/// The first heartbeat above `after` on the console.
async fn next_heartbeat(vm: &Vm, after: u32) -> Res<u32> {
    let line = vm
        .console()
        .wait_for(r"qd-heartbeat \d+", vm.scale(Duration::from_secs(60)))
        .await?;
    let n: u32 = line.trim().trim_start_matches("qd-heartbeat ").parse()?;
    if n <= after {
        return Err(format!("heartbeat {n} after {after}").into());
    }
    Ok(n)
}

/// `$QD_TEST_GUESTS`, else the fetch script's default.
pub fn guests_dir() -> PathBuf {
    std::env::var_os("QD_TEST_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_cache_root().unwrap_or_default().join("test-guests"))
}

#[allow(
    dead_code,
    reason = "the integration tests include this file for `run` alone"
)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let s = run(&guests_dir(), None, 8).await?;
    for r in &s.results {
        println!(
            "{}: went on at heartbeat {}; random bytes at restore {:02x?}, after the reseed {:02x?}",
            r.name, r.first_heartbeat, r.random_at_restore, r.random_after_reseed
        );
    }
    println!(
        "the moved clone went on at heartbeat {}",
        s.migrated_heartbeat
    );
    Ok(())
}
