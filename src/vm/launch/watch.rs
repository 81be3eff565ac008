//! The tasks that watch a QEMU from its start: the reaper, the console pump, the stderr pump.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{prepare::Logs, spawn::Pipes};
use crate::vm::{
    Console, Origin,
    console::{self, Progress, Sinks, Watcher},
    process::{self, ErrLog},
    shared::{Shared, reap},
};

/// Starts them; the console that reads what the pump writes, and QEMU's stderr as the pump
/// keeps it.
pub(in crate::vm) fn start(
    name: &str,
    pipes: Pipes,
    logs: Logs,
    echo_stderr: bool,
    shared: &Arc<Shared>,
) -> (Console, Arc<Mutex<ErrLog>>) {
    let (progress, progress_rx) = watch::channel(Progress::default());
    let watcher = Arc::new(Mutex::new(Watcher::default()));
    let errlog = Arc::new(Mutex::new(ErrLog::default()));
    let durable_path = logs.durable_path();
    let live_path = logs.live.1.clone();
    tokio::spawn(reap(pipes.child, shared.clone()));
    tokio::spawn(console::pump(
        pipes.stdout,
        Sinks {
            live: logs.live,
            durable: logs.durable,
        },
        progress,
        watcher.clone(),
        shared.clone(),
    ));
    tokio::spawn(process::pump_stderr(
        pipes.stderr,
        echo_stderr,
        errlog.clone(),
        shared.clone(),
    ));
    let origin = Origin {
        instance: name.to_owned(),
        log: durable_path,
    };
    let console = Console::new(logs.reader, live_path, origin, progress_rx, watcher);
    (console, errlog)
}
