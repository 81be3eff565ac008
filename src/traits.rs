//! What this host offers in os-traits names (as Nova reports to placement), and Nova's
//! prefilter question for one guest: does it run here, natively, emulated, or not at all?
//!
//! - `COMPUTE_ARCH_<X>`: an emulator for guest arch X is installed and answers a probe.
//! - `HW_ARCH_<X>`: the host's own arch.
//! - `COMPUTE_ADDRESS_SPACE_EMULATED`: guests can get a chosen physical-address width.
//! - `COMPUTE_ADDRESS_SPACE_PASSTHROUGH`: guests can get the host's width (hardware accelerator).

use serde::Serialize;

use crate::{
    cpu::MaxPhysAddr,
    host::HostFacts,
    plan::LaunchPlan,
    profile::{Accel, ProfileSet},
};

/// One trait this host has, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostTrait {
    /// The os-traits name.
    pub name: String,
    /// Why the host has it.
    pub why: String,
}

/// The traits of `host`; emulators count only when their TCG capabilities were probed.
pub fn host_traits(host: &HostFacts, profiles: &ProfileSet) -> Vec<HostTrait> {
    let mut out = Vec::new();
    if let Some(p) = host.arch.as_ref().and_then(|a| profiles.get(a))
        && let Some(t) = &p.traits.hw_arch
    {
        out.push(HostTrait {
            name: t.clone(),
            why: format!("this host is {}", p.name),
        });
    }
    let mut emulated = None;
    let mut passthrough = None;
    for p in profiles.iter() {
        let Some(caps) = host.caps(&p.binary, Accel::Tcg) else {
            continue;
        };
        if let Some(t) = &p.traits.compute_arch {
            out.push(HostTrait {
                name: t.clone(),
                why: format!("{} {} answers", p.binary, caps.version),
            });
        }
        if p.cpu.phys_bits.is_some() {
            emulated.get_or_insert_with(|| format!("{} guests take phys-bits", p.name));
            if host.kvm_verdict(p).is_ok() && host.phys_bits.is_some() {
                passthrough.get_or_insert_with(|| {
                    format!("{} guests run under KVM with host-phys-bits", p.name)
                });
            }
        }
    }
    for (name, why) in [
        ("COMPUTE_ADDRESS_SPACE_EMULATED", emulated),
        ("COMPUTE_ADDRESS_SPACE_PASSTHROUGH", passthrough),
    ] {
        if let Some(why) = why {
            out.push(HostTrait {
                name: name.into(),
                why,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The traits a guest asks of its host, the way Nova's request filters derive them from image
/// properties and flavor extra specs.
pub fn required_traits(
    properties: &std::collections::BTreeMap<String, String>,
    maxphysaddr: Option<MaxPhysAddr>,
    profiles: &ProfileSet,
) -> Vec<String> {
    let mut out = Vec::new();
    let name = |v: &str, pick: fn(&crate::profile::TraitNames) -> Option<&String>, prefix: &str| {
        profiles
            .resolve("property", v)
            .ok()
            .and_then(|p| pick(&p.traits).cloned())
            .unwrap_or_else(|| format!("{prefix}{}", v.to_ascii_uppercase().replace('-', "_")))
    };
    if let Some(v) = properties.get("hw_architecture") {
        out.push(name(v, |t| t.hw_arch.as_ref(), "HW_ARCH_"));
    }
    if let Some(v) = properties.get("hw_emulation_architecture") {
        out.push(name(v, |t| t.compute_arch.as_ref(), "COMPUTE_ARCH_"));
    }
    match maxphysaddr {
        Some(MaxPhysAddr::Emulate { .. }) => out.push("COMPUTE_ADDRESS_SPACE_EMULATED".into()),
        Some(MaxPhysAddr::Passthrough { .. }) => {
            out.push("COMPUTE_ADDRESS_SPACE_PASSTHROUGH".into())
        }
        None => {}
    }
    out
}

/// Nova's prefilter answer for one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Runs under a hardware accelerator.
    Native,
    /// Runs under TCG.
    Emulated,
    /// Does not run here.
    No,
}

/// A trait a guest asks for, and whether this host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraitCheck {
    /// The os-traits name.
    pub name: String,
    /// Whether this host has it.
    pub present: bool,
}

/// The answer with its reasons.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The verdict.
    pub verdict: Verdict,
    /// Traits asked for, and whether this host has each.
    pub traits: Vec<TraitCheck>,
    /// Why, one line each.
    pub why: Vec<String>,
}

/// Combines the traits asked for, the host's traits and the outcome of planning.
pub fn check(
    required: Vec<String>,
    have: &[HostTrait],
    plan: Result<&LaunchPlan, String>,
) -> CheckReport {
    let traits: Vec<TraitCheck> = required
        .into_iter()
        .map(|name| {
            let present = have.iter().any(|h| h.name == name);
            TraitCheck { name, present }
        })
        .collect();
    let mut why: Vec<String> = traits
        .iter()
        .filter(|t| !t.present)
        .map(|t| format!("this host lacks trait {}", t.name))
        .collect();
    let verdict = match plan {
        Ok(p) => {
            why.push(format!("{} guest: {}", p.arch, p.accel_reason));
            match (why.len() > 1, p.accel) {
                (true, _) => Verdict::No,
                (false, Accel::Kvm) => Verdict::Native,
                (false, Accel::Tcg) => Verdict::Emulated,
            }
        }
        Err(e) => {
            why.push(e);
            Verdict::No
        }
    };
    CheckReport {
        verdict,
        traits,
        why,
    }
}
