//! A stand-in emulator for timing: records when it was exec'd (nanoseconds since the Unix
//! epoch, CLOCK_REALTIME) in `$QD_STAMP_FILE`, then execs `$QD_STAMP_EXEC` with its arguments,
//! or exits 1 without it. `scripts/bench` passes it as `--emulator` to time the exec of
//! qemu-direct to the exec of QEMU.

use std::{
    os::unix::process::CommandExt,
    time::{SystemTime, UNIX_EPOCH},
};

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    if let Some(f) = std::env::var_os("QD_STAMP_FILE") {
        let _ = std::fs::write(f, now.to_string());
    }
    if let Some(exe) = std::env::var_os("QD_STAMP_EXEC") {
        let e = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        eprintln!("exec_stamp: {e}");
    }
    std::process::exit(1);
}
