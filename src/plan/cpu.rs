//! The `-cpu` model and properties, by [`crate::cpu::resolve`].

use crate::{
    cpu::{Cpu, CpuContext, CpuRequest},
    profile::gate::ProfileOption,
    spec::config::Config,
    util::size::MemSize,
};

use super::{Machine, PlanError, context::Context};

/// The CPU asked for: the config files' defaults for this profile under the spec's own
/// settings.
pub(super) fn request(cx: &Context, config: &Config) -> Result<CpuRequest, PlanError> {
    let profile = cx.profile;
    Ok(config.cpu_for(profile)?.overlay(
        cx.spec
            .cpu
            .clone()
            .canonical(&profile.cpu.feature_aliases)?,
    ))
}

/// The CPU for `request` on this machine, noting where it came from (and the profile's CPU
/// options left out, where its default model is the one chosen).
pub(super) fn resolve(
    cx: &mut Context,
    request: &CpuRequest,
    machine: &Machine,
    memory: MemSize,
) -> Result<Option<Cpu>, PlanError> {
    let (profile, ap, accel) = (cx.profile, cx.ap, cx.accel);
    // The CPU code sees the profile's default CPU options after their gates.
    let (cpu_options, cpu_left_out) = cx.gate.filter("cpu option", &ap.cpu_options);
    let mut gated = profile.clone();
    if let Some(a) = gated.accel.get_mut(&accel) {
        a.cpu_options = cpu_options.into_iter().map(ProfileOption::plain).collect();
    }
    let cpu = crate::cpu::resolve(
        request,
        &CpuContext {
            profile: &gated,
            accel,
            binary: &profile.binary,
            caps: cx.host.caps(&cx.binary_key, accel),
            host_phys_bits: cx.host.phys_bits,
            memory,
            machine: &machine.kind,
        },
    )?;
    if cpu.as_ref().is_some_and(|c| c.model == ap.cpu) {
        cx.notes.extend(cpu_left_out);
    }
    cx.notes.push(match (&cpu, &request.source) {
        (None, Some(src)) => format!("cpu: none, the machine's default (from {src})"),
        (None, None) => "cpu: none, the machine's default".into(),
        (Some(c), Some(src)) => format!("cpu: {} {} (from {src})", c.mode, c.model),
        (Some(c), None) => format!("cpu: {} {} (the profile's default)", c.mode, c.model),
    });
    Ok(cpu)
}
