//! Restores a snapshot through the library and prints how long it took until the guest ran, in
//! milliseconds, then stops it: the in-process figure `scripts/bench-snapshot` sets beside
//! `run --restore --detach` and raw QEMU.
//!
//!     cargo run --release --example restore_time -- SNAPSHOT_DIR

use std::{error::Error, time::Instant};

use qemu_direct::vm::Vm;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: restore_time SNAPSHOT_DIR")?;
    let start = Instant::now();
    let vm = Vm::restore(&dir)?.launch().await?;
    let took = start.elapsed();
    println!("{:.3}", took.as_secs_f64() * 1000.0);
    vm.quit().await;
    vm.wait().await?;
    Ok(())
}
