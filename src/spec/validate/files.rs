//! Checks on the files a spec names, done now so a bad path is reported with its field rather
//! than by QEMU once it runs.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use crate::spec::error::{SpecError, file_error, open_error};

/// A regular, non-empty file this process can open.
pub(super) fn readable_file(field: &str, path: &Path) -> Result<PathBuf, SpecError> {
    let f = File::open(path).map_err(|e| open_error(field, path, e))?;
    let meta = f.metadata().map_err(|e| open_error(field, path, e))?;
    if !meta.is_file() {
        return Err(file_error(field, path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(file_error(field, path, "the file is empty"));
    }
    Ok(path.to_owned())
}

/// A regular file with an execute bit, named by `emulator`.
pub(super) fn executable(path: &Path) -> Result<PathBuf, SpecError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| open_error("emulator", path, e))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(file_error("emulator", path, "not an executable file"));
    }
    Ok(path.to_owned())
}
