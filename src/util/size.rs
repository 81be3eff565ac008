//! Memory sizes as people write them (`512M`, `2G`, `1GiB`, `1024`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MIB: u64 = 1024 * 1024;

/// A memory size, held in whole MiB (QEMU's `-m` unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemSize {
    mib: u64,
}

/// Why a memory size could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional binary unit.
    #[error(
        "'{0}' is not a size: write a whole number with an optional unit K, M, G or T (binary; plain numbers are MiB), e.g. 512M or 2G"
    )]
    Syntax(String),
    /// A size that is not a whole number of MiB.
    #[error("'{0}' is not a whole number of MiB")]
    NotWholeMib(String),
    /// Larger than anything a machine could have.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

impl MemSize {
    /// A size of `mib` MiB.
    pub const fn from_mib(mib: u64) -> Self {
        MemSize { mib }
    }

    /// The size in MiB.
    pub const fn mib(self) -> u64 {
        self.mib
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.mib * MIB
    }
}

impl FromStr for MemSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(SizeError::Syntax(s.to_owned()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| SizeError::TooLarge(s.to_owned()))?;
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let shift = match unit {
            "k" => 10,
            "" | "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(SizeError::Syntax(s.to_owned())),
        };
        let bytes = u128::from(n) << shift;
        if bytes % u128::from(MIB) != 0 {
            return Err(SizeError::NotWholeMib(s.to_owned()));
        }
        let mib = u64::try_from(bytes / u128::from(MIB))
            .map_err(|_| SizeError::TooLarge(s.to_owned()))?;
        // Past 2^44 MiB (16 EiB) bytes() would overflow.
        if mib > (u64::MAX / MIB) {
            return Err(SizeError::TooLarge(s.to_owned()));
        }
        Ok(MemSize { mib })
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mib.is_multiple_of(1024) && self.mib != 0 {
            write!(f, "{}G", self.mib / 1024)
        } else {
            write!(f, "{}M", self.mib)
        }
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("512M".parse::<MemSize>().unwrap().mib(), 512);
        assert_eq!("512".parse::<MemSize>().unwrap().mib(), 512);
        assert_eq!("2G".parse::<MemSize>().unwrap().mib(), 2048);
        assert_eq!("1GiB".parse::<MemSize>().unwrap().mib(), 1024);
        assert_eq!("2048k".parse::<MemSize>().unwrap().mib(), 2);
        assert_eq!("1t".parse::<MemSize>().unwrap().mib(), 1024 * 1024);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "M", "12X", "1.5G", "-1G", "12 M M"] {
            assert!(
                matches!(bad.parse::<MemSize>(), Err(SizeError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "1000k".parse::<MemSize>(),
            Err(SizeError::NotWholeMib("1000k".into()))
        );
        assert!(matches!(
            "99999999999999999999999G".parse::<MemSize>(),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            "999999999999T".parse::<MemSize>(),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_round_trip() {
        for s in ["512M", "2G", "1536M"] {
            assert_eq!(s.parse::<MemSize>().unwrap().to_string(), s);
        }
    }
}
