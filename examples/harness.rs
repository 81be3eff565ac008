//! A test harness's use of the library: several guests, two at a time, each running a command
//! through its guest agent and checking what it printed.
//!
//!     scripts/fetch-test-guests.sh --arch aarch64 --arch x86_64
//!     cargo run --example harness
//!
//! The guests come from `$QD_TEST_GUESTS` (default: `~/.cache/qemu-direct/test-guests`), whose
//! initramfs starts qemu-ga. The integration tests run [`run_checks`] too.

use std::{
    error::Error,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use qemu_direct::{
    util::stamped::user_cache_root,
    vm::{GuestBuilder, Pool, Vm},
};

/// What a harness returns from a task.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// One check: the guest of `arch` runs `command`, whose stdout must be `want`.
#[derive(Debug, Clone)]
pub struct Check {
    /// The guest's arch.
    pub arch: &'static str,
    /// The command and its arguments.
    pub command: Vec<&'static str>,
    /// Its stdout, exactly.
    pub want: &'static str,
}

/// The checks: two per arch.
pub fn checks() -> Vec<Check> {
    let check = |arch, command: &[&'static str], want| Check {
        arch,
        command: command.to_vec(),
        want,
    };
    vec![
        check("aarch64", &["uname", "-m"], "aarch64\n"),
        check("x86_64", &["uname", "-m"], "x86_64\n"),
        check("aarch64", &["sh", "-c", "echo $((6 * 7))"], "42\n"),
        check("x86_64", &["cat", "/proc/sys/kernel/ostype"], "Linux\n"),
    ]
}

/// What the run saw.
#[derive(Debug)]
pub struct Summary {
    /// One line per check, in order: `ARCH COMMAND: ok`.
    pub results: Vec<String>,
    /// The most guests that ran at once.
    pub most_at_once: usize,
}

/// Runs every check, two guests at a time; `setup` adjusts each guest (where its instance
/// directory and logs go, say). Fails with the first failed check.
pub async fn run_checks(
    guests: &Path,
    setup: Arc<dyn Fn(GuestBuilder) -> GuestBuilder + Send + Sync>,
) -> Result<Summary, BoxError> {
    // In a test suite this would be a static shared by every test.
    let pool = Pool::new(2);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, check) in checks().into_iter().enumerate() {
        let guest = setup(
            Vm::guest(check.arch)
                .kernel(guests.join(check.arch).join("kernel"))
                .initrd(guests.join(check.arch).join("initrd.gz"))
                // The test guest keeps running instead of powering off.
                .append("qd.hold=1")
                .pool(&pool),
        );
        let (running, most) = (running.clone(), most.clone());
        tasks.spawn(async move {
            let vm = guest.launch().await?;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let result = check_one(&vm, &check).await;
            running.fetch_sub(1, Ordering::SeqCst);
            // Throw-away guests: quit at once rather than ask them to power off.
            vm.shutdown_quick().await?;
            Ok::<_, BoxError>((i, result?))
        });
    }
    let mut results = vec![String::new(); tasks.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, line) = done??;
        results[i] = line;
    }
    Ok(Summary {
        results,
        most_at_once: most.load(Ordering::SeqCst),
    })
}

/// Runs one check in a launched guest.
async fn check_one(vm: &Vm, check: &Check) -> Result<String, BoxError> {
    let out = vm
        .exec(check.command[0], check.command[1..].iter().copied())
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let what = format!("{} {}", vm.plan().arch, check.command.join(" "));
    if !out.status.success() || stdout != check.want {
        return Err(format!(
            "{what}: {} with stdout {stdout:?} (want {:?}), stderr {:?}",
            out.status,
            check.want,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(format!("{what}: ok"))
}

/// `$QD_TEST_GUESTS`, else the fetch script's default.
pub fn guests_dir() -> PathBuf {
    std::env::var_os("QD_TEST_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_cache_root().unwrap_or_default().join("test-guests"))
}

#[allow(
    dead_code,
    reason = "the integration tests include this file for `run_checks` alone"
)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let s = run_checks(&guests_dir(), Arc::new(|g| g)).await?;
    for line in &s.results {
        println!("{line}");
    }
    println!("at most {} guests at once", s.most_at_once);
    Ok(())
}
