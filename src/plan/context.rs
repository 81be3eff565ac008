//! [`Context`]: what the steps of [`resolve_with`](super::resolve_with) share once the
//! accelerator is chosen.

use crate::{
    host::HostFacts,
    profile::arch::Arch,
    profile::gate::{Gate, QemuVersion},
    profile::{Accel, AccelProfile, MachineProfile},
    spec::VmSpec,
};

use super::{PlanError, binary};

/// The inputs of one resolution, the accelerator chosen with the profile's settings under it,
/// the gate the profile's options pass, and the notes the steps add, in the order shown.
pub(super) struct Context<'a> {
    /// The validated spec.
    pub spec: &'a VmSpec,
    /// The guest's machine profile.
    pub profile: &'a MachineProfile,
    /// This host.
    pub host: &'a HostFacts,
    /// The emulator's key in [`HostFacts::emulators`] ([`binary::emulator_key`]).
    pub binary_key: String,
    /// The accelerator chosen.
    pub accel: Accel,
    /// The profile's machine, CPU and options under that accelerator.
    pub ap: &'a AccelProfile,
    /// The emulator's QEMU version, when known.
    pub qemu_version: Option<QemuVersion>,
    /// What the profile's options are checked against: that version and this host.
    pub gate: Gate<'a>,
    /// Other decisions worth showing, one line each.
    pub notes: Vec<String>,
}

impl<'a> Context<'a> {
    /// The context for `accel`, noting an unknown QEMU version (nothing is then checked
    /// against it).
    pub fn new(
        spec: &'a VmSpec,
        profile: &'a MachineProfile,
        host: &'a HostFacts,
        accel: Accel,
    ) -> Result<Self, PlanError> {
        // Every profile has [accel.tcg] (checked on load), and KVM is only chosen with [accel.kvm].
        let Some(ap) = profile.accel.get(&accel) else {
            return Err(PlanError::NoProfile(profile.arch()));
        };
        let binary_key = binary::emulator_key(spec, profile);
        let qemu_version = binary::qemu_version(host, &binary_key);
        let gate = Gate {
            qemu: qemu_version,
            host: host.arch.as_ref().map(Arch::as_str),
        };
        let mut notes = Vec::new();
        if qemu_version.is_none() {
            notes.push(
                "QEMU version unknown: the profile's options are not checked against it".into(),
            );
        }
        Ok(Context {
            spec,
            profile,
            host,
            binary_key,
            accel,
            ap,
            qemu_version,
            gate,
            notes,
        })
    }
}
