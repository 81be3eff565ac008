//! Which machine profile the guest gets, and which emulator runs it.

use std::path::{Path, PathBuf};

use crate::{
    host::HostFacts,
    profile::arch::Arch,
    profile::gate::QemuVersion,
    profile::{MachineProfile, ProfileSet},
    spec::{ArchChoice, VmSpec},
};

use super::PlanError;

/// The profile of the guest's arch: the spec's, checked against this host where the spec asks
/// for a native or a particular host, else the host's own.
pub(super) fn guest_profile<'p>(
    spec: &VmSpec,
    profiles: &'p ProfileSet,
    host: &HostFacts,
) -> Result<&'p MachineProfile, PlanError> {
    let lookup = |arch: &Arch| {
        profiles
            .get(arch)
            .ok_or_else(|| PlanError::NoProfile(arch.clone()))
    };
    match &spec.arch {
        ArchChoice::Given {
            arch,
            host_required,
            ..
        } => {
            if let Some(required) = host_required
                && host.arch.as_ref() != Some(required)
            {
                return Err(PlanError::WrongHost {
                    required: required.clone(),
                    host: host.arch_name().to_owned(),
                });
            }
            lookup(arch)
        }
        ArchChoice::NativeOnly { arch } => {
            let p = lookup(arch)?;
            if host.is_native(p) {
                Ok(p)
            } else {
                Err(PlanError::NotNative {
                    guest: arch.clone(),
                    host: host.arch_name().to_owned(),
                })
            }
        }
        ArchChoice::Host => match &host.arch {
            Some(a) => lookup(a),
            None => Err(PlanError::UnknownHost(host.arch_detail.clone())),
        },
    }
}

/// The QEMU binary: `--emulator` as given, else the profile's as found on this host.
pub(super) fn binary(
    spec: &VmSpec,
    profile: &MachineProfile,
    host: &HostFacts,
) -> Result<PathBuf, PlanError> {
    match &spec.emulator {
        Some(path) => Ok(path.clone()),
        None => host
            .emulators
            .get(&profile.binary)
            .map(|e| e.path.clone())
            .ok_or_else(|| missing_emulator(host, profile)),
    }
}

/// Why the profile's emulator is not there: not in the QEMU prefix (with what it has), or not
/// installed (with the Debian package of the installed QEMU's version, where known).
pub fn missing_emulator(host: &HostFacts, profile: &MachineProfile) -> PlanError {
    match &host.qemu_prefix {
        Some(p) => PlanError::NotInPrefix {
            arch: profile.arch(),
            binary: profile.binary.clone(),
            prefix: p.dir.clone().into_boxed_path(),
            has: host.emulators.keys().cloned().collect(),
        },
        None => {
            // The other emulators' QEMU is the one the package would come with.
            let qemu = host
                .emulators
                .values()
                .filter_map(|e| e.version.as_deref()?.parse().ok())
                .max();
            PlanError::NotInstalled {
                arch: profile.arch(),
                binary: profile.binary.clone(),
                package: profile.package_for(qemu),
            }
        }
    }
}

/// The `-L` folders of the QEMU prefix the emulator comes from (none for a relocatable build
/// or an emulator outside the prefix), with a note saying which.
pub(super) fn data_dirs(
    host: &HostFacts,
    binary: &Path,
    notes: &mut Vec<String>,
) -> (Vec<PathBuf>, Option<PathBuf>) {
    let Some(prefix) = &host.qemu_prefix else {
        return (Vec::new(), None);
    };
    if !prefix.holds(binary) {
        notes.push(format!(
            "qemu prefix {}: {} is not one of its emulators, so its data folders are not passed",
            prefix.dir.display(),
            binary.display()
        ));
        return (Vec::new(), None);
    }
    notes.push(format!("qemu prefix {prefix}"));
    (prefix.data_dirs.clone(), prefix.module_dir.clone())
}

/// The key under which a plan's emulator is recorded in [`HostFacts::emulators`]: the profile's
/// binary name, or the `--emulator` path as given.
pub(super) fn emulator_key(spec: &VmSpec, profile: &MachineProfile) -> String {
    match &spec.emulator {
        Some(path) => path.to_string_lossy().into_owned(),
        None => profile.binary.clone(),
    }
}

/// The emulator's version: as recorded, else from any of its recorded capabilities.
pub(super) fn qemu_version(host: &HostFacts, binary_key: &str) -> Option<QemuVersion> {
    let e = host.emulators.get(binary_key)?;
    e.version
        .iter()
        .chain(e.caps.values().map(|c| &c.version))
        .find_map(|v| v.parse().ok())
}
