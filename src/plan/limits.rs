//! Guest memory and vCPUs, within what the machine takes.

use crate::util::size::MemSize;

use super::{PlanError, context::Context};

/// Below this no Linux guest boots, and it catches unit slips such as `--memory 512K`.
pub const MIN_MEMORY: MemSize = MemSize::from_mib(16);
/// Upper bound where a profile sets none: 16 TiB, well past any host we run on.
pub const MAX_MEMORY: MemSize = MemSize::from_mib(16 * 1024 * 1024);

/// The spec's memory, else the profile's default, between [`MIN_MEMORY`] and the profile's
/// maximum.
pub(super) fn memory(cx: &Context) -> Result<MemSize, PlanError> {
    let profile = cx.profile;
    let memory = cx.spec.memory.unwrap_or(profile.default_memory);
    let max_memory = profile.max_memory.unwrap_or(MAX_MEMORY);
    if memory < MIN_MEMORY || memory > max_memory {
        return Err(PlanError::OutOfRange {
            field: "memory",
            value: memory.to_string(),
            expected: format!("{} guests take {MIN_MEMORY} to {max_memory}", profile.name),
        });
    }
    Ok(memory)
}

/// The spec's vCPUs, else one, up to the profile's maximum.
pub(super) fn smp(cx: &Context) -> Result<u32, PlanError> {
    let profile = cx.profile;
    let smp = cx.spec.smp.unwrap_or(1);
    if smp > profile.max_cpus {
        return Err(PlanError::OutOfRange {
            field: "smp",
            value: smp.to_string(),
            expected: format!(
                "{} guests take 1 to {} vCPUs",
                profile.name, profile.max_cpus
            ),
        });
    }
    Ok(smp)
}
