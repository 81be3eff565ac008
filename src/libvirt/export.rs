//! A [`LaunchPlan`] as libvirt domain XML.
//!
//! The domain is first built as a small tree of [`Node`]s (what to say), then written with
//! quick-xml's writer (how to spell it: escaping, indentation). Each part of the plan that domain
//! XML cannot carry goes to [`Export::unexpressed`] with the reason.

use std::{io, path::Path};

use quick_xml::{
    Writer,
    events::{BytesStart, BytesText, Event},
};
use uuid::Uuid;

mod channels;

use super::{LibvirtError, MACHINE_FEATURES, machine_feature};
use crate::{
    cpu::{Cpu, CpuCheck, CpuMode, MaxPhysAddr},
    plan::{ConsolePlan, LaunchPlan},
    profile::{Accel, MachineProfile, ProfileSet},
    spec::{Disk, DiskFormat},
};

/// A plan written as domain XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The domain, UTF-8, ending in a newline.
    pub xml: String,
    /// What the plan holds that the XML does not say, one line each: libvirt would run the
    /// guest differently there.
    pub unexpressed: Vec<String>,
}

/// The namespace of [`domain_uuid`] (a fixed random UUID).
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_6f0e_2b7a_4c43_9a55_0e3f_84b1_c2d7);

/// The domain's `<uuid>`: a UUIDv5 of the instance name in qemu-direct's own namespace, so the
/// same guest exported twice gets the same UUID (`virsh define` then updates it rather than
/// clashing on the name).
pub fn domain_uuid(name: &str) -> Uuid {
    Uuid::new_v5(&UUID_NAMESPACE, name.as_bytes())
}

/// Writes a plan as a libvirt domain. Errors only for values XML cannot carry (paths that are
/// not UTF-8, control characters) or a plan whose arch these profiles lack.
pub fn export(plan: &LaunchPlan, profiles: &ProfileSet) -> Result<Export, LibvirtError> {
    let profile = profiles
        .get(&plan.arch)
        .ok_or_else(|| LibvirtError::NoProfile(plan.arch.to_string()))?;
    let mut un = Vec::new();
    let kib = (plan.memory.mib() * 1024).to_string();
    let mut domain = Node::new("domain")
        .attr(
            "type",
            match plan.accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "qemu",
            },
        )
        .child(Node::new("name").text(xml_text("name", &plan.name)?))
        .child(Node::new("uuid").text(domain_uuid(&plan.name).to_string()))
        .child(Node::new("memory").attr("unit", "KiB").text(kib.clone()))
        .child(Node::new("currentMemory").attr("unit", "KiB").text(kib))
        .child(
            Node::new("vcpu")
                .attr("placement", "static")
                .text(plan.smp.to_string()),
        );
    if let Some(m) = channels::memory_backing(plan) {
        domain.push(m);
    }
    domain.push(os(plan, profile)?);
    if let Some(f) = features(plan, profile, &mut un) {
        domain.push(f);
    }
    if let Some(c) = cpu(plan, profile, &mut un) {
        domain.push(c);
    }
    // qemu-direct always runs with -no-reboot, and QEMU exits when the guest powers off or
    // crashes (panic=-1 reboots, which ends it too).
    for event in ["on_poweroff", "on_reboot", "on_crash"] {
        domain.push(Node::new(event).text("destroy"));
    }
    domain.push(devices(plan, profile, &mut un)?);
    if let Some(cl) = commandline(plan)? {
        domain = domain.attr("xmlns:qemu", QEMU_NS);
        domain.push(cl);
    }

    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write(&mut w, &domain).map_err(LibvirtError::Write)?;
    let mut xml = String::from_utf8(w.into_inner())
        .map_err(|e| LibvirtError::Write(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    xml.push('\n');
    Ok(Export {
        xml,
        unexpressed: un,
    })
}

fn os(plan: &LaunchPlan, profile: &MachineProfile) -> Result<Node, LibvirtError> {
    let mut os = Node::new("os").child(
        Node::new("type")
            .attr("arch", profile.libvirt.arch.clone())
            .attr("machine", xml_text("machine type", &plan.machine.kind)?)
            .text("hvm"),
    );
    if let Some(fw) = &plan.firmware {
        // libvirt's read-only ROM loader is QEMU's -bios.
        os.push(
            Node::new("loader")
                .attr("type", "rom")
                .text(xml_path("firmware", fw)?),
        );
    }
    if let Some(d) = &plan.descriptor_firmware {
        // The descriptor's exact files: libvirt then uses them as given (its own descriptor
        // search would pick by the same rules, but this names them).
        let flash = d.selected.device == crate::host::firmware::Device::Flash;
        let mut loader = Node::new("loader")
            .attr("readonly", "yes")
            .attr("type", if flash { "pflash" } else { "rom" });
        if d.secure_boot {
            loader = loader.attr("secure", "yes");
        }
        os.push(loader.text(xml_path("firmware", &d.selected.executable)?));
        if let Some(t) = &d.selected.nvram_template {
            // libvirt copies the template to its own per-domain store, as we do per instance.
            os.push(Node::new("nvram").attr("template", xml_path("firmware", t)?));
        }
    }
    if let Some(k) = &plan.kernel {
        os.push(Node::new("kernel").text(xml_path("kernel", &k.kernel)?));
        if let Some(i) = &k.initrd {
            os.push(Node::new("initrd").text(xml_path("initrd", i)?));
        }
        os.push(Node::new("cmdline").text(xml_text("kernel command line", &k.append)?));
    }
    Ok(os)
}

fn features(plan: &LaunchPlan, profile: &MachineProfile, un: &mut Vec<String>) -> Option<Node> {
    let mut f = Node::new("features");
    for name in &profile.libvirt.features {
        f.push(Node::new(name.clone()));
    }
    for opt in &plan.machine.options {
        match machine_feature(opt) {
            Some((element, attr, value)) => f.push(Node::new(element).attr(attr, value)),
            None if opt == "smm=on" => f.push(Node::new("smm").attr("state", "on")),
            None => un.push(unexpressible_machine_option(opt, &plan.machine.kind)),
        }
    }
    for opt in &plan.accel_options {
        match opt.split_once('=') {
            Some(("tb-size", mib)) => f.push(
                Node::new("tcg").child(
                    Node::new("tb-cache")
                        .attr("unit", "MiB")
                        .text(mib.to_owned()),
                ),
            ),
            // Nothing lost: QEMU turns multi-threaded TCG on by itself wherever it is safe,
            // which is exactly where the profiles ask for it (and libvirt has no element).
            Some(("thread", "multi")) => {}
            _ => un.push(format!(
                "-accel {} option {opt}: no domain XML for it",
                plan.accel
            )),
        }
    }
    (!f.children.is_empty()).then_some(f)
}

fn unexpressible_machine_option(opt: &str, machine: &str) -> String {
    let key = opt.split_once('=').map_or(opt, |(k, _)| k);
    match MACHINE_FEATURES.iter().find(|(k, ..)| *k == key) {
        Some((_, element, attr, values)) => format!(
            "machine property {opt} ({machine}): libvirt's <{element} {attr}> takes only {}; \
             libvirt will use its own default",
            values.join(", ")
        ),
        None => format!(
            "machine property {opt} ({machine}): domain XML has no element for it; libvirt will \
             run the machine without it"
        ),
    }
}

/// `<cpu>`: the mode and model, the checks, the topology, the features, the address width.
fn cpu(plan: &LaunchPlan, profile: &MachineProfile, un: &mut Vec<String>) -> Option<Node> {
    let topology = Node::new("topology")
        .attr("sockets", "1")
        .attr("dies", "1")
        .attr("cores", plan.smp.to_string())
        .attr("threads", "1");
    if !profile.libvirt.cpu_driver {
        un.push(no_cpu_driver(plan, profile));
        return None;
    }
    // No -cpu: libvirt's <cpu> without mode or model is the hypervisor's default, the same.
    let Some(c) = &plan.cpu else {
        return Some(Node::new("cpu").child(topology));
    };
    let mut node = cpu_model(c, profile, un);
    if c.check == CpuCheck::None {
        node = node.attr("check", "none");
    }
    node.push(topology);
    if c.mode != CpuMode::HostModel {
        for f in &c.features {
            let name = profile.libvirt.cpu_features.get(&f.name).unwrap_or(&f.name);
            node.push(
                Node::new("feature")
                    .attr("policy", if f.on { "require" } else { "disable" })
                    .attr("name", name.clone()),
            );
        }
    }
    for opt in &c.options {
        un.push(format!(
            "CPU property {opt} (-cpu {}): not a CPU feature libvirt knows; libvirt will run \
             the CPU without it",
            c.model
        ));
    }
    if let Some(m) = maxphysaddr(c, plan.accel, un) {
        node.push(m);
    }
    Some(node)
}

/// Why a guest whose arch libvirt has no CPU driver for gets no `<cpu>`.
fn no_cpu_driver(plan: &LaunchPlan, profile: &MachineProfile) -> String {
    let cpu = plan.cpu.as_ref().map_or_else(
        || "the machine's default CPU".to_owned(),
        |c| format!("-cpu {}", c.qemu_value()),
    );
    format!(
        "{cpu} and the topology (1 socket x {} cores): libvirt has no CPU driver for {} \
         guests and refuses any <cpu>; it passes no -cpu (QEMU's default for the machine) \
         and {} sockets",
        plan.smp, profile.name, plan.smp
    )
}

/// `<cpu mode=...>`, with its `<model>` where the mode names one.
fn cpu_model(c: &Cpu, profile: &MachineProfile, un: &mut Vec<String>) -> Node {
    let mut node = Node::new("cpu").attr("mode", c.mode.as_str());
    match c.mode {
        CpuMode::Custom => {
            let model = profile.libvirt.cpu_models.get(&c.model).unwrap_or(&c.model);
            node = node.attr("match", "exact");
            node.push(
                Node::new("model")
                    .attr("fallback", "forbid")
                    .text(model.clone()),
            );
        }
        CpuMode::HostModel => {
            // The extra features qemu-direct computed and the user's own are one list here;
            // libvirt computes the former itself, so neither is written.
            un.push(format!(
                "host-model CPU -cpu {}: written as mode='host-model', for which libvirt computes \
                 its own model and features from its CPU map",
                c.qemu_value()
            ));
        }
        CpuMode::HostPassthrough | CpuMode::Maximum | CpuMode::None => {}
    }
    node
}

/// `<maxphysaddr>`, and where libvirt would give the guest another width.
fn maxphysaddr(c: &Cpu, accel: Accel, un: &mut Vec<String>) -> Option<Node> {
    match c.maxphysaddr? {
        MaxPhysAddr::Emulate { bits } => {
            if accel == Accel::Kvm && matches!(c.model.as_str(), "host" | "max") {
                un.push(format!(
                    "host-phys-bits=off next to phys-bits={bits} (-cpu {}): libvirt passes \
                     phys-bits alone, and under KVM QEMU then gives the guest the host's width",
                    c.model
                ));
            }
            Some(
                Node::new("maxphysaddr")
                    .attr("mode", "emulate")
                    .attr("bits", bits.to_string()),
            )
        }
        MaxPhysAddr::Passthrough { limit } => {
            if let Some(l) = limit {
                un.push(format!(
                    "maxphysaddr limit {l} (host-phys-bits-limit): <maxphysaddr limit> needs \
                     libvirt 9.3; libvirt 9.0 gives the guest the host's whole width"
                ));
            }
            Some(Node::new("maxphysaddr").attr("mode", "passthrough"))
        }
    }
}

/// `<devices>`, group by group: the emulator, disks, NICs, shared folders, the console, the
/// guest agent's channel, what libvirt would add unasked, the panic device.
fn devices(
    plan: &LaunchPlan,
    profile: &MachineProfile,
    un: &mut Vec<String>,
) -> Result<Node, LibvirtError> {
    let mut d =
        Node::new("devices").child(Node::new("emulator").text(xml_path("emulator", &plan.binary)?));
    disks(plan, &mut d, un)?;
    nics(plan, &mut d, un);
    channels::shares(plan, &mut d, un)?;
    console(plan, profile, &mut d, un);
    channels::agent(plan, &mut d)?;
    // libvirt adds a USB controller and a memory balloon unless told not to; the plan has
    // neither.
    d.push(
        Node::new("controller")
            .attr("type", "usb")
            .attr("model", "none"),
    );
    d.push(Node::new("memballoon").attr("model", "none"));
    match (&plan.panic_device, &profile.libvirt.panic_model) {
        (_, Some(model)) => d.push(Node::new("panic").attr("model", model.clone())),
        (Some(device), None) => un.push(format!(
            "panic device {device}: libvirt 9.0 has no <panic model> for it; the guest cannot \
             report a panic to libvirt"
        )),
        (None, None) => {}
    }
    Ok(d)
}

/// One `<disk>` per virtio disk, `vda`, `vdb`, ... in order.
fn disks(plan: &LaunchPlan, d: &mut Node, un: &mut Vec<String>) -> Result<(), LibvirtError> {
    for (i, disk) in plan.disks.iter().enumerate() {
        if !disk.device.starts_with("virtio-blk") {
            un.push(format!(
                "disk {}: device {} is not a virtio disk, the only kind written",
                disk.disk.path.display(),
                disk.device
            ));
            continue;
        }
        if let Some(size) = disk.disk.size {
            un.push(format!(
                "disk {} size={size} bytes: a <transient/> disk has the image's size; grow a copy \
                 of the image with `qemu-img resize` instead",
                disk.disk.path.display()
            ));
        }
        d.push(disk_node(&disk.disk, &format!("vd{}", disk_letters(i)))?);
    }
    if let Some(seed) = &plan.seed {
        if !seed.path.is_absolute() {
            un.push(
                "cloud-init seed: made at launch; `qemu-direct export libvirt` writes it and \
                 names it"
                    .into(),
            );
            return Ok(());
        }
        let seed_disk = Disk {
            path: seed.path.clone(),
            format: DiskFormat::Raw,
            writable: false,
            size: None,
        };
        let mut n = disk_node(&seed_disk, &format!("vd{}", disk_letters(plan.disks.len())))?;
        // Read-only rather than transient: the guest never writes to its seed.
        n.children.retain(|c| c.name != "transient");
        n.push(Node::new("readonly"));
        d.push(n);
    }
    Ok(())
}

/// An image file (raw or qcow2) or a directory (a read-only FAT view) as `<disk>`.
fn disk_node(disk: &Disk, dev: &str) -> Result<Node, LibvirtError> {
    let path = xml_path("disk", &disk.path)?;
    let (kind, format) = match disk.format {
        DiskFormat::Dir => ("dir", "fat"),
        DiskFormat::Qcow2 => ("file", "qcow2"),
        _ => ("file", "raw"),
    };
    let mut n = Node::new("disk")
        .attr("type", kind)
        .attr("device", "disk")
        .child(
            Node::new("driver")
                .attr("name", "qemu")
                .attr("type", format),
        )
        .child(Node::new("source").attr(kind, path))
        .child(Node::new("target").attr("dev", dev).attr("bus", "virtio"));
    if disk.format == DiskFormat::Dir {
        n.push(Node::new("readonly"));
    } else if !disk.writable {
        // Guest writes go to a throw-away overlay, as with qemu-direct's snapshot=on.
        n.push(Node::new("transient"));
    }
    Ok(n)
}

/// A user-mode virtio `<interface>` per NIC.
fn nics(plan: &LaunchPlan, d: &mut Node, un: &mut Vec<String>) {
    for nic in &plan.nics {
        if !nic.device.starts_with("virtio-net") {
            un.push(format!(
                "NIC device {}: only virtio NICs are written",
                nic.device
            ));
            continue;
        }
        d.push(
            Node::new("interface")
                .attr("type", "user")
                .child(Node::new("model").attr("type", "virtio")),
        );
        for fwd in &nic.user.hostfwd {
            un.push(format!(
                "hostfwd {fwd}: libvirt 9.0's user-mode network (slirp) has no port forwards                  (only the passt backend does)"
            ));
        }
    }
}

/// The serial console: `<serial>` and `<console>` where the console is a serial port, else the
/// profile's console target.
fn console(plan: &LaunchPlan, profile: &MachineProfile, d: &mut Node, un: &mut Vec<String>) {
    match &plan.console {
        ConsolePlan::Serial { .. } if profile.libvirt.console_target == "serial" => {
            d.push(
                Node::new("serial")
                    .attr("type", "pty")
                    .child(Node::new("target").attr("port", "0")),
            );
            d.push(
                Node::new("console")
                    .attr("type", "pty")
                    .child(Node::new("target").attr("type", "serial").attr("port", "0")),
            );
        }
        ConsolePlan::Serial { .. } => d.push(
            Node::new("console").attr("type", "pty").child(
                Node::new("target")
                    .attr("type", profile.libvirt.console_target.clone())
                    .attr("port", "0"),
            ),
        ),
        ConsolePlan::Device { device } => un.push(format!(
            "console device {device} (the firmware's messages): libvirt has no such device; \
             the domain gets no console"
        )),
    }
}

/// libvirt's namespace for QEMU's own command line (`<qemu:commandline>`).
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// `<qemu:commandline>`: what the plan passes QEMU that domain XML has no element for, the
/// QEMU prefix's data folders (`-L`) and module folder, and the user's extra options. libvirt
/// appends them to the command line it builds, as we do.
fn commandline(plan: &LaunchPlan) -> Result<Option<Node>, LibvirtError> {
    let mut args = Vec::new();
    for d in &plan.data_dirs {
        args.push("-L".to_owned());
        args.push(xml_path("data folder", d)?);
    }
    for a in &plan.qemu_args {
        args.push(xml_text("qemu_args", a)?);
    }
    if args.is_empty() && plan.module_dir.is_none() {
        return Ok(None);
    }
    let mut cl = Node::new("qemu:commandline");
    for a in args {
        cl.push(Node::new("qemu:arg").attr("value", a));
    }
    if let Some(d) = &plan.module_dir {
        cl.push(
            Node::new("qemu:env")
                .attr("name", "QEMU_MODULE_DIR")
                .attr("value", xml_path("module folder", d)?),
        );
    }
    Ok(Some(cl))
}

/// `a`..`z`, `aa`..: the letters of the i-th virtio disk (`vda`, `vdb`, ...).
fn disk_letters(mut i: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    s.reverse();
    String::from_utf8_lossy(&s).into_owned()
}

/// A value as XML 1.0 text: no control characters other than tab (and those a single-line
/// value has no use for).
fn xml_text(what: &'static str, value: &str) -> Result<String, LibvirtError> {
    if let Some(c) = value
        .chars()
        .find(|c| (c.is_control() && *c != '\t') || matches!(c, '\u{fffe}' | '\u{ffff}'))
    {
        return Err(LibvirtError::NotXml {
            what,
            value: value.escape_default().to_string(),
            why: if c == '\n' {
                "it spans lines"
            } else {
                "it holds a control character"
            },
        });
    }
    Ok(value.to_owned())
}

fn xml_path(what: &'static str, path: &Path) -> Result<String, LibvirtError> {
    match path.to_str() {
        Some(s) => xml_text(what, s),
        None => Err(LibvirtError::NotXml {
            what,
            value: path.display().to_string(),
            why: "it is not UTF-8",
        }),
    }
}

/// One element to write.
#[derive(Debug)]
struct Node {
    name: String,
    attrs: Vec<(&'static str, String)>,
    text: Option<String>,
    children: Vec<Node>,
}

impl Node {
    fn new(name: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    fn attr(mut self, key: &'static str, value: impl Into<String>) -> Node {
        self.attrs.push((key, value.into()));
        self
    }

    fn text(mut self, text: impl Into<String>) -> Node {
        self.text = Some(text.into());
        self
    }

    fn child(mut self, child: Node) -> Node {
        self.children.push(child);
        self
    }

    fn push(&mut self, child: Node) {
        self.children.push(child);
    }
}

fn write(w: &mut Writer<Vec<u8>>, n: &Node) -> io::Result<()> {
    let mut start = BytesStart::new(n.name.as_str());
    for (k, v) in &n.attrs {
        start.push_attribute((*k, v.as_str()));
    }
    if n.text.is_none() && n.children.is_empty() {
        return w.write_event(Event::Empty(start));
    }
    w.write_event(Event::Start(start.borrow()))?;
    if let Some(t) = &n.text {
        w.write_event(Event::Text(BytesText::new(t)))?;
    }
    for c in &n.children {
        write(w, c)?;
    }
    w.write_event(Event::End(start.to_end()))
}
