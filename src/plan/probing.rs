//! [`resolve_probing`]: the one resolution that does I/O, probing an emulator's capabilities
//! (through the cache) where the plan needs them and resolving again.

use crate::{
    cpu::CpuError,
    host::caps::CapsCache,
    host::{Emulator, HostFacts, virtiofsd::Virtiofsd},
    profile::ProfileSet,
    spec::VmSpec,
    spec::config::Config,
};

use super::{
    LaunchPlan, PlanError,
    binary::{emulator_key, guest_profile},
    resolve_with,
};

/// [`resolve_with`], probing the emulator's capabilities (through `cache`) when `host` lacks
/// them and the CPU request needs them, or the emulator's QEMU version is unknown (the version
/// gates the profile's options; a probe that fails then only leaves a note). With `probe` false
/// (host facts from a file) missing CPU capabilities are an error and an unknown version stays
/// unknown. An `--emulator` inside a QEMU prefix ([`HostFacts::infer_prefix`]) is asked for
/// the prefix's data folders first.
pub async fn resolve_probing(
    spec: &VmSpec,
    profiles: &ProfileSet,
    host: &mut HostFacts,
    config: &Config,
    cache: &CapsCache,
    probe: bool,
) -> Result<LaunchPlan, PlanError> {
    // An --emulator in a QEMU prefix of its own brings that prefix's data folders.
    if probe && let Some(path) = &spec.emulator {
        host.infer_prefix(path);
    }
    // Looked for only when a share may need it (see `ProbeOptions::virtiofsd`).
    if probe && !spec.shares.is_empty() && host.virtiofsd.is_none() {
        host.virtiofsd = Virtiofsd::find();
    }
    let (accel, unversioned) = match resolve_with(spec, profiles, host, config) {
        Err(PlanError::Cpu(CpuError::NoCaps { accel, .. })) if probe => (accel, None),
        // The QEMU version gates the profile's options; the capabilities (cached) carry it.
        Ok(plan) if probe && plan.qemu_version.is_none() => (plan.accel, Some(plan)),
        other => return other,
    };
    let profile = guest_profile(spec, profiles, host)?;
    let key = emulator_key(spec, profile);
    if let Some(path) = &spec.emulator {
        host.emulators.entry(key.clone()).or_insert(Emulator {
            path: path.clone(),
            version: None,
            caps: Default::default(),
        });
    }
    if let Some((binary, accel, source)) = host
        .add_caps(cache, &[(key, accel)])
        .await
        .into_iter()
        .next()
    {
        return match unversioned {
            // Only the version was wanted: plan without it, saying why.
            Some(mut plan) => {
                plan.notes.push(format!(
                    "QEMU version unknown: {binary} under {accel} did not answer the capability probe ({source})"
                ));
                Ok(plan)
            }
            None => Err(PlanError::Caps {
                binary,
                accel,
                source: Box::new(source),
            }),
        };
    }
    resolve_with(spec, profiles, host, config)
}
