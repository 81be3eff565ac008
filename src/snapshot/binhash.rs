//! The content hash (sha256) of the QEMU binary a snapshot was written by, cached by the
//! binary's path, size and mtime: hashing a 20-50 MB emulator on every restore would cost more
//! than the restore.

use std::{fs, io::Read, path::Path};

use sha2::{Digest, Sha256};

use crate::util::stamped::StampedCache;

/// The sha256 of `binary` (its real path), as lowercase hex: from the cache in
/// `$XDG_CACHE_HOME/qemu-direct/hashes/` while the file's size and mtime are unchanged, else
/// computed and stored (a cache that cannot be written is not an error).
pub fn sha256_of(binary: &Path) -> std::io::Result<String> {
    StampedCache::user("hashes").get(binary, hash_file)
}

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
