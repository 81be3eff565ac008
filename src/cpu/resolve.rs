//! From a [`CpuRequest`] to the `-cpu` QEMU will get, checked against the emulator's answers.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    CpuCheck, CpuError, CpuMode, CpuRequest, Flag, MaxPhysAddr, is_named, nearest, normalize_flags,
    phys_bits::check_phys_bits,
};
use crate::{
    host::caps::{Caps, CpuModel},
    profile::{Accel, AccelProfile, HostModelRule, MachineProfile},
    util::size::MemSize,
};

/// The guest CPU as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// How it was chosen.
    pub mode: CpuMode,
    /// QEMU CPU model name.
    pub model: String,
    /// Features turned on or off on top of the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<Flag>,
    /// Other `key=value` properties from the profile (tuning such as `pauth-impdef=on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Physical-address bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxphysaddr: Option<MaxPhysAddr>,
    /// Whether unavailable features were refused.
    #[serde(default)]
    pub check: CpuCheck,
}

impl Cpu {
    /// The `-cpu` value, unescaped: `model,opt,...,feat=on|off,...,phys-bits=N`.
    pub fn qemu_value(&self) -> String {
        let mut parts = vec![self.model.clone()];
        parts.extend(self.options.iter().cloned());
        parts.extend(
            self.features
                .iter()
                .map(|f| format!("{}={}", f.name, if f.on { "on" } else { "off" })),
        );
        match self.maxphysaddr {
            Some(MaxPhysAddr::Emulate { bits }) => {
                // `host` and `max` default to host-phys-bits=on under KVM, which would override
                // an explicit phys-bits; turn it off so the width asked for is the one used.
                if matches!(self.model.as_str(), "host" | "max") {
                    parts.push("host-phys-bits=off".into());
                }
                parts.push(format!("phys-bits={bits}"));
            }
            Some(MaxPhysAddr::Passthrough { limit }) => {
                parts.push("host-phys-bits=on".into());
                if let Some(l) = limit {
                    parts.push(format!("host-phys-bits-limit={l}"));
                }
            }
            None => {}
        }
        parts.join(",")
    }
}

/// What the CPU decision depends on besides the request.
#[derive(Debug, Clone, Copy)]
pub struct CpuContext<'a> {
    /// The guest's profile.
    pub profile: &'a MachineProfile,
    /// The accelerator chosen.
    pub accel: Accel,
    /// The emulator's binary name, for messages.
    pub binary: &'a str,
    /// What the emulator reports under that accelerator, if probed.
    pub caps: Option<&'a Caps>,
    /// The host CPU's physical-address bits, if known.
    pub host_phys_bits: Option<u8>,
    /// Guest RAM.
    pub memory: MemSize,
    /// The machine type chosen.
    pub machine: &'a str,
}

impl CpuContext<'_> {
    fn caps(&self) -> Result<&Caps, CpuError> {
        self.caps.ok_or_else(|| CpuError::NoCaps {
            binary: self.binary.to_owned(),
            accel: self.accel,
        })
    }

    fn version(&self) -> String {
        self.caps.map_or_else(String::new, |c| c.version.clone())
    }
}

/// Decides the guest CPU; `Ok(None)` means no `-cpu` (mode `none`). Needs the [`CpuContext`]'s
/// `caps` whenever the request is not the profile's default ([`CpuError::NoCaps`] otherwise).
pub fn resolve(req: &CpuRequest, ctx: &CpuContext) -> Result<Option<Cpu>, CpuError> {
    req.check_rules()?;
    let ap = ctx
        .profile
        .accel
        .get(&ctx.accel)
        .ok_or_else(|| CpuError::NotForArch {
            what: format!("accelerator {}", ctx.accel),
            arch: ctx.profile.name.clone(),
            hint: None,
        })?;
    // The plan hands over a profile whose options already passed their version and host gates.
    let default_options: Vec<String> = ap.cpu_options.iter().map(|o| o.option.clone()).collect();
    let options_for = |model: &str| {
        if model == ap.cpu {
            default_options.clone()
        } else {
            Vec::new()
        }
    };
    if req.is_default() {
        return Ok(Some(Cpu {
            mode: mode_of(&ap.cpu),
            model: ap.cpu.clone(),
            features: Vec::new(),
            options: default_options.clone(),
            maxphysaddr: None,
            check: req.check,
        }));
    }
    let caps = ctx.caps()?;
    let Some((mode, model, mut features)) = mode_cpu(req, ap, caps, ctx)? else {
        return Ok(None);
    };
    let user = features_of(req, ctx)?;
    for f in &user {
        features.retain(|o| o.name != f.name);
        features.push(f.clone());
    }
    if req.check == CpuCheck::Enforce && mode != CpuMode::Custom {
        // A custom model's flags were checked while picking it; here only `+f` can be missing.
        let missing = missing_required(&user, caps);
        if !missing.is_empty() {
            return Err(CpuError::Unavailable {
                accel: ctx.accel.to_string(),
                detail: format!("{model} cannot have {}", missing.join(", ")),
            });
        }
    }
    let maxphysaddr = match req.maxphysaddr {
        Some(m) => Some(check_phys_bits(m, mode, &model, ctx)?),
        None => None,
    };
    Ok(Some(Cpu {
        mode,
        options: options_for(&model),
        model,
        features,
        maxphysaddr,
        check: req.check,
    }))
}

/// The mode the request means, its model and the features the mode itself brings (host-model's
/// extras); `None` for mode `none`, which passes no `-cpu`.
fn mode_cpu(
    req: &CpuRequest,
    ap: &AccelProfile,
    caps: &Caps,
    ctx: &CpuContext,
) -> Result<Option<(CpuMode, String, Vec<Flag>)>, CpuError> {
    Ok(Some(match req.effective_mode() {
        Some(CpuMode::None) => return Ok(None),
        Some(CpuMode::HostPassthrough) => {
            if ctx.accel != Accel::Kvm {
                return Err(CpuError::NeedsKvm {
                    what: "cpu_mode host-passthrough (-cpu host)".into(),
                    instead: "--cpu-mode maximum or a named model".into(),
                });
            }
            (CpuMode::HostPassthrough, "host".to_owned(), Vec::new())
        }
        Some(CpuMode::Maximum) => {
            if let Some(models) = &caps.cpu_models
                && !models.iter().any(|m| m.name == "max")
            {
                return Err(CpuError::NotForArch {
                    what: format!(
                        "cpu_mode maximum ({} {} has no 'max' CPU)",
                        ctx.binary, caps.version
                    ),
                    arch: ctx.profile.name.clone(),
                    hint: Some("name a model with --cpu-model (see qemu-direct cpu models)".into()),
                });
            }
            (CpuMode::Maximum, "max".to_owned(), Vec::new())
        }
        Some(CpuMode::HostModel) => {
            let (model, extra) = host_model(ctx)?;
            (CpuMode::HostModel, model, extra)
        }
        Some(CpuMode::Custom) => {
            let flags = features_of(req, ctx)?;
            let model = pick_model(req, &flags, ctx)?;
            (CpuMode::Custom, model, Vec::new())
        }
        None => (mode_of(&ap.cpu), ap.cpu.clone(), Vec::new()),
    }))
}

fn mode_of(model: &str) -> CpuMode {
    match model {
        "host" => CpuMode::HostPassthrough,
        "max" => CpuMode::Maximum,
        _ => CpuMode::Custom,
    }
}

/// The request's flags with aliases mapped to QEMU's names and each name checked.
fn features_of(req: &CpuRequest, ctx: &CpuContext) -> Result<Vec<Flag>, CpuError> {
    let caps = ctx.caps()?;
    let aliases = &ctx.profile.cpu.feature_aliases;
    let mapped: Vec<Flag> = req
        .flags
        .iter()
        .map(|f| Flag {
            name: aliases.get(&f.name).unwrap_or(&f.name).clone(),
            on: f.on,
        })
        .collect();
    let flags = normalize_flags("cpu_model_extra_flags", &mapped)?;
    for f in &flags {
        match &caps.feature_names {
            Some(names) if names.contains(&f.name) => {}
            Some(names) => {
                return Err(CpuError::UnknownFeature {
                    name: f.name.clone(),
                    binary: ctx.binary.to_owned(),
                    nearest: nearest(&f.name, names.iter().map(String::as_str)),
                });
            }
            None if req.check == CpuCheck::None => {}
            None => {
                return Err(CpuError::Unverifiable {
                    binary: ctx.binary.to_owned(),
                    version: ctx.version(),
                    what: "features".into(),
                    value: f.to_string(),
                });
            }
        }
    }
    Ok(flags)
}

/// Required (`+f`) features the accelerator cannot provide.
fn missing_required(flags: &[Flag], caps: &Caps) -> Vec<String> {
    let Some(host) = &caps.host_cpu else {
        return Vec::new();
    };
    flags
        .iter()
        .filter(|f| f.on && !host.enabled.contains(&f.name))
        .map(|f| f.name.clone())
        .collect()
}

/// Nova's `cpu_models`: the first model, in order, that runs under the accelerator with the
/// requested features.
fn pick_model(req: &CpuRequest, flags: &[Flag], ctx: &CpuContext) -> Result<String, CpuError> {
    let caps = ctx.caps()?;
    let Some(models) = &caps.cpu_models else {
        if req.check == CpuCheck::None {
            return Ok(req.models[0].clone());
        }
        return Err(CpuError::Unverifiable {
            binary: ctx.binary.to_owned(),
            version: caps.version.clone(),
            what: "models".into(),
            value: req.models.join(", "),
        });
    };
    let disabled: BTreeSet<&str> = flags
        .iter()
        .filter(|f| !f.on)
        .map(|f| f.name.as_str())
        .collect();
    let mut refusals = Vec::new();
    for given in &req.models {
        let Some(m) = caps.model(given) else {
            return Err(CpuError::UnknownModel {
                name: given.clone(),
                binary: ctx.binary.to_owned(),
                nearest: nearest(given, models.iter().map(|m| m.name.as_str())),
            });
        };
        let mut missing: Vec<String> = m
            .unavailable
            .iter()
            .filter(|f| !disabled.contains(f.as_str()))
            .cloned()
            .collect();
        missing.extend(missing_required(flags, caps));
        if missing.is_empty() || req.check == CpuCheck::None {
            return Ok(m.name.clone());
        }
        refusals.push(format!("{} lacks {}", m.name, missing.join(", ")));
    }
    Err(CpuError::Unavailable {
        accel: ctx.accel.to_string(),
        detail: refusals.join("; "),
    })
}

/// host-model: per the profile, either computed (x86: the runnable named model whose features
/// are a subset of what the accelerator offers, with the fewest left over, plus those), `-cpu
/// host` under KVM (POWER), or an error saying what to use instead.
pub fn host_model(ctx: &CpuContext) -> Result<(String, Vec<Flag>), CpuError> {
    match ctx.profile.cpu.host_model {
        HostModelRule::Unsupported => Err(CpuError::NotForArch {
            what: "cpu_mode host-model".into(),
            arch: ctx.profile.name.clone(),
            hint: ctx.profile.cpu.host_model_hint.clone(),
        }),
        HostModelRule::Host if ctx.accel == Accel::Kvm => Ok(("host".into(), Vec::new())),
        HostModelRule::Host => Err(CpuError::NeedsKvm {
            what: format!("cpu_mode host-model on {}", ctx.profile.name),
            instead: "--cpu-mode maximum or a named model".into(),
        }),
        HostModelRule::Compute => computed_host_model(ctx),
    }
}

/// The runnable named model closest to the host CPU (its features a subset of the host's, the
/// fewest left over; the host's vendor preferred), plus the host's features it lacks.
fn computed_host_model(ctx: &CpuContext) -> Result<(String, Vec<Flag>), CpuError> {
    let caps = ctx.caps()?;
    let host = caps
        .host_cpu
        .as_ref()
        .ok_or_else(|| CpuError::Unverifiable {
            binary: ctx.binary.to_owned(),
            version: caps.version.clone(),
            what: "features".into(),
            value: "host-model".into(),
        })?;
    let fits = |m: &&CpuModel| {
        m.unavailable.is_empty()
            && is_named(m)
            && caps
                .features(m)
                .is_some_and(|f| f.enabled.is_subset(&host.enabled))
    };
    let models = caps.cpu_models.as_deref().unwrap_or_default();
    let same_vendor =
        |m: &&CpuModel| caps.features(m).and_then(|f| f.vendor.as_ref()) == host.vendor.as_ref();
    // Prefer the host's vendor (guests take vendor-specific paths), else any.
    let pool: Vec<&CpuModel> = {
        let v: Vec<&CpuModel> = models.iter().filter(fits).filter(same_vendor).collect();
        if v.is_empty() {
            models.iter().filter(fits).collect()
        } else {
            v
        }
    };
    let extra = |m: &CpuModel| {
        caps.features(m)
            .map_or(usize::MAX, |f| host.enabled.difference(&f.enabled).count())
    };
    let best = pool
        .into_iter()
        .min_by(|a, b| {
            extra(a)
                .cmp(&extra(b))
                // The unversioned alias (`Nehalem`) reads better than `Nehalem-v1`.
                .then(a.alias_of.is_none().cmp(&b.alias_of.is_none()))
                .then(a.name.cmp(&b.name))
        })
        .ok_or_else(|| CpuError::Unavailable {
            accel: ctx.accel.to_string(),
            detail: "no named model is a subset of the host CPU".into(),
        })?;
    let have = caps.features(best).map(|f| &f.enabled);
    let flags = host
        .enabled
        .iter()
        .filter(|f| !have.is_some_and(|h| h.contains(*f)))
        .map(|f| Flag {
            name: f.clone(),
            on: true,
        })
        .collect();
    Ok((best.name.clone(), flags))
}
