//! Physical-address bits (`maxphysaddr`): the checks against the profile, the host CPU and the
//! guest's RAM, and where QEMU puts RAM and the 64-bit PCI hole on a machine family.

use super::{CpuContext, CpuError, CpuMode, MaxPhysAddr};
use crate::{
    profile::{Accel, MemoryMap, PhysBitsRange},
    util::size::MemSize,
};

/// `maxphysaddr` against the profile's range, the host CPU and the guest's memory map.
pub(super) fn check_phys_bits(
    m: MaxPhysAddr,
    mode: CpuMode,
    model: &str,
    ctx: &CpuContext,
) -> Result<MaxPhysAddr, CpuError> {
    let range = ctx
        .profile
        .cpu
        .phys_bits
        .ok_or_else(|| CpuError::NotForArch {
            what: "maxphysaddr".into(),
            arch: ctx.profile.name.clone(),
            hint: Some("physical-address bits can be set for x86_64 guests only".into()),
        })?;
    let bits = match m {
        MaxPhysAddr::Emulate { bits } => emulated_bits(m, bits, range, ctx)?,
        MaxPhysAddr::Passthrough { limit } => host_bits(m, limit, mode, range, ctx)?,
    };
    check_memory_map(m, bits, model, range, ctx)?;
    Ok(m)
}

fn phys_bits_error(m: MaxPhysAddr, why: String) -> CpuError {
    CpuError::PhysBits {
        value: m.to_string(),
        why,
    }
}

/// `emulate:N`: within the profile's range and, under KVM, no wider than the host CPU.
fn emulated_bits(
    m: MaxPhysAddr,
    bits: u8,
    range: PhysBitsRange,
    ctx: &CpuContext,
) -> Result<u8, CpuError> {
    if !(range.min..=range.max).contains(&bits) {
        return Err(phys_bits_error(
            m,
            format!(
                "bits must be {} to {} for {} guests",
                range.min, range.max, ctx.profile.name
            ),
        ));
    }
    if ctx.accel == Accel::Kvm
        && let Some(host) = ctx.host_phys_bits
        && bits > host
    {
        return Err(phys_bits_error(
            m,
            format!(
                "{bits} bits exceed the host CPU's {host} (under KVM the guest cannot have more)"
            ),
        ));
    }
    Ok(bits)
}

/// `passthrough[:LIMIT]`: the host's width, known, under KVM with the host's own CPU (or `max`);
/// a limit from the profile's minimum up to it.
fn host_bits(
    m: MaxPhysAddr,
    limit: Option<u8>,
    mode: CpuMode,
    range: PhysBitsRange,
    ctx: &CpuContext,
) -> Result<u8, CpuError> {
    if ctx.accel != Accel::Kvm {
        return Err(CpuError::NeedsKvm {
            what: format!("maxphysaddr {m} (the host's address width)"),
            instead: "--maxphysaddr emulate:N".into(),
        });
    }
    if !matches!(mode, CpuMode::HostPassthrough | CpuMode::Maximum) {
        return Err(CpuError::Conflict {
            what: format!("maxphysaddr {m} with cpu_mode {mode}"),
            fix: "passthrough goes with cpu_mode host-passthrough or maximum (as in libvirt)"
                .into(),
        });
    }
    let host = ctx.host_phys_bits.ok_or_else(|| {
        phys_bits_error(
            m,
            "the host CPU's address width is unknown (/proc/cpuinfo has no \"address sizes\")"
                .into(),
        )
    })?;
    match limit {
        Some(l) if l > host || l < range.min => Err(phys_bits_error(
            m,
            format!("the limit must be {} to the host's {host} bits", range.min),
        )),
        Some(l) => Ok(l),
        None => Ok(host),
    }
}

/// The guest's RAM and 64-bit PCI hole, where the profile knows the machine's memory map, must
/// sit below `2^bits`.
fn check_memory_map(
    m: MaxPhysAddr,
    bits: u8,
    model: &str,
    range: PhysBitsRange,
    ctx: &CpuContext,
) -> Result<(), CpuError> {
    let Some(map) = ctx
        .profile
        .cpu
        .memory_map
        .iter()
        .find(|mm| mm.matches(ctx.machine))
    else {
        return Ok(());
    };
    let amd = vendor_of(model, ctx).is_some_and(|v| v == "AuthenticAMD");
    if phys_bits_fit(map, ctx.memory, amd, bits) {
        return Ok(());
    }
    let need = min_phys_bits(map, ctx.memory, amd);
    let fix = match need {
        Some(n) if n <= range.max => format!("use at least {n} bits"),
        _ => format!("no width up to {} fits; use less memory", range.max),
    };
    Err(phys_bits_error(
        m,
        format!(
            "{} of RAM on {} needs addresses up to {:#x}, beyond 2^{bits}; {fix}",
            ctx.memory,
            ctx.machine,
            highest_address(map, ctx.memory, amd) - 1
        ),
    ))
}

fn vendor_of(model: &str, ctx: &CpuContext) -> Option<String> {
    let caps = ctx.caps?;
    if matches!(model, "host" | "max") {
        return caps.host_cpu.as_ref()?.vendor.clone();
    }
    caps.features(caps.model(model)?)?.vendor.clone()
}

const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 * GIB;

/// One past the highest guest-physical address QEMU uses for `ram` on this machine family:
/// RAM above 4 GiB, then the 64-bit PCI hole (1 GiB aligned); with an AMD CPU a map reaching
/// the HyperTransport hole moves above 1 TiB.
pub fn highest_address(map: &MemoryMap, ram: MemSize, amd: bool) -> u64 {
    let ram = ram.bytes();
    let below = if ram >= map.split_at.bytes() {
        map.below_4g.bytes()
    } else {
        ram
    };
    let above = ram - below;
    let end_from = |start: u64| (start + above).div_ceil(GIB) * GIB + map.pci_hole64.bytes();
    let end = end_from(FOUR_GIB);
    match (map.amd_ht_start, map.amd_relocate_to) {
        (Some(ht), Some(to)) if amd && end > ht.bytes() => end_from(to.bytes()),
        _ => end,
    }
}

/// Whether QEMU accepts `bits` physical-address bits for `ram` on this machine family. With 32
/// or fewer QEMU skips the 64-bit hole, so all RAM must sit below 4 GiB; above 32 the whole map
/// must fit.
pub fn phys_bits_fit(map: &MemoryMap, ram: MemSize, amd: bool, bits: u8) -> bool {
    if bits <= 32 {
        ram.bytes() < map.split_at.bytes() && ram.bytes() <= FOUR_GIB
    } else {
        bits >= 64 || highest_address(map, ram, amd) <= 1u64 << bits
    }
}

/// The fewest physical-address bits above 32 that fit `ram` on this machine family, or `None`
/// past 63.
pub fn min_phys_bits(map: &MemoryMap, ram: MemSize, amd: bool) -> Option<u8> {
    (33..64u8).find(|&n| phys_bits_fit(map, ram, amd, n))
}
