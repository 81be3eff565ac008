//! The firmware: a `-bios` file named by the user, or one chosen from QEMU's firmware
//! descriptors with its variable store.

use std::path::{Path, PathBuf};

use crate::{
    host::firmware::{self, Descriptors, FirmwareRequest, Selected},
    spec::FirmwareChoice,
};

use super::{DescriptorFirmware, Machine, PlanError, context::Context};

/// `--firmware FILE`: the `-bios` image.
pub(super) fn user_file(cx: &Context) -> Option<PathBuf> {
    match &cx.spec.firmware {
        Some(FirmwareChoice::File { path }) => Some(path.clone()),
        _ => None,
    }
}

/// `--firmware uefi|bios`: the firmware the descriptors offer for this arch and machine, with
/// where its variable store will be. `bios` without a descriptor falls back to the machine's
/// built-in BIOS (no option at all) where the profile says it has one.
pub(super) fn descriptor_firmware(
    cx: &mut Context,
    machine: &Machine,
    name: &str,
) -> Result<Option<DescriptorFirmware>, PlanError> {
    let (interface, secure_boot) = match &cx.spec.firmware {
        Some(FirmwareChoice::Uefi { secure_boot }) => ("uefi", *secure_boot),
        Some(FirmwareChoice::Bios) => ("bios", false),
        Some(FirmwareChoice::File { .. }) => return Ok(None),
        None => match disk_boot(cx, machine) {
            Some(interface) => (interface, false),
            None => return Ok(None),
        },
    };
    let request = FirmwareRequest {
        arch: cx.profile.qemu_arch().to_owned(),
        machine: machine.kind.clone(),
        interface: interface.into(),
        secure_boot,
    };
    let Some(selected) = select(cx, &request)? else {
        return Ok(None);
    };
    let vars = selected
        .nvram_template
        .as_ref()
        .map(|_| PathBuf::from(firmware::vars_file_name(name)));
    // The command line is built from what passed here, never re-checked.
    selected
        .check_vars(vars.as_deref())
        .map_err(|e| PlanError::NoFirmware {
            error: Box::new(e),
            package: None,
        })?;
    note_selected(cx, &request, &selected, vars.as_deref());
    Ok(Some(DescriptorFirmware {
        interface: interface.into(),
        secure_boot,
        selected,
        vars,
    }))
}

/// A disk with no kernel and no firmware named: the interface the profile boots it through
/// (`disk_boot`), noting which firmware boots the disk and why; `None` for the machine's own.
fn disk_boot(cx: &mut Context, machine: &Machine) -> Option<&'static str> {
    let spec = cx.spec;
    if spec.kernel.is_some() || spec.disks.is_empty() {
        return None;
    }
    let firmware = &cx.profile.firmware;
    let arch = cx.profile.arch();
    if firmware.disk_boot.as_deref() == Some("uefi") {
        cx.notes.push(format!(
            "firmware: uefi, as the disk has no kernel given and {arch} {} has no firmware of its own to boot a disk (--firmware picks another)",
            machine.kind
        ));
        return Some("uefi");
    }
    cx.notes.push(match &firmware.builtin {
        Some(b) => format!(
            "firmware: the machine's built-in {b} boots the disk, as no kernel or firmware is given (--firmware uefi for UEFI)"
        ),
        None => format!(
            "firmware: QEMU's default for {arch} {}, as no kernel or firmware is given; if it does not boot the disk, give --firmware FILE or --kernel",
            machine.kind
        ),
    });
    None
}

/// The descriptors' firmware for `request`; `None` for the machine's built-in BIOS, where the
/// descriptors offer no `bios` and the profile says the machine has one.
fn select(cx: &mut Context, request: &FirmwareRequest) -> Result<Option<Selected>, PlanError> {
    let found = match &cx.host.firmware {
        Some(d) => d.select(request),
        // Nothing read: the same answer as an empty descriptor directory.
        None => Descriptors::load(&[]).and_then(|d| d.select(request)),
    };
    let interface = request.interface.as_str();
    let firmware = &cx.profile.firmware;
    match found {
        Ok(s) => Ok(Some(s)),
        Err(_) if interface == "bios" && firmware.builtin.as_deref() == Some("bios") => {
            cx.notes.push(format!(
                "firmware: bios: the machine's built-in BIOS (no firmware descriptor offers bios for {} machine {})",
                request.arch, request.machine
            ));
            Ok(None)
        }
        Err(error) => Err(PlanError::NoFirmware {
            error: Box::new(error),
            package: firmware.interface_packages.get(interface).cloned(),
        }),
    }
}

/// Notes which firmware was chosen, and where its variables will be.
fn note_selected(
    cx: &mut Context,
    request: &FirmwareRequest,
    selected: &Selected,
    vars: Option<&Path>,
) {
    let secure = if request.secure_boot {
        " with Secure Boot"
    } else {
        ""
    };
    cx.notes.push(format!(
        "firmware: {}{secure} from {} ({})",
        request.interface,
        selected.descriptor.display(),
        selected.executable.display()
    ));
    if let (Some(t), Some(v)) = (&selected.nvram_template, vars) {
        cx.notes.push(format!(
            "firmware: variables in a copy of {} made at launch in the instance directory ({})",
            t.display(),
            v.display()
        ));
    }
}

/// Adds the machine properties the chosen firmware needs, each once.
pub(super) fn add_machine_options(machine: &mut Machine, firmware: Option<&DescriptorFirmware>) {
    if let Some(f) = firmware {
        for o in f.selected.machine_options() {
            if !machine.options.contains(&o) {
                machine.options.push(o);
            }
        }
    }
}
