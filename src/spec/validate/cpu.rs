//! The CPU asked for: Nova's `cpu_*` settings and the physical-address bits.

use crate::{
    cpu::{CpuCheck, CpuRequest, CpuSettings, MaxPhysAddr},
    spec::{error::SpecError, input::SpecInput, nova::NovaProperties},
};

impl SpecInput {
    /// The CPU settings, with the flavor's `hw:maxphysaddr_*` merged into `maxphysaddr`.
    pub(super) fn cpu_request(&self, nova: &NovaProperties<'_>) -> Result<CpuRequest, SpecError> {
        let flavor = nova.maxphysaddr()?;
        let given = self
            .maxphysaddr
            .as_deref()
            .map(|m| MaxPhysAddr::parse("maxphysaddr", m))
            .transpose()?;
        let maxphysaddr = match (given, flavor) {
            (Some(g), Some(f)) if g != f => {
                return Err(SpecError::Conflict {
                    first: format!("--maxphysaddr {g}"),
                    second: format!("hw:maxphysaddr_* = {f}"),
                    why: "they ask for different physical-address bits; give one".into(),
                });
            }
            (g, f) => g.or(f),
        };
        let settings = CpuSettings {
            cpu_mode: self.cpu_mode.clone(),
            cpu_models: self.cpu_models.clone(),
            cpu_model_extra_flags: self.cpu_model_extra_flags.clone(),
            cpu_check: self.cpu_check.clone(),
        };
        let mut req = settings.to_request("the command line or spec file", maxphysaddr)?;
        // Nothing asked for: name no source, so the layer below (config file, profile) keeps its own.
        if req.is_default() && req.check == CpuCheck::default() {
            req.source = None;
        }
        Ok(req)
    }
}
