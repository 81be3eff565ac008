//! The checks a profile passes when it is loaded, beyond what its types already say: a file
//! named for its arch, and values that agree with each other.

use std::path::Path;

use super::{Accel, MachineProfile, ProfileError};

/// Checks one parsed profile read from `file`.
pub(super) fn check_profile(file: &str, p: &MachineProfile) -> Result<(), ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        file: file.to_owned(),
        message,
    };
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if stem != p.name {
        return Err(invalid(format!(
            "name '{}' differs from the file name '{stem}.toml'",
            p.name
        )));
    }
    if !["-pci", "-ccw", "-device"].contains(&p.device_suffix.as_str()) {
        return Err(invalid(format!(
            "device_suffix '{}' is not one of -pci, -ccw, -device",
            p.device_suffix
        )));
    }
    if !p.accel.contains_key(&Accel::Tcg) {
        return Err(invalid(
            "no [accel.tcg] table: every guest must be emulatable".into(),
        ));
    }
    if p.max_cpus == 0 {
        return Err(invalid("max_cpus must be at least 1".into()));
    }
    for (accel, a) in &p.accel {
        for opt in a
            .machine_options
            .iter()
            .chain(&a.kernel_machine_options)
            .chain(&a.nested_machine_options)
            .chain(&a.cpu_options)
            .chain(&a.accel_options)
        {
            let o = &opt.option;
            let well_formed = o
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty());
            if !well_formed || o.contains(',') {
                return Err(invalid(format!(
                    "[accel.{accel}] option '{o}' is not key=value"
                )));
            }
            if let (Some(min), Some(below)) = (opt.min_qemu, opt.below_qemu)
                && min >= below
            {
                return Err(invalid(format!(
                    "[accel.{accel}] option '{o}': min_qemu {min} is not below below_qemu {below}"
                )));
            }
        }
        if *accel == Accel::Kvm && a.hosts.is_empty() {
            return Err(invalid("[accel.kvm] lists no native hosts".into()));
        }
    }
    Ok(())
}
