//! What the host offers: `probe`, `profiles`, `traits`, and `check` (would a guest run here).

use std::io::Write;

use qemu_direct::{
    Error, ExitCode,
    host::HostFacts,
    host::caps::CapsCache,
    labels, plan,
    profile::{Accel, ProfileSet},
};

use crate::{
    Usage,
    cli::{Cli, SpecArgs, TraitsArgs, TraitsFormat},
    inputs::{host_facts, load_config, spec_input},
    support::{block_on, error_chain},
};

/// `probe`: the host facts, with every emulator's capabilities under each accelerator it can
/// use here (whose failures are reported, not fatal).
pub fn probe(
    cli: &Cli,
    profiles: &ProfileSet,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    // Versions come from the capability probe's QMP greeting, not N more processes.
    let mut facts = host_facts(cli, profiles, true)?;
    if cli.host_facts.is_none() {
        add_all_caps(profiles, &mut facts)?;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&facts)?)?;
    } else {
        print_probe(out, &facts, profiles)?;
    }
    Ok(ExitCode::Success)
}

/// Probes every installed emulator under each accelerator it can use here (through the
/// cache); a failure is reported on stderr.
fn add_all_caps(profiles: &ProfileSet, facts: &mut HostFacts) -> anyhow::Result<()> {
    let wanted: Vec<(String, Accel)> = profiles
        .iter()
        .flat_map(|p| {
            let b = p.binary.clone();
            facts
                .probe_accels(p)
                .into_iter()
                .map(move |a| (b.clone(), a))
        })
        .collect();
    for (bin, accel, e) in block_on(facts.add_caps(&CapsCache::user(), &wanted))? {
        eprintln!("qemu-direct: {bin} under {accel}: {}", error_chain(&e));
    }
    Ok(())
}

/// `profiles`.
pub fn profiles(
    profiles: &ProfileSet,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if json {
        let all = profiles.iter().collect::<Vec<_>>();
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
    } else {
        for p in profiles.iter() {
            let aliases = if p.aliases.is_empty() {
                String::new()
            } else {
                format!(" (also {})", p.aliases.join(", "))
            };
            writeln!(out, "{:<8} {:<22} {}{aliases}", p.name, p.binary, p.summary)?;
        }
    }
    Ok(ExitCode::Success)
}

/// `traits`: this host's os-traits, or its scheduler labels. The options are checked before
/// the host is probed.
pub fn traits(
    cli: &Cli,
    profiles: &ProfileSet,
    args: &TraitsArgs,
    probe: impl FnOnce() -> anyhow::Result<HostFacts>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        TraitsFormat::Json
    } else {
        args.format
    };
    for (flag, given) in [
        ("--write", args.write.is_some()),
        ("--expiry", args.expiry.is_some()),
    ] {
        if given && format != TraitsFormat::Nfd {
            return Err(Usage(format!(
                "{flag} goes with --format nfd (a Node Feature Discovery feature file), not \
                 --format {}",
                format_name(format)
            ))
            .into());
        }
    }
    let mut facts = probe()?;
    add_tcg_caps(cli, profiles, &mut facts)?;
    match format {
        TraitsFormat::Text | TraitsFormat::Json => {
            let traits = qemu_direct::traits::host_traits(&facts, profiles);
            if format == TraitsFormat::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&traits)?)?;
            } else {
                for t in traits {
                    writeln!(out, "{:<36} {}", t.name, t.why)?;
                }
            }
        }
        TraitsFormat::Labels => {
            out.write_all(labels::lines(&labels::node_labels(&facts, profiles)).as_bytes())?
        }
        TraitsFormat::Nfd => {
            let expires = args.expiry.map(|d| std::time::SystemTime::now() + d);
            let text = labels::nfd_file(&labels::node_labels(&facts, profiles), expires);
            match &args.write {
                Some(dir) => {
                    let path = labels::write_nfd(dir, &text).map_err(Error::from)?;
                    writeln!(out, "{}", path.display())?;
                }
                None => out.write_all(text.as_bytes())?,
            }
        }
    }
    Ok(ExitCode::Success)
}

/// The format as `--format` spells it.
fn format_name(f: TraitsFormat) -> String {
    use clap::ValueEnum;
    f.to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
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
        for t in &report.traits {
            writeln!(
                out,
                "trait:     {} {}",
                t.name,
                if t.present { "(present)" } else { "(missing)" }
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

/// Probes every installed emulator under TCG (through the cache), unless the host facts come
/// from a file: an emulator counts for a `COMPUTE_ARCH_*` trait only when it answers.
fn add_tcg_caps(cli: &Cli, profiles: &ProfileSet, facts: &mut HostFacts) -> anyhow::Result<()> {
    if cli.host_facts.is_none() {
        let wanted: Vec<(String, Accel)> = profiles
            .iter()
            .map(|p| (p.binary.clone(), Accel::Tcg))
            .collect();
        // An emulator that does not answer loses its traits: say so, not silently.
        for (bin, accel, e) in block_on(facts.add_caps(&CapsCache::user(), &wanted))? {
            eprintln!(
                "qemu-direct: {bin} under {accel}: {} (its traits are left out)",
                error_chain(&e)
            );
        }
    }
    Ok(())
}

/// The host facts as `probe` prints them.
fn print_probe(
    out: &mut impl Write,
    facts: &HostFacts,
    profiles: &ProfileSet,
) -> std::io::Result<()> {
    writeln!(out, "host arch: {}", facts.arch_name())?;
    let own = facts.arch.as_ref().and_then(|a| profiles.get(a));
    match own.map(|p| facts.kvm_verdict(p)) {
        Some(Ok(())) => writeln!(out, "kvm:       usable ({})", facts.kvm_device.display())?,
        Some(Err(why)) => writeln!(out, "kvm:       not usable: {why}")?,
        None => writeln!(out, "kvm:       no profile for this host arch")?,
    }
    if let Some(prefix) = &facts.qemu_prefix {
        writeln!(out, "qemu:      prefix {prefix}")?;
    }
    let qemu = facts
        .emulators
        .values()
        .filter_map(|e| e.version.as_deref()?.parse().ok())
        .max();
    writeln!(out, "emulators:")?;
    for p in profiles.iter() {
        match facts.emulators.get(&p.binary) {
            Some(e) => writeln!(
                out,
                "  {:<8} {} {}",
                p.name,
                e.path.display(),
                e.version.as_deref().unwrap_or("(version unknown)")
            )?,
            None => writeln!(
                out,
                "  {:<8} not installed (Debian package {})",
                p.name,
                p.package_for(qemu)
            )?,
        }
    }
    Ok(())
}
