//! The `qemu-direct` command: parse, call the library, print, map to an exit code.

mod cli;
mod control;
mod inspect;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode as ProcessExit,
};

use anyhow::Context;
use clap::Parser;
use qemu_direct::{
    Error, ExitCode, argv,
    host::caps::CapsCache,
    host::firmware::Descriptors,
    host::{HostFacts, ProbeOptions},
    plan::{self, LaunchPlan},
    profile::Accel,
    profile::ProfileSet,
    spec::SpecInput,
    spec::config::Config,
    spec::disk::DiskInput,
    vm,
};

use cli::{Cli, Command, ExportFormat, RunArgs, SpecArgs};

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
        Command::Cpu { command } => {
            inspect::cpu_command(&cli, command, &profiles, probe(false)?, &mut out)
        }
        Command::Traits { json } => {
            inspect::traits(&cli, &profiles, probe(false)?, *json, &mut out)
        }
        Command::Check { spec, json } => {
            inspect::check(&cli, spec, &profiles, probe(false)?, *json, &mut out)
        }
        Command::Firmware { arch, json } => {
            inspect::firmware_command(&profiles, arch.as_deref(), *json, &mut out)
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
