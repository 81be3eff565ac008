//! `<features>`: machine properties the profile sets, and the TCG translation cache.

use super::{Cx, Element};
use crate::{
    libvirt::{MACHINE_FEATURES, feature_option},
    profile::{Accel, MachineProfile},
};

/// Each `<features>` element must be one the profile's machine has anyway, the TCG cache, or a
/// machine property the plan sets for this machine and accelerator.
pub(super) fn features(f: &Element, p: &MachineProfile, accel: Option<Accel>, cx: &mut Cx) {
    // The machine properties the plan will have: the profile's, unless the machine is not the
    // profile's own.
    let expected: Vec<String> = match (accel.and_then(|a| p.accel.get(&a)), &cx.spec.machine) {
        (Some(ap), None) => {
            let mut o: Vec<String> = ap
                .machine_options
                .iter()
                .map(|m| m.option.clone())
                .collect();
            if cx.spec.kernel.is_some() {
                o.extend(ap.kernel_machine_options.iter().map(|m| m.option.clone()));
            }
            o
        }
        _ => Vec::new(),
    };
    f.take();
    for e in f.children() {
        let name = e.name.as_str();
        if p.libvirt.features.iter().any(|n| n == name)
            || p.libvirt.accepted_features.iter().any(|n| n == name)
        {
            e.take();
            continue;
        }
        if name == "tcg" {
            tcg(e, cx);
            continue;
        }
        if name == "smm" && e.attr("state") == Some("on") {
            // Secure Boot firmware needs SMM; the firmware's descriptor turns it on.
            e.take();
            continue;
        }
        let Some((_, _, attr, _)) = MACHINE_FEATURES.iter().find(|(_, el, ..)| *el == name) else {
            continue; // untaken: reported
        };
        e.take();
        let Some(value) = e.attr(attr) else {
            cx.bad(e, &format!("<{name}> without {attr}"));
            continue;
        };
        let Some(option) = feature_option(name, value) else {
            continue;
        };
        if !expected.contains(&option) {
            cx.bad(
                e,
                &format!(
                    "asks for machine property {option}; qemu-direct sets only its profile's \
                     for this machine and accelerator ({})",
                    if expected.is_empty() {
                        "none".to_owned()
                    } else {
                        expected.join(", ")
                    }
                ),
            );
        }
    }
}

/// `<tcg><tb-cache unit=...>N</tb-cache></tcg>`: the TCG translation cache (`--tb-size`).
fn tcg(e: &Element, cx: &mut Cx) {
    e.take();
    let Some(t) = e.child("tb-cache") else {
        return;
    };
    let kib = match t.attr("unit").unwrap_or("KiB") {
        "b" | "bytes" => Some(1.0 / 1024.0),
        "KiB" | "k" | "K" => Some(1.0),
        "MiB" | "M" => Some(1024.0),
        "GiB" | "G" => Some(1024.0 * 1024.0),
        _ => None,
    };
    match (kib, t.text().parse::<f64>()) {
        (Some(k), Ok(n)) if (n * k) % 1024.0 == 0.0 && n * k >= 1024.0 => {
            cx.spec.tb_size = Some(((n * k) / 1024.0) as u32)
        }
        _ => cx.bad(t, "a translation cache size in whole MiB (unit='MiB')"),
    }
}
