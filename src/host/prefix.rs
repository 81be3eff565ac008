//! A QEMU installed under a prefix of its own, beside the system's: the emulators in its `bin`
//! folder, and the data folders to pass with `-L` when the build is not relocatable.
//!
//! A prefix is a folder holding `usr/bin/qemu-system-*` (Debian's packages unpacked with
//! `dpkg -x`, `make install DESTDIR=...`) or `bin/qemu-system-*` (`./configure --prefix`).
//! Debian's QEMU is built for `/usr`, and looks there for its firmware and option ROMs wherever
//! its binary sits: `-L help` lists `/usr/share/qemu` even for a copy under the prefix, which
//! would then load the system QEMU's `bios-256k.bin` and `kvmvapic.bin`. [`QemuPrefix::open`]
//! asks one of its emulators (`-L help`), and when the list does not already lie under the
//! prefix, the same folders under the prefix become the `-L` arguments of every guest. QEMU
//! searches `-L` folders before its built-in ones, which stay as a fallback.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use crate::{
    host::firmware::Descriptors,
    host::{Emulator, HostFacts},
    profile::ProfileSet,
    util::pathser,
};

/// Where a prefix keeps its programs, most usual first.
const BIN_DIRS: [&str; 3] = ["usr/bin", "bin", "usr/local/bin"];

/// A QEMU prefix, with what [`QemuPrefix::open`] found in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuPrefix {
    /// The prefix, absolute.
    #[serde(with = "pathser")]
    pub dir: PathBuf,
    /// The data folders the emulators were built to search (`-L help` with no `-L`).
    pub builtin_data_dirs: Vec<PathBuf>,
    /// The prefix's own data folders, passed as `-L` to every guest; empty when the build
    /// already searches the prefix (it is relocatable, or was built for this prefix).
    pub data_dirs: Vec<PathBuf>,
    /// The prefix's loadable modules (display, audio, USB devices), given to QEMU as
    /// `QEMU_MODULE_DIR` when the build is not relocatable: it would otherwise try the system
    /// QEMU's, which another build refuses ("Only modules from the same build can be loaded").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_dir: Option<PathBuf>,
}

/// Why a prefix cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    /// The prefix is not a folder.
    #[error("--qemu-prefix {}: {reason}", dir.display())]
    NotADir {
        /// The prefix.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No `qemu-system-*` in any of its `bin` folders.
    #[error(
        "--qemu-prefix {}: no QEMU emulator (qemu-system-*) in {}",
        dir.display(), BIN_DIRS.map(|b| format!("{b}/")).join(", ")
    )]
    NoEmulators {
        /// The prefix.
        dir: PathBuf,
    },
    /// An emulator of the prefix does not run (a library missing, a binary for another host).
    #[error("--qemu-prefix {}: {} does not run: {reason}", dir.display(), binary.display())]
    DoesNotRun {
        /// The prefix.
        dir: PathBuf,
        /// The emulator tried.
        binary: PathBuf,
        /// QEMU's own message (its first stderr line), or how it failed.
        reason: String,
    },
}

impl PrefixError {
    /// What the user could do.
    pub fn hint(&self) -> Option<String> {
        match self {
            PrefixError::NoEmulators { .. } | PrefixError::NotADir { .. } => Some(
                "give the folder QEMU was installed into (the one holding usr/bin or bin); \
                 scripts/install-qemu VERSION makes one"
                    .into(),
            ),
            PrefixError::DoesNotRun { .. } => Some(
                "install what it needs (`ldd` on the emulator lists missing libraries), or use \
                 a QEMU built for this host"
                    .into(),
            ),
        }
    }
}

impl QemuPrefix {
    /// The emulators (`qemu-system-*`) of the prefix `dir`, by binary name; the first `bin`
    /// folder (`usr/bin`, `bin`, `usr/local/bin`) holding a name wins.
    pub fn emulators(dir: &Path) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for bin in BIN_DIRS.map(|b| dir.join(b)) {
            let Ok(listing) = std::fs::read_dir(&bin) else {
                continue;
            };
            for e in listing.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("qemu-system-") && e.path().is_file() {
                    out.entry(name).or_insert_with(|| e.path());
                }
            }
        }
        out
    }

    /// Opens the prefix `dir`: it must hold emulators, and `probe_with` (one of them, the
    /// first by name when `None`) must run; its `-L help` decides the `-L` folders.
    pub fn open(dir: &Path, probe_with: Option<&Path>) -> Result<QemuPrefix, PrefixError> {
        let dir = std::path::absolute(dir)
            .and_then(|d| d.canonicalize())
            .map_err(|e| PrefixError::NotADir {
                dir: dir.to_owned(),
                reason: e.to_string(),
            })?;
        if !dir.is_dir() {
            return Err(PrefixError::NotADir {
                dir,
                reason: "not a folder".into(),
            });
        }
        let binary = match probe_with {
            Some(b) => b.to_owned(),
            None => Self::emulators(&dir)
                .into_values()
                .next()
                .ok_or_else(|| PrefixError::NoEmulators { dir: dir.clone() })?,
        };
        let builtin = builtin_data_dirs(&binary).map_err(|reason| PrefixError::DoesNotRun {
            dir: dir.clone(),
            binary: binary.clone(),
            reason,
        })?;
        let data_dirs = own_data_dirs(&dir, &builtin);
        let module_dir = if data_dirs.is_empty() {
            None
        } else {
            module_dir(&dir)
        };
        Ok(QemuPrefix {
            dir,
            builtin_data_dirs: builtin,
            data_dirs,
            module_dir,
        })
    }

    /// The prefix an emulator path sits in: `P/usr/bin/qemu-*` or `P/bin/qemu-*` gives `P`,
    /// when `P` is not `/` and holds QEMU's data (`usr/share/qemu` or `share/qemu`).
    pub fn of_emulator(emulator: &Path) -> Option<PathBuf> {
        let bin = emulator.parent()?;
        if bin.file_name()? != "bin" {
            return None;
        }
        let mut dir = bin.parent()?;
        if dir.file_name().is_some_and(|n| n == "usr") {
            dir = dir.parent()?;
        }
        let has_data = ["usr/share/qemu", "share/qemu"]
            .iter()
            .any(|d| dir.join(d).is_dir());
        (dir != Path::new("/") && has_data).then(|| dir.to_owned())
    }

    /// The firmware descriptor folders of the prefix, most specific first: its `etc` then its
    /// `share`, for either layout.
    pub fn firmware_dirs(&self) -> Vec<PathBuf> {
        [
            "etc/qemu/firmware",
            "usr/share/qemu/firmware",
            "share/qemu/firmware",
        ]
        .iter()
        .map(|d| self.dir.join(d))
        .collect()
    }

    /// Whether `binary` is one of this prefix's.
    pub fn holds(&self, binary: &Path) -> bool {
        // The folder holding it, resolved: the binary itself may be a link out of the prefix.
        let dir = binary.parent().and_then(|d| d.canonicalize().ok());
        dir.is_some_and(|d| d.starts_with(&self.dir))
    }
}

impl HostFacts {
    /// Takes the emulators from the prefix `dir` instead of `PATH` (only those, so a guest
    /// whose emulator the prefix lacks is refused rather than run by another QEMU), records
    /// the prefix with its `-L` folders, and reads the firmware descriptors with the prefix's.
    pub fn use_prefix(&mut self, dir: &Path, profiles: &ProfileSet) -> Result<(), PrefixError> {
        let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let found = QemuPrefix::emulators(dir);
        // Ask the host's own emulator where there is one: the likeliest to run.
        let host_bin = self
            .arch
            .as_ref()
            .and_then(|a| profiles.get(a))
            .and_then(|p| found.get(&p.binary));
        let prefix = QemuPrefix::open(dir, host_bin.map(PathBuf::as_path))?;
        self.emulators = found
            .into_iter()
            .map(|(name, path)| {
                let e = Emulator {
                    path,
                    version: None,
                    caps: BTreeMap::new(),
                };
                (name, e)
            })
            .collect();
        self.firmware = Descriptors::with_prefix(Some(&prefix)).ok();
        self.qemu_prefix = Some(prefix);
        Ok(())
    }

    /// Records the prefix an `--emulator` path sits in ([`QemuPrefix::of_emulator`]), unless
    /// a prefix is recorded already; an emulator that does not run is left for the launch to
    /// report. Returns whether a prefix was found.
    pub fn infer_prefix(&mut self, emulator: &Path) -> bool {
        if self.qemu_prefix.is_some() {
            return false;
        }
        let Some(dir) = QemuPrefix::of_emulator(emulator) else {
            return false;
        };
        let Ok(prefix) = QemuPrefix::open(&dir, Some(emulator)) else {
            return false;
        };
        self.firmware = Descriptors::with_prefix(Some(&prefix)).ok();
        self.qemu_prefix = Some(prefix);
        true
    }
}

impl fmt::Display for QemuPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |dirs: &[PathBuf]| {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if self.data_dirs.is_empty() {
            let own = self
                .builtin_data_dirs
                .iter()
                .any(|d| d.starts_with(&self.dir));
            if own {
                write!(f, "{} (finds its own data)", self.dir.display())
            } else {
                write!(
                    f,
                    "{} (no data folders of its own: uses {})",
                    self.dir.display(),
                    list(&self.builtin_data_dirs)
                )
            }
        } else {
            write!(
                f,
                "{} (not relocatable: its data through -L {})",
                self.dir.display(),
                self.data_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -L ")
            )
        }
    }
}

/// What `BINARY -L help` lists: the folders the build searches for firmware and ROMs. `Err`
/// holds QEMU's first stderr line (e.g. the dynamic loader's missing library) or why it could
/// not start.
fn builtin_data_dirs(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new(binary)
        .args(["-L", "help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{} ({})", line.trim(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(|l| lexical(Path::new(l)))
        .collect())
}

/// A path with `.` and `..` taken out by name (`/usr/bin/../share/qemu` -> `/usr/share/qemu`,
/// as a relocatable build prints its folders), links left alone.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The folder of the prefix's QEMU modules (`*.so`): Debian's `usr/lib/<triplet>/qemu`, or
/// `lib/qemu`, `lib64/qemu` in either layout.
fn module_dir(prefix: &Path) -> Option<PathBuf> {
    let has_modules = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|l| {
            l.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "so"))
        })
    };
    let mut candidates = Vec::new();
    for lib in ["usr/lib", "lib", "usr/lib64", "lib64"].map(|l| prefix.join(l)) {
        candidates.push(lib.join("qemu"));
        // Multiarch: usr/lib/x86_64-linux-gnu/qemu.
        if let Ok(listing) = std::fs::read_dir(&lib) {
            let mut subs: Vec<PathBuf> = listing.flatten().map(|e| e.path().join("qemu")).collect();
            subs.sort();
            candidates.extend(subs);
        }
    }
    candidates.into_iter().find(|d| has_modules(d))
}

/// The `-L` folders for a prefix whose emulators search `builtin`: none when one of those
/// already lies under the prefix, else each built-in folder's counterpart under the prefix
/// (`/usr/share/qemu` -> `PREFIX/usr/share/qemu`) where it exists.
fn own_data_dirs(prefix: &Path, builtin: &[PathBuf]) -> Vec<PathBuf> {
    let canon = |d: &Path| d.canonicalize().unwrap_or_else(|_| d.to_owned());
    if builtin.iter().any(|d| canon(d).starts_with(prefix)) {
        return Vec::new();
    }
    builtin
        .iter()
        .filter_map(|d| d.strip_prefix("/").ok())
        .map(|rel| prefix.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A prefix whose one emulator is a script printing `help` for `-L help`, exiting `code`.
    fn fake(layout: &str, help: &str, code: i32) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join(layout);
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("qemu-system-x86_64");
        std::fs::write(
            &exe,
            format!("#!/bin/sh\nprintf '%s\\n' {help}\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (t, exe)
    }

    #[test]
    fn a_debian_build_gets_its_own_data_folders() {
        let (t, exe) = fake(
            "usr/bin",
            "/usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu",
            0,
        );
        for d in ["usr/share/qemu", "usr/share/seabios"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let p = QemuPrefix::open(t.path(), None).unwrap();
        let root = t.path().canonicalize().unwrap();
        assert_eq!(p.dir, root);
        assert_eq!(p.builtin_data_dirs.len(), 3);
        // No usr/lib/ipxe/qemu in the prefix: the system's stays QEMU's fallback.
        assert_eq!(
            p.data_dirs,
            [root.join("usr/share/qemu"), root.join("usr/share/seabios")]
        );
        assert_eq!(QemuPrefix::of_emulator(&exe), Some(t.path().to_owned()));
        assert_eq!(
            QemuPrefix::emulators(t.path()).keys().collect::<Vec<_>>(),
            ["qemu-system-x86_64"]
        );
        assert!(p.to_string().contains("not relocatable"), "{p}");
    }

    #[test]
    fn a_relocatable_build_needs_nothing() {
        let (t, exe) = fake("bin", "PLACEHOLDER", 0);
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("share/qemu")).unwrap();
        // It lists its own folder, as a relocatable build (or one built for this prefix) does.
        std::fs::write(
            &exe,
            format!("#!/bin/sh\necho {}/share/qemu\n", root.display()),
        )
        .unwrap();
        let p = QemuPrefix::open(&root, None).unwrap();
        assert!(p.data_dirs.is_empty(), "{p:?}");
        assert!(p.to_string().contains("finds its own data"), "{p}");
        assert_eq!(QemuPrefix::of_emulator(&exe), Some(root));
    }

    #[test]
    fn the_prefixs_descriptors_come_before_the_systems() {
        let p = QemuPrefix {
            dir: "/opt/q".into(),
            builtin_data_dirs: Vec::new(),
            data_dirs: Vec::new(),
            module_dir: None,
        };
        let dirs = crate::host::firmware::search_dirs_with(Some(&p));
        let at = |d: &str| dirs.iter().position(|x| x == Path::new(d)).unwrap();
        assert!(at("/opt/q/usr/share/qemu/firmware") < at("/etc/qemu/firmware"));
        assert!(at("/opt/q/etc/qemu/firmware") < at("/usr/share/qemu/firmware"));
        // The user's own still first.
        assert!(dirs[0].ends_with("qemu/firmware") && !dirs[0].starts_with("/opt"));
        assert_eq!(
            crate::host::firmware::search_dirs_with(None),
            crate::host::firmware::search_dirs()
        );
        assert_eq!(
            lexical(Path::new("/usr/bin/../share/./qemu")),
            Path::new("/usr/share/qemu")
        );
    }

    #[test]
    fn prefixes_that_cannot_serve() {
        let empty = tempfile::tempdir().unwrap();
        let e = QemuPrefix::open(empty.path(), None).unwrap_err();
        assert!(matches!(e, PrefixError::NoEmulators { .. }), "{e}");
        assert!(e.to_string().contains("no QEMU emulator"), "{e}");
        let e = QemuPrefix::open(&empty.path().join("nope"), None).unwrap_err();
        assert!(matches!(e, PrefixError::NotADir { .. }), "{e}");
        let (t, _) = fake(
            "usr/bin",
            "'error while loading shared libraries: libfoo.so.1' >&2; true",
            127,
        );
        let e = QemuPrefix::open(t.path(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not run: error while loading shared libraries: libfoo.so.1"),
            "{e}"
        );
        // A system emulator has no prefix of its own.
        assert_eq!(
            QemuPrefix::of_emulator(Path::new("/usr/bin/qemu-system-x86_64")),
            None
        );
    }
}
