//! cloud-init's NoCloud seed as the user asks for it: `--cloud-init USER-DATA[,meta-data=FILE]
//! [,network-config=FILE]`, or `--ssh-key FILE.pub` / `--ssh`, which write a user-data of their
//! own: the user [`DEFAULT_USER`], who logs in with that key and may `sudo`. In a spec file:
//! a `[cloud_init]` table with `user_data`, `meta_data`, `network_config`, `ssh_key`, `ssh`.
//!
//! Everything is read and checked here, once: a `#cloud-config` user-data must be a YAML
//! mapping; other user-data formats cloud-init knows (`#!` scripts, `#include`,
//! `#cloud-boothook`, MIME multipart, gzip) pass through unchecked; anything else is refused.
//! A private key given as `--ssh-key` is refused, never copied. The seed volume itself is made
//! at launch, in the instance directory, with a fresh `instance-id`.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    spec::error::{SpecError, file_error, open_error},
    util::pathser,
};

/// The user `--ssh-key` and `--ssh` create in the guest, and whom `qemu-direct ssh` logs in as.
pub const DEFAULT_USER: &str = "qd";

/// The seed's volume label, which cloud-init's NoCloud data source looks for.
pub const SEED_LABEL: &str = "cidata";

/// The default public keys `--ssh` takes, in order, under `~/.ssh`.
pub const DEFAULT_KEYS: [&str; 2] = ["id_ed25519.pub", "id_rsa.pub"];

/// The `[cloud_init]` table of a spec file, or the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitInput {
    /// The user-data file (`#cloud-config` YAML, or another format cloud-init reads).
    #[serde(default, with = "pathser::option")]
    pub user_data: Option<PathBuf>,
    /// A meta-data file (YAML); an `instance-id` is added when it has none.
    #[serde(default, with = "pathser::option")]
    pub meta_data: Option<PathBuf>,
    /// A network-config file (YAML, version 1 or 2).
    #[serde(default, with = "pathser::option")]
    pub network_config: Option<PathBuf>,
    /// An OpenSSH public key for a user-data of qemu-direct's own.
    #[serde(default, with = "pathser::option")]
    pub ssh_key: Option<PathBuf>,
    /// With no `ssh_key`: the user's own (`~/.ssh/id_ed25519.pub`, else `id_rsa.pub`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssh: bool,
}

const OPTIONS: &str =
    "write USER-DATA[,meta-data=FILE][,network-config=FILE] (a comma in a path as ',,')";

impl CloudInitInput {
    /// Parses a `--cloud-init` value.
    pub fn parse(arg: &OsStr) -> Result<CloudInitInput, SpecError> {
        let invalid = |expected: String| SpecError::Invalid {
            field: "--cloud-init".into(),
            value: arg.to_string_lossy().into_owned(),
            expected,
        };
        let mut parts = crate::util::qemu_opt::split(arg).into_iter();
        let user_data = parts.next().unwrap_or_default();
        if user_data.is_empty() {
            return Err(invalid(format!(
                "the user-data file comes first; {OPTIONS}"
            )));
        }
        let mut ci = CloudInitInput {
            user_data: Some(user_data.into()),
            ..Default::default()
        };
        for opt in parts {
            let s = opt.to_string_lossy().into_owned();
            let (slot, value) = match s.split_once('=') {
                Some(("meta-data", v)) => (&mut ci.meta_data, v),
                Some(("network-config", v)) => (&mut ci.network_config, v),
                _ => return Err(invalid(format!("unknown option '{s}'; {OPTIONS}"))),
            };
            if slot.is_some() || value.is_empty() {
                return Err(invalid(format!("'{s}' is empty or given twice; {OPTIONS}")));
            }
            // The part after `=`, as bytes: paths need not be UTF-8.
            let raw = std::os::unix::ffi::OsStrExt::as_bytes(opt.as_os_str());
            let at = raw.iter().position(|b| *b == b'=').unwrap_or(0) + 1;
            *slot = Some(PathBuf::from(
                <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&raw[at..]),
            ));
        }
        Ok(ci)
    }

    /// Whether anything is asked for.
    pub fn is_empty(&self) -> bool {
        self == &CloudInitInput::default()
    }

    /// Layers `top` over `self`, field by field.
    pub fn overlay(self, top: CloudInitInput) -> CloudInitInput {
        CloudInitInput {
            user_data: top.user_data.or(self.user_data),
            meta_data: top.meta_data.or(self.meta_data),
            network_config: top.network_config.or(self.network_config),
            ssh_key: top.ssh_key.or(self.ssh_key),
            ssh: top.ssh || self.ssh,
        }
    }
}

/// The login `--ssh-key` sets up, for `qemu-direct ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SshLogin {
    /// The guest user.
    pub user: String,
    /// The public key file given.
    #[serde(with = "pathser")]
    pub public_key: PathBuf,
    /// The private key beside it (the same name without `.pub`), if there is one; else `ssh`
    /// uses its agent or its own defaults.
    #[serde(default, with = "pathser::option")]
    pub identity: Option<PathBuf>,
}

/// A checked cloud-init request: the seed's files, as they will be written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CloudInit {
    /// The user-data, as written into the seed.
    pub user_data: String,
    /// The user's meta-data (a YAML mapping); the launch adds `instance-id` and
    /// `local-hostname` where it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    /// The user's network-config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
    /// The login `--ssh-key` set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshLogin>,
}

/// User-data headers cloud-init reads besides `#cloud-config`, passed through unchecked.
const OTHER_FORMATS: [&str; 7] = [
    "#!",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "#cloud-config-archive",
    "## template: jinja",
    "Content-Type: multipart/",
];

/// Checks a cloud-init request; `home` is where `--ssh` looks for `.ssh/`.
pub fn validate(input: &CloudInitInput, home: Option<&Path>) -> Result<CloudInit, SpecError> {
    let key = match (&input.ssh_key, input.ssh) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => Some(default_key(home)?),
        (None, false) => None,
    };
    let (user_data, ssh) = match (&input.user_data, key) {
        (Some(u), Some(k)) => {
            return Err(SpecError::Conflict {
                first: format!("cloud-init user-data {}", u.display()),
                second: format!("ssh key {}", k.display()),
                why: "--ssh-key writes a user-data of its own; put the key in your user-data's \
                      ssh_authorized_keys, or drop --cloud-init"
                    .into(),
            });
        }
        (Some(u), None) => (user_data(u)?, None),
        (None, Some(k)) => {
            let login = login(&k)?;
            (key_user_data(&read_text("ssh-key", &k)?), Some(login))
        }
        (None, None) => {
            let given = input.meta_data.as_ref().or(input.network_config.as_ref());
            return Err(SpecError::Invalid {
                field: "cloud-init".into(),
                value: given.map(|p| p.display().to_string()).unwrap_or_default(),
                expected:
                    "a user-data file (--cloud-init FILE) or a key (--ssh-key FILE.pub, --ssh)"
                        .into(),
            });
        }
    };
    let meta_data = input
        .meta_data
        .as_deref()
        .map(|p| yaml_mapping("cloud-init meta-data", p))
        .transpose()?;
    let network_config = input
        .network_config
        .as_deref()
        .map(|p| yaml_mapping("cloud-init network-config", p))
        .transpose()?;
    Ok(CloudInit {
        user_data,
        meta_data,
        network_config,
        ssh,
    })
}

/// `~/.ssh/id_ed25519.pub`, else `~/.ssh/id_rsa.pub`.
fn default_key(home: Option<&Path>) -> Result<PathBuf, SpecError> {
    let ssh = home.map(|h| h.join(".ssh")).unwrap_or_default();
    DEFAULT_KEYS
        .iter()
        .map(|k| ssh.join(k))
        .find(|p| p.is_file())
        .ok_or_else(|| SpecError::Invalid {
            field: "--ssh".into(),
            value: ssh.display().to_string(),
            expected: format!(
                "a public key there: {} (make one with `ssh-keygen -t ed25519`), or name one with --ssh-key FILE.pub",
                DEFAULT_KEYS.join(" or ")
            ),
        })
}

fn read_text(field: &str, path: &Path) -> Result<String, SpecError> {
    let bytes = std::fs::read(path).map_err(|e| open_error(field, path, e))?;
    String::from_utf8(bytes).map_err(|_| file_error(field, path, "not UTF-8 text"))
}

/// The key file's login: only OpenSSH public keys, never a private key.
fn login(path: &Path) -> Result<SshLogin, SpecError> {
    let text = read_text("ssh-key", path)?;
    if text.contains("PRIVATE KEY") {
        return Err(file_error(
            "ssh-key",
            path,
            "a private key, which is never copied into a seed; give the .pub file beside it",
        ));
    }
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let public = |l: &str| {
        ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
            .iter()
            .any(|p| l.starts_with(p))
            && l.split_whitespace().count() >= 2
    };
    if keys.is_empty() || !keys.iter().all(|l| public(l)) {
        return Err(file_error(
            "ssh-key",
            path,
            "not an OpenSSH public key (a line like `ssh-ed25519 AAAA... comment`)",
        ));
    }
    let identity = path
        .to_str()
        .and_then(|p| p.strip_suffix(".pub"))
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    Ok(SshLogin {
        user: DEFAULT_USER.into(),
        public_key: path.to_owned(),
        identity,
    })
}

/// The user-data `--ssh-key` writes: [`DEFAULT_USER`] with the keys, passwordless `sudo`, no
/// password logins. Each key is a JSON string, which YAML reads as the same string.
pub fn key_user_data(keys: &str) -> String {
    let keys: String = keys
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|k| format!("      - {}\n", serde_json::Value::from(k)))
        .collect();
    format!(
        "#cloud-config\n\
         # Written by qemu-direct (--ssh-key): the user {DEFAULT_USER}, who logs in with this key.\n\
         users:\n  \
           - default\n  \
           - name: {DEFAULT_USER}\n    \
             gecos: qemu-direct\n    \
             sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    \
             shell: /bin/bash\n    \
             lock_passwd: true\n    \
             ssh_authorized_keys:\n{keys}\
         ssh_pwauth: false\n"
    )
}

/// A user-data file: `#cloud-config` YAML (a mapping), or another format cloud-init reads.
fn user_data(path: &Path) -> Result<String, SpecError> {
    let field = "cloud-init user-data";
    let bytes = std::fs::read(path).map_err(|e| open_error(field, path, e))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(file_error(
            field,
            path,
            "gzip user-data is not passed through; give it uncompressed",
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| file_error(field, path, "not UTF-8 text"))?;
    if text.starts_with("#cloud-config\n") || text == "#cloud-config" {
        check_mapping(field, path, &text)?;
        return Ok(text);
    }
    if OTHER_FORMATS.iter().any(|h| text.starts_with(h)) {
        return Ok(text);
    }
    Err(file_error(
        field,
        path,
        "no #cloud-config header on its first line (nor #!, #include, #cloud-boothook or \
         another format cloud-init reads)",
    ))
}

/// A YAML file that holds a mapping (or nothing).
fn yaml_mapping(field: &str, path: &Path) -> Result<String, SpecError> {
    let text = read_text(field, path)?;
    check_mapping(field, path, &text)?;
    Ok(text)
}

fn check_mapping(field: &str, path: &Path, text: &str) -> Result<(), SpecError> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| file_error(field, path, format!("not valid YAML: {e}")))?;
    match docs.as_slice() {
        [] | [Yaml::Hash(_)] | [Yaml::Null] => Ok(()),
        [_] => Err(file_error(field, path, "YAML, but not a mapping of keys")),
        _ => Err(file_error(field, path, "more than one YAML document")),
    }
}

/// The seed's files, `meta-data` with `instance-id` and `local-hostname` added where the
/// user's has none: a fresh instance id makes cloud-init treat a clone as a new instance.
pub fn seed_files(
    ci: &CloudInit,
    hostname: &str,
    instance_id: &str,
) -> Vec<(&'static str, Vec<u8>)> {
    use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};
    let mut meta = ci
        .meta_data
        .as_deref()
        .and_then(|t| YamlLoader::load_from_str(t).ok())
        .and_then(|mut d| d.pop())
        .and_then(|y| y.into_hash())
        .unwrap_or_default();
    for (k, v) in [("instance-id", instance_id), ("local-hostname", hostname)] {
        meta.entry(Yaml::String(k.into()))
            .or_insert_with(|| Yaml::String(v.into()));
    }
    let mut meta_text = String::new();
    // Writing into a String cannot fail.
    let _ = YamlEmitter::new(&mut meta_text).dump(&Yaml::Hash(meta));
    meta_text.push('\n');
    let mut files = vec![
        ("user-data", ci.user_data.clone().into_bytes()),
        ("meta-data", meta_text.into_bytes()),
    ];
    if let Some(n) = &ci.network_config {
        files.push(("network-config", n.clone().into_bytes()));
    }
    files
}

/// Writes the seed volume of `ci` at `path` (a new file, mode 0600): a FAT volume labelled
/// [`SEED_LABEL`] with a fresh instance id.
pub fn write_seed(ci: &CloudInit, hostname: &str, path: &Path) -> std::io::Result<()> {
    let instance_id = format!("iid-qd-{}", uuid::Uuid::new_v4());
    let files = seed_files(ci, hostname, &instance_id);
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    crate::util::fat::write_volume(path, SEED_LABEL, &files)
}

#[cfg(test)]
mod tests;
