//! A direct kernel boot and its command line.

use crate::profile::MachineProfile;

use super::{KernelPlan, context::Context};

/// The spec's kernel, if any, with the whole command line.
pub(super) fn kernel(cx: &Context) -> Option<KernelPlan> {
    cx.spec.kernel.as_ref().map(|k| KernelPlan {
        kernel: k.kernel.clone(),
        initrd: k.initrd.clone(),
        append: kernel_command_line(cx.profile, k.append.as_deref()),
    })
}

/// Our part of the command line comes first so that the user's `--append` wins where the kernel
/// takes the last value; we add a console or panic setting only where the user gave none.
pub(super) fn kernel_command_line(profile: &MachineProfile, user: Option<&str>) -> String {
    let user = user.unwrap_or("").trim();
    let has = |key: &str| user.split_whitespace().any(|w| w.starts_with(key));
    let mut parts = Vec::new();
    if !has("console=") {
        parts.push(format!("console={}", profile.console.kernel));
    }
    // With -no-reboot, a panicking guest reboots at once and QEMU exits instead of hanging.
    if !has("panic=") {
        parts.push("panic=-1".to_owned());
    }
    if !user.is_empty() {
        parts.push(user.to_owned());
    }
    parts.join(" ")
}
