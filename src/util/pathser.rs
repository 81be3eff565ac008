//! Serde for paths that may not be UTF-8.
//!
//! A path is written as a JSON/TOML string when it is UTF-8, and as an array of bytes when it is
//! not, so a plan holding any path the OS accepts can be printed and read back unchanged.

use std::{
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Bytes(Vec<u8>),
}

/// Serialises a path: a string when UTF-8, else its bytes.
pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(t) => s.serialize_str(t),
        None => s.collect_seq(path.as_os_str().as_bytes()),
    }
}

/// Reads a path written by [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(match Repr::deserialize(d)? {
        Repr::Text(t) => PathBuf::from(t),
        Repr::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
    })
}

/// The same for `Option<PathBuf>`.
pub mod option {
    use super::*;

    /// Serialises `Some(path)` as [`super::serialize`] does, `None` as none.
    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct W<'a>(#[serde(with = "super")] &'a PathBuf);
        path.as_ref().map(W).serialize(s)
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super")] PathBuf);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        p: PathBuf,
        #[serde(default, with = "super::option")]
        q: Option<PathBuf>,
    }

    #[test]
    fn non_utf8_paths_round_trip() {
        let t = T {
            p: PathBuf::from(OsString::from_vec(b"/tmp/a\xff,b".to_vec())),
            q: Some("/x y".into()),
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("[47,"), "{json}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        let none: T = serde_json::from_str(r#"{"p":"/k"}"#).unwrap();
        assert_eq!(none.q, None);
    }
}
