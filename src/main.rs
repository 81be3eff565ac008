//! The `qemu-direct` command: parse, call the library, print, map to an exit code.

mod cli;
mod control;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode as ProcessExit,
};

use anyhow::Context;
use clap::Parser;
use qemu_direct::{
    Error, ExitCode, argv,
    caps::CapsCache,
    config::Config,
    disk::DiskInput,
    firmware::Descriptors,
    host::{HostFacts, ProbeOptions},
    plan::{self, LaunchPlan},
    profile::Accel,
    profile::ProfileSet,
    spec::AccelRequest,
    spec::SpecInput,
    vm,
};

use cli::{Cli, Command, CpuCommand, ExportFormat, RunArgs, SpecArgs};

/// Bad input found by the binary itself (e.g. an unreadable --host-facts file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

fn main() -> ProcessExit {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => ProcessExit::from(code as u8),
        // A closed stdout (`qemu-direct probe | head -1`) is the reader's choice, not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ProcessExit::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            let lib = e.chain().find_map(|c| c.downcast_ref::<Error>());
            if let Some(hint) = lib.and_then(Error::hint) {
                eprintln!("hint: {hint}");
            }
            let code = match lib {
                Some(l) => l.exit_code(),
                None if e.downcast_ref::<Usage>().is_some() => ExitCode::BadInput,
                None => ExitCode::Failure,
            };
            ProcessExit::from(code as u8)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let profiles = match &cli.profile_dir {
        Some(dir) => ProfileSet::from_dir(dir),
        None => ProfileSet::embedded(),
    }
    .map_err(Error::from)?;
    let probe = |versions| host_facts(&cli, &profiles, versions);
    let mut out = std::io::stdout().lock();

    match &cli.command {
        Command::Probe { json } => {
            // Versions come from the capability probe's QMP greeting, not N more processes.
            let mut facts = probe(false)?;
            if cli.host_facts.is_none() {
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
            }
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&facts)?)?;
            } else {
                print_probe(&mut out, &facts, &profiles)?;
            }
            Ok(ExitCode::Success)
        }
        Command::Profiles { json } => {
            if *json {
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
        Command::Plan {
            spec,
            json,
            dry_run,
        } => {
            let input = spec_input(spec, &profiles)?;
            let plan = make_plan(&cli, input, &profiles, probe(false)?)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
            } else if *dry_run {
                out.write_all(&argv::shell_line(&argv::build(&plan)))?;
                out.write_all(b"\n")?;
            } else {
                print_plan(&mut out, &plan)?;
            }
            Ok(ExitCode::Success)
        }
        Command::Export {
            format: ExportFormat::Libvirt { spec, strict },
        } => {
            let input = spec_input(spec, &profiles)?;
            let plan = make_plan(&cli, input, &profiles, probe(false)?)?;
            let export = qemu_direct::libvirt::export(&plan, &profiles).map_err(Error::from)?;
            if *strict && !export.unexpressed.is_empty() {
                return Err(Error::from(qemu_direct::libvirt::LibvirtError::Unexpressed(
                    export.unexpressed,
                ))
                .into());
            }
            for u in &export.unexpressed {
                eprintln!("qemu-direct: libvirt XML cannot express: {u}");
            }
            out.write_all(export.xml.as_bytes())?;
            Ok(ExitCode::Success)
        }
        Command::Run(args) => {
            drop(out);
            run(&cli, args, &profiles, probe(false)?)
        }
        Command::Cpu { command } => cpu_command(&cli, command, &profiles, probe(false)?, &mut out),
        Command::Traits { json } => {
            let mut facts = probe(false)?;
            add_tcg_caps(&cli, &profiles, &mut facts)?;
            let traits = qemu_direct::traits::host_traits(&facts, &profiles);
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&traits)?)?;
            } else {
                for t in traits {
                    writeln!(out, "{:<36} {}", t.name, t.why)?;
                }
            }
            Ok(ExitCode::Success)
        }
        Command::Check { spec, json } => {
            let mut facts = probe(false)?;
            let input = spec_input(spec, &profiles)?;
            let vm = input.validate(&profiles).map_err(Error::from)?;
            add_tcg_caps(&cli, &profiles, &mut facts)?;
            let have = qemu_direct::traits::host_traits(&facts, &profiles);
            let required = qemu_direct::traits::required_traits(
                &input.properties,
                vm.cpu.maxphysaddr,
                &profiles,
            );
            let config = load_config(&cli, &profiles)?;
            let plan = block_on(plan::resolve_probing(
                &vm,
                &profiles,
                &mut facts,
                &config,
                &CapsCache::user(),
                cli.host_facts.is_none(),
            ))?;
            let plan_text = plan.as_ref().map_err(|e| error_chain(e));
            let report = qemu_direct::traits::check(required, &have, plan_text);
            if *json {
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
        Command::Firmware { arch, json } => {
            firmware_command(&profiles, arch.as_deref(), *json, &mut out)
        }
        Command::Ps { json } => {
            drop(out);
            control::ps(*json)
        }
        Command::Qmp(args) => control::qmp(args),
        Command::Console { name, follow } => control::console(name, *follow),
        Command::Wait(args) => control::wait(args),
        Command::Stop { name, timeout } => control::stop(name, *timeout),
        Command::Supervise => control::supervise(),
    }
}

/// Probes every installed emulator under TCG (through the cache), unless the host facts come
/// from a file: an emulator counts for a `COMPUTE_ARCH_*` trait only when it answers.
fn add_tcg_caps(cli: &Cli, profiles: &ProfileSet, facts: &mut HostFacts) -> anyhow::Result<()> {
    if cli.host_facts.is_none() {
        let wanted: Vec<(String, Accel)> = profiles
            .iter()
            .map(|p| (p.binary.clone(), Accel::Tcg))
            .collect();
        block_on(facts.add_caps(&CapsCache::user(), &wanted))?;
    }
    Ok(())
}

/// Runs a future on a fresh current-thread runtime (QEMU's parent-death signal is tied to the
/// thread that spawned it, so one thread it is).
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn load_config(cli: &Cli, profiles: &ProfileSet) -> Result<Config, Error> {
    Ok(match &cli.config {
        Some(path) => Config::load_file(path, profiles)?,
        None => Config::load_standard(profiles)?,
    })
}

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

fn cpu_command(
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

fn host_facts(cli: &Cli, profiles: &ProfileSet, versions: bool) -> anyhow::Result<HostFacts> {
    match &cli.host_facts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Usage(format!("cannot read --host-facts {}: {e}", path.display())))?;
            let mut facts: HostFacts = serde_json::from_str(&text)
                .map_err(|e| Usage(format!("invalid --host-facts {}: {e}", path.display())))?;
            // Recorded facts carry no firmware: plan with this machine's descriptors.
            facts.firmware = Descriptors::system().ok();
            Ok(facts)
        }
        None => Ok(HostFacts::probe(
            profiles,
            &ProbeOptions {
                kvm_device: cli.kvm_device.clone(),
                versions,
            },
        )),
    }
}

/// The guest description from --spec or --libvirt-xml, with the flags over it. Notes from a
/// libvirt domain (what it says that qemu-direct does not act on) go to stderr.
fn spec_input(args: &SpecArgs, profiles: &ProfileSet) -> Result<SpecInput, Error> {
    let base = match (&args.spec, &args.libvirt_xml) {
        (Some(path), _) => SpecInput::from_file(path)?,
        (None, Some(xml)) => {
            let imported = qemu_direct::libvirt::import_file(xml, profiles)?;
            for note in &imported.notes {
                eprintln!("qemu-direct: libvirt XML: {note}");
            }
            imported.spec
        }
        (None, None) => SpecInput::default(),
    };
    let mut flags = SpecInput {
        name: args.name.clone(),
        arch: args.arch.clone(),
        accel: args.accel,
        machine: args.machine.clone(),
        memory: args.memory.clone(),
        smp: args.smp,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        append: args.append.clone(),
        disk: None,
        disks: (!args.disk.is_empty())
            .then(|| args.disk.iter().map(|d| DiskInput::parse(d)).collect())
            .transpose()?,
        disk_writable: args.disk_writable.then_some(true),
        net: args.net.clone(),
        firmware: args.firmware.clone(),
        secure_boot: args.secure_boot.then_some(true),
        tb_size: args.tb_size,
        emulator: args.emulator.clone(),
        cpu_mode: args.cpu_mode.clone(),
        cpu_models: (!args.cpu_model.is_empty()).then(|| args.cpu_model.clone()),
        cpu_model_extra_flags: (!args.cpu_flags.is_empty()).then(|| args.cpu_flags.clone()),
        cpu_check: args.cpu_check.clone(),
        maxphysaddr: args.maxphysaddr.clone(),
        properties: Default::default(),
    };
    for p in &args.properties {
        flags.add_property(p)?;
    }
    Ok(base.overlay(flags))
}

fn make_plan(
    cli: &Cli,
    input: SpecInput,
    profiles: &ProfileSet,
    mut host: HostFacts,
) -> anyhow::Result<LaunchPlan> {
    let spec = input.validate(profiles).map_err(Error::from)?;
    let config = load_config(cli, profiles)?;
    let plan = block_on(plan::resolve_probing(
        &spec,
        profiles,
        &mut host,
        &config,
        &CapsCache::user(),
        cli.host_facts.is_none(),
    ))?
    .map_err(Error::from)?;
    Ok(plan)
}

fn run(
    cli: &Cli,
    args: &RunArgs,
    profiles: &ProfileSet,
    host: HostFacts,
) -> anyhow::Result<ExitCode> {
    let input = spec_input(&args.spec, profiles)?;
    // Without a name asked for, a busy default name (the arch) moves on to NAME-2, ...
    let unique_name = input.name.is_none();
    let plan = make_plan(cli, input, profiles, host)?;
    let argv = argv::build(&plan);
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(&argv::shell_line(&argv))?;
        out.write_all(b"\n")?;
        return Ok(ExitCode::Success);
    }
    eprintln!(
        "qemu-direct: {} guest '{}', {}",
        plan.arch, plan.name, plan.accel_reason
    );
    for note in &plan.notes {
        eprintln!("qemu-direct: {note}");
    }
    if args.verbose {
        eprintln!(
            "qemu-direct: {}",
            String::from_utf8_lossy(&argv::shell_line(&argv))
        );
    }
    // The log is named after the instance, whose name is only final once launched.
    let (console_log, console_log_dir) = if args.no_console_log {
        (None, None)
    } else {
        (args.console_log.clone(), default_log_dir())
    };
    let opts = vm::RunOptions {
        timeout: args.timeout,
        until: args.until.clone(),
        console_log,
        console_log_dir,
        stop_timeout: args.stop_timeout,
        unique_name,
        runtime_dir: None,
    };
    if args.detach {
        control::detach(&plan, &opts)
    } else {
        control::foreground(&plan, &opts)
    }
}

/// `$XDG_STATE_HOME/qemu-direct/logs`, where `NAME.log` goes.
fn default_log_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(state.join("qemu-direct/logs"))
}

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
                p.name, p.package
            )?,
        }
    }
    Ok(())
}

fn print_plan(out: &mut impl Write, plan: &LaunchPlan) -> std::io::Result<()> {
    writeln!(out, "name:    {}", plan.name)?;
    writeln!(out, "arch:    {}", plan.arch)?;
    match &plan.qemu_version {
        Some(v) => writeln!(out, "binary:  {} (QEMU {v})", plan.binary.display())?,
        None => writeln!(out, "binary:  {}", plan.binary.display())?,
    }
    writeln!(out, "accel:   {}", plan.accel_reason)?;
    if !plan.accel_options.is_empty() {
        writeln!(
            out,
            "         -accel {},{}",
            plan.accel,
            plan.accel_options.join(",")
        )?;
    }
    writeln!(out, "machine: {}", plan.machine.kind)?;
    if let Some(cpu) = &plan.cpu {
        writeln!(out, "cpu:     {} ({})", cpu.qemu_value(), cpu.mode)?;
    }
    writeln!(out, "memory:  {}  smp: {}", plan.memory, plan.smp)?;
    for note in &plan.notes {
        writeln!(out, "note:    {note}")?;
    }
    out.write_all(b"argv:    ")?;
    out.write_all(&argv::shell_line(&argv::build(plan)))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// `qemu-direct firmware`: the descriptors, and for each guest arch (or the one asked for)
/// what `--firmware uefi` and `--firmware bios` would use on the profile's TCG machine.
fn firmware_command(
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
            let req = qemu_direct::firmware::FirmwareRequest {
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
            qemu_direct::firmware::search_dirs()
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
