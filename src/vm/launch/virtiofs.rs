//! The `virtiofsd` of each share that goes over virtiofs: started before QEMU on a listening
//! socket the launcher bound in the instance directory (so QEMU's connection cannot come too
//! early), tied to the supervisor like QEMU (`PR_SET_PDEATHSIG`), and stopped once QEMU has
//! exited. One that ends while QEMU still runs leaves the guest's folder dead: that fails the
//! guest, naming the daemon's log.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::net::UnixListener},
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use tokio::process::Child;

use crate::{
    argv,
    instance::Instance,
    plan::{LaunchPlan, SharePlan, ShareTransport},
    vm::{Failure, VmError, process, shared::Shared},
};

/// How long QEMU gets to exit after a `virtiofsd` has: the daemon ends by itself when QEMU
/// closes its connection, so the two exits can come in either order.
const EXIT_SKEW: Duration = Duration::from_secs(2);

/// One running `virtiofsd`.
pub(in crate::vm) struct Daemon {
    child: Child,
    tag: String,
    log: PathBuf,
}

/// Starts a `virtiofsd` for each share over virtiofs, its output to `virtiofsN.log` in the
/// instance directory. On error, those already started are killed (dropped).
pub(in crate::vm) fn start(plan: &LaunchPlan, inst: &Instance) -> Result<Vec<Daemon>, VmError> {
    let mut daemons = Vec::new();
    for (i, share) in plan.shares.iter().enumerate() {
        let ShareTransport::Virtiofs { daemon, socket, .. } = &share.transport else {
            continue;
        };
        let listener = UnixListener::bind(socket).map_err(|source| VmError::Socket {
            path: socket.clone(),
            source,
        })?;
        let log = inst.path(&SharePlan::log_name(i));
        let err = |source| VmError::Virtiofsd {
            tag: share.tag.clone(),
            binary: daemon.path.clone(),
            source,
        };
        let out = File::create(&log).map_err(err)?;
        let argv = argv::virtiofsd(plan, i, listener.as_raw_fd()).unwrap_or_default();
        let child = process::spawn_with(
            &argv,
            &[listener.as_raw_fd()],
            Stdio::from(out.try_clone().map_err(err)?),
            Stdio::from(out),
        )
        .map_err(err)?;
        // The daemon has its own copy; ours would keep the socket listening after it died.
        drop(listener);
        daemons.push(Daemon {
            child,
            tag: share.tag.clone(),
            log,
        });
    }
    Ok(daemons)
}

/// Watches each daemon: stopped once QEMU has exited; failing the guest if it ends first.
pub(in crate::vm) fn supervise(daemons: Vec<Daemon>, shared: &Arc<Shared>) {
    for d in daemons {
        tokio::spawn(watch(d, shared.clone()));
    }
}

async fn watch(mut d: Daemon, shared: Arc<Shared>) {
    tokio::select! {
        status = d.child.wait() => {
            if shared.wait_exit_for(EXIT_SKEW).await.is_none() {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                shared.fail(Failure::Crashed(format!(
                    "virtiofsd of share {} ended ({status}) while the guest runs; its log: {}",
                    d.tag,
                    d.log.display()
                )));
            }
        }
        _ = shared.wait_exit() => {
            let _ = d.child.start_kill();
            let _ = d.child.wait().await;
        }
    }
}

/// The last line a share's `virtiofsd` wrote, for the error of a QEMU that could not connect
/// to it: `(tag, line)` of the first daemon that said anything.
pub(in crate::vm) fn last_words(
    plan: &LaunchPlan,
    inst_dir: &std::path::Path,
) -> Option<(String, String)> {
    plan.shares.iter().enumerate().find_map(|(i, s)| {
        let text = std::fs::read_to_string(inst_dir.join(SharePlan::log_name(i))).ok()?;
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
        Some((s.tag.clone(), line.to_owned()))
    })
}
