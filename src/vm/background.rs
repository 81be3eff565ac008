//! The library's own runtime, on a thread that lives as long as the process: guests launched
//! on it ([`super::VmBuilder::background`]) outlive the runtime of whoever launched them, such
//! as one test of many sharing a guest kept in a static.
//!
//! QEMU is tied to the thread that spawned it (`PR_SET_PDEATHSIG`) and watched by tasks of the
//! runtime that launched it; both are this thread and this runtime here. Other runtimes use such
//! a guest freely: QMP requests, console reads and the guest agent go through channels and
//! sockets that this runtime keeps driving.

use std::sync::Mutex;

use tokio::runtime::Handle;

/// The runtime's handle, started on first use.
pub(super) fn handle() -> std::io::Result<Handle> {
    static HANDLE: Mutex<Option<Handle>> = Mutex::new(None);
    let mut handle = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*handle {
        return Ok(h.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("qemu-direct-guests".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Drives the guests' tasks and sockets until the process ends.
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    let h = rx
        .recv()
        .map_err(|_| std::io::Error::other("the guests' runtime thread ended at once"))??;
    *handle = Some(h.clone());
    Ok(h)
}
