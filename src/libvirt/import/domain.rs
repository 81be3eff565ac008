//! `<domain>` itself: the accelerator, name, memory, vCPUs and lifecycle, and the order in which
//! its parts are read (`<os>` first among the parts that need the guest's profile).

use super::{Cx, Element, channels, cpu, devices, features, os};
use crate::{
    profile::{Accel, MachineProfile, ProfileSet},
    spec::AccelRequest,
};

/// Reads the whole domain, one part after another. `<os>` decides the profile, which
/// `<features>`, `<cpu>` and `<devices>` are checked against, and `<features>` needs the machine
/// and kernel `<os>` sets.
pub(super) fn domain(d: &Element, profiles: &ProfileSet, cx: &mut Cx) {
    let accel = accel(d, cx);
    identity(d, cx);
    memory(d, cx);
    channels::memory_backing(d, cx);
    let smp = vcpu(d, cx);
    let profile = os::os(d, profiles, cx);
    if let (Some(f), Some(p)) = (d.child("features"), profile) {
        features::features(f, p, accel, cx);
    }
    guest_cpu(d, profile, smp, cx);
    clock(d, cx);
    host_side(d, cx);
    lifecycle(d, cx);
    seclabel(d, cx);
    if let (Some(devs), Some(p)) = (d.child("devices"), profile) {
        devices::devices(devs, p, cx);
    }
}

/// `<domain type=...>`: kvm or qemu (TCG).
fn accel(d: &Element, cx: &mut Cx) -> Option<Accel> {
    let accel = match d.attr("type") {
        Some("kvm") => Some(Accel::Kvm),
        Some("qemu") => Some(Accel::Tcg),
        Some(other) => {
            cx.bad_attr(
                d,
                "type",
                &format!("domain type '{other}': qemu-direct runs QEMU under kvm or qemu (TCG)"),
            );
            None
        }
        None => {
            cx.missing(d, "<domain> needs type='kvm' or type='qemu'");
            None
        }
    };
    cx.spec.accel = accel.map(|a| match a {
        Accel::Kvm => AccelRequest::Kvm,
        Accel::Tcg => AccelRequest::Tcg,
    });
    accel
}

/// `<name>`, and what only names or describes the domain to libvirt.
fn identity(d: &Element, cx: &mut Cx) {
    if let Some(n) = d.child("name") {
        cx.spec.name = Some(n.text().to_owned());
    }
    if let Some(u) = d.child("uuid") {
        let uuid = u.text().to_owned();
        cx.accept(u, &format!("qemu-direct passes no -uuid ({uuid})"));
    }
    for informational in ["title", "description", "metadata"] {
        if let Some(e) = d.child(informational) {
            e.take_all();
        }
    }
}

fn memory(d: &Element, cx: &mut Cx) {
    let Some(m) = d.child("memory") else {
        cx.missing(d, "<memory> is required");
        return;
    };
    let Some(bytes) = size(m, cx) else { return };
    if bytes % (1 << 20) != 0 {
        cx.bad(m, "memory must be a whole number of MiB");
        return;
    }
    cx.spec.memory = Some(format!("{}M", bytes >> 20));
    if let Some(cur) = d.child("currentMemory")
        && let Some(c) = size(cur, cx)
        && c != bytes
    {
        cx.bad(
            cur,
            "currentMemory below memory needs a balloon; qemu-direct gives the guest all of it",
        );
    }
}

/// A libvirt size (`<memory unit='...'>N</memory>`, KiB by default) in bytes.
fn size(e: &Element, cx: &mut Cx) -> Option<u64> {
    let unit = e.attr("unit").unwrap_or("KiB");
    let factor: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => {
            cx.bad_attr(e, "unit", &format!("unknown unit '{unit}'"));
            return None;
        }
    };
    let text = e.text();
    match text.parse::<u64>().ok().and_then(|n| n.checked_mul(factor)) {
        Some(b) => Some(b),
        None => {
            cx.bad(e, &format!("'{text}' is not a size in {unit}"));
            None
        }
    }
}

fn vcpu(d: &Element, cx: &mut Cx) -> Option<u32> {
    let v = d.child("vcpu")?;
    let text = v.text().to_owned();
    let Ok(n) = text.parse::<u32>() else {
        cx.bad(v, &format!("'{text}' is not a number of vCPUs"));
        return None;
    };
    if let Some(p) = v.attr("placement")
        && p != "static"
    {
        cx.bad_attr(
            v,
            "placement",
            "qemu-direct pins no vCPUs (placement='static' only)",
        );
    }
    if let Some(cur) = v.attr("current")
        && cur.parse::<u32>().ok() != Some(n)
    {
        cx.bad_attr(v, "current", "qemu-direct starts every vCPU (no hot-plug)");
    }
    cx.spec.smp = Some(n);
    Some(n)
}

/// `<cpu>` when the domain has one; without it, the CPU libvirt would give the guest.
fn guest_cpu(d: &Element, profile: Option<&MachineProfile>, smp: Option<u32>, cx: &mut Cx) {
    match (d.child("cpu"), profile) {
        (Some(c), Some(_)) => cpu::cpu(c, smp, cx),
        (None, Some(p)) if p.libvirt.cpu_driver => {
            // libvirt passes QEMU's own default for the machine (qemu64, cortex-a15, ...).
            cx.spec.cpu_mode = Some("none".into());
        }
        (None, Some(p)) => cx.note(format!(
            "no <cpu>: libvirt has no CPU driver for {} guests; the profile's default CPU is used",
            p.name
        )),
        _ => {}
    }
}

fn clock(d: &Element, cx: &mut Cx) {
    if let Some(c) = d.child("clock") {
        match c.attr("offset") {
            Some("utc") | None => cx.accept(c, "QEMU's clock, UTC, with its default timers"),
            Some(other) => cx.bad(
                c,
                &format!("clock offset '{other}': qemu-direct runs the guest clock in UTC"),
            ),
        }
    }
}

/// Host-side placement QEMU's own defaults already match.
fn host_side(d: &Element, cx: &mut Cx) {
    if let Some(pm) = d.child("pm") {
        cx.accept(pm, "QEMU's default power management");
    }
    if let Some(r) = d.child("resource") {
        cx.accept(r, "qemu-direct places QEMU in no cgroup partition");
    }
}

/// `<on_poweroff>`, `<on_reboot>`, `<on_crash>`: qemu-direct always ends the guest.
fn lifecycle(d: &Element, cx: &mut Cx) {
    for (event, allowed) in [
        ("on_poweroff", "destroy"),
        ("on_reboot", "destroy"),
        ("on_crash", "destroy"),
    ] {
        if let Some(e) = d.child(event)
            && e.text() != allowed
        {
            cx.bad(
                e,
                &format!(
                    "{event} {}: qemu-direct ends the guest when it powers off, reboots or \
                     crashes ({allowed})",
                    e.text()
                ),
            );
        }
    }
}

fn seclabel(d: &Element, cx: &mut Cx) {
    if let Some(s) = d.child("seclabel") {
        if s.attr("type") == Some("none") {
            s.take_all();
        } else {
            cx.bad(
                s,
                "a security label: qemu-direct runs QEMU unconfined (only type='none' matches)",
            );
        }
    }
}
