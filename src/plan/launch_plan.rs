//! The plan's values: what will run, as [`LaunchPlan`] and its parts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AgentPlan, MemoryBackend, SharePlan};
use crate::{
    cpu::Cpu,
    host::firmware::Selected,
    profile::Accel,
    profile::arch::Arch,
    profile::gate::QemuVersion,
    spec::net::UserNet,
    spec::{Disk, DiskFormat},
    util::pathser,
    util::size::MemSize,
};

/// Everything needed to start one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    /// Instance name.
    pub name: String,
    /// Guest architecture.
    pub arch: Arch,
    /// The QEMU binary.
    #[serde(with = "pathser")]
    pub binary: PathBuf,
    /// Data folders for QEMU's firmware and ROMs (`-L`), searched before its built-in ones:
    /// those of a QEMU prefix whose build is not relocatable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_dirs: Vec<PathBuf>,
    /// The QEMU prefix's module folder, given to QEMU as `QEMU_MODULE_DIR` (see
    /// [`crate::host::prefix::QemuPrefix::module_dir`]).
    #[serde(
        default,
        with = "pathser::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub module_dir: Option<PathBuf>,
    /// The accelerator.
    pub accel: Accel,
    /// Why that accelerator, in one line.
    pub accel_reason: String,
    /// `key=value` properties of the accelerator (`thread=multi`, `tb-size=256`).
    #[serde(default)]
    pub accel_options: Vec<String>,
    /// The emulator's QEMU version, when known; the profile's options were checked against it.
    #[serde(default)]
    pub qemu_version: Option<QemuVersion>,
    /// Machine type and properties.
    pub machine: Machine,
    /// `-cpu` model and properties; `None` leaves the machine's default.
    pub cpu: Option<Cpu>,
    /// Guest memory.
    pub memory: MemSize,
    /// vCPUs.
    pub smp: u32,
    /// Direct kernel boot.
    pub kernel: Option<KernelPlan>,
    /// Disks, in order.
    pub disks: Vec<DiskPlan>,
    /// cloud-init's seed volume, after the disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedPlan>,
    /// Network cards, in order.
    #[serde(default)]
    pub nics: Vec<NicPlan>,
    /// `-bios` image named by the user (`--firmware FILE`).
    #[serde(default, with = "pathser::option")]
    pub firmware: Option<PathBuf>,
    /// Firmware chosen from QEMU's firmware descriptors (`--firmware uefi|bios`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_firmware: Option<DescriptorFirmware>,
    /// Where the console goes.
    pub console: ConsolePlan,
    /// Other decisions worth showing, one line each.
    pub notes: Vec<String>,
    /// The pvpanic device, which lets the guest report a panic to QEMU.
    #[serde(default)]
    pub panic_device: Option<String>,
    /// Extra QEMU options from the spec, appended after qemu-direct's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
    /// The guest agent's channel; `None` with `--no-agent` (spec `agent = false`).
    #[serde(default)]
    pub agent: Option<AgentPlan>,
    /// Host folders shared with the guest, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<SharePlan>,
    /// Guest RAM as a memory object of its own (shared, for virtiofs); `None`: QEMU's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_backend: Option<MemoryBackend>,
}

/// A machine type with properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// QEMU machine type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `key=value` properties.
    pub options: Vec<String>,
}

/// Firmware chosen from QEMU's firmware descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorFirmware {
    /// The interface asked for (`uefi`, `bios`).
    pub interface: String,
    /// Whether Secure Boot was asked for.
    pub secure_boot: bool,
    /// The descriptor's firmware.
    pub selected: Selected,
    /// The VM's own UEFI variable store, a copy of [`Selected::nvram_template`]: in a plan, the
    /// file name it gets in the instance directory
    /// ([`firmware::vars_file_name`](crate::host::firmware::vars_file_name)); once launched, its
    /// path there. `None` for firmware without variables.
    #[serde(default, with = "pathser::option")]
    pub vars: Option<PathBuf>,
}

/// A direct kernel boot, with the full command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPlan {
    /// Kernel image.
    #[serde(with = "pathser")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, with = "pathser::option")]
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub append: String,
}

/// A disk and the device that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// The image.
    #[serde(flatten)]
    pub disk: Disk,
    /// QEMU device, e.g. `virtio-blk-pci`.
    pub device: String,
    /// The qcow2 overlay that takes the guest's writes to an image that does not persist, made
    /// (over the image, as its read-only backing file) in the instance directory at launch.
    /// `None` in a plan not launched yet, whose command line shows `snapshot=on` instead: the
    /// same throw-away writes, for a QEMU started by hand.
    #[serde(
        default,
        with = "pathser::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub overlay: Option<PathBuf>,
}

impl DiskPlan {
    /// The file name of the overlay of the plan's `index`th disk in the instance directory.
    pub fn overlay_name(index: usize) -> String {
        format!("disk{index}.qcow2")
    }

    /// Whether the guest's writes go to an overlay made at launch (not to the image, and not
    /// refused as for a directory).
    pub fn wants_overlay(&self) -> bool {
        !self.disk.writable && self.disk.format != DiskFormat::Dir
    }
}

/// cloud-init's NoCloud seed: a small FAT volume labelled `cidata` that the launch writes into
/// the instance directory, attached read-only as a virtio disk after the plan's disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedPlan {
    /// The volume: a file name relative to the instance directory in a plan not launched yet
    /// ([`SeedPlan::FILE`]), its full path once launched.
    #[serde(with = "pathser")]
    pub path: PathBuf,
    /// QEMU device, e.g. `virtio-blk-pci`.
    pub device: String,
    /// What goes into it.
    pub data: crate::spec::cloud_init::CloudInit,
}

impl SeedPlan {
    /// The seed's file name in the instance directory.
    pub const FILE: &str = "cidata.img";
}

/// A network card and the network behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    /// QEMU's user-mode network (the one kind there is so far).
    pub user: UserNet,
    /// QEMU device, e.g. `virtio-net-pci`.
    pub device: String,
}

/// How the guest's console reaches us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum ConsolePlan {
    /// The machine's first serial port (`-serial`).
    Serial {
        /// Its name inside a Linux guest.
        kernel_name: String,
    },
    /// A device carrying firmware messages (`-device DEV,chardev=...`).
    Device {
        /// QEMU device spelling.
        device: String,
    },
}
