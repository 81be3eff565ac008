//! The JSON of one firmware descriptor file, read leniently.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One descriptor file's content. Read leniently, unlike qemu-direct's own files: QEMU adds keys,
/// interface types, devices and features over time, so every name stays a string and unknown
/// keys are ignored. `tags` is not read: the schema says management software must ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    /// Human-readable description.
    #[serde(default)]
    pub description: String,
    /// Interfaces offered to the guest, most native first (`uefi`, `bios`, `openfirmware`, ...).
    #[serde(default)]
    pub interface_types: Vec<String>,
    /// How the firmware is loaded.
    pub mapping: Mapping,
    /// Emulators and machine types that can run it.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// What it supports and what it requires (`secure-boot`, `requires-smm`, `acpi-s3`, ...).
    #[serde(default)]
    pub features: Vec<String>,
}

/// A descriptor's `mapping`: one struct for every `device`, with the fields of the others absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mapping {
    /// `flash`, `memory` or `kernel`.
    pub device: String,
    /// Flash only: `split` (the default), `combined` or `stateless` (QEMU 8.1 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Flash only: the read-only code image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<ImageFile>,
    /// Flash only: the pristine variable store each VM starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram_template: Option<ImageFile>,
    /// Memory (and kernel) only: the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<PathBuf>,
}

/// A flash image and its block format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ImageFile {
    /// Absolute path.
    pub filename: PathBuf,
    /// `raw` or `qcow2`.
    #[serde(default = "raw")]
    pub format: String,
}

fn raw() -> String {
    "raw".into()
}

/// An emulator and the machine types (glob patterns, `pc-q35-*`) of it that run the firmware.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Target {
    /// QEMU's architecture name (`x86_64`, `i386`, `aarch64`, `riscv64`, ...).
    pub architecture: String,
    /// Machine type patterns, `*` and `?` as wildcards.
    #[serde(default)]
    pub machines: Vec<String>,
}
