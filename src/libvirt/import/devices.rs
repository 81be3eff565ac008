//! `<devices>`: the emulator, disks, the console, a user-mode network card, the guest agent's
//! channel and shared folders (`channels`), and what the machine has anyway.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::{Cx, Element, channels};
use crate::profile::MachineProfile;
use crate::spec::disk::{DiskInput, QCOW2_MAGIC};

/// Serial port targets that are the machine's own first serial port.
const SERIAL_TARGETS: &[&str] = &[
    "isa-serial",
    "system-serial",
    "spapr-vio-serial",
    "sclp-serial",
];

/// Reads `<devices>`, each device by its kind; what the guest gets one of, it gets once. A
/// domain without the guest agent's channel gets none.
pub(super) fn devices(d: &Element, p: &MachineProfile, cx: &mut Cx) {
    d.take();
    cx.spec.agent = None;
    let (mut nics, mut serials, mut consoles) = (0, 0, 0);
    for e in d.children() {
        match e.name.as_str() {
            "emulator" if cx.spec.emulator.is_none() => {
                e.take();
                cx.spec.emulator = Some(cx.path(e.text()));
            }
            "disk" => disk(e, cx),
            "interface" => first_only(
                &mut nics,
                e,
                cx,
                interface,
                "a second network interface: qemu-direct gives the guest one",
            ),
            "serial" => first_only(
                &mut serials,
                e,
                cx,
                serial,
                "a second serial port: qemu-direct gives the guest one console",
            ),
            "console" => first_only(
                &mut consoles,
                e,
                cx,
                |e, cx| console(e, p, cx),
                "a second console: qemu-direct gives the guest one console",
            ),
            "controller" => controller(e, cx),
            "memballoon" if e.attr("model") == Some("none") => e.take_all(),
            "memballoon" => cx.bad(e, "a memory balloon: qemu-direct adds none"),
            "panic" => panic(e, p, cx),
            "audio" if e.attr("type") == Some("none") => e.take_all(),
            "input" if e.attr("bus") == Some("ps2") => {
                cx.accept(e, "the PS/2 mouse and keyboard are built into the machine");
            }
            "graphics" | "video" => cx.bad(e, "a display: qemu-direct runs with -display none"),
            "channel" => channels::channel(e, cx),
            "filesystem" => channels::filesystem(e, cx),
            "emulator" => cx.bad(e, "a second emulator"),
            other => cx.bad(
                e,
                &format!("a <{other}> device: qemu-direct attaches no such device"),
            ),
        }
    }
    cx.spec.agent.get_or_insert(false);
}

/// A device the guest has one of: the first of its kind (`count` so far) is read, any other
/// refused with `second`.
fn first_only(
    count: &mut u32,
    e: &Element,
    cx: &mut Cx,
    read: impl FnOnce(&Element, &mut Cx),
    second: &str,
) {
    *count += 1;
    if *count == 1 {
        read(e, cx);
    } else {
        cx.bad(e, second);
    }
}

/// `<panic model=...>`: only the model the profile's panic device is to libvirt.
fn panic(e: &Element, p: &MachineProfile, cx: &mut Cx) {
    let model = e.attr("model");
    if model.is_some() && model == p.libvirt.panic_model.as_deref() {
        e.take_all();
    } else {
        cx.bad(
            e,
            &format!(
                "panic model '{}': {} guests report a panic through {}",
                model.unwrap_or("(none)"),
                p.name,
                match (&p.libvirt.panic_model, &p.panic_device) {
                    (Some(m), _) => format!("model '{m}'"),
                    (None, Some(d)) => format!("{d}, which libvirt has no model for"),
                    (None, None) => "the console alone".to_owned(),
                }
            ),
        );
    }
}

/// `<disk>`: an image file or a directory on virtio.
fn disk(e: &Element, cx: &mut Cx) {
    e.take();
    let Some(kind) = disk_kind(e, cx) else { return };
    let Some(path) = disk_source(e, kind, cx) else {
        return;
    };
    if let Some(d) = e.child("driver") {
        driver(d, kind, &path, cx);
    }
    match e.child("target") {
        Some(t) => {
            let dev = t.attr("dev").unwrap_or_default();
            match t.attr("bus") {
                Some("virtio") => {}
                None if dev.starts_with("vd") => {}
                other => cx.bad(
                    t,
                    &format!(
                        "bus '{}': qemu-direct attaches disks over virtio",
                        other.unwrap_or(dev)
                    ),
                ),
            }
        }
        None => cx.bad(e, "a disk without <target>"),
    }
    let transient = e.child("transient").is_some();
    let readonly = e.child("readonly");
    if let (Some(r), "file") = (readonly, kind) {
        cx.bad(
            r,
            "a read-only image: qemu-direct attaches images writable, or with guest writes \
             going to a throw-away overlay (<transient/>)",
        );
    }
    if let Some(b) = e.child("boot") {
        b.take_all();
    }
    cx.accept_children(e, &["address", "alias"], "QEMU places the devices itself");
    cx.spec.disks.get_or_insert_with(Vec::new).push(DiskInput {
        path,
        format: None,
        // A directory is always a read-only view; an image without <transient/> is written.
        persist: kind == "file" && !transient,
        size: None,
    });
}

/// `<disk type=... device=...>`: `file` or `dir`, a disk; `None` (refused) otherwise.
fn disk_kind<'a>(e: &'a Element, cx: &mut Cx) -> Option<&'a str> {
    let kind = e.attr("type").unwrap_or("file");
    if !matches!(kind, "file" | "dir") {
        cx.bad_attr(
            e,
            "type",
            &format!(
                "disk type '{kind}': qemu-direct takes image files (type='file') and \
                 directories (type='dir')"
            ),
        );
        e.take_all();
        return None;
    }
    if let Some(dev) = e.attr("device")
        && dev != "disk"
    {
        cx.bad(
            e,
            &format!("a {dev} device: qemu-direct attaches disks only"),
        );
        return None;
    }
    Some(kind)
}

/// `<source file=...>` or `<source dir=...>`, relative to the domain's file.
fn disk_source(e: &Element, kind: &str, cx: &mut Cx) -> Option<PathBuf> {
    let Some(source) = e.child("source") else {
        cx.bad(e, "a disk without <source>");
        return None;
    };
    let attr = if kind == "file" { "file" } else { "dir" };
    let Some(path) = source.attr(attr).map(|s| cx.path(s)) else {
        cx.bad(source, &format!("<source> needs {attr}='...'"));
        return None;
    };
    Some(path)
}

/// `<driver name=... type=...>`: QEMU's own, with the format the image's header has.
fn driver(d: &Element, kind: &str, path: &Path, cx: &mut Cx) {
    if let Some(name) = d.attr("name")
        && name != "qemu"
    {
        cx.bad_attr(d, "name", &format!("driver '{name}': QEMU's own only"));
    }
    let t = d.attr("type");
    let ok = match kind {
        "file" => matches!(t, None | Some("raw" | "qcow2")),
        _ => matches!(t, None | Some("fat")),
    };
    if !ok {
        cx.bad_attr(
            d,
            "type",
            &format!(
                "format '{}': qemu-direct takes raw and qcow2 images, and directories as \
                 fat",
                t.unwrap_or_default()
            ),
        );
    }
    if kind == "file"
        && let Some(t) = t
        && let Some(q) = is_qcow2(path)
        && q != (t == "qcow2")
    {
        cx.bad(
            d,
            &format!(
                "driver type '{t}', but the image's header says {}: qemu-direct takes \
                 the format from the header",
                if q { "qcow2" } else { "raw" }
            ),
        );
    }
}

/// Whether the image's header says qcow2 (qemu-direct reads the format from it).
fn is_qcow2(path: &Path) -> Option<bool> {
    let mut f = fs::File::open(path).ok()?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).ok()?;
    Some(n == 4 && &magic == QCOW2_MAGIC)
}

/// `<interface type='user'>` with a virtio model: QEMU's user-mode network, as `--net user`.
fn interface(e: &Element, cx: &mut Cx) {
    e.take();
    if e.attr("type") != Some("user") {
        cx.bad_attr(
            e,
            "type",
            &format!(
                "interface type '{}': qemu-direct has QEMU's user-mode network only                  (type='user')",
                e.attr("type").unwrap_or_default()
            ),
        );
        e.take_all();
        return;
    }
    match e.child("model") {
        Some(m) if m.attr("type") == Some("virtio") => m.take_all(),
        Some(m) => cx.bad_attr(m, "type", "a NIC model other than virtio"),
        None => {}
    }
    cx.accept_children(
        e,
        &["mac", "address", "alias"],
        "QEMU picks the NIC's address and MAC itself",
    );
    cx.spec.net = Some("user".into());
}

fn serial(e: &Element, cx: &mut Cx) {
    e.take();
    pty(e, cx);
    if let Some(t) = e.child("target") {
        if let Some(kind) = t.attr("type")
            && !SERIAL_TARGETS.contains(&kind)
        {
            cx.bad_attr(
                t,
                "type",
                &format!("serial target '{kind}': qemu-direct uses the machine's own port"),
            );
        }
        port_zero(t, cx);
        if let Some(m) = t.child("model") {
            m.take_all();
        }
    }
}

fn console(e: &Element, p: &MachineProfile, cx: &mut Cx) {
    e.take();
    pty(e, cx);
    if let Some(t) = e.child("target") {
        if let Some(kind) = t.attr("type")
            && kind != "serial"
            && kind != p.libvirt.console_target
        {
            cx.bad_attr(
                t,
                "type",
                &format!(
                    "console target '{kind}': the {} console is {}",
                    p.name, p.libvirt.console_target
                ),
            );
        }
        port_zero(t, cx);
    }
}

/// The host side of a console: qemu-direct connects it to its own output, which is what a
/// `pty` is for under libvirt.
fn pty(e: &Element, cx: &mut Cx) {
    match e.attr("type") {
        Some("pty") => {}
        other => cx.bad_attr(
            e,
            "type",
            &format!(
                "type '{}': qemu-direct connects the console to its own output (type='pty')",
                other.unwrap_or_default()
            ),
        ),
    }
    for extra in ["source", "alias", "address"] {
        if let Some(a) = e.child(extra) {
            a.take_all();
        }
    }
}

fn port_zero(t: &Element, cx: &mut Cx) {
    if let Some(port) = t.attr("port")
        && port != "0"
    {
        cx.bad_attr(t, "port", "qemu-direct's console is port 0");
    }
}

fn controller(e: &Element, cx: &mut Cx) {
    match (e.attr("type"), e.attr("model")) {
        (Some("pci"), Some("pci-root" | "pcie-root")) => e.take_all(),
        (Some("pci"), _) => cx.accept(
            e,
            "PCI(e) ports and bridges: qemu-direct plugs its devices into the root bus",
        ),
        (Some("usb"), Some("none")) => e.take_all(),
        (Some("usb"), _) => cx.accept(
            e,
            "a USB controller: qemu-direct attaches no USB devices, so adds no controller",
        ),
        (Some("sata" | "ide"), _) => cx.accept(
            e,
            "the machine's disk controller: qemu-direct attaches its disk over virtio",
        ),
        (kind, _) => cx.bad(
            e,
            &format!(
                "a {} controller: qemu-direct adds no such controller",
                kind.unwrap_or("(typeless)")
            ),
        ),
    }
}
