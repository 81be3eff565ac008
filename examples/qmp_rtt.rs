//! QMP round trips per second: `query-status` sent one after another over one connection,
//! each waiting for its reply. `scripts/bench` runs it beside Python's `qemu.qmp` against the
//! same QEMU.
//!
//!     cargo run --release --example qmp_rtt -- SOCKET [COUNT]
//!
//! Prints one JSON line: `{"count": N, "seconds": S, "per_second": R}`. The connection and
//! capability negotiation are not timed.

use std::{error::Error, time::Instant};

use qemu_direct::qmp::Qmp;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().ok_or("usage: qmp_rtt SOCKET [COUNT]")?;
    let count: u32 = args.next().map(|c| c.parse()).transpose()?.unwrap_or(2000);
    // Current-thread, as the qemu-direct binary runs its QMP clients.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let qmp = Qmp::connect_unix(&socket).await?;
        let start = Instant::now();
        for _ in 0..count {
            qmp.query_status().await?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"count\": {count}, \"seconds\": {secs:.6}, \"per_second\": {:.1}}}",
            f64::from(count) / secs
        );
        Ok(())
    })
}
