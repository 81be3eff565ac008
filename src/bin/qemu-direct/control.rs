//! The instance commands of the binary: `run` in the foreground or detached (with its hidden
//! `__supervise` half), `ps`, `qmp`, `console`, `wait`, `stop`.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use qemu_direct::{
    Error, ExitCode,
    instance::{self, InstanceRef},
    plan::LaunchPlan,
    profile::Accel,
    qmp::Qmp,
    vm::{self, Expect, LogReader, Report, RunOptions, Vm},
};
use serde::{Deserialize, Serialize};

use crate::{
    Usage,
    cli::{QmpAction, QmpArgs, WaitArgs},
};

/// `wait` without `--timeout`, before scaling for the accelerator.
const WAIT_DEFAULT: Duration = Duration::from_secs(60);

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
}

/// What the supervisor says on its stdout once QEMU answers on QMP.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    name: String,
    #[serde(with = "qemu_direct::util::pathser")]
    dir: PathBuf,
    pid: u32,
    accel: Accel,
}

/// A current-thread runtime: QEMU's parent-death signal is tied to the thread that spawned it.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `run` in the foreground: the console on stdout until the guest ends.
pub fn foreground(plan: &LaunchPlan, opts: &RunOptions) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(async {
        let vm = builder(plan, opts).echo_stderr(true).launch().await?;
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

fn builder(plan: &LaunchPlan, opts: &RunOptions) -> vm::VmBuilder {
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
pub fn detach(plan: &LaunchPlan, opts: &RunOptions) -> anyhow::Result<ExitCode> {
    let req = SuperviseRequest {
        plan: plan.clone(),
        console_log: opts.console_log.clone(),
        console_log_dir: opts.console_log_dir.clone(),
        unique_name: opts.unique_name,
        timeout: opts.timeout,
        until: opts.until.clone(),
        stop_timeout: opts.stop_timeout,
    };
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
        let _ = serde_json::to_writer(&mut stdin, &req);
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout pipe")?).read_line(&mut line)?;
    if line.trim().is_empty() {
        // It failed, and said why on the stderr we share.
        let status = child.wait()?;
        return Ok(match status.code() {
            Some(0) | None => ExitCode::Failure,
            Some(2) => ExitCode::BadInput,
            Some(3) => ExitCode::QemuFailed,
            Some(_) => ExitCode::Failure,
        });
    }
    let ready: Ready =
        serde_json::from_str(&line).context("unexpected word from the supervisor")?;
    eprintln!(
        "qemu-direct: instance '{}' running detached, QEMU pid {}, accelerator {} (as QEMU reports it)",
        ready.name, ready.pid, ready.accel
    );
    println!("{}\t{}", ready.name, ready.dir.display());
    Ok(ExitCode::Success)
}

/// `__supervise`: the detached half of `run --detach`.
pub fn supervise() -> anyhow::Result<ExitCode> {
    let mut text = Vec::new();
    std::io::stdin().read_to_end(&mut text)?;
    let req: SuperviseRequest = serde_json::from_slice(&text).context("invalid request")?;
    let opts = RunOptions {
        timeout: req.timeout,
        until: req.until,
        console_log: req.console_log,
        console_log_dir: req.console_log_dir,
        stop_timeout: req.stop_timeout,
        unique_name: req.unique_name,
        runtime_dir: None,
    };
    let report = runtime()?.block_on(async {
        let vm = builder(&req.plan, &opts)
            .launch()
            .await
            .map_err(Error::from)?;
        let ready = Ready {
            name: vm.name().to_owned(),
            dir: vm.dir().to_owned(),
            pid: vm.pid(),
            accel: vm.accel(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&ready)?)?;
        out.flush()?;
        drop(out);
        // From here on nobody reads our stdout and stderr: the launcher has returned. What we
        // and QEMU say goes to NAME.supervisor.log beside the console log.
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
        anyhow::Ok(
            vm::run_vm(&vm, &opts, &mut tokio::io::sink())
                .await
                .map_err(Error::from)?,
        )
    })?;
    print_report(&report);
    Ok(report.outcome.exit_code())
}

/// `ps`.
pub fn ps(json: bool) -> anyhow::Result<ExitCode> {
    let root = instance::runtime_root().map_err(Error::from)?;
    let all = instance::list(&root).map_err(Error::from)?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|(r, info)| match info {
                Some(i) => serde_json::json!({
                    "name": r.name,
                    "arch": i.arch,
                    "accel": i.accel,
                    "pid": i.pid,
                    "supervisor_pid": i.supervisor_pid,
                    "state": i.state,
                    "started": i.started,
                    "uptime_secs": i.uptime_secs(),
                    "dir": r.dir.to_string_lossy(),
                    "console_log": i.console_log.as_ref().map(|p| p.to_string_lossy()),
                }),
                None => serde_json::json!({
                    "name": r.name,
                    "state": "starting",
                    "dir": r.dir.to_string_lossy(),
                }),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::Success);
    }
    writeln!(
        out,
        "{:<20} {:<8} {:<5} {:>8} {:<14} UPTIME",
        "NAME", "ARCH", "ACCEL", "PID", "STATE"
    )?;
    for (r, info) in &all {
        match info {
            Some(i) => writeln!(
                out,
                "{:<20} {:<8} {:<5} {:>8} {:<14} {}",
                r.name,
                i.arch,
                i.accel,
                i.pid,
                i.state,
                humantime::format_duration(Duration::from_secs(i.uptime_secs()))
            )?,
            None => writeln!(out, "{:<20} {:<8} {:<5} {:>8} starting", r.name, "", "", "")?,
        }
    }
    Ok(ExitCode::Success)
}

fn find(name: &str) -> anyhow::Result<InstanceRef> {
    let root = instance::runtime_root().map_err(Error::from)?;
    Ok(instance::find(&root, name).map_err(Error::from)?)
}

/// A reader of one of an instance's growing files, from its start; it ends at the current end,
/// or with `follow` once the instance has ended.
fn reader(inst: &InstanceRef, file: &str, follow: bool) -> anyhow::Result<LogReader> {
    let path = inst.path(file);
    let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let inst = inst.clone();
    Ok(LogReader::follow(f, move || follow && inst.alive()))
}

/// Copies a reader to stdout.
fn copy_out(mut r: LogReader) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut out = std::io::stdout();
        while let Some(chunk) = r.next_chunk().await? {
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(ExitCode::Success)
    })
}

/// Connects to the instance's client QMP socket, waiting while another client holds it.
async fn client(inst: &InstanceRef) -> anyhow::Result<Qmp> {
    let path = inst.path(instance::QMP);
    match tokio::time::timeout(vm::CLIENT_CONNECT, Qmp::connect_unix(&path)).await {
        Ok(r) => Ok(r.map_err(Error::from)?),
        Err(_) => anyhow::bail!(
            "QMP socket {} did not answer within {}: another client may hold it (QEMU serves one at a time)",
            path.display(),
            humantime::format_duration(vm::CLIENT_CONNECT)
        ),
    }
}

/// `console`.
pub fn console(name: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let inst = find(name)?;
    copy_out(reader(&inst, instance::CONSOLE, follow)?)
}

/// `qmp`.
pub fn qmp(args: &QmpArgs) -> anyhow::Result<ExitCode> {
    let inst = find(&args.name)?;
    if let QmpAction::Events { follow } = args.action {
        return copy_out(reader(&inst, instance::EVENTS, follow)?);
    }
    let arguments = match &args.action {
        QmpAction::Execute {
            arguments: Some(a), ..
        } => {
            let v: serde_json::Value = serde_json::from_str(a)
                .map_err(|e| Usage(format!("invalid QMP arguments '{a}': {e}")))?;
            if !v.is_object() {
                return Err(
                    Usage(format!("invalid QMP arguments '{a}': not a JSON object")).into(),
                );
            }
            Some(v)
        }
        _ => None,
    };
    runtime()?.block_on(async {
        let qmp = client(&inst).await?;
        let lib = |e| anyhow::Error::from(Error::from(e));
        match &args.action {
            QmpAction::Status => println!("{}", qmp.query_status().await.map_err(lib)?.status),
            QmpAction::Stop => qmp.stop().await.map_err(lib)?,
            QmpAction::Cont => qmp.cont().await.map_err(lib)?,
            QmpAction::Reset => qmp.system_reset().await.map_err(lib)?,
            QmpAction::Powerdown => qmp.system_powerdown().await.map_err(lib)?,
            QmpAction::Quit => qmp.quit().await.map_err(lib)?,
            QmpAction::Execute { command, .. } => {
                let reply = qmp.execute(command, arguments).await.map_err(lib)?;
                println!("{}", serde_json::to_string(&reply)?);
            }
            QmpAction::Events { .. } => {}
        }
        Ok(ExitCode::Success)
    })
}

/// `wait`.
pub fn wait(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let inst = find(&args.name)?;
    // Still starting: assume the slower accelerator.
    let accel = inst.info().ok().flatten().map_or(Accel::Tcg, |i| i.accel);
    let timeout = args.timeout.unwrap_or(vm::scale(accel, WAIT_DEFAULT));
    let mut expect = Expect::new(&args.pattern).map_err(Error::from)?;
    for f in args
        .fail_on
        .iter()
        .map(String::as_str)
        .chain([regex::escape(vm::PANIC_MARKER).as_str()])
    {
        expect = expect.fail_on(f).map_err(Error::from)?;
    }
    let r = reader(&inst, instance::CONSOLE, true)?;
    let line = runtime()?
        .block_on(expect.run(r, timeout))
        .map_err(Error::from)?;
    println!("{line}");
    Ok(ExitCode::Success)
}

/// `stop`: the stop ladder from outside, over the client QMP socket; the supervisor reaps QEMU
/// and removes the directory, which this waits for.
pub fn stop(name: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let inst = find(name)?;
    let step = runtime()?
        .block_on(vm::stop_instance(&inst, timeout))
        .map_err(Error::from)?;
    println!("{name}: {step}");
    Ok(ExitCode::Success)
}
