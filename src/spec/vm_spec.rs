//! The checked guest description, [`VmSpec`], and its parts.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{
    cpu::CpuRequest,
    profile::arch::Arch,
    spec::{disk::Disk, net::Net, share::Share},
    util::{pathser, size::MemSize},
};

/// Which accelerator the user asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    /// KVM when it is usable for this guest here, else TCG, saying why.
    #[default]
    Auto,
    /// KVM or an error saying why it cannot be used.
    Kvm,
    /// TCG even where KVM would work.
    Tcg,
}

impl FromStr for AccelRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelRequest::Auto),
            "kvm" => Ok(AccelRequest::Kvm),
            "tcg" => Ok(AccelRequest::Tcg),
            _ => Err(format!(
                "'{s}' is not an accelerator; valid: auto, kvm, tcg"
            )),
        }
    }
}

impl fmt::Display for AccelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelRequest::Auto => "auto",
            AccelRequest::Kvm => "kvm",
            AccelRequest::Tcg => "tcg",
        })
    }
}

/// Where the guest architecture comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum ArchChoice {
    /// Named to be run here, emulated if need be (`--arch`, `hw_emulation_architecture`).
    Given {
        /// The guest arch.
        arch: Arch,
        /// The field that named it.
        field: String,
        /// With `hw_emulation_architecture`, `hw_architecture` names the host it must run on.
        host_required: Option<Arch>,
    },
    /// `hw_architecture` alone: the guest must be native to the host.
    NativeOnly {
        /// The guest arch.
        arch: Arch,
    },
    /// Nothing said: the host's own arch.
    Host,
}

/// The firmware a guest asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FirmwareChoice {
    /// UEFI, chosen from QEMU's firmware descriptors (`--firmware uefi`).
    Uefi {
        /// Only firmware with Secure Boot (`--secure-boot`); without it, none with it.
        secure_boot: bool,
    },
    /// BIOS (`--firmware bios`): a descriptor that offers it, else the machine's own (SeaBIOS).
    Bios,
    /// An image passed as `-bios` (`--firmware FILE`).
    File {
        /// The image.
        #[serde(with = "pathser")]
        path: PathBuf,
    },
}

impl FirmwareChoice {
    /// `uefi` or `bios` when the `--firmware` value is one of those words (a file of that name
    /// is written `./uefi`).
    pub fn keyword(value: &Path) -> Option<&'static str> {
        match value.to_str() {
            Some("uefi") => Some("uefi"),
            Some("bios") => Some("bios"),
            _ => None,
        }
    }
}

/// A direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    /// Kernel image.
    #[serde(with = "pathser")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// The user's part of the kernel command line.
    pub append: Option<String>,
}

fn yes() -> bool {
    true
}

/// A validated guest description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Instance name, if given.
    pub name: Option<String>,
    /// Guest architecture and where it came from.
    pub arch: ArchChoice,
    /// Accelerator request.
    pub accel: AccelRequest,
    /// Machine type override (`--machine` or `hw_machine_type`).
    pub machine: Option<String>,
    /// Memory, if given.
    pub memory: Option<MemSize>,
    /// vCPUs, if given.
    pub smp: Option<u32>,
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
    /// Disks.
    pub disks: Vec<Disk>,
    /// The network.
    #[serde(default)]
    pub net: Net,
    /// Whether the guest gets the guest agent's channel.
    #[serde(default = "yes")]
    pub agent: bool,
    /// Host folders shared with the guest.
    #[serde(default)]
    pub shares: Vec<Share>,
    /// Firmware asked for; `None`: the machine's default.
    #[serde(default)]
    pub firmware: Option<FirmwareChoice>,
    /// TCG translation cache size in MiB, instead of the profile's.
    #[serde(default)]
    pub tb_size: Option<u32>,
    /// Virtualization extensions for the guest (nested virtualization), through the profile's
    /// `nested_machine_options`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nested_virt: bool,
    /// QEMU binary override.
    #[serde(default, with = "pathser::option")]
    pub emulator: Option<PathBuf>,
    /// The CPU asked for; empty means the config files' or the profile's default.
    #[serde(default)]
    pub cpu: CpuRequest,
    /// Extra QEMU options, checked against those qemu-direct manages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
    /// cloud-init's NoCloud seed, attached read-only as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<crate::spec::cloud_init::CloudInit>,
}

/// Extra QEMU options that attach something a firmware can boot from.
const BOOTABLE_QEMU_ARGS: [&str; 9] = [
    "-drive",
    "-blockdev",
    "-cdrom",
    "-hda",
    "-hdb",
    "-hdc",
    "-hdd",
    "-fda",
    "-pflash",
];

impl VmSpec {
    /// Refuses a guest with nothing to boot: no kernel, no disk, no firmware and no extra QEMU
    /// option that attaches a drive. QEMU would start such a guest and spin on an
    /// empty machine forever, printing nothing. `run` and `plan` check this; `check` and `cpu`
    /// do not need a bootable guest.
    pub fn check_boot_source(&self) -> Result<(), crate::spec::SpecError> {
        let extra = self
            .qemu_args
            .iter()
            .any(|a| BOOTABLE_QEMU_ARGS.contains(&a.as_str()));
        if self.kernel.is_none() && self.disks.is_empty() && self.firmware.is_none() && !extra {
            return Err(crate::spec::SpecError::NoBootSource);
        }
        Ok(())
    }
}
