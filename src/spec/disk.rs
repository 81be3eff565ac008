//! Disks as the user names them, and how they are checked.
//!
//! On the command line: `--disk PATH[,format=raw|qcow2][,persist][,size=SIZE]`, repeatable. As in QEMU's
//! own option lists, a single `,` starts an option and `,,` is a literal comma, so every path can
//! be written and nothing after a single comma is ever taken as part of the path:
//! `--disk 'my,,disk.img,persist'` is the image `my,disk.img`, written through.
//!
//! In a spec file: `disk = "PATH"` (a plain path, as before), and/or a list of tables
//! `[[disks]]` with `path`, `format`, `persist` and `size`.
//!
//! `size=20G` gives the throw-away overlay a larger virtual size than the image's, so the guest
//! sees a bigger disk (cloud-init's growpart then grows the root partition into it); the image
//! itself is untouched. A size below the image's own virtual size is refused, as is `size=`
//! with `persist` (the image itself would have to be resized: `qemu-img resize` does that once)
//! and with a directory.
//!
//! The format is read from the image's header (the qcow2 magic `QFI\xfb`), never from its name;
//! `format=` may say `raw` for a qcow2 file (the guest then sees the qcow2 file's bytes), but not
//! `qcow2` for a file without the header. A directory is shown read-only as a FAT disk.

use std::{
    ffi::OsStr,
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    spec::error::{self, SpecError},
    util::{pathser, size::MemSize},
};

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
    /// A host directory shown as a FAT disk (QEMU vvfat), read-only.
    Dir,
}

/// A disk to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The image or directory.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// Its format: as given, else read from the file's header.
    pub format: DiskFormat,
    /// Whether guest writes reach the image (`persist`); if not, they go to a throw-away
    /// overlay and the image is only read.
    pub writable: bool,
    /// The virtual size in bytes the overlay gives the guest (`size=`), at least the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

const OPTIONS: &str =
    "options: format=raw|qcow2, persist, size=SIZE (write a comma in the path as ',,')";

/// A disk before validation: a `[[disks]]` table of a spec file, or one `--disk`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInput {
    /// The image or directory.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// `raw` or `qcow2`; default: read from the image's header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Guest writes reach the image itself (default: a throw-away overlay takes them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
    /// The virtual size the guest sees, e.g. `20G`: the throw-away overlay is made that large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

impl DiskInput {
    /// A disk given by its path alone.
    pub fn plain(path: impl Into<PathBuf>) -> DiskInput {
        DiskInput {
            path: path.into(),
            format: None,
            persist: false,
            size: None,
        }
    }

    /// Parses a `--disk` value: `PATH[,format=raw|qcow2][,persist][,size=SIZE]`, `,,` being a
    /// literal comma.
    pub fn parse(arg: &OsStr) -> Result<DiskInput, SpecError> {
        let invalid = |expected: String| SpecError::Invalid {
            field: "--disk".into(),
            value: arg.to_string_lossy().into_owned(),
            expected,
        };
        let mut parts = crate::util::qemu_opt::split(arg).into_iter();
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(invalid(format!("a path comes first; {OPTIONS}")));
        }
        let mut disk = DiskInput::plain(PathBuf::from(path));
        for opt in parts {
            let opt = opt.to_string_lossy();
            match opt.split_once('=') {
                _ if opt == "persist" => {
                    if disk.persist {
                        return Err(invalid("persist is given twice".into()));
                    }
                    disk.persist = true;
                }
                Some(("format", f)) => {
                    if disk.format.is_some() {
                        return Err(invalid("format is given twice".into()));
                    }
                    check_format("--disk", f)?;
                    disk.format = Some(f.to_owned());
                }
                Some(("size", n)) => {
                    if disk.size.is_some() {
                        return Err(invalid("size is given twice".into()));
                    }
                    check_size("--disk", n)?;
                    disk.size = Some(n.to_owned());
                }
                _ if opt.is_empty() => {
                    return Err(invalid(format!("an empty option; {OPTIONS}")));
                }
                _ => return Err(invalid(format!("unknown option '{opt}'; {OPTIONS}"))),
            }
        }
        Ok(disk)
    }
}

fn check_format(field: &str, f: &str) -> Result<DiskFormat, SpecError> {
    match f {
        "raw" => Ok(DiskFormat::Raw),
        "qcow2" => Ok(DiskFormat::Qcow2),
        _ => Err(SpecError::Invalid {
            field: format!("{field} format"),
            value: f.into(),
            expected: "valid: raw, qcow2 (default: read from the image's header)".into(),
        }),
    }
}

/// A `size=` value in bytes: a whole number of MiB with an optional unit (`20G`).
fn check_size(field: &str, n: &str) -> Result<u64, SpecError> {
    let size: MemSize =
        n.parse()
            .map_err(|e: crate::util::size::SizeError| SpecError::Invalid {
                field: format!("{field} size"),
                value: n.into(),
                expected: e.to_string(),
            })?;
    if size.mib() == 0 {
        return Err(SpecError::Invalid {
            field: format!("{field} size"),
            value: n.into(),
            expected: "a size above zero, e.g. 20G".into(),
        });
    }
    Ok(size.bytes())
}

/// The virtual size of an image: a qcow2 header's size field (bytes 24..32, big-endian), else
/// the file's length.
fn virtual_size(f: &mut File, format: DiskFormat, path: &Path) -> Result<u64, SpecError> {
    use std::io::{Seek, SeekFrom};
    if format != DiskFormat::Qcow2 {
        return f
            .metadata()
            .map(|m| m.len())
            .map_err(|e| open_error(path, e));
    }
    let mut header = [0u8; 8];
    f.seek(SeekFrom::Start(24))
        .and_then(|_| f.read_exact(&mut header))
        .map_err(|_| file_error(path, "a qcow2 header too short to hold the image's size"))?;
    Ok(u64::from_be_bytes(header))
}

/// Checks `size=` against the image: given only for an overlay, never below the image's size.
fn grown_size(
    input: &DiskInput,
    persist: bool,
    f: &mut File,
    format: DiskFormat,
) -> Result<Option<u64>, SpecError> {
    let Some(n) = &input.size else {
        return Ok(None);
    };
    let path = &input.path;
    // One name for the flag and the spec file's `[[disks]]` key, as for the disk's file errors.
    let field = "disk";
    let size = check_size(field, n)?;
    if persist {
        return Err(file_error(
            path,
            format!(
                "size={n} grows the throw-away overlay, and persist writes to the image itself; \
                 drop persist, or grow the image once with `qemu-img resize`"
            ),
        ));
    }
    let have = virtual_size(f, format, path)?;
    if size < have {
        return Err(SpecError::Invalid {
            field: format!("{field} size"),
            value: n.clone(),
            expected: format!(
                "at least the image's virtual size, {have} bytes ({} MiB): a disk cannot shrink",
                have.div_ceil(1024 * 1024)
            ),
        });
    }
    Ok(Some(size))
}

fn file_error(path: &Path, problem: impl Into<String>) -> SpecError {
    error::file_error("disk", path, problem)
}

fn open_error(path: &Path, e: std::io::Error) -> SpecError {
    error::open_error("disk", path, e)
}

/// Checks one disk: it exists and can be read (and written, with `persist`), its format from its
/// header, the options fit it. `persist_all` is the old `--disk-writable`.
pub fn validate(field: &str, input: &DiskInput, persist_all: bool) -> Result<Disk, SpecError> {
    let path = &input.path;
    let persist = input.persist || persist_all;
    let given = input
        .format
        .as_deref()
        .map(|f| check_format(field, f))
        .transpose()?;
    let meta = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
    if meta.is_dir() {
        if persist {
            return Err(file_error(
                path,
                "a directory disk is read-only; drop persist (or --disk-writable)",
            ));
        }
        if let Some(f) = &input.format {
            return Err(file_error(
                path,
                format!("a directory is shown as a read-only FAT disk; drop format={f}"),
            ));
        }
        if let Some(n) = &input.size {
            return Err(file_error(
                path,
                format!("a directory is shown as a FAT disk of its own size; drop size={n}"),
            ));
        }
        // Check we can list it: QEMU's vvfat fails late and vaguely otherwise.
        std::fs::read_dir(path).map_err(|e| open_error(path, e))?;
        return Ok(Disk {
            path: path.clone(),
            format: DiskFormat::Dir,
            writable: false,
            size: None,
        });
    }
    let mut f = File::open(path).map_err(|e| open_error(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| open_error(path, e))?;
    let detected = if n == 4 && &magic == QCOW2_MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    if given == Some(DiskFormat::Qcow2) && detected != DiskFormat::Qcow2 {
        return Err(file_error(
            path,
            "format=qcow2, but the file has no qcow2 header; drop format= or write format=raw",
        ));
    }
    if persist {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
    }
    let format = given.unwrap_or(detected);
    let size = grown_size(input, persist, &mut f, format)?;
    Ok(Disk {
        path: path.clone(),
        format,
        writable: persist,
        size,
    })
}

/// Refuses one image given twice where a guest writes to it: QEMU's image lock would stop the
/// guest at start with an error about "another process". Overlays of one image are fine.
pub fn check_distinct(disks: &[Disk]) -> Result<(), SpecError> {
    let id = |d: &Disk| {
        std::fs::metadata(&d.path)
            .ok()
            .filter(|m| !m.is_dir())
            .map(|m| (m.dev(), m.ino()))
    };
    for (i, a) in disks.iter().enumerate() {
        for b in &disks[i + 1..] {
            if (a.writable || b.writable) && id(a).is_some() && id(a) == id(b) {
                return Err(SpecError::Conflict {
                    first: format!("disk {}", a.path.display()),
                    second: format!("disk {}", b.path.display()),
                    why: "they are one image, and persist writes to it; give it once".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;

    fn parse(s: &str) -> Result<DiskInput, String> {
        DiskInput::parse(OsStr::new(s)).map_err(|e| e.to_string())
    }

    #[test]
    fn options_come_after_single_commas() {
        assert_eq!(parse("/a.img").unwrap(), DiskInput::plain("/a.img"));
        let d = parse("/a.img,format=qcow2,persist").unwrap();
        assert_eq!(
            (d.path.to_str(), d.format.as_deref(), d.persist),
            (Some("/a.img"), Some("qcow2"), true)
        );
        assert_eq!(parse("/a,,b.img").unwrap().path, Path::new("/a,b.img"));
        // A doubled comma before an option's comma: the path ends in a comma.
        let d = parse("/a,,,persist").unwrap();
        assert_eq!((d.path.to_str(), d.persist), (Some("/a,"), true));
        assert_eq!(parse("/x,,persist").unwrap().path, Path::new("/x,persist"));
        let raw = OsStr::from_bytes(b"/t/\xff,,x,persist");
        let d = DiskInput::parse(raw).unwrap();
        assert_eq!(d.path.as_os_str().as_bytes(), b"/t/\xff,x");
    }

    #[test]
    fn bad_options_name_the_field_and_the_way_out() {
        let e = parse("/a,b.img").unwrap_err();
        assert_eq!(
            e,
            "invalid --disk '/a,b.img': unknown option 'b.img'; options: format=raw|qcow2, \
             persist, size=SIZE (write a comma in the path as ',,')"
        );
        let e = parse("/a.img,format=vmdk").unwrap_err();
        assert_eq!(
            e,
            "invalid --disk format 'vmdk': valid: raw, qcow2 (default: read from the image's header)"
        );
        assert!(
            parse(",persist")
                .unwrap_err()
                .contains("a path comes first")
        );
        assert!(parse("/a.img,").unwrap_err().contains("an empty option"));
        assert!(
            parse("/a.img,persist,persist")
                .unwrap_err()
                .contains("persist is given twice")
        );
        assert!(
            parse("/a.img,format=raw,format=raw")
                .unwrap_err()
                .contains("format is given twice")
        );
    }

    #[test]
    fn format_comes_from_the_header_not_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("looks-raw.img");
        File::create(&q)
            .unwrap()
            .write_all(b"QFI\xfb\0\0\0\x03")
            .unwrap();
        let r = dir.path().join("looks-qcow2.qcow2");
        File::create(&r).unwrap().write_all(&[0u8; 512]).unwrap();
        let v = |p: &Path, format: Option<&str>, persist: bool| {
            validate(
                "disk",
                &DiskInput {
                    path: p.to_owned(),
                    format: format.map(Into::into),
                    persist,
                    size: None,
                },
                false,
            )
        };
        assert_eq!(v(&q, None, false).unwrap().format, DiskFormat::Qcow2);
        assert_eq!(v(&r, None, false).unwrap().format, DiskFormat::Raw);
        // Explicit raw over a qcow2 header is the user's call; qcow2 over raw is refused.
        assert_eq!(v(&q, Some("raw"), false).unwrap().format, DiskFormat::Raw);
        let e = v(&r, Some("qcow2"), false).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "format=qcow2, but the file has no qcow2 header; drop format= or write format=raw"
            ),
            "{e}"
        );
        assert_eq!(v(dir.path(), None, false).unwrap().format, DiskFormat::Dir);
        assert!(v(dir.path(), None, true).is_err());
        assert!(v(dir.path(), Some("raw"), false).is_err());
        assert!(v(&r, None, false).is_ok_and(|d| !d.writable));
        assert!(v(&r, None, true).is_ok_and(|d| d.writable));
        // --disk-writable: persist for every disk.
        let all = validate("disk", &DiskInput::plain(&r), true).unwrap();
        assert!(all.writable);
        let e = v(&dir.path().join("nope"), None, false)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("nope: no such file"), "{e}");
    }

    #[test]
    fn one_image_twice_is_refused_only_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().join("a.img");
        std::fs::write(&r, [0u8; 512]).unwrap();
        let d = |writable| Disk {
            path: r.clone(),
            format: DiskFormat::Raw,
            writable,
            size: None,
        };
        assert!(check_distinct(&[d(false), d(false)]).is_ok());
        let e = check_distinct(&[d(false), d(true)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("they are one image"), "{e}");
    }

    #[test]
    fn size_grows_the_overlay_never_shrinks_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.img");
        std::fs::write(&raw, vec![0u8; 2 << 20]).unwrap();
        // A qcow2 header claiming a 3 GiB virtual size.
        let q = dir.path().join("b.qcow2");
        let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
        header.resize(24, 0);
        header.extend_from_slice(&(3u64 << 30).to_be_bytes());
        std::fs::write(&q, &header).unwrap();
        let v = |p: &Path, size: &str, persist: bool| {
            let mut d = DiskInput::plain(p);
            d.size = Some(size.into());
            d.persist = persist;
            validate("disks", &d, false).map_err(|e| e.to_string())
        };
        assert_eq!(v(&raw, "20G", false).unwrap().size, Some(20 << 30));
        assert_eq!(v(&raw, "2M", false).unwrap().size, Some(2 << 20));
        assert_eq!(v(&q, "3G", false).unwrap().size, Some(3 << 30));
        let e = v(&q, "2G", false).unwrap_err();
        assert_eq!(
            e,
            "invalid disk size '2G': at least the image's virtual size, 3221225472 bytes \
             (3072 MiB): a disk cannot shrink"
        );
        assert!(v(&raw, "1M", false).unwrap_err().contains("cannot shrink"));
        assert!(v(&raw, "20G", true).unwrap_err().contains("drop persist"));
        assert!(
            v(dir.path(), "20G", false)
                .unwrap_err()
                .contains("drop size=20G")
        );
        assert!(
            parse("/a.img,size=lots")
                .unwrap_err()
                .starts_with("invalid --disk size 'lots': ")
        );
        assert!(parse("/a.img,size=0").unwrap_err().contains("above zero"));
        assert!(
            parse("/a.img,size=1G,size=2G")
                .unwrap_err()
                .contains("size is given twice")
        );
        assert_eq!(
            parse("/a.img,size=20G").unwrap().size.as_deref(),
            Some("20G")
        );
    }
}
