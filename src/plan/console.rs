//! Where the guest's console goes.

use crate::spec::FirmwareChoice;

use super::{ConsolePlan, DescriptorFirmware, DiskPlan, KernelPlan, context::Context};

/// The machine's first serial port, but for a boot with no kernel, disk or firmware of its own
/// on a machine whose built-in firmware writes to a device of its own: that device.
pub(super) fn console(
    cx: &mut Context,
    kernel: Option<&KernelPlan>,
    disks: &[DiskPlan],
    descriptor_firmware: Option<&DescriptorFirmware>,
) -> ConsolePlan {
    // A boot with no kernel, disk or firmware of its own shows the built-in firmware's messages.
    let firmware_only = kernel.is_none()
        && disks.is_empty()
        && matches!(cx.spec.firmware, None | Some(FirmwareChoice::Bios))
        && descriptor_firmware.is_none();
    match (&cx.profile.firmware_console, firmware_only) {
        (Some(device), true) => {
            cx.notes.push(format!(
                "no kernel or disk: the console shows the firmware's own messages ({device})"
            ));
            ConsolePlan::Device {
                device: device.clone(),
            }
        }
        _ => ConsolePlan::Serial {
            kernel_name: cx.profile.console.kernel.clone(),
        },
    }
}
