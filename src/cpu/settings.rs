//! The raw CPU settings as written in a spec file, a config file or on the command line, with
//! Nova's names (`cpu_mode`, `cpu_models`, `cpu_model_extra_flags`).

use serde::{Deserialize, Serialize};

use super::{CpuError, CpuRequest, Flag, MaxPhysAddr};

/// CPU settings before checking; every field optional so layers can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSettings {
    /// `host-passthrough`, `maximum`, `host-model`, `custom` or `none`.
    pub cpu_mode: Option<String>,
    /// Named models, most preferred first.
    pub cpu_models: Option<Vec<String>>,
    /// Extra features: `+f` or `f` to require, `-f` to disable.
    pub cpu_model_extra_flags: Option<Vec<String>>,
    /// `enforce` (default) or `none`.
    pub cpu_check: Option<String>,
}

impl CpuSettings {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == CpuSettings::default()
    }

    /// Parses into a request; `source` says where these settings came from, for `plan`.
    pub fn to_request(
        &self,
        source: &str,
        maxphysaddr: Option<MaxPhysAddr>,
    ) -> Result<CpuRequest, CpuError> {
        let models: Vec<String> = self
            .cpu_models
            .iter()
            .flatten()
            .map(|m| m.trim().to_owned())
            .collect();
        if let Some(empty) = models.iter().find(|m| m.is_empty() || m.contains(',')) {
            return Err(CpuError::Invalid {
                field: "cpu_models".into(),
                value: empty.clone(),
                expected: "a CPU model name (see qemu-direct cpu models)".into(),
            });
        }
        let flags = self
            .cpu_model_extra_flags
            .iter()
            .flatten()
            .map(|f| Flag::parse("cpu_model_extra_flags", f))
            .collect::<Result<Vec<_>, _>>()?;
        let request = CpuRequest {
            mode: self.cpu_mode.as_deref().map(str::parse).transpose()?,
            models,
            flags,
            check: self
                .cpu_check
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            maxphysaddr,
            source: Some(source.to_owned()),
        };
        request.check_rules()?;
        Ok(request)
    }
}
