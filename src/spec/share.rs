//! Host folders shared with the guest, as the user names them, and how they are checked.
//!
//! On the command line: `--share HOSTDIR[:TAG][,ro][,fs=9p|virtiofs|auto]`, repeatable. As with
//! `--disk`, a single `,` starts an option and `,,` is a literal comma. The tag is what follows
//! the last `:` when that holds no `/` (so `/srv/a:b/c` is a path with no tag); a folder whose
//! last name holds a `:` needs its tag written out (`/srv/a:b:data`).
//!
//! In a spec file: a list of tables `[[shares]]` with `path`, `tag`, `readonly` and `fs`.
//!
//! The tag is what the guest mounts (`mount -t virtiofs TAG /mnt`, or `-t 9p`); by default the
//! folder's own name, with what a tag cannot hold replaced by `_`. How the folder reaches the
//! guest (9p or virtiofs) is decided by the plan, which knows the arch and the host's
//! `virtiofsd`.

use std::{
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    spec::error::{SpecError, file_error, open_error},
    util::{pathser, qemu_opt},
};

/// The longest tag of any transport: virtio-fs's (its config space holds 36 bytes). 9p's is
/// shorter ([`MAX_TAG_9P`]), checked once the plan has chosen 9p.
pub const MAX_TAG: usize = 36;
/// The longest 9p mount tag: QEMU (7.2) refuses longer ones ("longer than maximum (31
/// bytes)").
pub const MAX_TAG_9P: usize = 31;

const OPTIONS: &str = "options: ro, fs=9p|virtiofs|auto (write HOSTDIR[:TAG][,ro][,fs=...]; a comma in HOSTDIR as ',,')";

/// How a folder reaches the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareFs {
    /// virtiofs where the arch and host allow it (a `virtiofsd` to run), else 9p.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// 9p over virtio (`-fsdev local` and `virtio-9p-*`): QEMU alone, every arch.
    #[serde(rename = "9p")]
    NineP,
    /// virtiofs (`vhost-user-fs-*` and a `virtiofsd` per share): faster, needs the daemon and
    /// shared guest memory.
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

impl ShareFs {
    /// The spelling users write.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareFs::Auto => "auto",
            ShareFs::NineP => "9p",
            ShareFs::Virtiofs => "virtiofs",
        }
    }

    fn parse(field: &str, s: &str) -> Result<ShareFs, SpecError> {
        match s {
            "auto" => Ok(ShareFs::Auto),
            "9p" => Ok(ShareFs::NineP),
            "virtiofs" => Ok(ShareFs::Virtiofs),
            _ => Err(SpecError::Invalid {
                field: format!("{field} fs"),
                value: s.into(),
                expected: "valid: 9p, virtiofs, auto (the default: virtiofs where it can run, \
                           else 9p)"
                    .into(),
            }),
        }
    }
}

impl fmt::Display for ShareFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared folder before validation: a `[[shares]]` table of a spec file, or one `--share`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShareInput {
    /// The host folder.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// The tag the guest mounts; default: the folder's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The guest may only read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// `9p`, `virtiofs` or `auto` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<ShareFs>,
}

/// A checked shared folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The host folder, absolute, symbolic links resolved.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// The tag the guest mounts.
    pub tag: String,
    /// The guest may only read.
    pub readonly: bool,
    /// How the folder reaches the guest, as asked.
    pub fs: ShareFs,
}

impl ShareInput {
    /// A folder given by its path alone.
    pub fn plain(path: impl Into<PathBuf>) -> ShareInput {
        ShareInput {
            path: path.into(),
            tag: None,
            readonly: false,
            fs: None,
        }
    }

    /// Parses a `--share` value: `HOSTDIR[:TAG][,ro][,fs=9p|virtiofs|auto]`.
    pub fn parse(arg: &OsStr) -> Result<ShareInput, SpecError> {
        let invalid = |expected: String| SpecError::Invalid {
            field: "--share".into(),
            value: arg.to_string_lossy().into_owned(),
            expected,
        };
        let mut parts = qemu_opt::split(arg).into_iter();
        let first = parts.next().unwrap_or_default();
        let (path, tag) = split_tag(&first);
        if path.as_os_str().is_empty() {
            return Err(invalid(format!("a folder comes first; {OPTIONS}")));
        }
        let mut share = ShareInput::plain(path);
        share.tag = tag;
        for opt in parts {
            match opt.to_string_lossy().split_once('=') {
                None if opt == "ro" || opt == "readonly" => {
                    if share.readonly {
                        return Err(invalid("ro is given twice".into()));
                    }
                    share.readonly = true;
                }
                Some(("fs", f)) => {
                    if share.fs.is_some() {
                        return Err(invalid("fs is given twice".into()));
                    }
                    share.fs = Some(ShareFs::parse("--share", f)?);
                }
                _ if opt.is_empty() => return Err(invalid(format!("an empty option; {OPTIONS}"))),
                _ => {
                    return Err(invalid(format!(
                        "unknown option '{}'; {OPTIONS}",
                        opt.to_string_lossy()
                    )));
                }
            }
        }
        Ok(share)
    }
}

/// `HOSTDIR[:TAG]`: the tag is after the last `:`, unless that part holds a `/`.
fn split_tag(first: &OsStr) -> (PathBuf, Option<String>) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = first.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(i) if !bytes[i + 1..].contains(&b'/') => (
            PathBuf::from(OsStr::from_bytes(&bytes[..i])),
            Some(String::from_utf8_lossy(&bytes[i + 1..]).into_owned()),
        ),
        _ => (PathBuf::from(first), None),
    }
}

/// Checks one share: the folder exists and is a folder this process can list; the tag, given
/// or made from the folder's name, is one a guest can mount.
pub fn validate(field: &str, input: &ShareInput) -> Result<Share, SpecError> {
    let path = &input.path;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_error(field, path, "no such folder"),
        _ => open_error(field, path, e),
    })?;
    if !meta.is_dir() {
        return Err(file_error(
            field,
            path,
            "not a folder; share a folder (a disk image goes in with --disk)",
        ));
    }
    std::fs::read_dir(path).map_err(|e| open_error(field, path, e))?;
    let path = std::fs::canonicalize(path).map_err(|e| open_error(field, path, e))?;
    let tag = match &input.tag {
        Some(t) => check_tag(field, t)?,
        None => default_tag(&path),
    };
    Ok(Share {
        path,
        tag,
        readonly: input.readonly,
        fs: input.fs.unwrap_or_default(),
    })
}

/// A tag of 1 to [`MAX_TAG`] letters, digits, `-`, `_` and `.`: what every transport and the
/// guest's mount command take as it is.
fn check_tag(field: &str, tag: &str) -> Result<String, SpecError> {
    let invalid = |expected: String| SpecError::Invalid {
        field: format!("{field} tag"),
        value: tag.into(),
        expected,
    };
    if tag.is_empty() {
        return Err(invalid(
            "empty; leave out the ':' for the folder's name".into(),
        ));
    }
    if let Some(c) = tag.chars().find(|c| !tag_char(*c)) {
        return Err(invalid(format!(
            "'{c}' is not allowed; a tag holds letters, digits, '-', '_' and '.'"
        )));
    }
    if tag.len() > MAX_TAG {
        return Err(invalid(format!(
            "{} bytes; a tag holds at most {MAX_TAG} ({MAX_TAG_9P} over 9p)",
            tag.len()
        )));
    }
    Ok(tag.to_owned())
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The folder's name as a tag: what a tag cannot hold becomes `_`, cut to [`MAX_TAG_9P`] bytes
/// so that it fits either transport; `root` for `/`.
pub fn default_tag(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tag: String = name
        .chars()
        .map(|c| if tag_char(c) { c } else { '_' })
        .take(MAX_TAG_9P)
        .collect();
    if tag.is_empty() {
        tag = "root".into();
    }
    tag
}

/// Refuses two shares with one tag: the guest could mount only one of them.
pub fn check_distinct(shares: &[Share]) -> Result<(), SpecError> {
    for (i, a) in shares.iter().enumerate() {
        if let Some(b) = shares[i + 1..].iter().find(|b| b.tag == a.tag) {
            return Err(SpecError::Conflict {
                first: format!("share {}", a.path.display()),
                second: format!("share {}", b.path.display()),
                why: format!(
                    "both have the tag '{}'; give one another tag (HOSTDIR:TAG)",
                    a.tag
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ShareInput, String> {
        ShareInput::parse(OsStr::new(s)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_tag_follows_the_last_colon_and_options_the_commas() {
        assert_eq!(parse("/srv/data").unwrap(), ShareInput::plain("/srv/data"));
        let s = parse("/srv/data:tag1,ro,fs=9p").unwrap();
        assert_eq!(
            (s.path.to_str(), s.tag.as_deref(), s.readonly, s.fs),
            (Some("/srv/data"), Some("tag1"), true, Some(ShareFs::NineP))
        );
        // A colon inside the path, with no tag after it.
        assert_eq!(parse("/srv/a:b/c").unwrap().tag, None);
        let s = parse("/srv/a:b:t,,x").unwrap();
        assert_eq!(
            (s.path.to_str(), s.tag.as_deref()),
            (Some("/srv/a:b"), Some("t,x"))
        );
        assert_eq!(parse("/a,,b,fs=virtiofs").unwrap().path, Path::new("/a,b"));
    }

    #[test]
    fn bad_options_name_the_field_and_what_is_valid() {
        assert_eq!(
            parse("/srv,fs=nfs").unwrap_err(),
            "invalid --share fs 'nfs': valid: 9p, virtiofs, auto (the default: virtiofs where \
             it can run, else 9p)"
        );
        assert!(
            parse("/srv,rw")
                .unwrap_err()
                .contains("unknown option 'rw'")
        );
        assert!(parse(",ro").unwrap_err().contains("a folder comes first"));
        assert!(parse(":tag").unwrap_err().contains("a folder comes first"));
        assert!(
            parse("/srv,ro,ro")
                .unwrap_err()
                .contains("ro is given twice")
        );
        assert!(parse("/srv,").unwrap_err().contains("an empty option"));
    }

    #[test]
    fn folders_and_tags_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("my data (1)");
        std::fs::create_dir(&sub).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let v = |p: &Path, tag: Option<&str>| {
            let mut i = ShareInput::plain(p);
            i.tag = tag.map(Into::into);
            validate("--share", &i).map_err(|e| e.to_string())
        };
        let s = v(&sub, None).unwrap();
        assert_eq!(s.tag, "my_data__1_");
        assert!(s.path.is_absolute());
        let e = v(&file, None).unwrap_err();
        assert!(e.contains("not a folder"), "{e}");
        let e = v(&dir.path().join("nope"), None).unwrap_err();
        assert!(e.ends_with("nope: no such folder"), "{e}");
        assert!(
            v(&sub, Some("a/b"))
                .unwrap_err()
                .contains("'/' is not allowed")
        );
        assert!(
            v(&sub, Some(&"t".repeat(37)))
                .unwrap_err()
                .contains("37 bytes")
        );
        assert_eq!(v(&sub, Some(&"t".repeat(36))).unwrap().tag.len(), 36);
        assert_eq!(default_tag(Path::new("/")), "root");
        assert_eq!(
            default_tag(&Path::new("/x").join("y".repeat(40))).len(),
            MAX_TAG_9P
        );
        let a = v(&sub, Some("t")).unwrap();
        let e = check_distinct(&[a.clone(), a]).unwrap_err().to_string();
        assert!(e.contains("both have the tag 't'"), "{e}");
    }
}
