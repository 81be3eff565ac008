//! The supervisor's QMP handshake with a QEMU started with its CPUs stopped: connect and
//! negotiate, ask the accelerator, subscribe to events, and only then let the guest run, so
//! that no event is missed.

use std::{fs::File, path::Path, sync::Arc, sync::Mutex};

use crate::{
    plan::LaunchPlan,
    profile::Accel,
    qmp::Qmp,
    vm::{
        DRAIN, QMP_CALL, STARTUP_TIMEOUT, VmError,
        console::lock,
        events,
        launch::virtiofs,
        overlay,
        process::{ErrLog, describe},
        shared::{Shared, guard},
    },
};

/// Connects, learns the accelerator (`planned` if QEMU does not say), starts the event
/// recorder and the guard, and lets the guest run (`cont`). The connection and the
/// accelerator.
pub(in crate::vm) async fn run(
    sup_path: &Path,
    shared: &Arc<Shared>,
    errlog: &Mutex<ErrLog>,
    events_file: File,
    planned: Accel,
) -> Result<(Qmp, Accel), VmError> {
    let qmp = connect(sup_path, shared, errlog).await?;
    let accel = accel(&qmp, planned).await;
    lock(&shared.info).accel = accel;
    shared.set_state("prelaunch");
    // Subscribed before the guest runs: no event can be missed.
    let events = qmp.events();
    tokio::spawn(events::record(
        events,
        qmp.clone(),
        events_file,
        shared.clone(),
    ));
    tokio::spawn(guard(shared.clone(), qmp.clone()));
    match tokio::time::timeout(QMP_CALL, qmp.cont()).await {
        Ok(Ok(())) => Ok((qmp, accel)),
        Ok(Err(e)) => Err(startup_error(shared, errlog, VmError::Qmp(e)).await),
        Err(_) => Err(VmError::StartupTimeout(QMP_CALL)),
    }
}

/// The accelerator QEMU reports using (`query-kvm`); `planned` if it does not answer.
async fn accel(qmp: &Qmp, planned: Accel) -> Accel {
    match tokio::time::timeout(QMP_CALL, qmp.query_kvm()).await {
        Ok(Ok(k)) if k.enabled => Accel::Kvm,
        Ok(Ok(_)) => Accel::Tcg,
        _ => planned,
    }
}

/// A failed start said better where QEMU's stderr shows why: a disk image another process
/// holds locked, or a share's `virtiofsd` that failed (its log in `dir`, the instance's).
pub(in crate::vm) fn explain(
    e: VmError,
    plan: &LaunchPlan,
    errlog: &Mutex<ErrLog>,
    dir: &Path,
) -> VmError {
    let VmError::Startup { status, .. } = &e else {
        return e;
    };
    let status = status.clone();
    let locked = overlay::locked_image(&lock(errlog).text());
    if let Some((image, detail)) = locked {
        return overlay::lock_error(plan, image, detail);
    }
    // QEMU names the socket it could not use ("-chardev socket,id=qd-vfs0,...").
    let vhost = lock(errlog).text().contains("qd-vfs");
    match virtiofs::last_words(plan, dir) {
        Some((tag, said)) if vhost => VmError::VirtiofsdFailed { tag, said, status },
        _ => e,
    }
}

/// Connects to the supervisor's QMP socket and negotiates, while watching QEMU: if it exits
/// first, the error says so with its last words.
async fn connect(path: &Path, shared: &Shared, errlog: &Mutex<ErrLog>) -> Result<Qmp, VmError> {
    let handshake = Qmp::connect_unix(path);
    tokio::select! {
        r = tokio::time::timeout(STARTUP_TIMEOUT, handshake) => match r {
            Ok(Ok(qmp)) => Ok(qmp),
            Ok(Err(e)) => Err(startup_error(shared, errlog, VmError::Qmp(e)).await),
            Err(_) => Err(VmError::StartupTimeout(STARTUP_TIMEOUT)),
        },
        _ = shared.wait_exit() => Err(startup_error(shared, errlog, VmError::StartupTimeout(STARTUP_TIMEOUT)).await),
    }
}

/// The error for a failed start: QEMU's exit and last stderr line if it exited, else `other`.
async fn startup_error(shared: &Shared, errlog: &Mutex<ErrLog>, other: VmError) -> VmError {
    let Some(exit) = shared.wait_exit_for(DRAIN).await else {
        return other;
    };
    let mut done = shared.stderr_done.subscribe();
    let _ = tokio::time::timeout(DRAIN, done.wait_for(|d| *d)).await;
    VmError::Startup {
        status: describe(&exit),
        stderr: lock(errlog).error_line(),
    }
}
