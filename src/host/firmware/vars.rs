//! A VM's own UEFI variable store.

use std::{
    fs, io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{Device, FirmwareError, Selected};

/// Gives a VM its own writable UEFI variable store: a 0600 copy of `template` named
/// `<vm_name>_VARS.fd` in `dest_dir`, returned. An existing store there is kept, because it
/// holds the VM's boot entries and enrolled keys. The template is only ever read.
pub fn copy_vars(
    template: &Path,
    dest_dir: &Path,
    vm_name: &str,
) -> Result<PathBuf, FirmwareError> {
    if vm_name.is_empty() || vm_name == "." || vm_name == ".." || vm_name.contains(['/', '\0']) {
        return Err(FirmwareError::VmName(vm_name.to_owned()));
    }
    let dest = dest_dir.join(vars_file_name(vm_name));
    let copy_err = |source| FirmwareError::CopyVars {
        template: template.to_owned(),
        dest: dest.clone(),
        source,
    };
    match fs::symlink_metadata(&dest) {
        Ok(existing) => {
            let t = fs::metadata(template).map_err(copy_err)?;
            if !existing.is_file() {
                return Err(copy_err(io::Error::other(
                    "exists and is not a regular file",
                )));
            }
            if (existing.dev(), existing.ino()) == (t.dev(), t.ino()) {
                return Err(FirmwareError::VarsIsTemplate { dest });
            }
            return Ok(dest);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(copy_err(e)),
    }
    // Copy beside the destination and rename into place, so an interrupted copy never
    // leaves a truncated store that a later run would keep.
    let tmp = dest_dir.join(format!(
        ".{}.{}.tmp",
        vars_file_name(vm_name),
        std::process::id()
    ));
    let result = (|| {
        let mut from = fs::File::open(template)?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        io::copy(&mut from, &mut to)?;
        // The umask may have taken bits from the mode above; the store is the VM owner's alone.
        to.set_permissions(fs::Permissions::from_mode(0o600))?;
        to.sync_all()?;
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(copy_err(e));
    }
    Ok(dest)
}

/// The name of a VM's UEFI variable store in its instance directory: the one place it is made.
pub fn vars_file_name(vm_name: &str) -> String {
    format!("{vm_name}_VARS.fd")
}

impl Selected {
    /// Checks that `vars` (a per-VM variable store, or none) fits this firmware: flash firmware
    /// with a variable store template needs one, all other firmware takes none. A plan is made
    /// only of firmware that passed this, so the command line built from it cannot be wrong.
    pub fn check_vars(&self, vars: Option<&Path>) -> Result<(), FirmwareError> {
        let needed = self.device == Device::Flash && self.nvram_template.is_some();
        if needed == vars.is_some() {
            return Ok(());
        }
        Err(FirmwareError::Vars {
            descriptor: self.descriptor.clone(),
            needed,
        })
    }
}
