//! The guest CPU: mode, named model, extra features, physical-address bits.
//!
//! What a user asks for ([`CpuRequest`], from flags, a spec file, Nova's
//! `cpu_mode`/`cpu_models`/`cpu_model_extra_flags` and the flavor's `hw:maxphysaddr_*`, layered
//! over the config files) is checked for syntax alone here; [`resolve()`] then decides the
//! `-cpu` against what the emulator reports ([`crate::host::caps::Caps`]) under the chosen
//! accelerator, and refuses, naming the field and what would be valid, anything QEMU would
//! reject or silently change. [`baseline()`] finds one CPU that runs on several hosts.
//!
//! Facts reproduced: `shared/reference/semantics.md` §3, §4 and §6.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

mod baseline;
mod phys_bits;
mod resolve;
mod settings;
#[cfg(test)]
mod tests;

pub use baseline::{Baseline, BaselineHost, baseline};
pub use phys_bits::{highest_address, min_phys_bits, phys_bits_fit};
pub use resolve::{Cpu, CpuContext, host_model, resolve};
pub use settings::CpuSettings;

/// How the guest CPU is chosen (libvirt's `<cpu mode=...>`, Nova's `cpu_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    /// The host CPU as is (`-cpu host`); hardware accelerator only.
    HostPassthrough,
    /// Everything the accelerator offers (`-cpu max`).
    Maximum,
    /// A named model close to the host CPU, plus the host's extra features.
    HostModel,
    /// A named model from `cpu_models`.
    Custom,
    /// No `-cpu`: the machine's default.
    None,
}

impl CpuMode {
    /// Every mode, as written.
    pub const NAMES: &'static str = "host-passthrough, maximum, host-model, custom, none";

    /// The mode as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuMode::HostPassthrough => "host-passthrough",
            CpuMode::Maximum => "maximum",
            CpuMode::HostModel => "host-model",
            CpuMode::Custom => "custom",
            CpuMode::None => "none",
        }
    }
}

impl fmt::Display for CpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpuMode {
    type Err = CpuError;

    fn from_str(s: &str) -> Result<Self, CpuError> {
        Ok(
            match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "host-passthrough" => CpuMode::HostPassthrough,
                "maximum" | "max" => CpuMode::Maximum,
                "host-model" => CpuMode::HostModel,
                "custom" => CpuMode::Custom,
                "none" => CpuMode::None,
                _ => {
                    return Err(CpuError::Invalid {
                        field: "cpu_mode".into(),
                        value: s.into(),
                        expected: format!("one of {}", CpuMode::NAMES),
                    });
                }
            },
        )
    }
}

/// Whether a model or feature the accelerator cannot provide is refused (libvirt's `check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuCheck {
    /// Refuse, listing what is missing.
    #[default]
    Enforce,
    /// Let QEMU drop what it cannot provide (libvirt's `check='none'`); unverifiable names pass.
    None,
}

impl FromStr for CpuCheck {
    type Err = CpuError;

    fn from_str(s: &str) -> Result<Self, CpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" | "full" | "partial" => Ok(CpuCheck::Enforce),
            "none" => Ok(CpuCheck::None),
            _ => Err(CpuError::Invalid {
                field: "cpu_check".into(),
                value: s.into(),
                expected: "enforce or none".into(),
            }),
        }
    }
}

/// One extra feature: `+f` or `f` requires it, `-f` disables it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// Feature name, lower-case.
    pub name: String,
    /// On (`policy='require'`) or off (`policy='disable'`).
    pub on: bool,
}

impl Flag {
    /// Parses `+f`, `f` or `-f`; names are lower-cased.
    pub fn parse(field: &str, text: &str) -> Result<Flag, CpuError> {
        let t = text.trim();
        let (on, name) = match t.as_bytes().first() {
            Some(b'+') => (true, &t[1..]),
            Some(b'-') => (false, &t[1..]),
            _ => (true, t),
        };
        let name = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(CpuError::Invalid {
                field: field.into(),
                value: text.into(),
                expected: "+feature, feature or -feature (letters, digits, '-', '_', '.')".into(),
            });
        }
        Ok(Flag { name, on })
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", if self.on { '+' } else { '-' }, self.name)
    }
}

/// Lower-cases, de-duplicates and checks for contradictions; `field` names the source in errors.
pub fn normalize_flags(field: &str, flags: &[Flag]) -> Result<Vec<Flag>, CpuError> {
    let mut out: Vec<Flag> = Vec::new();
    for f in flags {
        match out.iter().find(|o| o.name == f.name) {
            Some(o) if o.on != f.on => {
                return Err(CpuError::Conflict {
                    what: format!(
                        "{field}: CPU feature '{}' is both required and disabled",
                        f.name
                    ),
                    fix: format!("keep one of +{0} and -{0}", f.name),
                });
            }
            Some(_) => {}
            None => out.push(f.clone()),
        }
    }
    Ok(out)
}

/// The guest's physical-address bits (Nova flavor `hw:maxphysaddr_mode`/`hw:maxphysaddr_bits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum MaxPhysAddr {
    /// A fixed width (`phys-bits=N`).
    Emulate {
        /// The width.
        bits: u8,
    },
    /// The host's width (`host-phys-bits=on`), optionally capped.
    Passthrough {
        /// The cap (`host-phys-bits-limit=N`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u8>,
    },
}

impl MaxPhysAddr {
    /// Parses `emulate:N`, `passthrough` or `passthrough:LIMIT`.
    pub fn parse(field: &str, text: &str) -> Result<MaxPhysAddr, CpuError> {
        let bad = |expected: &str| CpuError::Invalid {
            field: field.into(),
            value: text.into(),
            expected: expected.into(),
        };
        let (mode, bits) = match text.trim().split_once(':') {
            Some((m, b)) => (m, Some(b)),
            None => (text.trim(), None),
        };
        let bits = bits
            .map(|b| b.trim().parse::<u8>())
            .transpose()
            .map_err(|_| {
                bad("a whole number of bits (32 to 52 for x86_64 guests), e.g. emulate:42")
            })?;
        Self::from_parts(field, text, mode, bits)
    }

    /// From Nova's two flavor keys: `mode` (`emulate` | `passthrough`) and optional `bits`.
    pub fn from_parts(
        field: &str,
        value: &str,
        mode: &str,
        bits: Option<u8>,
    ) -> Result<MaxPhysAddr, CpuError> {
        let bad = |expected: &str| CpuError::Invalid {
            field: field.into(),
            value: value.into(),
            expected: expected.into(),
        };
        match (mode.trim().to_ascii_lowercase().as_str(), bits) {
            ("emulate", Some(bits)) => Ok(MaxPhysAddr::Emulate { bits }),
            ("emulate", None) => Err(bad(
                "emulate needs the number of bits: emulate:N (Nova: hw:maxphysaddr_bits)",
            )),
            ("passthrough", limit) => Ok(MaxPhysAddr::Passthrough { limit }),
            // Nova's flavor key takes the bare mode; the command line takes mode[:bits].
            _ if field.starts_with("hw:") => Err(bad("emulate or passthrough")),
            _ => Err(bad("emulate:N, passthrough or passthrough:LIMIT")),
        }
    }
}

impl fmt::Display for MaxPhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxPhysAddr::Emulate { bits } => write!(f, "emulate:{bits}"),
            MaxPhysAddr::Passthrough { limit: None } => f.write_str("passthrough"),
            MaxPhysAddr::Passthrough { limit: Some(l) } => write!(f, "passthrough:{l}"),
        }
    }
}

/// What the user asked of the CPU, syntax-checked, with where each part came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuRequest {
    /// The mode; `None` leaves it to the models given, else the profile's default CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CpuMode>,
    /// Named models, in order of preference (Nova's `cpu_models`): the first that runs is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Extra features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// Whether unavailable features are refused.
    #[serde(default)]
    pub check: CpuCheck,
    /// Physical-address bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxphysaddr: Option<MaxPhysAddr>,
    /// Where the mode and models came from (`--cpu-model`, `spec file`, `config /etc/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl CpuRequest {
    /// Whether anything differs from "the profile's default CPU".
    pub fn is_default(&self) -> bool {
        self.mode.is_none()
            && self.models.is_empty()
            && self.flags.is_empty()
            && self.maxphysaddr.is_none()
    }

    /// The mode this request means: an explicit one, else `custom` when models are given.
    pub fn effective_mode(&self) -> Option<CpuMode> {
        self.mode
            .or_else(|| (!self.models.is_empty()).then_some(CpuMode::Custom))
    }

    /// Checks the rules that need no host: models iff custom, no features without a `-cpu`.
    pub fn check_rules(&self) -> Result<(), CpuError> {
        match (self.effective_mode(), self.models.is_empty()) {
            (Some(CpuMode::Custom), true) => {
                return Err(CpuError::Conflict {
                    what: "cpu_mode custom needs a model".into(),
                    fix: "name one with --cpu-model (cpu_models)".into(),
                });
            }
            (Some(m), false) if m != CpuMode::Custom => {
                return Err(CpuError::Conflict {
                    what: format!(
                        "cpu_models ({}) given with cpu_mode {m}",
                        self.models.join(", ")
                    ),
                    fix: "models apply only to cpu_mode custom: drop the model or use custom"
                        .into(),
                });
            }
            _ => {}
        }
        if self.effective_mode() == Some(CpuMode::None) {
            if !self.flags.is_empty() {
                return Err(CpuError::Conflict {
                    what: "cpu_model_extra_flags given with cpu_mode none".into(),
                    fix: "mode none passes no -cpu to attach features to: pick a mode".into(),
                });
            }
            if self.maxphysaddr.is_some() {
                return Err(CpuError::Conflict {
                    what: "maxphysaddr given with cpu_mode none".into(),
                    fix: "physical-address bits are a -cpu property: pick a mode".into(),
                });
            }
        }
        normalize_flags("cpu_model_extra_flags", &self.flags)?;
        Ok(())
    }

    /// The same request with feature names in QEMU's spelling (libvirt's `lahf_lm` becomes
    /// `lahf-lm`), so layers compare like with like.
    /// Two spellings of one feature with opposite signs are a conflict.
    pub fn canonical(
        mut self,
        aliases: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, CpuError> {
        for f in &mut self.flags {
            if let Some(q) = aliases.get(&f.name) {
                f.name = q.clone();
            }
        }
        self.flags = normalize_flags("cpu_model_extra_flags", &self.flags)?;
        Ok(self)
    }

    /// Layers `top` over `self`: a mode or model in `top` replaces this one's mode, models and
    /// features (they belong to another CPU); features alone are added, `top` winning.
    pub fn overlay(mut self, top: CpuRequest) -> CpuRequest {
        if top.mode.is_some() || !top.models.is_empty() {
            self.mode = top.mode;
            self.models = top.models;
            self.flags.clear();
            self.source = top.source.clone();
        }
        for f in top.flags {
            self.flags.retain(|o| o.name != f.name);
            self.flags.push(f);
        }
        if top.check != CpuCheck::default() {
            self.check = top.check;
        }
        if top.maxphysaddr.is_some() {
            self.maxphysaddr = top.maxphysaddr;
        }
        if self.source.is_none() {
            self.source = top.source;
        }
        self
    }
}

/// A CPU setting that cannot be used, naming the field, the value and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// A value of the wrong form.
    #[error("invalid {field} '{value}': {expected}")]
    Invalid {
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// Settings that contradict each other.
    #[error("{what}; {fix}")]
    Conflict {
        /// What clashes.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// A model the emulator does not know.
    #[error("unknown CPU model '{name}' for {binary}{nearest}")]
    UnknownModel {
        /// As given.
        name: String,
        /// The emulator.
        binary: String,
        /// "; did you mean ..." or "".
        nearest: String,
    },
    /// A feature the emulator does not know.
    #[error("unknown CPU feature '{name}' for {binary}{nearest}")]
    UnknownFeature {
        /// As given.
        name: String,
        /// The emulator.
        binary: String,
        /// "; did you mean ..." or "".
        nearest: String,
    },
    /// The emulator cannot say what it supports, so the request cannot be checked.
    #[error("{binary} {version} cannot list its CPU {what}, so '{value}' cannot be checked")]
    Unverifiable {
        /// The emulator.
        binary: String,
        /// Its version.
        version: String,
        /// `models` or `features`.
        what: String,
        /// The request.
        value: String,
    },
    /// No model in `cpu_models` runs under the accelerator.
    #[error("no CPU model in cpu_models runs under {accel}: {detail}")]
    Unavailable {
        /// The accelerator.
        accel: String,
        /// Per model, what is missing.
        detail: String,
    },
    /// Something that needs a hardware accelerator, asked under TCG.
    #[error("{what} needs a hardware accelerator (KVM), but this guest runs under TCG")]
    NeedsKvm {
        /// What was asked.
        what: String,
        /// What to use under TCG instead.
        instead: String,
    },
    /// A mode or option this architecture does not have.
    #[error("{what} is not supported for {arch} guests")]
    NotForArch {
        /// What was asked.
        what: String,
        /// The guest arch.
        arch: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// Physical-address bits out of range or too few for the guest's RAM.
    #[error("maxphysaddr {value}: {why}")]
    PhysBits {
        /// The request.
        value: String,
        /// What is wrong, with the smallest value that works where there is one.
        why: String,
    },
    /// The emulator's capabilities were not probed (or not recorded in `--host-facts`).
    #[error("no CPU capabilities recorded for {binary} under {accel}")]
    NoCaps {
        /// The emulator.
        binary: String,
        /// The accelerator.
        accel: crate::profile::Accel,
    },
    /// Several hosts with no CPU in common, or that cannot be compared.
    #[error("no common CPU: {0}")]
    Baseline(String),
}

impl CpuError {
    /// What to do about it, where there is more to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            CpuError::NotForArch { hint, .. } => hint.clone(),
            CpuError::Unverifiable { .. } => Some(
                "pass --cpu-check none to use it unchecked, or use --cpu-mode maximum".into(),
            ),
            CpuError::Unavailable { .. } => Some(
                "disable the missing features (--cpu-flags=-f,...), pick another model (qemu-direct cpu models), or pass --cpu-check none to let QEMU drop them".into(),
            ),
            CpuError::NoCaps { .. } => {
                Some("record them with `qemu-direct probe --json` on that host".into())
            }
            CpuError::NeedsKvm { instead, .. } => Some(format!("under TCG use {instead}")),
            _ => None,
        }
    }
}

/// Up to three names from `valid` closest to `given`, as "; did you mean a, b, c" (or "").
pub fn nearest<'a>(given: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    let g = given.to_ascii_lowercase();
    let mut scored: Vec<(f64, &str)> = valid
        .into_iter()
        .map(|v| (strsim::jaro_winkler(&g, &v.to_ascii_lowercase()), v))
        .filter(|(s, _)| *s > 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    let names: Vec<&str> = scored.into_iter().take(3).map(|(_, v)| v).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", names.join(", "))
    }
}

/// Whether a model is a named CPU, not one QEMU derives from the host or the accelerator (`host`,
/// `max`) or x86's featureless `base`: the only kind that means the same CPU on every host.
fn is_named(m: &crate::host::caps::CpuModel) -> bool {
    !matches!(m.name.as_str(), "host" | "max" | "base")
}

/// One row of `qemu-direct cpu models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRow {
    /// The model.
    pub name: String,
    /// The versioned model it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
    /// Runs under the accelerator as is.
    pub usable: bool,
    /// Why not (missing features), or what to know (deprecated).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// The emulator's models with a usable verdict each; `None` when it cannot list them.
pub fn model_rows(caps: &crate::host::caps::Caps) -> Option<Vec<ModelRow>> {
    Some(
        caps.cpu_models
            .as_ref()?
            .iter()
            .map(|m| {
                let mut why = Vec::new();
                if !m.unavailable.is_empty() {
                    why.push(format!("lacks {}", m.unavailable.join(", ")));
                }
                if m.deprecated {
                    why.push("deprecated".into());
                }
                ModelRow {
                    name: m.name.clone(),
                    alias_of: m.alias_of.clone(),
                    usable: m.unavailable.is_empty(),
                    why: why.join("; "),
                }
            })
            .collect(),
    )
}
