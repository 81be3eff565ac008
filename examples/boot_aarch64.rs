//! Boots the aarch64 test guest from Rust, waits for it on the console, talks to it over QMP,
//! and shuts it down.
//!
//!     scripts/fetch-test-guests.sh --arch aarch64
//!     cargo run --example boot_aarch64
//!
//! The guest comes from `$QD_TEST_GUESTS/aarch64` (default:
//! `~/.cache/qemu-direct/test-guests/aarch64`). The integration tests run [`boot`] too.

use std::{
    error::Error,
    path::{Path, PathBuf},
    time::Duration,
};

use qemu_direct::{
    host::{HostFacts, ProbeOptions},
    plan,
    profile::ProfileSet,
    spec::SpecInput,
    util::stamped::user_cache_root,
    vm::{Outcome, Vm},
};

/// What the boot saw.
#[derive(Debug)]
pub struct Summary {
    /// The console line that said the guest was up.
    pub ready_line: String,
    /// The run state QMP reported then.
    pub status: String,
    /// The events seen while pausing and resuming the guest.
    pub events: Vec<String>,
    /// How the run ended.
    pub outcome: Outcome,
}

/// Boots the guest in `guests/aarch64`, with its instance directory under `runtime_dir`
/// (default: `$XDG_RUNTIME_DIR/qemu-direct`).
pub async fn boot(guests: &Path, runtime_dir: Option<PathBuf>) -> Result<Summary, Box<dyn Error>> {
    let profiles = ProfileSet::embedded()?;
    let spec = SpecInput {
        arch: Some("aarch64".into()),
        kernel: Some(guests.join("aarch64/kernel")),
        initrd: Some(guests.join("aarch64/initrd.gz")),
        // The test guest keeps running, printing a heartbeat, instead of powering off.
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
    let vm = builder.launch().await?;
    println!(
        "{} runs under {} in {}",
        vm.name(),
        vm.accel(),
        vm.dir().display()
    );

    // 30 s under KVM, longer under TCG.
    let ready_line = vm
        .console()
        .wait_for(r"GUEST-READY \w+", vm.scale(Duration::from_secs(30)))
        .await?;
    let status = vm.qmp().query_status().await?.status;

    let mut events = vm.qmp().events();
    vm.qmp().stop().await?;
    vm.qmp().cont().await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.next_event()).await {
            Ok(Some(e)) => seen.push(e.name),
            _ => break,
        }
    }

    // The test guest ignores the power button: the ladder goes on to `quit` after 2 s.
    let report = vm.shutdown(Duration::from_secs(2)).await?;
    Ok(Summary {
        ready_line,
        status,
        events: seen,
        outcome: report.outcome,
    })
}

/// `$QD_TEST_GUESTS`, else the fetch script's default.
pub fn guests_dir() -> PathBuf {
    std::env::var_os("QD_TEST_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_cache_root().unwrap_or_default().join("test-guests"))
}

#[allow(
    dead_code,
    reason = "the integration tests include this file for `boot` alone"
)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let s = boot(&guests_dir(), None).await?;
    println!("{}", s.ready_line);
    println!("status: {}; events: {}", s.status, s.events.join(", "));
    println!("{}", s.outcome);
    Ok(())
}
