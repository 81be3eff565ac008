//! The `qemu-direct` command: parse, call the library, print, map to an exit code.
//!
//! One file per command group: `run` ([`run`]), the instance commands ([`control`]), acting
//! inside a guest (`exec`, `cp`, `run -- CMD`: [`guest`]), the host's view ([`host`],
//! [`firmware`]), CPUs ([`cpu`]), the plan and its export ([`plan`]), snapshots, restores and
//! migration ([`snapshot`]), shell completions and manual pages ([`shell`]);
//! what they start from (profiles, host facts, the guest description) is in [`inputs`].

mod cli;
mod control;
mod cpu;
mod firmware;
mod guest;
mod host;
mod inputs;
mod plan;
mod run;
mod shell;
mod snapshot;
mod ssh;
mod support;

use std::process::ExitCode as ProcessExit;

use clap::Parser;
use qemu_direct::{Error, ExitCode};

use cli::{Cli, Command, ExportFormat};

/// Bad input found by the binary itself (e.g. an unreadable --host-facts file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

fn main() -> ProcessExit {
    shell::answer_completion_request();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => ProcessExit::from(code),
        // A closed stdout (`qemu-direct probe | head -1`) is the reader's choice, not a failure.
        Err(e) if broken_pipe(&e) => ProcessExit::SUCCESS,
        Err(e) => {
            print_error(&e);
            ProcessExit::from(exit_code(&e) as u8)
        }
    }
}

/// Runs the command asked for; its exit status. Commands run in a guest pass its status on;
/// the others end with one of ours.
fn real_main(cli: Cli) -> anyhow::Result<u8> {
    let profiles = inputs::profiles(&cli)?;
    // For a plan (virtiofsd looked for only if a share needs it), or to show the host.
    let probe = || inputs::host_facts(&cli, &profiles, false);
    let host_view = || inputs::host_facts(&cli, &profiles, true);
    let mut out = std::io::stdout().lock();

    let code = match &cli.command {
        Command::Probe { json } => host::probe(&cli, &profiles, *json, &mut out),
        Command::Profiles { json } => host::profiles(&profiles, *json, &mut out),
        Command::Plan {
            spec,
            json,
            dry_run,
        } => plan::show(
            &cli,
            spec,
            &profiles,
            plan::View::of(*json, *dry_run),
            &mut out,
        ),
        Command::Export {
            format: ExportFormat::Libvirt { spec, strict },
        } => plan::export_libvirt(&cli, spec, &profiles, *strict, &mut out),
        Command::Run(args) if !args.command.is_empty() => {
            drop(out);
            let host = args.restore.is_none().then(probe).transpose()?;
            return guest::run_command(&cli, args, &profiles, host);
        }
        Command::Run(args) => {
            drop(out);
            // A restore runs what its snapshot says: no host facts to plan with.
            let host = args.restore.is_none().then(probe).transpose()?;
            run::run(&cli, args, &profiles, host)
        }
        Command::Cpu { command } => cpu::command(&cli, command, &profiles, probe()?, &mut out),
        Command::Traits(args) => host::traits(&cli, &profiles, args, host_view, &mut out),
        Command::Check { spec, json } => {
            host::check(&cli, spec, &profiles, host_view()?, *json, &mut out)
        }
        Command::Firmware { arch, json } => {
            let prefix = inputs::qemu_prefix(&cli)?;
            firmware::command(&profiles, prefix.as_ref(), arch.as_deref(), *json, &mut out)
        }
        Command::Ps { json, agent } => {
            drop(out);
            control::ps(*json, *agent)
        }
        Command::Exec(args) => {
            drop(out);
            return guest::exec(args);
        }
        Command::Ssh(args) => {
            drop(out);
            return ssh::ssh(args);
        }
        Command::Cp(args) => guest::cp(args),
        Command::Qmp(args) => control::qmp(args),
        Command::Console { name, follow } => control::console(name, *follow),
        Command::Wait(args) if args.agent => guest::wait_agent(args),
        Command::Wait(args) => control::wait(args),
        Command::Stop {
            name,
            timeout,
            json,
        } => control::stop(name, *timeout, *json),
        Command::Snapshot {
            name,
            to,
            stop,
            json,
        } => snapshot::snapshot(name, to, *stop, *json),
        Command::Migrate { name, to, json } => snapshot::migrate(name, to, *json),
        Command::Completions { shell } => shell::completions(*shell, &mut out),
        Command::Man { dir } => shell::man(dir, &mut out),
        Command::Supervise => run::supervise(),
    };
    code.map(|c| c as u8)
}

/// Whether the error is a closed stdout.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `error:`, a `caused by:` line per cause, and the library's `hint:` where it has one.
fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("caused by: {cause}");
    }
    if let Some(hint) = library_error(e).and_then(Error::hint) {
        eprintln!("hint: {hint}");
    }
}

/// The library's exit code for its errors; bad input for the binary's own, else failure.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    match library_error(e) {
        Some(l) => l.exit_code(),
        None if e.downcast_ref::<Usage>().is_some() => ExitCode::BadInput,
        None => ExitCode::Failure,
    }
}

/// The library's error in the chain, if any.
fn library_error(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}
