//! From a validated spec, the machine profiles and the host's facts to a [`LaunchPlan`]: the
//! plain value that says exactly what will run, and why. [`resolve`] is a pure function; it
//! touches nothing (but for checking that chosen firmware files exist), so every decision can
//! be tested with made-up hosts. Its inputs include the emulator's QEMU version, against which
//! the profile's options are gated ([`crate::profile::gate`]), and the firmware descriptors of
//! [`HostFacts::firmware`].
//!
//! [`resolve_with`] reads as its steps, each in a file of its own: the profile and emulator
//! (`binary`), the accelerator (`accel`), the machine (`machine`), memory and vCPUs (`limits`),
//! the CPU (`cpu`), the kernel (`kernel`), disks and network cards (`devices`), the guest
//! agent's channel (`agent`), shared folders (`shares`), the firmware (`firmware`) and the
//! console (`console`). [`resolve_probing`] is the one that does I/O.

mod accel;
mod agent;
mod binary;
mod console;
mod context;
mod cpu;
mod devices;
mod error;
mod firmware;
mod kernel;
mod launch_plan;
mod limits;
mod machine;
mod probing;
mod shares;
#[cfg(test)]
mod tests;

pub use crate::cpu::Cpu;
pub use agent::AgentPlan;
pub use binary::missing_emulator;
pub use error::PlanError;
pub use launch_plan::{
    ConsolePlan, DescriptorFirmware, DiskPlan, KernelPlan, LaunchPlan, Machine, NicPlan, SeedPlan,
};
pub use limits::{MAX_MEMORY, MIN_MEMORY};
pub use probing::resolve_probing;
pub use shares::{MemoryBackend, SharePlan, ShareTransport};

use crate::{
    host::HostFacts,
    profile::ProfileSet,
    spec::{VmSpec, config::Config},
};

use context::Context;

/// Resolves a spec into a plan for this host, with no config files.
pub fn resolve(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &HostFacts,
) -> Result<LaunchPlan, PlanError> {
    resolve_with(spec, profiles, host, &Config::default())
}

/// Resolves a spec into a plan for this host, with the config files' CPU defaults under the
/// spec's own settings.
pub fn resolve_with(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &HostFacts,
    config: &Config,
) -> Result<LaunchPlan, PlanError> {
    // The order of the steps is the order of their checks: it decides which fault of several
    // the user is told about, and the order of the notes.
    let profile = binary::guest_profile(spec, profiles, host)?;
    let arch = profile.arch();
    let binary = binary::binary(spec, profile, host)?;
    let (accel, accel_reason) = accel::choose(spec.accel, profile, host)?;
    let mut cx = Context::new(spec, profile, host, accel)?;
    let (data_dirs, module_dir) = binary::data_dirs(host, &binary, &mut cx.notes);
    let mut machine = machine::machine(&mut cx);
    machine::nested_virt(&mut cx, &mut machine)?;
    let accel_options = accel::options(&mut cx)?;
    let memory = limits::memory(&cx)?;
    let smp = limits::smp(&cx)?;
    let cpu_request = cpu::request(&cx, config)?;
    machine::check_known(&cx)?;
    let cpu = cpu::resolve(&mut cx, &cpu_request, &machine, memory)?;
    let kernel = kernel::kernel(&cx);
    let disks = devices::disks(&mut cx);
    let seed = devices::seed(&mut cx);
    let nics = devices::nics(&mut cx);
    let agent = agent::agent(&mut cx);
    let (shares, memory_backend) = shares::shares(&mut cx)?;
    let name = spec.name.clone().unwrap_or_else(|| arch.to_string());
    let bios_file = firmware::user_file(&cx);
    let descriptor_firmware = firmware::descriptor_firmware(&mut cx, &machine, &name)?;
    firmware::add_machine_options(&mut machine, descriptor_firmware.as_ref());
    let console = console::console(
        &mut cx,
        kernel.as_ref(),
        &disks,
        descriptor_firmware.as_ref(),
    );
    Ok(LaunchPlan {
        name,
        arch,
        binary,
        data_dirs,
        module_dir,
        accel,
        accel_reason,
        accel_options,
        qemu_version: cx.qemu_version,
        machine,
        cpu,
        memory,
        smp,
        kernel,
        disks,
        seed,
        nics,
        firmware: bios_file,
        descriptor_firmware,
        console,
        notes: cx.notes,
        panic_device: profile.panic_device.clone(),
        qemu_args: spec.qemu_args.clone(),
        agent,
        shares,
        memory_backend,
    })
}
