//! `run`: a guest in the foreground (the console on stdout until it ends), or detached, with
//! the hidden `__supervise` half that then watches it.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use qemu_direct::{
    Error, ExitCode, argv,
    host::HostFacts,
    instance,
    plan::LaunchPlan,
    profile::{Accel, ProfileSet},
    vm::{self, Incoming, Report, RunOptions, Vm},
};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{Cli, RunArgs},
    inputs::{make_plan, spec_input},
    snapshot,
    support::runtime,
};

/// `run`: the plan (for `--restore`, the snapshot's: `host` is `None` then), then
/// `--dry-run`'s command line, or the guest in the foreground or detached.
pub fn run(
    cli: &Cli,
    args: &RunArgs,
    profiles: &ProfileSet,
    host: Option<HostFacts>,
) -> anyhow::Result<ExitCode> {
    let (plan, incoming, unique_name) = match &args.restore {
        Some(dir) => snapshot::restore_input(dir, &args.spec, profiles)?,
        None => {
            let host = host.context("no host facts")?;
            let input = spec_input(&args.spec, profiles)?;
            // Without a name asked for, a busy default name (the arch) moves on to NAME-2, ...
            let unique_name = input.name.is_none();
            (make_plan(cli, input, profiles, host)?, None, unique_name)
        }
    };
    let mut argv = argv::build(&plan);
    if incoming.is_some() {
        argv.extend(["-incoming", "defer"].map(std::ffi::OsString::from));
    }
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(&argv::shell_line_with_env(&plan, &argv))?;
        out.write_all(b"\n")?;
        return Ok(ExitCode::Success);
    }
    announce(&plan, &argv, args.verbose);
    let opts = options(args, unique_name);
    if args.detach {
        detach(&plan, &opts, incoming, args.json)
    } else {
        foreground(&plan, &opts, incoming)
    }
}

/// What is about to run, on stderr: the guest, the accelerator and why, the plan's notes,
/// and with `verbose` the QEMU command line.
pub(crate) fn announce(plan: &LaunchPlan, argv: &[std::ffi::OsString], verbose: bool) {
    eprintln!(
        "qemu-direct: {} guest '{}', {}",
        plan.arch, plan.name, plan.accel_reason
    );
    for note in &plan.notes {
        eprintln!("qemu-direct: {note}");
    }
    if verbose {
        eprintln!(
            "qemu-direct: {}",
            String::from_utf8_lossy(&argv::shell_line_with_env(plan, argv))
        );
    }
}

/// How to run, from the flags.
pub(crate) fn options(args: &RunArgs, unique_name: bool) -> RunOptions {
    // The log is named after the instance, whose name is only final once launched.
    let (console_log, console_log_dir) = if args.no_console_log {
        (None, None)
    } else {
        (args.console_log.clone(), instance::log_dir())
    };
    RunOptions {
        timeout: args.timeout,
        until: args.until.clone(),
        console_log,
        console_log_dir,
        stop_timeout: args.stop_timeout,
        unique_name,
        runtime_dir: None,
        handle_signals: true,
    }
}

/// What `run --detach` hands its supervisor on stdin.
#[derive(Debug, Serialize, Deserialize)]
struct SuperviseRequest {
    plan: LaunchPlan,
    #[serde(default, with = "qemu_direct::util::pathser::option")]
    console_log: Option<PathBuf>,
    #[serde(default, with = "qemu_direct::util::pathser::option")]
    console_log_dir: Option<PathBuf>,
    unique_name: bool,
    timeout: Option<Duration>,
    until: Option<String>,
    stop_timeout: Option<Duration>,
    /// The guest's state comes from a snapshot or a migration.
    #[serde(default)]
    incoming: Option<Incoming>,
}

impl SuperviseRequest {
    fn new(plan: &LaunchPlan, opts: &RunOptions, incoming: Option<Incoming>) -> SuperviseRequest {
        SuperviseRequest {
            incoming,
            plan: plan.clone(),
            console_log: opts.console_log.clone(),
            console_log_dir: opts.console_log_dir.clone(),
            unique_name: opts.unique_name,
            timeout: opts.timeout,
            until: opts.until.clone(),
            stop_timeout: opts.stop_timeout,
        }
    }

    /// The plan, how to run it, and where its state comes from.
    fn into_parts(self) -> (LaunchPlan, RunOptions, Option<Incoming>) {
        let opts = RunOptions {
            timeout: self.timeout,
            until: self.until,
            console_log: self.console_log,
            console_log_dir: self.console_log_dir,
            stop_timeout: self.stop_timeout,
            unique_name: self.unique_name,
            runtime_dir: None,
            handle_signals: true,
        };
        (self.plan, opts, self.incoming)
    }
}

/// What the supervisor says on its stdout once QEMU answers on QMP.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    /// The instance's name.
    pub name: String,
    /// Its directory.
    #[serde(with = "qemu_direct::util::pathser")]
    pub dir: PathBuf,
    pid: u32,
    accel: Accel,
}

/// `run` in the foreground: the console on stdout until the guest ends.
pub fn foreground(
    plan: &LaunchPlan,
    opts: &RunOptions,
    incoming: Option<Incoming>,
) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(async {
        let restored = is_restore(incoming.as_ref());
        let vm = builder(plan, opts)
            .incoming(incoming)
            .echo_stderr(true)
            .launch()
            .await?;
        if restored {
            snapshot::reseed_in_background(&vm);
        }
        eprintln!(
            "qemu-direct: instance '{}' in {}, QEMU pid {}, accelerator {} (as QEMU reports it)",
            vm.name(),
            vm.dir().display(),
            vm.pid(),
            vm.accel()
        );
        vm::run_vm(&vm, opts, &mut tokio::io::stdout()).await
    });
    let report = report.map_err(Error::from)?;
    print_report(&report);
    Ok(report.outcome.exit_code())
}

/// Whether the guest's state comes from a snapshot (a clone to reseed), not a migration.
fn is_restore(incoming: Option<&Incoming>) -> bool {
    incoming.is_some_and(|i| matches!(i.from, vm::IncomingFrom::File(_)))
}

pub(crate) fn builder(plan: &LaunchPlan, opts: &RunOptions) -> vm::VmBuilder {
    Vm::builder(plan.clone())
        .console_log(opts.console_log.clone())
        .console_log_dir(opts.console_log_dir.clone())
        .unique_name(opts.unique_name)
}

/// How a run ended, on stderr: the outcome, QEMU's last words and the console's last lines
/// where something failed, and where the log is.
fn print_report(report: &Report) {
    let outcome = &report.outcome;
    eprintln!("qemu-direct: {outcome}");
    if matches!(
        outcome,
        vm::Outcome::QemuFailed { .. } | vm::Outcome::Crashed { .. }
    ) && !report.stderr_tail.is_empty()
    {
        eprintln!("qemu-direct: QEMU said:\n{}", report.stderr_tail);
    }
    if outcome.is_failure() && !report.console_tail.is_empty() {
        eprintln!(
            "qemu-direct: last {} console lines:",
            report.console_tail.len()
        );
        for line in &report.console_tail {
            eprintln!("  {line}");
        }
    }
    if let Some(log) = report
        .console_log
        .as_ref()
        .filter(|_| outcome.exit_code() != ExitCode::Success)
    {
        eprintln!("qemu-direct: console log: {}", log.display());
    }
}

/// `run --detach`: starts `qemu-direct __supervise` in a new session, hands it the plan, and
/// returns once it says QEMU answers on QMP. Its errors until then reach our stderr directly.
pub fn detach(
    plan: &LaunchPlan,
    opts: &RunOptions,
    incoming: Option<Incoming>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ready = match start_detached(plan, opts, incoming)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    eprintln!(
        "qemu-direct: instance '{}' running detached, QEMU pid {}, accelerator {} (as QEMU reports it)",
        ready.name, ready.pid, ready.accel
    );
    if json {
        crate::control::print_json(&ready)?;
    } else {
        println!("{}\t{}", ready.name, ready.dir.display());
    }
    Ok(ExitCode::Success)
}

/// Starts a detached instance: its ready line, or the exit code for a supervisor that failed
/// (and said why on our stderr).
pub fn start_detached(
    plan: &LaunchPlan,
    opts: &RunOptions,
    incoming: Option<Incoming>,
) -> anyhow::Result<Result<Ready, ExitCode>> {
    let mut child = start_supervisor(&SuperviseRequest::new(plan, opts, incoming))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout pipe")?).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Ok(Err(supervisor_failed(child.wait()?)));
    }
    Ok(Ok(
        serde_json::from_str(&line).context("unexpected word from the supervisor")?
    ))
}

/// Starts `qemu-direct __supervise` in a new session, sharing our stderr, and hands it `req`.
fn start_supervisor(req: &SuperviseRequest) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("cannot find the qemu-direct binary")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("__supervise")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe. A new session: the terminal's hangup and Ctrl-C
    // no longer reach the supervisor.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    {
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        // A supervisor that died before reading says why itself; its exit status follows.
        let _ = serde_json::to_writer(&mut stdin, req);
    }
    Ok(child)
}

/// Our exit code for a supervisor that failed before QEMU was ready: its own, where it is one
/// that says what failed.
fn supervisor_failed(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) | None => ExitCode::Failure,
        Some(2) => ExitCode::BadInput,
        Some(3) => ExitCode::QemuFailed,
        Some(_) => ExitCode::Failure,
    }
}

/// `__supervise`: the detached half of `run --detach`.
pub fn supervise() -> anyhow::Result<ExitCode> {
    let mut text = Vec::new();
    std::io::stdin().read_to_end(&mut text)?;
    let req: SuperviseRequest = serde_json::from_slice(&text).context("invalid request")?;
    let (plan, opts, incoming) = req.into_parts();
    let report = runtime()?.block_on(async {
        let restored = is_restore(incoming.as_ref());
        let vm = builder(&plan, &opts)
            .incoming(incoming)
            .launch()
            .await
            .map_err(Error::from)?;
        say_ready(&vm)?;
        // From here on nobody reads our stdout and stderr: the launcher has returned.
        quiet(&vm)?;
        if restored {
            snapshot::reseed_in_background(&vm);
        }
        anyhow::Ok(
            vm::run_vm(&vm, &opts, &mut tokio::io::sink())
                .await
                .map_err(Error::from)?,
        )
    })?;
    print_report(&report);
    Ok(report.outcome.exit_code())
}

/// Tells the launcher, on stdout, that QEMU answers on QMP.
fn say_ready(vm: &Vm) -> anyhow::Result<()> {
    let ready = Ready {
        name: vm.name().to_owned(),
        dir: vm.dir().to_owned(),
        pid: vm.pid(),
        accel: vm.accel(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;
    Ok(())
}

/// Points our stdin and stdout at /dev/null, and stderr (what we and QEMU say from now on)
/// at NAME.supervisor.log beside the console log, or /dev/null without one.
fn quiet(vm: &Vm) -> anyhow::Result<()> {
    let log = vm
        .console()
        .log_path()
        .map(|p| p.with_extension("supervisor.log"));
    let sink = match &log {
        Some(p) => File::create(p)?,
        None => File::options().write(true).open("/dev/null")?,
    };
    let null = File::options().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stderr(&sink)?;
    Ok(())
}
