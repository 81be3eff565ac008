//! The steps of [`super::VmBuilder::launch`], in order: prepare the instance, start the shares'
//! `virtiofsd`s, spawn QEMU, watch it, and the QMP handshake that lets the guest run.

pub(super) mod handshake;
pub(super) mod prepare;
pub(super) mod spawn;
pub(super) mod virtiofs;
pub(super) mod watch;
