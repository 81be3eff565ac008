//! Guest and host architecture names.
//!
//! An [`Arch`] is the canonical name of a machine profile (`x86_64`, `aarch64`, ...). The list of
//! architectures and their spellings lives in `machine-profiles/*.toml`, not here: an `Arch` is
//! only ever made by looking a name up in a [`ProfileSet`](crate::profile::ProfileSet).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Canonical architecture name, as the `name` of a machine profile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Arch(String);

impl Arch {
    /// Wraps a canonical name. Only the profile set calls this, after it has checked the name.
    pub(crate) fn new_canonical(name: &str) -> Self {
        Arch(name.to_owned())
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Folds a user's spelling of an architecture for comparison: case-insensitive, and `-`/`_`
/// equivalent, as Nova's canonicalisation is (`X86_64`, `x86-64` and `x86_64` are one arch).
pub fn fold(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

/// What this program was built for, which is the host it runs on: (Rust's arch name, endianness).
///
/// `uname -m` cannot tell mips from mipsel; the compile target can.
pub fn build_target() -> (&'static str, Endian) {
    let endian = if cfg!(target_endian = "little") {
        Endian::Little
    } else {
        Endian::Big
    };
    (std::env::consts::ARCH, endian)
}

/// Byte order of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    /// Little-endian.
    Little,
    /// Big-endian.
    Big,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_ignores_case_space_and_dash() {
        assert_eq!(fold(" X86-64 "), "x86_64");
        assert_eq!(fold("AArch64"), "aarch64");
    }
}
