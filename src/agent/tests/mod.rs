//! The agent client against a scripted fake qemu-ga (`fake`), then against the host's real
//! qemu-ga serving a Unix socket (`real`).

use std::{future::Future, time::Duration};

mod fake;
mod real;

/// Every test step is bounded: a hang is a failure, not a stuck test run.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}
