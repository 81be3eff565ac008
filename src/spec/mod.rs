//! The guest description a user gives: from command-line flags, a TOML file (`--spec`), and
//! Nova image properties (`--property KEY=VALUE`). [`SpecInput`] is the raw, mergeable form;
//! [`VmSpec`] is the validated one: names resolved, sizes parsed, files checked.
//!
//! Files, leaves first: `error` (what can be wrong), `disk`, `net` and `share` (a device's input form,
//! checked form and check), `vm_spec` (the checked description), `nova` (Nova's properties),
//! `input` (the raw description and its layering), `validate` (raw to checked, one concern per
//! file), `config` (host-wide defaults).

pub mod cloud_init;
pub mod config;
pub mod disk;
mod error;
mod input;
pub mod net;
mod nova;
pub mod share;
mod validate;
mod vm_spec;

pub use disk::{Disk, DiskFormat};
pub use error::SpecError;
pub use input::SpecInput;
pub use nova::PROPERTIES;
pub use share::{Share, ShareFs};
pub use validate::check_name;
pub use vm_spec::{AccelRequest, ArchChoice, FirmwareChoice, KernelBoot, VmSpec};

#[cfg(test)]
mod tests;
