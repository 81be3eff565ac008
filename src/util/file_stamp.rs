//! When a file last changed, as one number: caches keyed by a file's identity (the capability
//! cache, the emulator hash cache, snapshot manifests) compare it with the file's size.

use std::{fs::Metadata, os::unix::fs::MetadataExt};

/// The file's modification time in nanoseconds since the epoch (wide enough for any time a
/// file system can hold).
pub fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}
