//! The steps of [`super::VmBuilder::launch`], in order: prepare the instance, spawn QEMU, watch
//! it, and the QMP handshake that lets the guest run.

pub(super) mod handshake;
pub(super) mod prepare;
pub(super) mod spawn;
pub(super) mod watch;
