//! Commands that inspect hosts and emulators: `cpu models|baseline|compare`, `traits`,
//! `check`, `firmware`. Each calls the library and prints.

use std::{io::Write, path::Path};

use qemu_direct::{
    Error, ExitCode,
    host::HostFacts,
    host::caps::CapsCache,
    host::firmware::Descriptors,
    plan,
    profile::{Accel, ProfileSet},
    spec::AccelRequest,
};

use crate::{
    Usage, add_tcg_caps, block_on,
    cli::{Cli, CpuCommand, SpecArgs},
    error_chain, load_config, spec_input,
};

fn read_host_file(path: &Path) -> anyhow::Result<HostFacts> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Usage(format!(
            "cannot read host description {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Usage(format!("invalid host description {}: {e}", path.display())).into())
}

pub fn cpu_command(
    cli: &Cli,
    command: &CpuCommand,
    profiles: &ProfileSet,
    mut facts: HostFacts,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    match command {
        CpuCommand::Models { arch, accel, json } => {
            let profile = match arch {
                Some(a) => profiles.resolve("arch", a).map_err(Error::from)?,
                None => facts
                    .arch
                    .as_ref()
                    .and_then(|a| profiles.get(a))
                    .ok_or_else(|| Usage("cannot tell this host's arch; pass --arch".into()))?,
            };
            let accel = match accel {
                AccelRequest::Kvm => Accel::Kvm,
                AccelRequest::Tcg => Accel::Tcg,
                AccelRequest::Auto if facts.kvm_verdict(profile).is_ok() => Accel::Kvm,
                AccelRequest::Auto => Accel::Tcg,
            };
            if !facts.emulators.contains_key(&profile.binary) {
                return Err(Usage(format!(
                    "{} is not installed (Debian package {})",
                    profile.binary, profile.package
                ))
                .into());
            }
            if cli.host_facts.is_none() {
                if accel == Accel::Kvm && !facts.probe_accels(profile).contains(&Accel::Kvm) {
                    let why = facts.kvm_verdict(profile).err().map(|b| b.to_string());
                    return Err(Usage(format!(
                        "--accel kvm: {}",
                        why.unwrap_or_else(|| "KVM is not available".into())
                    ))
                    .into());
                }
                if let Some((_, _, e)) = block_on(
                    facts.add_caps(&CapsCache::user(), &[(profile.binary.clone(), accel)]),
                )?
                .into_iter()
                .next()
                {
                    return Err(e.into());
                }
            }
            let caps = facts.caps(&profile.binary, accel).ok_or_else(|| {
                Usage(format!(
                    "no capabilities recorded for {} under {accel}",
                    profile.binary
                ))
            })?;
            let Some(rows) = qemu_direct::cpu::model_rows(caps) else {
                return Err(Usage(format!(
                    "{} {} cannot list its CPU models (no query-cpu-definitions)",
                    profile.binary, caps.version
                ))
                .into());
            };
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(out, "{} {} under {accel}:", profile.binary, caps.version)?;
                for r in rows {
                    let alias = r.alias_of.map(|a| format!(" (= {a})")).unwrap_or_default();
                    let usable = if r.usable { "yes" } else { "no " };
                    writeln!(
                        out,
                        "  {usable} {:<28} {}",
                        format!("{}{alias}", r.name),
                        r.why
                    )?;
                }
            }
            Ok(ExitCode::Success)
        }
        CpuCommand::Baseline { arch, hosts, json } => {
            let profile = profiles.resolve("arch", arch).map_err(Error::from)?;
            let files: Vec<HostFacts> = hosts
                .iter()
                .map(|h| read_host_file(h))
                .collect::<anyhow::Result<_>>()?;
            let labels: Vec<String> = hosts.iter().map(|h| h.display().to_string()).collect();
            let mut views = Vec::new();
            for (f, label) in files.iter().zip(&labels) {
                let accel = if f.kvm_verdict(profile).is_ok() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
                let caps = f.caps(&profile.binary, accel).ok_or_else(|| {
                    Usage(format!(
                        "{label}: no capabilities for {} under {accel}; write it with `qemu-direct probe --json` on that host",
                        profile.binary
                    ))
                })?;
                views.push(qemu_direct::cpu::BaselineHost { label, accel, caps });
            }
            let b = qemu_direct::cpu::baseline(&views).map_err(Error::from)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&b)?)?;
            } else {
                let flags = b.cpu_flags();
                write!(out, "--cpu-model {}", b.model)?;
                if !flags.is_empty() {
                    write!(out, " --cpu-flags={flags}")?;
                }
                writeln!(out)?;
                eprintln!(
                    "qemu-direct: {} keeps {} features, disables {} that some host lacks",
                    b.model,
                    b.kept,
                    b.disabled.len()
                );
            }
            Ok(ExitCode::Success)
        }
        CpuCommand::Compare { spec, hosts } => {
            let vm = spec_input(spec, profiles)?
                .validate(profiles)
                .map_err(Error::from)?;
            let config = load_config(cli, profiles)?;
            let mut all = true;
            for h in hosts {
                let host = read_host_file(h)?;
                match plan::resolve_with(&vm, profiles, &host, &config) {
                    Ok(p) => {
                        let cpu = p
                            .cpu
                            .as_ref()
                            .map_or("(machine default)".into(), |c| c.qemu_value());
                        writeln!(out, "{}: yes: -cpu {cpu} under {}", h.display(), p.accel)?;
                    }
                    Err(e) => {
                        all = false;
                        writeln!(out, "{}: no: {}", h.display(), error_chain(&e))?;
                    }
                }
            }
            Ok(if all {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
    }
}

/// `qemu-direct firmware`: the descriptors, and for each guest arch (or the one asked for)
/// what `--firmware uefi` and `--firmware bios` would use on the profile's TCG machine.
pub fn firmware_command(
    profiles: &ProfileSet,
    arch: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let descriptors = Descriptors::system().map_err(|e| Usage(error_chain(&e)))?;
    let chosen: Vec<&qemu_direct::profile::MachineProfile> = match arch {
        Some(a) => vec![profiles.resolve("arch", a).map_err(Error::from)?],
        None => profiles.iter().collect(),
    };
    let qemu_arch = arch.map(|_| chosen[0].qemu_arch());
    let listing = descriptors.list(qemu_arch);
    let mut picks = Vec::new();
    for p in &chosen {
        let Some(tcg) = p.accel.get(&Accel::Tcg) else {
            continue;
        };
        for interface in ["uefi", "bios"] {
            let req = qemu_direct::host::firmware::FirmwareRequest {
                arch: p.qemu_arch().into(),
                machine: tcg.machine.clone(),
                interface: interface.into(),
                secure_boot: false,
            };
            let answer = match descriptors.select(&req) {
                Ok(sel) => {
                    serde_json::json!({ "descriptor": sel.descriptor, "executable": sel.executable, "nvram_template": sel.nvram_template })
                }
                Err(_) if interface == "bios" && p.firmware.builtin.as_deref() == Some("bios") => {
                    serde_json::json!({ "builtin": true })
                }
                Err(_) => serde_json::json!({
                    "missing": true,
                    "package": p.firmware.interface_packages.get(interface),
                }),
            };
            picks.push((p.name.clone(), tcg.machine.clone(), interface, answer));
        }
    }
    if json {
        let picks: Vec<_> = picks
            .iter()
            .map(|(a, m, i, v)| serde_json::json!({"arch": a, "machine": m, "interface": i, "choice": v}))
            .collect();
        let all = serde_json::json!({ "descriptors": listing, "choices": picks });
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(ExitCode::Success);
    }
    if listing.is_empty() {
        writeln!(
            out,
            "no firmware descriptors in {}",
            qemu_direct::host::firmware::search_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    for l in &listing {
        writeln!(out, "{}", l.file.display())?;
        if let Some(problem) = &l.problem {
            writeln!(out, "  unusable: {problem}")?;
            continue;
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
    }
    writeln!(out)?;
    for (arch, machine, interface, v) in &picks {
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
    Ok(ExitCode::Success)
}

/// `traits`: this host's os-traits.
pub fn traits(
    cli: &Cli,
    profiles: &ProfileSet,
    mut facts: HostFacts,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    add_tcg_caps(cli, profiles, &mut facts)?;
    let traits = qemu_direct::traits::host_traits(&facts, profiles);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&traits)?)?;
    } else {
        for t in traits {
            writeln!(out, "{:<36} {}", t.name, t.why)?;
        }
    }
    Ok(ExitCode::Success)
}

/// `check`: would this guest run here, natively, emulated or not (Nova's prefilter).
pub fn check(
    cli: &Cli,
    spec: &SpecArgs,
    profiles: &ProfileSet,
    mut facts: HostFacts,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let input = spec_input(spec, profiles)?;
    let vm = input.validate(profiles).map_err(Error::from)?;
    add_tcg_caps(cli, profiles, &mut facts)?;
    let have = qemu_direct::traits::host_traits(&facts, profiles);
    let required =
        qemu_direct::traits::required_traits(&input.properties, vm.cpu.maxphysaddr, profiles);
    let config = load_config(cli, profiles)?;
    let plan = block_on(plan::resolve_probing(
        &vm,
        profiles,
        &mut facts,
        &config,
        &CapsCache::user(),
        cli.host_facts.is_none(),
    ))?;
    let plan_text = plan.as_ref().map_err(|e| error_chain(e));
    let report = qemu_direct::traits::check(required, &have, plan_text);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "runs here: {}",
            serde_json::to_value(report.verdict)?
                .as_str()
                .unwrap_or("?")
        )?;
        for (t, ok) in &report.traits {
            writeln!(
                out,
                "trait:     {t} {}",
                if *ok { "(present)" } else { "(missing)" }
            )?;
        }
        for w in &report.why {
            writeln!(out, "why:       {w}")?;
        }
    }
    Ok(if report.verdict == qemu_direct::traits::Verdict::No {
        ExitCode::Failure
    } else {
        ExitCode::Success
    })
}
