//! `firmware`: the descriptors, and for each guest arch (or the one asked for) what
//! `--firmware uefi` and `--firmware bios` would use on the profile's TCG machine.

use std::io::Write;

use qemu_direct::{
    Error, ExitCode,
    host::firmware::{Descriptors, FirmwareRequest, Listing},
    host::prefix::QemuPrefix,
    profile::{Accel, MachineProfile, ProfileSet},
};
use serde_json::{Value, json};

use crate::{Usage, support::error_chain};

/// What `--firmware INTERFACE` picks for one arch's TCG machine: `(arch, machine, interface,
/// choice)`, the choice as `--json` prints it.
type Pick = (String, String, &'static str, Value);

/// `firmware`.
pub fn command(
    profiles: &ProfileSet,
    prefix: Option<&QemuPrefix>,
    arch: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let descriptors = Descriptors::with_prefix(prefix).map_err(|e| Usage(error_chain(&e)))?;
    let chosen: Vec<&MachineProfile> = match arch {
        Some(a) => vec![profiles.resolve("arch", a).map_err(Error::from)?],
        None => profiles.iter().collect(),
    };
    let qemu_arch = arch.map(|_| chosen[0].qemu_arch());
    let listing = descriptors.list(qemu_arch);
    let picks: Vec<Pick> = chosen.iter().flat_map(|p| picks(&descriptors, p)).collect();
    if json {
        print_json(out, &listing, &picks)?;
        return Ok(ExitCode::Success);
    }
    print_listing(out, &listing, prefix)?;
    writeln!(out)?;
    print_picks(out, &picks)?;
    Ok(ExitCode::Success)
}

/// What UEFI and BIOS would be on the profile's TCG machine; nothing for a profile without
/// TCG.
fn picks(descriptors: &Descriptors, p: &MachineProfile) -> Vec<Pick> {
    let Some(tcg) = p.accel.get(&Accel::Tcg) else {
        return Vec::new();
    };
    ["uefi", "bios"]
        .into_iter()
        .map(|interface| {
            let req = FirmwareRequest {
                arch: p.qemu_arch().into(),
                machine: tcg.machine.clone(),
                interface: interface.into(),
                secure_boot: false,
            };
            let answer = choice(descriptors, p, &req, interface);
            (p.name.clone(), tcg.machine.clone(), interface, answer)
        })
        .collect()
}

/// The descriptor picked, the machine's built-in BIOS, or the package that is missing.
fn choice(
    descriptors: &Descriptors,
    p: &MachineProfile,
    req: &FirmwareRequest,
    interface: &str,
) -> Value {
    match descriptors.select(req) {
        Ok(sel) => {
            json!({ "descriptor": sel.descriptor, "executable": sel.executable, "nvram_template": sel.nvram_template })
        }
        Err(_) if interface == "bios" && p.firmware.builtin.as_deref() == Some("bios") => {
            json!({ "builtin": true })
        }
        Err(_) => json!({
            "missing": true,
            "package": p.firmware.interface_packages.get(interface),
        }),
    }
}

/// The descriptors and the picks as one JSON document.
fn print_json(out: &mut impl Write, listing: &[Listing], picks: &[Pick]) -> anyhow::Result<()> {
    let picks: Vec<_> = picks
        .iter()
        .map(|(a, m, i, v)| json!({"arch": a, "machine": m, "interface": i, "choice": v}))
        .collect();
    let all = json!({ "descriptors": listing, "choices": picks });
    writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
    Ok(())
}

/// The descriptors, a paragraph each; where none are, where they were looked for.
fn print_listing(
    out: &mut impl Write,
    listing: &[Listing],
    prefix: Option<&QemuPrefix>,
) -> std::io::Result<()> {
    if listing.is_empty() {
        writeln!(
            out,
            "no firmware descriptors in {}",
            qemu_direct::host::firmware::search_dirs_with(prefix)
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    for l in listing {
        print_descriptor(out, l)?;
    }
    Ok(())
}

/// One descriptor: its file, what it is for, its features and files.
fn print_descriptor(out: &mut impl Write, l: &Listing) -> std::io::Result<()> {
    writeln!(out, "{}", l.file.display())?;
    if let Some(problem) = &l.problem {
        writeln!(out, "  unusable: {problem}")?;
        return Ok(());
    }
    writeln!(out, "  {}", l.description)?;
    let targets: Vec<String> = l
        .targets
        .iter()
        .map(|t| format!("{} ({})", t.architecture, t.machines.join(", ")))
        .collect();
    writeln!(
        out,
        "  {} for {}; {}",
        l.interfaces.join(", "),
        targets.join(", "),
        l.device
    )?;
    if !l.features.is_empty() {
        writeln!(out, "  features: {}", l.features.join(", "))?;
    }
    for f in &l.files {
        let missing = if f.exists { "" } else { " (missing)" };
        writeln!(out, "  {}: {}{missing}", f.role, f.path.display())?;
    }
    Ok(())
}

/// A line per arch and interface: what `--firmware` would use.
fn print_picks(out: &mut impl Write, picks: &[Pick]) -> std::io::Result<()> {
    for (arch, machine, interface, v) in picks {
        let what = if let Some(d) = v.get("descriptor").and_then(|d| d.as_str()) {
            format!("{} ({})", d, v["executable"].as_str().unwrap_or(""))
        } else if v.get("builtin").is_some() {
            "the machine's built-in BIOS".into()
        } else {
            match v["package"].as_str() {
                Some(p) => format!("none installed (Debian package {p})"),
                None => "none".into(),
            }
        };
        writeln!(
            out,
            "{arch:<8} {machine:<16} --firmware {interface:<4}  {what}"
        )?;
    }
    Ok(())
}
