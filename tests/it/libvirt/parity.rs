//! argv parity with a real libvirtd: for each exported domain of the matrix, `virsh define`
//! takes it, and `virsh domxml-to-native qemu-argv` gives the same binary, accelerator, machine
//! type (aliases resolved through QEMU's own list), machine properties, `-cpu` model and
//! property set (libvirt's `migratable=on` on `host` normalised away), memory, vCPUs and
//! topology, kernel boot, firmware, disks, the guest agent's port and shared folders as ours.
//! Each deliberate divergence is named below and in docs/libvirt.md; any other difference fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Output, Stdio},
    sync::Mutex,
};

use qemu_direct::{
    argv,
    cpu::{CpuMode, MaxPhysAddr},
    host::caps::Caps,
    plan::{LaunchPlan, ShareTransport},
    profile::{Accel, ProfileSet},
};

use super::{matrix, probed, say, skip};
use crate::common::{TestEnv, text};

/// The libvirt under test: `virsh` on `qemu:///system` (the system libvirtd), or the ones in
/// `QD_VIRSH` and `QD_LIBVIRT_URI` (scripts/with-libvirt-prefix: a newer libvirt's virsh on its
/// embedded QEMU driver).
fn virsh_uri() -> (String, String) {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    (
        var("QD_VIRSH", "virsh"),
        var("QD_LIBVIRT_URI", "qemu:///system"),
    )
}

fn virsh(args: &[&str]) -> Output {
    let (virsh, uri) = virsh_uri();
    Command::new(virsh)
        .arg("-c")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run virsh")
}

/// Whether libvirt answers (a libvirtd on qemu:///system, or the embedded driver), and which
/// version it is; if not, why.
fn libvirtd() -> Result<String, String> {
    let (virsh, uri) = virsh_uri();
    let out = Command::new(&virsh)
        .args(["-c", &uri, "version"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{virsh} cannot run ({e}; Debian: libvirt-clients)"))?;
    if out.status.success() {
        let o = text(&out).0;
        // "Using library: libvirt 11.3.0"
        Ok(o.lines()
            .find_map(|l| l.trim().strip_prefix("Using library: "))
            .unwrap_or("libvirt")
            .to_owned())
    } else {
        Err(format!(
            "no libvirt answers on {uri} ({}); scripts/with-libvirtd starts one",
            text(&out).1.trim().lines().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// A QEMU command line split into the binary and its options.
#[derive(Debug)]
struct Line {
    binary: String,
    opts: Vec<(String, Option<String>)>,
}

/// Options that take no value.
const FLAGS: &[&str] = &[
    "-S",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
    "-no-shutdown",
    "-no-acpi",
    "-enable-kvm",
];

impl Line {
    fn parse(words: &[String]) -> Line {
        // libvirt prints its environment first: NAME=value ... binary -opt ...
        let start = words.iter().position(|w| !w.contains('=')).unwrap_or(0);
        let mut opts = Vec::new();
        let mut i = start + 1;
        while i < words.len() {
            let o = words[i].clone();
            if FLAGS.contains(&o.as_str()) || i + 1 == words.len() {
                opts.push((o, None));
                i += 1;
            } else {
                opts.push((o, Some(words[i + 1].clone())));
                i += 2;
            }
        }
        Line {
            binary: words.get(start).cloned().unwrap_or_default(),
            opts,
        }
    }

    fn get(&self, opt: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(o, _)| o == opt)
            .and_then(|(_, v)| v.as_deref())
    }

    fn all(&self, opt: &str) -> Vec<&str> {
        self.opts
            .iter()
            .filter(|(o, _)| o == opt)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    fn has(&self, opt: &str) -> bool {
        self.opts.iter().any(|(o, _)| o == opt)
    }

    /// The `-cpu` model and its properties.
    fn cpu(&self) -> Option<(String, BTreeSet<String>)> {
        let v = self.get("-cpu")?;
        let mut parts = v.split(',');
        let model = parts.next()?.to_owned();
        Some((model, parts.map(str::to_owned).collect()))
    }

    /// `-machine` type and properties.
    fn machine(&self) -> (String, BTreeSet<String>) {
        let v = self.get("-machine").unwrap_or_default();
        let mut parts = v.split(',');
        let kind = parts.next().unwrap_or_default().to_owned();
        (kind, parts.map(str::to_owned).collect())
    }

    /// `-smp`: (vCPUs, sockets, cores), the topology where given.
    fn smp(&self) -> (u32, Option<u32>, Option<u32>) {
        let v = self.get("-smp").unwrap_or_default();
        let mut parts = v.split(',');
        let n = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut kv = BTreeMap::new();
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                kv.insert(k, v.parse::<u32>().ok());
            }
        }
        (
            n,
            kv.get("sockets").copied().flatten(),
            kv.get("cores").copied().flatten(),
        )
    }

    /// `-m` in MiB (`512`, `512M`, `size=512M`).
    /// `-m 512` (libvirt 9.0: MiB) or `-m size=524288k` (libvirt 11.3: KiB), in MiB.
    fn memory_mib(&self) -> Option<u64> {
        let v = self.get("-m")?;
        let v = v.strip_prefix("size=").unwrap_or(v);
        let v = v.split(',').next()?;
        match v.strip_suffix(['k', 'K']) {
            Some(kib) => kib
                .parse::<u64>()
                .ok()
                .filter(|k| k % 1024 == 0)
                .map(|k| k / 1024),
            None => v.trim_end_matches(['M', 'm']).parse().ok(),
        }
    }
}

/// QEMU's default CPU type per machine (`query-machines`' `default-cpu-type`), per binary.
fn default_cpu(binary: &str, machine: &str) -> Option<String> {
    static CACHE: Mutex<BTreeMap<String, BTreeMap<String, String>>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE.lock().unwrap();
    let table = cache.entry(binary.to_owned()).or_insert_with(|| {
        use std::io::Write;
        let mut child = Command::new(binary)
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .args(["-no-user-config", "-qmp", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start QEMU");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-machines\"}\n\
                  {\"execute\":\"quit\"}\n",
            )
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let mut table = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for m in v["return"].as_array().into_iter().flatten() {
                if let Some(cpu) = m["default-cpu-type"].as_str() {
                    for key in [&m["name"], &m["alias"]] {
                        if let Some(k) = key.as_str() {
                            table.insert(k.to_owned(), cpu.to_owned());
                        }
                    }
                }
            }
        }
        table
    });
    table.get(machine).cloned()
}

/// The TCG capabilities of the plan's emulator (for machine aliases and model spellings).
fn caps_of(plan: &LaunchPlan) -> &'static Caps {
    let set = ProfileSet::embedded().unwrap();
    let p = set.get(&plan.arch).unwrap();
    probed().host.caps(&p.binary, Accel::Tcg).unwrap()
}

/// QEMU's own name of a CPU model, so `POWER9` and `power9` compare equal.
fn model_name(caps: &Caps, name: &str) -> String {
    caps.model(name)
        .map(|m| m.alias_of.clone().unwrap_or_else(|| m.name.clone()))
        .unwrap_or_else(|| name.to_owned())
}

/// Compares one case; returns (differences, deliberate divergences seen).
fn compare(plan: &LaunchPlan, ours: &Line, theirs: &Line) -> (Vec<String>, Vec<String>) {
    let mut diff = Vec::new();
    let mut div = Vec::new();
    let caps = caps_of(plan);
    let arch = plan.arch.as_str();

    if ours.binary != theirs.binary {
        diff.push(format!(
            "binary: ours {} theirs {}",
            ours.binary, theirs.binary
        ));
    }
    // D7: ours asks for multi-threaded TCG outright; QEMU's own default is the same there.
    let our_accel = ours.get("-accel").map(|a| a.replace(",thread=multi", ""));
    if our_accel.as_deref() != theirs.get("-accel") {
        diff.push(format!(
            "accel: ours {:?} theirs {:?}",
            ours.get("-accel"),
            theirs.get("-accel")
        ));
    } else if our_accel.as_deref() != ours.get("-accel") {
        div.push("D7 thread=multi: ours explicit, libvirt leaves it to QEMU's default".into());
    }

    let ((our_kind, mut our_props), (their_kind, mut their_props)) =
        (ours.machine(), theirs.machine());
    memory_backend(
        plan,
        theirs,
        &mut our_props,
        &mut their_props,
        &mut diff,
        &mut div,
    );
    let resolve = |m: &str| caps.machine(m).map_or(m.to_owned(), |i| i.name.clone());
    if resolve(&our_kind) != resolve(&their_kind) {
        diff.push(format!("machine: ours {our_kind} theirs {their_kind}"));
    }
    for p in &our_props {
        if their_props.contains(p) {
            continue;
        }
        match p.as_str() {
            "gic-version=max" if arch == "aarch64" => div.push(format!(
                "D1 gic-version: ours max, libvirt {} (no <gic version='max'>)",
                their_props
                    .iter()
                    .find(|t| t.starts_with("gic-version="))
                    .map_or("unset", String::as_str)
            )),
            "x-vof=on" if arch == "ppc64le" => {
                div.push("D3 x-vof=on: libvirt cannot ask for VOF".into())
            }
            _ => diff.push(format!("machine property {p}: ours only ({their_props:?})")),
        }
    }

    let our_cpu = ours.cpu();
    let their_cpu = theirs.cpu();
    let host_model = plan
        .cpu
        .as_ref()
        .is_some_and(|c| c.mode == CpuMode::HostModel);
    match (&our_cpu, &their_cpu) {
        _ if host_model => div.push(format!(
            "D5 host-model: ours -cpu {}, libvirt -cpu {}",
            ours.get("-cpu").unwrap_or_default(),
            theirs.get("-cpu").unwrap_or_default()
        )),
        (Some((m, _)), None) => {
            let default = default_cpu(&plan.binary.to_string_lossy(), &our_kind);
            if !default
                .as_deref()
                .is_some_and(|d| d.starts_with(&format!("{m}-")))
            {
                diff.push(format!(
                    "cpu: ours {m}, libvirt none and QEMU's default is {default:?}"
                ));
            }
            div.push(format!(
                "D4 -cpu {m}: libvirt has no CPU driver for {arch} and passes none (QEMU's \
                 default, the same model)"
            ));
        }
        (None, Some((m, props))) => {
            let default = default_cpu(&plan.binary.to_string_lossy(), &our_kind);
            if !props.is_empty()
                || !default
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&format!("{m}-")))
            {
                diff.push(format!(
                    "cpu: ours none (QEMU's default {default:?}), libvirt -cpu {}",
                    theirs.get("-cpu").unwrap_or_default()
                ));
            }
        }
        (Some((om, oprops)), Some((tm, tprops))) => {
            if model_name(caps, om) != model_name(caps, tm) {
                diff.push(format!("cpu model: ours {om} theirs {tm}"));
            }
            let mut ours_p = oprops.clone();
            let mut theirs_p = tprops.clone();
            theirs_p.remove("migratable=on");
            let cpu = plan.cpu.as_ref().unwrap();
            for o in &cpu.options {
                if ours_p.remove(o) && !theirs_p.contains(o) {
                    div.push(format!("D2 {o}: libvirt cannot set it"));
                }
            }
            if matches!(cpu.maxphysaddr, Some(MaxPhysAddr::Emulate { .. }))
                && ours_p.remove("host-phys-bits=off")
            {
                div.push("D6 host-phys-bits=off: ours only, next to phys-bits".into());
            }
            if ours_p != theirs_p {
                diff.push(format!(
                    "cpu properties: ours {:?} theirs {:?}",
                    ours_p.difference(&theirs_p).collect::<Vec<_>>(),
                    theirs_p.difference(&ours_p).collect::<Vec<_>>()
                ));
            }
        }
        (None, None) => {}
    }

    if ours.memory_mib() != theirs.memory_mib() {
        diff.push(format!(
            "memory: ours {:?} theirs {:?}",
            ours.memory_mib(),
            theirs.memory_mib()
        ));
    }
    let (n, _, _) = ours.smp();
    match theirs.smp() {
        (tn, Some(1), Some(cores)) if tn == n && cores == n => {}
        // The domain has no <cpu> (libvirt 9.0 refuses one for riscv64 and mipsel), so no
        // <topology>: libvirt gives N sockets. 9.0 passes no -cpu for them, 11.3 passes
        // riscv64's (the same as ours).
        (tn, Some(s), Some(1))
            if tn == n
                && s == n
                && matches!(arch, "riscv64" | "mipsel")
                && our_cpu.is_some()
                && (their_cpu.is_none() || their_cpu == our_cpu) =>
        {
            div.push(format!(
                "D4 topology: libvirt {s} sockets, ours 1 socket of {n} cores"
            ))
        }
        other => diff.push(format!("smp: ours {n} (1 socket), theirs {other:?}")),
    }
    for opt in ["-kernel", "-initrd", "-append", "-bios"] {
        if ours.get(opt) != theirs.get(opt) {
            diff.push(format!(
                "{opt}: ours {:?} theirs {:?}",
                ours.get(opt),
                theirs.get(opt)
            ));
        }
    }
    let their_devices = theirs.all("-device").join(" ") + &theirs.all("-blockdev").join(" ");
    for d in &plan.disks {
        let path = d.disk.path.to_string_lossy();
        let (file, device) = (
            format!("\"{path}\""),
            format!("\"driver\":\"{}\"", d.device),
        );
        if !their_devices.contains(&file) || !their_devices.contains(&device) {
            diff.push(format!(
                "disk {path} on {}: not in {their_devices}",
                d.device
            ));
        }
    }
    if plan.panic_device.as_deref() == Some("pvpanic")
        && !their_devices.contains("\"driver\":\"pvpanic\"")
    {
        diff.push("pvpanic: missing from libvirt's devices".into());
    }
    agent_and_shares(plan, theirs, &mut diff, &mut div);
    let console = theirs.has("-serial")
        || ["isa-serial", "spapr-vty", "sclpconsole"]
            .iter()
            .any(|d| their_devices.contains(&format!("\"driver\":\"{d}\"")));
    if !console {
        diff.push("console: libvirt gives the guest none".into());
    }
    (diff, div)
}

/// D8: both back guest RAM with one shared memfd object, named differently (`memory-backend=`).
fn memory_backend(
    plan: &LaunchPlan,
    theirs: &Line,
    ours_p: &mut BTreeSet<String>,
    theirs_p: &mut BTreeSet<String>,
    diff: &mut Vec<String>,
    div: &mut Vec<String>,
) {
    let Some(m) = &plan.memory_backend else {
        return;
    };
    ours_p.remove(&format!("memory-backend={}", m.id));
    let their_id = theirs_p
        .iter()
        .find_map(|p| p.strip_prefix("memory-backend="))
        .map(str::to_owned);
    let Some(id) = their_id else {
        diff.push("memory backend: libvirt has none".into());
        return;
    };
    theirs_p.remove(&format!("memory-backend={id}"));
    let object = theirs.all("-object").into_iter().any(|o| {
        o.contains(&format!("\"id\":\"{id}\""))
            && o.contains("\"qom-type\":\"memory-backend-memfd\"")
            && o.contains("\"share\":true")
    });
    if object {
        div.push(format!(
            "D8 memory backend: ours {}, libvirt {id} (shared memfd both)",
            m.id
        ));
    } else {
        diff.push(format!(
            "memory backend {id}: not shared memfd in {:?}",
            theirs.all("-object")
        ));
    }
}

/// The guest agent's port and controller, and each share's device (and 9p's `-fsdev`); D9, D10:
/// the sockets behind them are each side's own.
fn agent_and_shares(
    plan: &LaunchPlan,
    theirs: &Line,
    diff: &mut Vec<String>,
    div: &mut Vec<String>,
) {
    let devices = theirs.all("-device");
    let has = |parts: &[String]| {
        devices
            .iter()
            .any(|d| parts.iter().all(|p| d.contains(p.as_str())))
    };
    let port = [
        "\"driver\":\"virtserialport\"".to_owned(),
        "\"name\":\"org.qemu.guest_agent.0\"".to_owned(),
    ];
    match &plan.agent {
        Some(a) => {
            if !has(&port) || !has(&[format!("\"driver\":\"{}\"", a.controller)]) {
                diff.push(format!(
                    "agent: no virtserialport on {} in {devices:?}",
                    a.controller
                ));
            }
            div.push("D9 agent socket: ours in the instance directory, bound by the launcher and passed as a descriptor; libvirt's in its channel directory".into());
        }
        None if has(&port) => diff.push("agent: libvirt adds a channel ours lacks".into()),
        None => {}
    }
    for s in &plan.shares {
        match &s.transport {
            ShareTransport::NineP { device } => {
                let want = format!("path={}", s.path.display());
                let fsdev = theirs
                    .all("-fsdev")
                    .into_iter()
                    .find(|f| f.split(',').any(|p| p == want));
                let ok = fsdev.is_some_and(|f| {
                    f.contains("security_model=none")
                        && f.split(',').any(|p| p == "readonly" || p == "readonly=on") == s.readonly
                });
                if !ok
                    || !has(&[
                        format!("\"driver\":\"{device}\""),
                        format!("\"mount_tag\":\"{}\"", s.tag),
                    ])
                {
                    diff.push(format!(
                        "9p share {}: not the same in libvirt's -fsdev/-device",
                        s.tag
                    ));
                }
            }
            ShareTransport::Virtiofs { device, .. } => {
                if !has(&[
                    format!("\"driver\":\"{device}\""),
                    format!("\"tag\":\"{}\"", s.tag),
                ]) {
                    diff.push(format!(
                        "virtiofs share {}: no {device} in libvirt's devices",
                        s.tag
                    ));
                }
                div.push("D10 virtiofsd: ours started by the launch on a socket in the instance directory; libvirt's by libvirtd on its own".into());
            }
        }
    }
}

fn split(line: &[u8]) -> Vec<String> {
    shlex::bytes::split(line)
        .unwrap_or_default()
        .into_iter()
        .map(|w| String::from_utf8_lossy(&w).into_owned())
        .collect()
}

#[test]
fn libvirt_makes_the_same_command_line_from_every_export() {
    let version = match libvirtd() {
        Ok(v) => v,
        Err(why) => return skip(&format!("libvirt parity: {why}")),
    };
    let env = TestEnv::new();
    let mut failures = Vec::new();
    let mut divergences = BTreeSet::new();
    let mut compared = 0;
    for c in matrix() {
        let (plan, _, path) = c.export(env.root());
        let file = path.to_str().unwrap();
        let out = virsh(&["domxml-to-native", "qemu-argv", file]);
        let (o, e) = text(&out);
        if !out.status.success() {
            if c.kvm && e.contains("does not support virt type 'kvm'") {
                say(&format!(
                    "SKIPPED: libvirt parity {}: libvirt has no KVM for it on this host",
                    c.name
                ));
                continue;
            }
            failures.push(format!("{}: domxml-to-native failed: {e}", c.name));
            continue;
        }
        // libvirt defines it too (and forgets it again).
        let def = virsh(&["define", file]);
        if def.status.success() {
            let _ = virsh(&["undefine", &c.name]);
        } else {
            failures.push(format!("{}: virsh define failed: {}", c.name, text(&def).1));
        }
        let theirs = Line::parse(&split(o.trim().as_bytes()));
        let ours = Line::parse(&split(&argv::shell_line(&argv::build(&plan))));
        let (diff, div) = compare(&plan, &ours, &theirs);
        compared += 1;
        for d in div {
            eprintln!(
                "DIVERGENCE (deliberate, see docs/libvirt.md) {}: {d}",
                c.name
            );
            divergences.insert(d.split(' ').next().unwrap_or_default().to_owned());
        }
        if !diff.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n  ours:   {}\n  theirs: {}",
                c.name,
                diff.join("\n  "),
                String::from_utf8_lossy(&argv::shell_line(&argv::build(&plan))),
                o.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    say(&format!(
        "libvirt parity ({version}): {compared} domains compared, the same apart from the \
         deliberate divergences {divergences:?} (docs/libvirt.md)"
    ));
    assert!(compared >= 20, "only {compared} domains compared");
}
