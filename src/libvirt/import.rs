//! A libvirt domain read into a [`SpecInput`].
//!
//! The walk takes each element and attribute it maps (or deliberately accepts); whatever is
//! left untaken, and every value it cannot use, is listed in one [`LibvirtError::Refused`].
//! The result is a plain `SpecInput`, so flags can be layered over it and
//! [`SpecInput::validate`] checks it like any other guest description.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::{Item, LibvirtError, MACHINE_FEATURES, feature_option, xml::Element};
use crate::{
    profile::arch,
    profile::{Accel, MachineProfile, ProfileSet},
    spec::{AccelRequest, SpecInput},
};

mod devices;

/// A domain read into a guest description.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The guest description; flags can be layered on top ([`SpecInput::overlay`]).
    pub spec: SpecInput,
    /// What the domain says that qemu-direct accepts without acting on it, one line each
    /// (`<uuid>`, `<clock>`, empty USB controllers, ...).
    pub notes: Vec<String>,
}

/// Reads a domain XML file. Relative paths in it are taken relative to the file.
pub fn import_file(path: &Path, profiles: &ProfileSet) -> Result<Imported, LibvirtError> {
    let text = fs::read_to_string(path).map_err(|source| LibvirtError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    read(&text, profiles, Some(base)).map_err(|e| LibvirtError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Reads a domain from its XML text.
pub fn import(text: &str, profiles: &ProfileSet) -> Result<Imported, LibvirtError> {
    read(text, profiles, None)
}

fn read(text: &str, profiles: &ProfileSet, base: Option<&Path>) -> Result<Imported, LibvirtError> {
    let root = Element::parse(text)?;
    let mut cx = Cx {
        base: base.map(Path::to_owned),
        ..Cx::default()
    };
    if root.name == "domain" {
        root.take();
        domain(&root, profiles, &mut cx);
    } else {
        cx.bad(&root, "the root element must be <domain>");
    }
    root.untaken(&mut cx.items);
    if !cx.items.is_empty() {
        cx.items
            .sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
        cx.items.dedup();
        return Err(LibvirtError::Refused(cx.items));
    }
    let mut notes = cx.notes;
    notes.extend(cx.accepted.into_iter().filter_map(|(why, paths)| {
        let (first, rest) = paths.split_first()?;
        Some(if rest.is_empty() {
            format!("{first}: not applied: {why}")
        } else {
            format!(
                "{first} and {} more like it: not applied: {why}",
                rest.len()
            )
        })
    }));
    Ok(Imported {
        spec: cx.spec,
        notes,
    })
}

/// The import's state: what it has built and what it has found wrong.
#[derive(Default)]
struct Cx {
    /// Relative paths are relative to this (the file's directory).
    base: Option<PathBuf>,
    spec: SpecInput,
    items: Vec<Item>,
    notes: Vec<String>,
    /// Elements taken without acting on them: the reason, and where, in document order.
    accepted: Vec<(String, Vec<String>)>,
}

impl Cx {
    fn path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    fn bad(&mut self, e: &Element, what: &str) {
        e.take_all();
        self.items.push(Item::new(e, what));
    }

    /// Something `e` lacks; its content is still checked.
    fn missing(&mut self, e: &Element, what: &str) {
        self.items.push(Item::new(e, what));
    }

    fn bad_attr(&mut self, e: &Element, attr: &str, what: &str) {
        self.items.push(Item {
            path: format!("{}/@{attr}", e.path),
            line: e.line,
            what: what.to_owned(),
        });
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Takes an element the importer accepts without acting on it, noting why (one note per
    /// reason, however many elements share it).
    fn accept(&mut self, e: &Element, why: &str) {
        e.take_all();
        match self.accepted.iter_mut().find(|(w, _)| w == why) {
            Some((_, paths)) => paths.push(e.path.clone()),
            None => self.accepted.push((why.to_owned(), vec![e.path.clone()])),
        }
    }
}

fn domain(d: &Element, profiles: &ProfileSet, cx: &mut Cx) {
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
    memory(d, cx);
    let smp = vcpu(d, cx);

    let profile = os(d, profiles, cx);
    if let (Some(f), Some(p)) = (d.child("features"), profile) {
        features(f, p, accel, cx);
    }
    match (d.child("cpu"), profile) {
        (Some(c), Some(_)) => cpu(c, smp, cx),
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
    if let Some(c) = d.child("clock") {
        match c.attr("offset") {
            Some("utc") | None => cx.accept(c, "QEMU's clock, UTC, with its default timers"),
            Some(other) => cx.bad(
                c,
                &format!("clock offset '{other}': qemu-direct runs the guest clock in UTC"),
            ),
        }
    }
    if let Some(pm) = d.child("pm") {
        cx.accept(pm, "QEMU's default power management");
    }
    if let Some(r) = d.child("resource") {
        cx.accept(r, "qemu-direct places QEMU in no cgroup partition");
    }
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
    if let (Some(devs), Some(p)) = (d.child("devices"), profile) {
        devices::devices(devs, p, cx);
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

/// `<os>`: arch, machine, kernel boot, firmware. Returns the guest's profile.
fn os<'p>(d: &Element, profiles: &'p ProfileSet, cx: &mut Cx) -> Option<&'p MachineProfile> {
    let Some(os) = d.child("os") else {
        cx.missing(d, "<os> is required");
        return None;
    };
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
    let Some(t) = os.child("type") else {
        cx.missing(os, "<os><type> is required");
        return None;
    };
    if t.text() != "hvm" {
        cx.bad(t, "qemu-direct runs full virtual machines (hvm) only");
    }
    let profile = match t.attr("arch") {
        Some(a) => match profiles.iter().find(|p| p.libvirt.arch == a) {
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
        },
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
    if let Some(k) = os.child("kernel") {
        cx.spec.kernel = Some(cx.path(k.text()));
    }
    if let Some(i) = os.child("initrd") {
        cx.spec.initrd = Some(cx.path(i.text()));
    }
    if let Some(c) = os.child("cmdline") {
        cx.spec.append = Some(c.text().to_owned());
    }
    if let Some(l) = os.child("loader") {
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
    if let Some(n) = os.child("nvram") {
        cx.accept(
            n,
            "each VM gets its own copy of the descriptor's variable store",
        );
    }
    for b in os.children_named("boot") {
        if b.attr("dev") != Some("hd") {
            cx.bad(
                b,
                "qemu-direct boots the kernel or the disk (<boot dev='hd'/>) only",
            );
        }
    }
    profile
}

fn features(f: &Element, p: &MachineProfile, accel: Option<Accel>, cx: &mut Cx) {
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

fn cpu(c: &Element, smp: Option<u32>, cx: &mut Cx) {
    let model = c.child("model");
    let mode = match c.attr("mode") {
        Some(m @ ("host-passthrough" | "maximum" | "host-model" | "custom")) => m,
        Some(other) => {
            cx.bad_attr(c, "mode", &format!("unknown CPU mode '{other}'"));
            return;
        }
        None if model.is_some() => "custom",
        // No mode and no model: the hypervisor's default CPU (topology and features only).
        None => "none",
    };
    if mode == "custom" && model.is_none() {
        cx.bad(c, "mode='custom' needs a <model>");
        return;
    }
    cx.spec.cpu_mode = Some(mode.to_owned());
    if let Some(m) = c.attr("migratable")
        && m != "on"
    {
        cx.bad_attr(
            c,
            "migratable",
            "qemu-direct leaves QEMU's host CPU migratable",
        );
    }
    if let Some(m) = c.attr("match")
        && !matches!(m, "exact" | "strict")
    {
        cx.bad_attr(
            c,
            "match",
            "qemu-direct runs the model exactly (match='exact')",
        );
    }
    match c.attr("check") {
        Some("none") => cx.spec.cpu_check = Some("none".into()),
        Some("partial" | "full") | None => {}
        Some(other) => cx.bad_attr(c, "check", &format!("unknown check '{other}'")),
    }
    if let Some(m) = model {
        if let Some(f) = m.attr("fallback")
            && !matches!(f, "forbid" | "allow")
        {
            cx.bad_attr(m, "fallback", &format!("unknown fallback '{f}'"));
        }
        cx.spec.cpu_models = Some(vec![m.text().to_owned()]);
    }
    if let Some(t) = c.child("topology") {
        topology(t, smp, cx);
    }
    let mut flags = Vec::new();
    for f in c.children_named("feature") {
        let Some(name) = f.attr("name") else {
            cx.bad(f, "<feature> without a name");
            continue;
        };
        match f.attr("policy").unwrap_or("require") {
            "require" | "force" => flags.push(format!("+{name}")),
            "disable" | "forbid" => flags.push(format!("-{name}")),
            other => cx.bad_attr(
                f,
                "policy",
                &format!("policy '{other}': qemu-direct requires or disables a feature"),
            ),
        }
    }
    if !flags.is_empty() {
        cx.spec.cpu_model_extra_flags = Some(flags);
    }
    if let Some(m) = c.child("maxphysaddr") {
        let value = match (m.attr("mode"), m.attr("bits"), m.attr("limit")) {
            (Some("emulate"), Some(b), None) => Some(format!("emulate:{b}")),
            (Some("passthrough"), None, None) => Some("passthrough".to_owned()),
            (Some("passthrough"), None, Some(l)) => Some(format!("passthrough:{l}")),
            _ => None,
        };
        match value {
            Some(v) => cx.spec.maxphysaddr = Some(v),
            None => cx.bad(
                m,
                "maxphysaddr takes mode='emulate' bits='N' or mode='passthrough' [limit='N']",
            ),
        }
    }
}

/// `<topology>`: qemu-direct passes `-smp N`, which QEMU lays out as one socket of N cores.
fn topology(t: &Element, smp: Option<u32>, cx: &mut Cx) {
    let get = |name: &str| t.attr(name).map(|v| v.parse::<u32>().ok());
    let (sockets, dies, clusters, cores, threads) = (
        get("sockets"),
        get("dies"),
        get("clusters"),
        get("cores"),
        get("threads"),
    );
    let one = |v: Option<Option<u32>>| matches!(v, None | Some(Some(1)));
    let fits = one(sockets)
        && one(dies)
        && one(clusters)
        && one(threads)
        && matches!((cores, smp), (Some(Some(c)), Some(n)) if c == n);
    if !fits {
        cx.bad(
            t,
            "qemu-direct passes -smp N, which QEMU lays out as 1 socket of N cores of 1 thread \
             (sockets='1' dies='1' cores='N' threads='1')",
        );
    }
}

/// Whether the image's header says qcow2 (qemu-direct reads the format from it).
fn is_qcow2(path: &Path) -> Option<bool> {
    let mut f = fs::File::open(path).ok()?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).ok()?;
    Some(n == 4 && &magic == b"QFI\xfb")
}
