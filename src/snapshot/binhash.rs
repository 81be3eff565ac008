//! The content hash (sha256) of the QEMU binary a snapshot was written by, cached by the
//! binary's path, size and mtime: hashing a 20-50 MB emulator on every restore would cost more
//! than the restore.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{host::caps::CapsCache, util::file_stamp};

/// One cached hash: valid while the file's path, size and mtime are these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    sha256: String,
}

/// The sha256 of `binary` (its real path), as lowercase hex: from the cache in
/// `$XDG_CACHE_HOME/qemu-direct/hashes/` while the file's size and mtime are unchanged, else
/// computed and stored (a cache that cannot be written is not an error).
pub fn sha256_of(binary: &Path) -> std::io::Result<String> {
    let path = fs::canonicalize(binary)?;
    let meta = fs::metadata(&path)?;
    let stamp = |sha256: String| Entry {
        path: path.clone(),
        size: meta.len(),
        mtime_ns: file_stamp::mtime_ns(&meta),
        sha256,
    };
    let cache = cache_file(&path);
    if let Some(file) = &cache
        && let Ok(text) = fs::read(file)
        && let Ok(entry) = serde_json::from_slice::<Entry>(&text)
        && entry == stamp(entry.sha256.clone())
    {
        return Ok(entry.sha256);
    }
    let sha256 = hash_file(&path)?;
    if let Some(file) = &cache {
        let _ = store(file, &stamp(sha256.clone()));
    }
    Ok(sha256)
}

/// A file's mtime in nanoseconds since the epoch.
/// The sha256 of a file's bytes, as lowercase hex.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where `path`'s entry is kept, beside the capability cache; `None` without a cache folder.
fn cache_file(path: &Path) -> Option<PathBuf> {
    let caps = CapsCache::user();
    let root = caps.dir()?.parent()?;
    let stem: String = path
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(
        root.join("hashes")
            .join(format!("{}.json", stem.trim_start_matches('_'))),
    )
}

/// Writes an entry beside its place and renames it there, so a reader never sees half of one.
fn store(file: &Path, entry: &Entry) -> std::io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("no folder"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    fs::write(&tmp, serde_json::to_vec(entry)?)?;
    fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(
            hash_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
