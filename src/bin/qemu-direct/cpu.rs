//! `cpu models|baseline|compare`: a guest arch's CPU models here, one CPU for several hosts,
//! and whether a guest's CPU runs on each of several hosts.

use std::{io::Write, path::Path};

use qemu_direct::{
    Error, ExitCode,
    cpu::{BaselineHost, ModelRow},
    host::HostFacts,
    host::caps::{Caps, CapsCache},
    plan,
    profile::{Accel, MachineProfile, ProfileSet},
    spec::AccelRequest,
};

use crate::{
    Usage,
    cli::{Cli, CpuCommand, SpecArgs},
    inputs::{load_config, spec_input},
    support::{block_on, error_chain},
};

/// `cpu ...`.
pub fn command(
    cli: &Cli,
    command: &CpuCommand,
    profiles: &ProfileSet,
    facts: HostFacts,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    match command {
        CpuCommand::Models { arch, accel, json } => {
            models(cli, profiles, facts, arch.as_deref(), *accel, *json, out)
        }
        CpuCommand::Baseline { arch, hosts, json } => baseline(profiles, arch, hosts, *json, out),
        CpuCommand::Compare { spec, hosts, json } => {
            compare(cli, spec, profiles, hosts, *json, out)
        }
    }
}

/// `cpu models`: the arch's CPU models, usable here under the accelerator or not, and why.
fn models(
    cli: &Cli,
    profiles: &ProfileSet,
    mut facts: HostFacts,
    arch: Option<&str>,
    accel: AccelRequest,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let profile = models_profile(profiles, &facts, arch)?;
    let accel = models_accel(&facts, profile, accel);
    if !facts.emulators.contains_key(&profile.binary) {
        return Err(Error::from(plan::missing_emulator(&facts, profile)).into());
    }
    if cli.host_facts.is_none() {
        probe_caps(&mut facts, profile, accel)?;
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
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        print_models(out, profile, caps, accel, rows)?;
    }
    Ok(ExitCode::Success)
}

/// The profile of `--arch`, else of this host's arch.
fn models_profile<'p>(
    profiles: &'p ProfileSet,
    facts: &HostFacts,
    arch: Option<&str>,
) -> anyhow::Result<&'p MachineProfile> {
    Ok(match arch {
        Some(a) => profiles.resolve("arch", a).map_err(Error::from)?,
        None => facts
            .arch
            .as_ref()
            .and_then(|a| profiles.get(a))
            .ok_or_else(|| Usage("cannot tell this host's arch; pass --arch".into()))?,
    })
}

/// The accelerator asked for; `auto` is what a guest would get here.
fn models_accel(facts: &HostFacts, profile: &MachineProfile, accel: AccelRequest) -> Accel {
    match accel {
        AccelRequest::Kvm => Accel::Kvm,
        AccelRequest::Tcg => Accel::Tcg,
        AccelRequest::Auto if facts.kvm_verdict(profile).is_ok() => Accel::Kvm,
        AccelRequest::Auto => Accel::Tcg,
    }
}

/// Probes the emulator's capabilities under `accel` (through the cache); KVM only where it
/// can be used.
fn probe_caps(facts: &mut HostFacts, profile: &MachineProfile, accel: Accel) -> anyhow::Result<()> {
    if accel == Accel::Kvm && !facts.probe_accels(profile).contains(&Accel::Kvm) {
        let why = facts.kvm_verdict(profile).err().map(|b| b.to_string());
        return Err(Usage(format!(
            "--accel kvm: {}",
            why.unwrap_or_else(|| "KVM is not available".into())
        ))
        .into());
    }
    if let Some((_, _, e)) =
        block_on(facts.add_caps(&CapsCache::user(), &[(profile.binary.clone(), accel)]))?
            .into_iter()
            .next()
    {
        return Err(qemu_direct::Error::from(e).into());
    }
    Ok(())
}

/// The models as a table.
fn print_models(
    out: &mut impl Write,
    profile: &MachineProfile,
    caps: &Caps,
    accel: Accel,
    rows: Vec<ModelRow>,
) -> std::io::Result<()> {
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
    Ok(())
}

/// `cpu baseline`: one CPU model, with features disabled, that runs on every host described.
fn baseline(
    profiles: &ProfileSet,
    arch: &str,
    hosts: &[std::path::PathBuf],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let profile = profiles.resolve("arch", arch).map_err(Error::from)?;
    let files: Vec<HostFacts> = hosts
        .iter()
        .map(|h| read_host_file(h))
        .collect::<anyhow::Result<_>>()?;
    let labels: Vec<String> = hosts.iter().map(|h| h.display().to_string()).collect();
    let views = files
        .iter()
        .zip(&labels)
        .map(|(f, label)| baseline_host(profile, f, label))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let b = qemu_direct::cpu::baseline(&views).map_err(Error::from)?;
    if json {
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

/// One host described, as the baseline sees it: under KVM where it could use it, else TCG.
fn baseline_host<'a>(
    profile: &MachineProfile,
    f: &'a HostFacts,
    label: &'a str,
) -> anyhow::Result<BaselineHost<'a>> {
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
    Ok(BaselineHost { label, accel, caps })
}

/// `cpu compare`: a line per host, whether the guest's CPU runs there; exit 1 unless on all.
fn compare(
    cli: &Cli,
    spec: &SpecArgs,
    profiles: &ProfileSet,
    hosts: &[std::path::PathBuf],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let vm = spec_input(spec, profiles)?
        .validate(profiles)
        .map_err(Error::from)?;
    let config = load_config(cli, profiles)?;
    let mut rows = Vec::new();
    for h in hosts {
        let host = read_host_file(h)?;
        // `cpu: null` is the machine's default CPU.
        let row = match plan::resolve_with(&vm, profiles, &host, &config) {
            Ok(p) => serde_json::json!({
                "host": h.to_string_lossy(), "runs": true,
                "cpu": p.cpu.as_ref().map(|c| c.qemu_value()), "accel": p.accel, "why": null,
            }),
            Err(e) => serde_json::json!({
                "host": h.to_string_lossy(), "runs": false,
                "cpu": null, "accel": null, "why": error_chain(&e),
            }),
        };
        rows.push(row);
    }
    let all = rows.iter().all(|r| r["runs"] == true);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    }
    for r in rows.iter().filter(|_| !json) {
        let host = r["host"].as_str().unwrap_or_default();
        match r["why"].as_str() {
            Some(why) => writeln!(out, "{host}: no: {why}")?,
            None => writeln!(
                out,
                "{host}: yes: -cpu {} under {}",
                r["cpu"].as_str().unwrap_or("(machine default)"),
                r["accel"].as_str().unwrap_or_default()
            )?,
        }
    }
    Ok(if all {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// A host description written by `probe --json`.
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
