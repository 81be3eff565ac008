//! Values worked out from a file (a QEMU binary's sha256), kept in a cache folder while the
//! file's real path, size and mtime stay the same: reading a 20-50 MB binary on every command
//! would cost more than the command.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::file_stamp;

/// The user's cache folder for qemu-direct: `$XDG_CACHE_HOME/qemu-direct`, else
/// `~/.cache/qemu-direct`; `None` with neither variable set.
pub fn user_cache_root() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("qemu-direct"))
}

/// A path as one file name: what is not alphanumeric, `-` or `.` becomes `_`, without the
/// leading ones (`/usr/bin/qemu` → `usr_bin_qemu`).
pub fn file_stem(path: &Path) -> String {
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
    stem.trim_start_matches('_').to_owned()
}

/// Which file, as it is now: its real path, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    /// The real path (links resolved).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its mtime in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of `file` now.
    pub fn of(file: &Path) -> std::io::Result<FileStamp> {
        let path = fs::canonicalize(file)?;
        let meta = fs::metadata(&path)?;
        Ok(FileStamp {
            size: meta.len(),
            mtime_ns: file_stamp::mtime_ns(&meta),
            path,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<T> {
    stamp: FileStamp,
    value: T,
}

/// A folder of values, one JSON file per file they were worked out from.
#[derive(Debug, Clone)]
pub struct StampedCache {
    dir: Option<PathBuf>,
}

impl StampedCache {
    /// The user's cache of one kind of value: `kind` under [`user_cache_root`]; without a root,
    /// no cache (every lookup works the value out).
    pub fn user(kind: &str) -> StampedCache {
        StampedCache {
            dir: user_cache_root().map(|r| r.join(kind)),
        }
    }

    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> StampedCache {
        StampedCache {
            dir: Some(dir.into()),
        }
    }

    /// `file`'s value: from the cache while the file's stamp is unchanged, else `compute`d from
    /// its real path and stored. A cache that cannot be read or written is not an error.
    pub fn get<T, E>(
        &self,
        file: &Path,
        compute: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<std::io::Error>,
    {
        let stamp = FileStamp::of(file)?;
        let place = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{}.json", file_stem(&stamp.path))));
        if let Some(place) = &place
            && let Ok(text) = fs::read(place)
            && let Ok(entry) = serde_json::from_slice::<Entry<T>>(&text)
            && entry.stamp == stamp
        {
            return Ok(entry.value);
        }
        let value = compute(&stamp.path)?;
        let entry = Entry { stamp, value };
        if let Some(place) = &place {
            let _ = store(place, &entry);
        }
        Ok(entry.value)
    }
}

/// Writes an entry beside its place and renames it there, so a reader never sees half of one.
fn store<T: Serialize>(file: &Path, entry: &Entry<T>) -> std::io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("no folder"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    fs::write(&tmp, serde_json::to_vec(entry)?)?;
    fs::rename(&tmp, file).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_value_is_worked_out_again_only_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StampedCache::at(dir.path().join("c"));
        let f = dir.path().join("bin");
        fs::write(&f, b"one").unwrap();
        let runs = Cell::new(0);
        let len = |p: &Path| -> std::io::Result<u64> {
            runs.set(runs.get() + 1);
            Ok(fs::metadata(p)?.len())
        };
        assert_eq!(cache.get(&f, len).unwrap(), 3);
        assert_eq!(cache.get(&f, len).unwrap(), 3);
        assert_eq!(runs.get(), 1);
        fs::write(&f, b"three").unwrap();
        assert_eq!(cache.get(&f, len).unwrap(), 5);
        assert_eq!(runs.get(), 2);
        // A link is the file it points at: one entry.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(cache.get(&link, len).unwrap(), 5);
        assert_eq!(runs.get(), 2);
        let missing = cache.get(&dir.path().join("nope"), len);
        assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn paths_become_one_file_name() {
        assert_eq!(
            file_stem(Path::new("/usr/bin/qemu-system-x86_64")),
            "usr_bin_qemu-system-x86_64"
        );
        assert_eq!(file_stem(Path::new("/a b/c")), "a_b_c");
    }
}
