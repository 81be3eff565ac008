//! [`SpecInput`], the guest description as given: every field optional, so a `--spec` file, the
//! command-line flags and `--property` values can be layered before anything is checked.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    spec::{
        cloud_init::CloudInitInput,
        disk::DiskInput,
        error::SpecError,
        share::ShareInput,
        vm_spec::{AccelRequest, FirmwareChoice},
    },
    util::pathser,
};

/// A guest description before validation: every field optional, so a TOML file and
/// command-line flags can be layered ([`SpecInput::overlay`]). Also the `--spec` file format.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecInput {
    /// Instance name.
    pub name: Option<String>,
    /// Guest architecture (name or alias).
    pub arch: Option<String>,
    /// `auto`, `kvm` or `tcg`.
    pub accel: Option<AccelRequest>,
    /// QEMU machine type, overriding the profile's.
    pub machine: Option<String>,
    /// Guest memory, e.g. `512M`.
    pub memory: Option<String>,
    /// vCPU count.
    pub smp: Option<u32>,
    /// Kernel image for a direct kernel boot.
    #[serde(default, with = "pathser::option")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line.
    pub append: Option<String>,
    /// Disk image (raw or qcow2), or a directory shown to the guest as a read-only FAT disk; a
    /// plain path. Attached before [`SpecInput::disks`](#structfield.disks).
    #[serde(default, with = "pathser::option")]
    pub disk: Option<PathBuf>,
    /// Disks with options (`[[disks]]` tables: `path`, `format`, `persist`); see [`crate::spec::disk`].
    pub disks: Option<Vec<DiskInput>>,
    /// Every disk persists: guest writes reach the images (the old `--disk-writable`; default:
    /// writes go to a throw-away overlay).
    pub disk_writable: Option<bool>,
    /// The network: `none` (default) or `user[,hostfwd=RULE]...`; see [`crate::spec::net`].
    pub net: Option<String>,
    /// The guest agent's channel (a virtio-serial port `org.qemu.guest_agent.0` on a socket in
    /// the instance directory); default on, `false` leaves it out (`--no-agent`).
    pub agent: Option<bool>,
    /// Host folders shared with the guest (`[[shares]]` tables: `path`, `tag`, `readonly`,
    /// `fs`); see [`crate::spec::share`].
    pub shares: Option<Vec<ShareInput>>,
    /// `uefi` or `bios` (chosen from QEMU's firmware descriptors), or a firmware image passed as
    /// `-bios`.
    #[serde(default, with = "pathser::option")]
    pub firmware: Option<PathBuf>,
    /// With `firmware = "uefi"`: only firmware with Secure Boot.
    pub secure_boot: Option<bool>,
    /// TCG translation cache size in MiB, instead of the profile's.
    pub tb_size: Option<u32>,
    /// Give the guest virtualization extensions, so that it can run KVM itself (nested
    /// virtualization), where the profile says how (its `nested_machine_options`).
    pub nested_virt: Option<bool>,
    /// A QEMU binary to use instead of the profile's from `PATH`.
    #[serde(default, with = "pathser::option")]
    pub emulator: Option<PathBuf>,
    /// CPU mode (Nova's `cpu_mode`): host-passthrough, maximum, host-model, custom, none.
    pub cpu_mode: Option<String>,
    /// CPU models, most preferred first (Nova's `cpu_models`).
    pub cpu_models: Option<Vec<String>>,
    /// Extra CPU features, `+f`/`f`/`-f` (Nova's `cpu_model_extra_flags`).
    pub cpu_model_extra_flags: Option<Vec<String>>,
    /// `enforce` (refuse unavailable features; default) or `none`.
    pub cpu_check: Option<String>,
    /// Physical-address bits: `emulate:N`, `passthrough` or `passthrough:LIMIT`.
    pub maxphysaddr: Option<String>,
    /// Extra QEMU options, appended after qemu-direct's own (`--qemu-arg`); those it manages
    /// are refused.
    pub qemu_args: Option<Vec<String>>,
    /// cloud-init's NoCloud seed (`[cloud_init]`: `user_data`, `meta_data`, `network_config`,
    /// `ssh_key`, `ssh`); see [`crate::spec::cloud_init`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitInput>,
    /// Nova image properties and flavor extra specs, `KEY = "VALUE"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl SpecInput {
    /// Reads a `--spec` TOML file. Relative paths in it are taken relative to the file.
    pub fn from_file(path: &Path) -> Result<SpecInput, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut input: SpecInput = toml::from_str(&text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // `firmware = "uefi"` names a kind of firmware, not a file.
        let firmware_file = input
            .firmware
            .as_mut()
            .filter(|f| FirmwareChoice::keyword(f).is_none());
        for p in [
            &mut input.kernel,
            &mut input.initrd,
            &mut input.disk,
            &mut input.emulator,
        ]
        .into_iter()
        .flatten()
        .chain(input.disks.iter_mut().flatten().map(|d| &mut d.path))
        .chain(input.shares.iter_mut().flatten().map(|s| &mut s.path))
        .chain(input.cloud_init.iter_mut().flat_map(|c| {
            [
                &mut c.user_data,
                &mut c.meta_data,
                &mut c.network_config,
                &mut c.ssh_key,
            ]
            .into_iter()
            .flatten()
        }))
        .chain(firmware_file)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(input)
    }

    /// Layers `top` over `self`: every field `top` sets wins; properties merge key by key.
    pub fn overlay(mut self, top: SpecInput) -> SpecInput {
        macro_rules! take {
            ($($f:ident),*) => { $( if top.$f.is_some() { self.$f = top.$f; } )* };
        }
        take!(
            name,
            arch,
            accel,
            machine,
            memory,
            smp,
            kernel,
            initrd,
            append,
            disk_writable,
            net,
            agent,
            shares,
            firmware,
            secure_boot,
            tb_size,
            nested_virt,
            emulator,
            cpu_check,
            maxphysaddr,
            qemu_args
        );
        // Disks given on top replace all disks below, in either form.
        if top.disk.is_some() || top.disks.is_some() {
            self.disk = top.disk;
            self.disks = top.disks;
        }
        // A mode or model replaces the CPU below it, features and all (see CpuRequest::overlay).
        if top.cpu_mode.is_some() || top.cpu_models.is_some() {
            self.cpu_mode = top.cpu_mode;
            self.cpu_models = top.cpu_models;
            self.cpu_model_extra_flags = None;
        }
        // Features on top win over the same feature below (`-pse36` over the file's `+pse36`).
        if let Some(flags) = top.cpu_model_extra_flags {
            let name = |f: &str| f.trim().trim_start_matches(['+', '-']).to_ascii_lowercase();
            let below = self.cpu_model_extra_flags.get_or_insert_with(Vec::new);
            below.retain(|b| !flags.iter().any(|t| name(t) == name(b)));
            below.extend(flags);
        }
        if let Some(top) = top.cloud_init {
            self.cloud_init = Some(self.cloud_init.take().unwrap_or_default().overlay(top));
        }
        self.properties.extend(top.properties);
        self
    }

    /// Adds a `KEY=VALUE` property as given on the command line.
    pub fn add_property(&mut self, kv: &str) -> Result<(), SpecError> {
        let (k, v) = kv.split_once('=').ok_or_else(|| SpecError::Invalid {
            field: "--property".into(),
            value: kv.into(),
            expected: "write KEY=VALUE, e.g. hw_architecture=aarch64".into(),
        })?;
        self.properties
            .insert(k.trim().to_owned(), v.trim().to_owned());
        Ok(())
    }
}

/// The TOML parser's message on one line (blank lines and `|`/`^` marker lines dropped): errors
/// are printed one to a line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}
