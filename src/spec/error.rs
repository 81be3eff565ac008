//! What can be wrong with a guest description, and the helpers that word file problems the
//! same way for every field.

use std::path::{Path, PathBuf};

use crate::{cpu::CpuError, profile::ProfileError};

/// Errors in a guest description. Each names the field, the value and what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A spec file could not be read.
    #[error("cannot read spec file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A spec file is not valid TOML of the expected shape.
    #[error("invalid spec file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words, with the line.
        message: String,
    },
    /// A field with a value that is not valid.
    #[error("invalid {field} '{value}': {expected}")]
    Invalid {
        /// The field (`--memory`, `memory`, `--property`...).
        field: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// An unknown architecture.
    #[error(transparent)]
    Arch(#[from] ProfileError),
    /// Two fields that cannot both hold.
    #[error("{first} conflicts with {second}: {why}")]
    Conflict {
        /// One field and its value.
        first: String,
        /// The other.
        second: String,
        /// Why.
        why: String,
    },
    /// A file the spec names cannot be used.
    #[error("{field} {path}: {problem}")]
    File {
        /// The field.
        field: String,
        /// The path, as given.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A CPU setting of the wrong form or contradicting another.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// No kernel, no disk and no firmware: QEMU would run with nothing to boot, silently.
    #[error(
        "nothing to boot: no kernel, no disk and no firmware given; give --kernel FILE (a direct \
         kernel boot), --disk IMAGE (booted through the firmware), or --firmware uefi|bios|FILE"
    )]
    NoBootSource,
}

/// A [`SpecError::File`]: `field path: problem`.
pub(crate) fn file_error(field: &str, path: &Path, problem: impl Into<String>) -> SpecError {
    SpecError::File {
        field: field.into(),
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// A file that could not be opened or read, in short words for the common causes.
pub(crate) fn open_error(field: &str, path: &Path, e: std::io::Error) -> SpecError {
    let problem = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    file_error(field, path, problem)
}
