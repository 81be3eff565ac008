//! `<os>`: arch, machine, kernel boot, firmware.

use std::path::PathBuf;

use super::{Cx, Element};
use crate::{
    profile::arch,
    profile::{MachineProfile, ProfileSet},
};

/// Reads `<os>` and returns the guest's profile.
pub(super) fn os<'p>(
    d: &Element,
    profiles: &'p ProfileSet,
    cx: &mut Cx,
) -> Option<&'p MachineProfile> {
    let Some(os) = d.child("os") else {
        cx.missing(d, "<os> is required");
        return None;
    };
    firmware_autoselection(os, cx);
    let Some(t) = os.child("type") else {
        cx.missing(os, "<os><type> is required");
        return None;
    };
    let profile = os_type(t, profiles, cx);
    kernel_boot(os, cx);
    loader(os, cx);
    if let Some(n) = os.child("nvram") {
        cx.accept(
            n,
            "each VM gets its own copy of the descriptor's variable store",
        );
    }
    boot_devices(os, cx);
    profile
}

/// `<os firmware=...>`.
fn firmware_autoselection(os: &Element, cx: &mut Cx) {
    match os.attr("firmware") {
        // libvirt's autoselection from QEMU's descriptors is what `--firmware uefi` does.
        Some("efi") => cx.spec.firmware = Some(PathBuf::from("uefi")),
        Some(fw) => cx.bad_attr(
            os,
            "firmware",
            &format!("firmware autoselection '{fw}': qemu-direct selects efi only"),
        ),
        None => {}
    }
}

/// `<type arch=... machine=...>hvm</type>`: the profile, and the machine where it is not the
/// profile's own.
fn os_type<'p>(t: &Element, profiles: &'p ProfileSet, cx: &mut Cx) -> Option<&'p MachineProfile> {
    if t.text() != "hvm" {
        cx.bad(t, "qemu-direct runs full virtual machines (hvm) only");
    }
    let profile = match t.attr("arch") {
        Some(a) => profile_for_arch(t, a, profiles, cx),
        // libvirt's default is the host's arch, as is ours.
        None => {
            let (rust_arch, endian) = arch::build_target();
            profiles.for_host(rust_arch, endian)
        }
    };
    if let (Some(m), Some(p)) = (t.attr("machine"), profile) {
        let profiles_own = m == p.libvirt.machine || p.accel.values().any(|a| a.machine == m);
        if !profiles_own {
            cx.spec.machine = Some(m.to_owned());
        }
    }
    profile
}

fn profile_for_arch<'p>(
    t: &Element,
    a: &str,
    profiles: &'p ProfileSet,
    cx: &mut Cx,
) -> Option<&'p MachineProfile> {
    match profiles.iter().find(|p| p.libvirt.arch == a) {
        Some(p) => {
            cx.spec.arch = Some(p.name.clone());
            Some(p)
        }
        None => {
            cx.bad_attr(
                t,
                "arch",
                &format!(
                    "no machine profile for libvirt arch '{a}'; known: {}",
                    profiles
                        .iter()
                        .map(|p| p.libvirt.arch.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            None
        }
    }
}

/// `<kernel>`, `<initrd>`, `<cmdline>`.
fn kernel_boot(os: &Element, cx: &mut Cx) {
    if let Some(k) = os.child("kernel") {
        cx.spec.kernel = Some(cx.path(k.text()));
    }
    if let Some(i) = os.child("initrd") {
        cx.spec.initrd = Some(cx.path(i.text()));
    }
    if let Some(c) = os.child("cmdline") {
        cx.spec.append = Some(c.text().to_owned());
    }
}

/// `<loader>`: a ROM as `-bios`, or UEFI in flash from QEMU's firmware descriptors.
fn loader(os: &Element, cx: &mut Cx) {
    let Some(l) = os.child("loader") else { return };
    match l.attr("type") {
        Some("rom") if l.attr("secure").is_none() => cx.spec.firmware = Some(cx.path(l.text())),
        Some("pflash") | None => {
            // UEFI in flash: qemu-direct takes it from QEMU's firmware descriptors, as
            // libvirt's own autoselection does, and gives the VM its own variable store.
            let _ = l.attr("readonly");
            if l.attr("secure") == Some("yes") {
                cx.spec.secure_boot = Some(true);
            }
            cx.spec.firmware = Some(PathBuf::from("uefi"));
            cx.accept(
                l,
                "UEFI firmware comes from QEMU's firmware descriptors (--firmware uefi)",
            );
        }
        Some(other) => cx.bad(l, &format!("loader type '{other}'")),
    }
}

/// `<boot dev=...>`: the kernel or the disk boots, never another device.
fn boot_devices(os: &Element, cx: &mut Cx) {
    for b in os.children_named("boot") {
        if b.attr("dev") != Some("hd") {
            cx.bad(
                b,
                "qemu-direct boots the kernel or the disk (<boot dev='hd'/>) only",
            );
        }
    }
}
