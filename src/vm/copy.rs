//! Copying one file between the host and a guest through its agent, bytes and permission bits
//! kept: what `qemu-direct cp` does. A guest end is written `NAME:/path` ([`GuestPath`]).
//!
//! Directories are refused: one file per copy, each over a few agent round trips (plus a
//! `stat` in the guest). A folder goes faster as one tar stream through `exec --stdin`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::GuestError;
use crate::{
    agent::{Agent, AgentError, ExecRequest},
    util::name,
};

/// A file in a guest: an instance name and a path in it, written `NAME:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPath {
    /// The instance.
    pub instance: String,
    /// The path in the guest (absolute, for a copy).
    pub path: String,
}

impl GuestPath {
    /// `NAME:PATH` where NAME is a valid instance name; `None` for anything else, which is a
    /// host path (write `./a:b` for a host file named `a:b`).
    pub fn parse(s: &str) -> Option<GuestPath> {
        let (instance, path) = s.split_once(':')?;
        name::is_valid(instance).then(|| GuestPath {
            instance: instance.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for GuestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.instance, self.path)
    }
}

/// A finished copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The file written, host or guest path.
    pub to: String,
    /// Its size.
    pub bytes: u64,
    /// The permission bits it got, the source's.
    pub mode: u32,
}

/// What `stat` says of a guest path.
struct Stat {
    mode: u32,
    is_dir: bool,
}

/// Copies host file `src` to `dst` in the guest, a file or an existing folder (also when `dst`
/// ends in `/`), with `src`'s permission bits.
///
/// Fails with [`AgentError::MissingFolder`] if the guest folder does not exist, and with
/// [`GuestError::Usage`] for a directory or a relative guest path.
pub async fn copy_to_guest(agent: &Agent, src: &Path, dst: &str) -> Result<Copied, GuestError> {
    let meta = std::fs::metadata(src).map_err(host_err("read", src))?;
    if meta.is_dir() {
        return Err(directory(&src.display().to_string()));
    }
    absolute(dst)?;
    let Some(file_name) = src.file_name().and_then(|n| n.to_str()) else {
        return Err(GuestError::Usage(format!(
            "{} has no file name that the guest agent can take (UTF-8)",
            src.display()
        )));
    };
    let into_folder = dst.ends_with('/') || stat(agent, dst).await?.is_some_and(|s| s.is_dir);
    let to = if into_folder {
        format!("{}/{file_name}", dst.trim_end_matches('/'))
    } else {
        dst.to_owned()
    };
    let bytes = std::fs::read(src).map_err(host_err("read", src))?;
    let mode = meta.permissions().mode() & 0o7777;
    agent.write_file(&to, &bytes, Some(mode)).await?;
    Ok(Copied {
        to,
        bytes: bytes.len() as u64,
        mode,
    })
}

/// Copies guest file `src` to `dst` on the host, a file or an existing folder (also when `dst`
/// ends in `/`), with `src`'s permission bits.
///
/// Fails with [`AgentError::MissingFile`] if `src` does not exist, and with
/// [`GuestError::Usage`] for a directory or a relative guest path.
pub async fn copy_from_guest(agent: &Agent, src: &str, dst: &Path) -> Result<Copied, GuestError> {
    absolute(src)?;
    let Some(found) = stat(agent, src).await? else {
        return Err(AgentError::MissingFile { path: src.into() }.into());
    };
    if found.is_dir {
        return Err(directory(src));
    }
    let file_name = src.trim_end_matches('/').rsplit('/').next().unwrap_or(src);
    let to: PathBuf = if dst.is_dir() || dst.as_os_str().to_string_lossy().ends_with('/') {
        dst.join(file_name)
    } else {
        dst.to_owned()
    };
    let bytes = agent.read_file(src).await?;
    std::fs::write(&to, &bytes).map_err(host_err("write", &to))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(found.mode))
        .map_err(host_err("set the mode of", &to))?;
    Ok(Copied {
        to: to.display().to_string(),
        bytes: bytes.len() as u64,
        mode: found.mode,
    })
}

fn host_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.to_owned();
    move |source| GuestError::Host {
        action,
        path,
        source,
    }
}

fn directory(path: &str) -> GuestError {
    GuestError::Usage(format!(
        "{path} is a directory: cp copies one file (a folder goes as a tar stream: \
         `tar -C DIR -cf - . | qemu-direct exec NAME --stdin -- tar -C /dest -xf -`)"
    ))
}

fn absolute(guest_path: &str) -> Result<(), GuestError> {
    if guest_path.starts_with('/') {
        return Ok(());
    }
    Err(GuestError::Usage(format!(
        "the guest path '{guest_path}' is not absolute; write NAME:/path"
    )))
}

/// The guest path's permission bits and whether it is a folder (following symlinks), with
/// `stat` in the guest; `None` if it does not exist.
async fn stat(agent: &Agent, path: &str) -> Result<Option<Stat>, GuestError> {
    let args = ["-L", "-c", "%a %F", path];
    let out = agent.exec(ExecRequest::new("stat", args)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(AgentError::Helper {
            command: format!("stat {}", args.join(" ")),
            status: out.status,
            stderr,
        }
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mode, kind) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let mode = u32::from_str_radix(mode, 8).map_err(|_| AgentError::Malformed {
        command: "stat -c %a %F".into(),
        reply: text.trim().to_owned(),
    })?;
    Ok(Some(Stat {
        mode,
        is_dir: kind == "directory",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ends_are_name_colon_path() {
        let g = GuestPath::parse("a64:/tmp/x").unwrap();
        assert_eq!((g.instance.as_str(), g.path.as_str()), ("a64", "/tmp/x"));
        assert_eq!(g.to_string(), "a64:/tmp/x");
        assert_eq!(GuestPath::parse("a64:rel").unwrap().path, "rel");
        for host in ["/tmp/a:b", "./a:b", "plain", "-x:/y", "a b:/c", ":/x"] {
            assert_eq!(GuestPath::parse(host), None, "{host}");
        }
        assert!(absolute("rel").is_err());
        assert!(directory("/etc").to_string().contains("tar"));
    }
}
