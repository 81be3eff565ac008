//! What the commands share that is neither input nor output: a one-thread async runtime, and
//! an error on one line.

use anyhow::Context;

/// A current-thread runtime: QEMU's parent-death signal is tied to the thread that spawned it,
/// so one thread it is.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a future on a fresh [`runtime`].
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(runtime()?.block_on(f))
}

/// An error and its causes on one line, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
