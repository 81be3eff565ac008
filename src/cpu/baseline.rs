//! One CPU for a fleet: the named model and disabled features that run on every host given.
//!
//! The "gate64" lesson: a CPU model name QEMU does not know explodes at start, so the answer
//! is always a model every host's QEMU lists, made to fit by turning features off.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{CpuError, is_named};
use crate::{
    host::caps::{Caps, CpuModel},
    profile::Accel,
};

/// One host's view, as recorded by `probe --json` there.
#[derive(Debug, Clone, Copy)]
pub struct BaselineHost<'a> {
    /// A name for messages (the file it came from).
    pub label: &'a str,
    /// The accelerator guests use there.
    pub accel: Accel,
    /// That emulator's capabilities under that accelerator.
    pub caps: &'a Caps,
}

/// The CPU that runs on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Baseline {
    /// The named model.
    pub model: String,
    /// Its features some host lacks, to be turned off.
    pub disabled: Vec<String>,
    /// How many of its features stay on.
    pub kept: usize,
    /// The CPU vendor of the hardware-accelerated hosts, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

impl Baseline {
    /// The value for `--cpu-flags`: `-a,-b`.
    pub fn cpu_flags(&self) -> String {
        self.disabled
            .iter()
            .map(|f| format!("-{f}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Intersects the hosts' offered features, then picks the model (listed by every host) that
/// keeps the most of them, disabling the rest. Hosts under a hardware accelerator must share a
/// CPU vendor; TCG emulates any vendor.
pub fn baseline(hosts: &[BaselineHost]) -> Result<Baseline, CpuError> {
    let first = hosts
        .first()
        .ok_or_else(|| CpuError::Baseline("no hosts given".into()))?;
    let offered = offered_everywhere(hosts)?;
    let vendor = kvm_vendor(hosts)?;
    let mut best: Option<(Baseline, bool)> = None;
    for m in first.caps.cpu_models.iter().flatten() {
        let Some(candidate) = candidate(m, first, hosts, &offered, &vendor) else {
            continue;
        };
        let alias = m.alias_of.is_some();
        let better = match &best {
            None => true,
            Some((b, b_alias)) => {
                (candidate.kept, usize::MAX - candidate.disabled.len(), alias)
                    > (b.kept, usize::MAX - b.disabled.len(), *b_alias)
            }
        };
        if better {
            best = Some((candidate, alias));
        }
    }
    best.map(|(b, _)| b).ok_or_else(|| {
        CpuError::Baseline(
            "no named CPU model is listed by every host's emulator (with the vendor required)"
                .into(),
        )
    })
}

/// The features every host's accelerator offers; each host must list its features and models.
fn offered_everywhere(hosts: &[BaselineHost]) -> Result<BTreeSet<String>, CpuError> {
    let mut offered: Option<BTreeSet<String>> = None;
    for h in hosts {
        let cpu = h.caps.host_cpu.as_ref().ok_or_else(|| {
            CpuError::Baseline(format!(
                "{}: the emulator reports no CPU features (QEMU {})",
                h.label, h.caps.version
            ))
        })?;
        if h.caps.cpu_models.is_none() {
            return Err(CpuError::Baseline(format!(
                "{}: the emulator cannot list its CPU models",
                h.label
            )));
        }
        offered = Some(match offered {
            None => cpu.enabled.clone(),
            Some(o) => o.intersection(&cpu.enabled).cloned().collect(),
        });
    }
    Ok(offered.unwrap_or_default())
}

/// The one CPU vendor of the hosts under KVM (a guest there sees the real CPU's vendor), if any
/// host is under KVM.
fn kvm_vendor(hosts: &[BaselineHost]) -> Result<Option<String>, CpuError> {
    let kvm_vendors: BTreeSet<(&str, &str)> = hosts
        .iter()
        .filter(|h| h.accel == Accel::Kvm)
        .filter_map(|h| {
            let v = h.caps.host_cpu.as_ref()?.vendor.as_deref()?;
            Some((v, h.label))
        })
        .collect();
    let vendors: BTreeSet<&str> = kvm_vendors.iter().map(|(v, _)| *v).collect();
    if vendors.len() > 1 {
        return Err(CpuError::Baseline(format!(
            "hosts under KVM have different CPU vendors ({})",
            kvm_vendors
                .iter()
                .map(|(v, l)| format!("{l}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(vendors.into_iter().next().map(str::to_owned))
}

/// `m`, a model of the first host, made to run everywhere by disabling what some host lacks;
/// `None` where it is not a named model of the vendor required or some host does not list it.
fn candidate(
    m: &CpuModel,
    first: &BaselineHost,
    hosts: &[BaselineHost],
    offered: &BTreeSet<String>,
    vendor: &Option<String>,
) -> Option<Baseline> {
    if !is_named(m) {
        return None;
    }
    let feats = first.caps.features(m)?;
    if vendor.is_some() && feats.vendor != *vendor {
        return None;
    }
    let everywhere: Vec<&CpuModel> = hosts
        .iter()
        .map(|h| h.caps.model(&m.name))
        .collect::<Option<_>>()?;
    let mut disabled: BTreeSet<String> = feats.enabled.difference(offered).cloned().collect();
    // QEMU's own verdict per host wins where it names more than the feature sets show.
    for hm in &everywhere {
        disabled.extend(hm.unavailable.iter().cloned());
    }
    let kept = feats.enabled.len() - feats.enabled.intersection(&disabled).count();
    Some(Baseline {
        model: m.name.clone(),
        disabled: disabled.into_iter().collect(),
        kept,
        vendor: vendor.clone(),
    })
}
