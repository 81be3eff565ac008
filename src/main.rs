//! The `qemu-direct` command: parse, call the library, print, map to an exit code.

mod cli;
mod control;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode as ProcessExit,
};

use clap::Parser;
use qemu_direct::{
    Error, ExitCode, argv,
    host::{HostFacts, ProbeOptions},
    plan::{self, LaunchPlan},
    profile::ProfileSet,
    spec::SpecInput,
    vm,
};

use cli::{Cli, Command, RunArgs, SpecArgs};

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
            let facts = probe(true)?;
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
        Command::Plan { spec, json } => {
            let plan = make_plan(spec, &profiles, probe(false)?)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
            } else {
                print_plan(&mut out, &plan)?;
            }
            Ok(ExitCode::Success)
        }
        Command::Run(args) => {
            drop(out);
            run(args, &profiles, probe(false)?)
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

fn host_facts(cli: &Cli, profiles: &ProfileSet, versions: bool) -> anyhow::Result<HostFacts> {
    match &cli.host_facts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Usage(format!("cannot read --host-facts {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| Usage(format!("invalid --host-facts {}: {e}", path.display())).into())
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

fn spec_input(args: &SpecArgs) -> Result<SpecInput, Error> {
    let base = match &args.spec {
        Some(path) => SpecInput::from_file(path)?,
        None => SpecInput::default(),
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
        disk: args.disk.clone(),
        disk_writable: args.disk_writable.then_some(true),
        firmware: args.firmware.clone(),
        emulator: args.emulator.clone(),
        properties: Default::default(),
    };
    for p in &args.properties {
        flags.add_property(p)?;
    }
    Ok(base.overlay(flags))
}

fn make_plan(args: &SpecArgs, profiles: &ProfileSet, host: HostFacts) -> Result<LaunchPlan, Error> {
    let spec = spec_input(args)?.validate(profiles)?;
    Ok(plan::resolve(&spec, profiles, &host)?)
}

fn run(args: &RunArgs, profiles: &ProfileSet, host: HostFacts) -> anyhow::Result<ExitCode> {
    let plan = make_plan(&args.spec, profiles, host)?;
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
        // Without a name asked for, a busy default name (the arch) moves on to NAME-2, ...
        unique_name: spec_input(&args.spec)?.name.is_none(),
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
    writeln!(out, "binary:  {}", plan.binary.display())?;
    writeln!(out, "accel:   {}", plan.accel_reason)?;
    writeln!(out, "machine: {}", plan.machine.kind)?;
    if let Some(cpu) = &plan.cpu {
        writeln!(out, "cpu:     {}", cpu.model)?;
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
