//! [`PlanError`]: why a plan cannot be made, with what the user can do about it.

use crate::{
    cpu::CpuError, host::KvmBlocker, host::caps::CapsError, host::firmware::FirmwareError,
    profile::Accel, profile::arch::Arch, profile::gate::Unfit, spec::ShareFs,
};

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec names a profile this set does not have (a `--profile-dir` without it).
    #[error("no machine profile for {0}")]
    NoProfile(Arch),
    /// The host's architecture is unknown and the spec names none.
    #[error("cannot tell this host's architecture ({0}); name the guest's with --arch")]
    UnknownHost(String),
    /// `hw_architecture` alone on a host that cannot run it natively.
    #[error(
        "hw_architecture={guest} needs a host that runs {guest} natively; this host is {host} \
         (set hw_emulation_architecture={guest} to emulate it)"
    )]
    NotNative {
        /// The guest.
        guest: Arch,
        /// This host.
        host: String,
    },
    /// `hw_architecture` with an emulation arch names another host.
    #[error("hw_architecture={required} asks for a host of arch {required}; this host is {host}")]
    WrongHost {
        /// The host asked for.
        required: Arch,
        /// This host.
        host: String,
    },
    /// The emulator for the guest arch is not installed.
    #[error(
        "{binary} (for {arch} guests) is not installed; install the Debian package {package}, or name one with --emulator"
    )]
    NotInstalled {
        /// The guest arch.
        arch: Arch,
        /// The binary looked for.
        binary: String,
        /// The package that ships it.
        package: String,
    },
    /// `--qemu-prefix` holds no emulator for the guest arch.
    #[error(
        "{binary} (for {arch} guests) is not in the QEMU prefix {}; it has: {}",
        prefix.display(),
        if has.is_empty() { "no emulators".to_owned() } else { has.join(", ") }
    )]
    NotInPrefix {
        /// The guest arch.
        arch: Arch,
        /// The binary looked for.
        binary: String,
        /// The prefix (boxed, as `has`: the error stays small).
        prefix: Box<std::path::Path>,
        /// The emulators it has.
        has: Box<[String]>,
    },
    /// `--accel kvm` where KVM cannot run this guest.
    #[error("--accel kvm: {0}")]
    KvmUnusable(KvmBlocker),
    /// A value outside what the machine accepts.
    #[error("invalid {field} '{value}': {expected}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// The valid range.
        expected: String,
    },
    /// A machine type the emulator does not list (checked only where its capabilities are
    /// known: a host description with them, or a probe the CPU request made).
    #[error("unknown machine type '{machine}' for {binary}{nearest}")]
    UnknownMachine {
        /// The machine asked for.
        machine: String,
        /// The emulator.
        binary: String,
        /// "; did you mean ...?" or nothing.
        nearest: String,
    },
    /// Nested virtualization asked for where the profile has no way to give it.
    #[error("nested_virt: {arch} guests under {accel} {why}")]
    NoNestedVirt {
        /// The guest arch.
        arch: Arch,
        /// The accelerator chosen.
        accel: Accel,
        /// Why not, and what can.
        why: String,
    },
    /// The CPU asked for cannot be had here.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// No firmware of the kind asked for is installed.
    #[error("{}", no_firmware(error, package.as_deref()))]
    NoFirmware {
        /// What selection found.
        error: Box<FirmwareError>,
        /// The Debian package that provides it, where the profile says.
        package: Option<String>,
    },
    /// The user asked for something the installed QEMU cannot do.
    #[error("{what} {why}")]
    QemuCannot {
        /// What was asked for, as asked.
        what: String,
        /// Why not.
        why: Unfit,
    },
    /// A shared folder cannot go to the guest as asked.
    #[error("share {path} (fs={fs}): {problem}")]
    Share {
        /// The host folder.
        path: String,
        /// The transport asked for.
        fs: ShareFs,
        /// Why not.
        problem: String,
        /// What to do, where we know.
        hint: Option<String>,
    },
    /// The emulator's capabilities could not be probed.
    #[error("cannot probe the CPU models of {binary} under {accel}")]
    Caps {
        /// The emulator.
        binary: String,
        /// The accelerator.
        accel: Accel,
        /// Why.
        #[source]
        source: Box<CapsError>,
    },
}

impl PlanError {
    /// What the user can do, where we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            PlanError::KvmUnusable(b) => b.hint(),
            PlanError::Cpu(c) => c.hint(),
            PlanError::QemuCannot { .. } => Some(
                "install a newer QEMU (or name one with --emulator), or drop the option".into(),
            ),
            PlanError::Share { hint, .. } => hint.clone(),
            PlanError::NoFirmware { .. } => {
                Some("qemu-direct firmware lists the firmware descriptors found".into())
            }
            _ => None,
        }
    }
}

/// The package goes on the selection error's first line, ahead of the descriptors it lists.
fn no_firmware(error: &FirmwareError, package: Option<&str>) -> String {
    let text = error.to_string();
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let mut s = first.to_owned();
    if let Some(p) = package {
        s.push_str(&format!("; the Debian package {p} provides it"));
    }
    if !rest.is_empty() {
        s.push('\n');
        s.push_str(rest);
    }
    s
}
