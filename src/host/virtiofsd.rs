//! The host's `virtiofsd`, the daemon that serves a folder to a guest over virtiofs: where it
//! is, which of the two there are, and what it can do.
//!
//! QEMU up to 7.2 ships a C `virtiofsd` (Debian: `qemu-system-common`,
//! `/usr/lib/qemu/virtiofsd`): `--socket-path=S -o source=DIR`, no read-only mode, and it runs
//! only as root. QEMU 8.0 dropped it for the Rust one (Debian: `virtiofsd`,
//! `/usr/libexec/virtiofsd`; or `cargo install virtiofsd`): `--socket-path S --shared-dir DIR`,
//! `--readonly` in newer releases, and unprivileged with `--sandbox none` (no namespace sandbox;
//! what needs root in the folder, chown, then fails). Both take a listening socket as
//! `--fd=N`, which is how the launcher hands it one. Which one a binary is, is read from its
//! `--help`.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use crate::util::pathser;

/// Where `virtiofsd` is looked for after `PATH`: the Rust one's and QEMU's own places.
pub const PLACES: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
/// The Debian package of QEMU 7.2's C `virtiofsd`.
pub const C_PACKAGE: &str = "qemu-system-common";
/// The Debian package of the Rust `virtiofsd`.
pub const RUST_PACKAGE: &str = "virtiofsd";

/// Which `virtiofsd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtiofsdKind {
    /// QEMU's own, in C (QEMU 7.2 and older): options as `-o source=DIR`.
    C,
    /// The Rust one (virtiofsd 1.x): `--shared-dir DIR`.
    Rust,
}

impl VirtiofsdKind {
    /// Its Debian package.
    pub fn package(self) -> &'static str {
        match self {
            VirtiofsdKind::C => C_PACKAGE,
            VirtiofsdKind::Rust => RUST_PACKAGE,
        }
    }
}

impl fmt::Display for VirtiofsdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VirtiofsdKind::C => "QEMU's C virtiofsd",
            VirtiofsdKind::Rust => "the Rust virtiofsd",
        })
    }
}

/// A `virtiofsd` found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Virtiofsd {
    /// Where it is.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// Which one.
    pub kind: VirtiofsdKind,
    /// Whether it can serve a folder read-only (the Rust one's `--readonly`).
    pub readonly: bool,
    /// Why it cannot run here, if it cannot (QEMU's C one as another user than root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusable: Option<String>,
    /// Run with `--sandbox none`: the Rust one as another user than root, which cannot set up
    /// its namespace sandbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox_none: bool,
}

impl Virtiofsd {
    /// The first `virtiofsd` on `PATH` or in [`PLACES`] that answers `--help` as one of the
    /// two; `None` if there is none.
    pub fn find() -> Option<Virtiofsd> {
        let on_path = which::which("virtiofsd").ok();
        on_path
            .into_iter()
            .chain(PLACES.iter().map(PathBuf::from))
            .filter(|p| p.is_file())
            .find_map(|p| {
                let help = help_text(&p)?;
                Virtiofsd::identify(&p, &help, nix::unistd::geteuid().is_root())
            })
    }

    /// Which `virtiofsd` `help` (its `--help` output) describes, and what it can do run by root
    /// or not; `None` if neither.
    pub fn identify(path: &Path, help: &str, root: bool) -> Option<Virtiofsd> {
        let kind = if help.contains("--shared-dir") {
            VirtiofsdKind::Rust
        } else if help.contains("-o source=") {
            VirtiofsdKind::C
        } else {
            return None;
        };
        let unusable = (kind == VirtiofsdKind::C && !root).then(|| {
            format!(
                "{kind} ({}) runs only as root; the Rust virtiofsd (Debian package \
                 {RUST_PACKAGE}) runs as any user (without its sandbox)",
                path.display()
            )
        });
        Some(Virtiofsd {
            path: path.to_owned(),
            kind,
            readonly: kind == VirtiofsdKind::Rust && help.contains("--readonly"),
            unusable,
            sandbox_none: kind == VirtiofsdKind::Rust && !root,
        })
    }
}

/// `--help` on stdout and stderr together (the C one prints its usage to stdout, some builds to
/// stderr).
fn help_text(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C_HELP: &str = "usage: /usr/lib/qemu/virtiofsd [options]\n\n    -h   --help   print \
        help\n    -o cache=<mode>   cache mode.\n    -o source=PATH             shared directory \
        tree\n    --socket-path=PATH         path for the vhost-user socket\n    --fd=FDNUM";
    const RUST_HELP: &str = "Usage: virtiofsd [OPTIONS]\n\nOptions:\n      --shared-dir \
        <SHARED_DIR>\n      --readonly\n      --socket-path <SOCKET_PATH>\n      --fd <FD>";

    #[test]
    fn the_kind_comes_from_the_help_text() {
        let c = Virtiofsd::identify(Path::new("/usr/lib/qemu/virtiofsd"), C_HELP, true).unwrap();
        assert_eq!(
            (c.kind, c.readonly, c.unusable),
            (VirtiofsdKind::C, false, None)
        );
        let c = Virtiofsd::identify(Path::new("/q/virtiofsd"), C_HELP, false).unwrap();
        assert!(c.unusable.unwrap().contains("runs only as root"));
        let r = Virtiofsd::identify(Path::new("/usr/libexec/virtiofsd"), RUST_HELP, false).unwrap();
        assert_eq!(
            (r.kind, r.readonly, r.unusable),
            (VirtiofsdKind::Rust, true, None)
        );
        let old = RUST_HELP.replace("--readonly", "");
        let r = Virtiofsd::identify(Path::new("/v"), &old, true).unwrap();
        assert!(!r.readonly);
        assert_eq!(Virtiofsd::identify(Path::new("/bin/true"), "", true), None);
    }
}
