//! Acting inside a guest through its guest agent: `exec`, `cp`, `wait --agent`, and the
//! one-shot `run -- CMD`.

use std::{
    io::{Read, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context;
use qemu_direct::{
    Error, ExitCode,
    agent::{Agent, AgentError, ExecEvent, ExecRequest},
    argv,
    host::HostFacts,
    instance::InstanceRef,
    profile::{Accel, ProfileSet},
    vm::{self, GuestError, GuestPath, RunOptions},
};
use tokio::time::Instant;

use crate::{
    Usage,
    cli::{Cli, CpArgs, ExecArgs, GuestCommandArgs, RunArgs, WaitArgs},
    control::find,
    inputs::{make_plan, spec_input},
    run::{announce, builder, options},
    support::runtime,
};

/// How long `exec` and `cp` wait for the agent without `--timeout`, before scaling for the
/// accelerator: a guest just launched may still be booting.
const AGENT_WAIT: Duration = Duration::from_secs(30);
/// The exit status of a command that could not be started, as a shell has it.
const NOT_STARTED: u8 = 127;

/// What a command run in the guest needs from our side: its environment additions and stdin,
/// checked and read before anything starts.
struct Prepared {
    env: Vec<String>,
    stdin: Option<Vec<u8>>,
}

impl Prepared {
    fn from(args: &GuestCommandArgs) -> anyhow::Result<Prepared> {
        for e in &args.env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(Usage(format!("invalid --env '{e}': expected NAME=VALUE")).into());
            }
        }
        let stdin = if args.stdin {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            Some(bytes)
        } else {
            None
        };
        Ok(Prepared {
            env: args.env.clone(),
            stdin,
        })
    }

    /// The agent's request: `env NAME=VALUE... CMD ARGS` with additions (the agent's `env`
    /// argument would replace the whole environment, PATH included), else CMD ARGS.
    fn request(&self, command: &[String], timeout: Option<Duration>) -> ExecRequest {
        let (program, args): (&str, Vec<String>) = if self.env.is_empty() {
            (&command[0], command[1..].to_vec())
        } else {
            ("env", self.env.iter().chain(command).cloned().collect())
        };
        let mut r = ExecRequest::new(program, args);
        r.stdin = self.stdin.clone();
        r.timeout = timeout;
        r
    }
}

/// The instance's accelerator as it reports it; TCG (the slower) while it is starting.
fn accel_of(inst: &InstanceRef) -> Accel {
    inst.info().ok().flatten().map_or(Accel::Tcg, |i| i.accel)
}

/// `d` in whole milliseconds, so that the messages naming what is left of a timeout stay
/// readable.
fn ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn lib(e: impl Into<Error>) -> anyhow::Error {
    anyhow::Error::from(e.into())
}

/// `exec`.
pub fn exec(args: &ExecArgs) -> anyhow::Result<u8> {
    let prepared = Prepared::from(&args.guest_command)?;
    let inst = find(&args.name)?;
    let accel = accel_of(&inst);
    runtime()?.block_on(async {
        // The same limit for the agent to answer and for the command to end: a message then
        // names the limit given, not what was left of it.
        let wait = args.timeout.unwrap_or(vm::scale(accel, AGENT_WAIT));
        let log = inst.info().ok().flatten().and_then(|i| i.console_log);
        let agent = vm::connect_agent(&inst, wait, accel).await.map_err(lib)?;
        let status = run_in_guest(&agent, &prepared.request(&args.command, args.timeout)).await;
        // The guest went away under the command (powered off, say): say that, not how the
        // agent's connection broke.
        if status.is_err() && gone_soon(&inst).await {
            return Err(lib(vm::instance_ended(&inst, log)));
        }
        status
    })
}

/// Whether the instance ends within a moment (its supervisor reaps QEMU, then lets go).
async fn gone_soon(inst: &InstanceRef) -> bool {
    for _ in 0..20 {
        if !inst.alive() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs `request` in the guest, its output to ours as it comes (stdout and stderr apart), and
/// returns its status as a shell has it; 127 (after saying why) if it could not start.
async fn run_in_guest(agent: &Agent, request: &ExecRequest) -> anyhow::Result<u8> {
    let mut stream = match agent.exec_stream(request.clone()).await {
        Ok(s) => s,
        Err(e @ AgentError::ExecStart { .. }) => {
            crate::print_error(&lib(GuestError::from(e)));
            return Ok(NOT_STARTED);
        }
        Err(e) => return Err(lib(GuestError::from(e))),
    };
    while let Some(event) = stream.next().await {
        match event.map_err(|e| lib(GuestError::from(e)))? {
            // A reader that went away (`exec ... | head`) is its choice: the command goes on.
            ExecEvent::Stdout(b) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&b).and_then(|()| out.flush());
            }
            ExecEvent::Stderr(b) => {
                let _ = std::io::stderr().write_all(&b);
            }
            ExecEvent::Exited {
                status,
                stdout_truncated,
                stderr_truncated,
            } => {
                for (truncated, which) in
                    [(stdout_truncated, "stdout"), (stderr_truncated, "stderr")]
                {
                    if truncated {
                        eprintln!("qemu-direct: the guest agent kept only the start of {which}");
                    }
                }
                return Ok((status.shell_code() & 0xff) as u8);
            }
        }
    }
    anyhow::bail!("{} ended without an exit status", request.path)
}

/// `cp`.
pub fn cp(args: &CpArgs) -> anyhow::Result<ExitCode> {
    let (src, dst) = (GuestPath::parse(&args.src), GuestPath::parse(&args.dst));
    let (guest, to_guest) = match (src, dst) {
        (Some(_), Some(_)) => {
            return Err(Usage(format!(
                "both '{}' and '{}' name a guest (NAME:/path); one side must be a host path \
                 (write ./a:b for a host file named a:b)",
                args.src, args.dst
            ))
            .into());
        }
        (None, None) => {
            return Err(Usage(format!(
                "neither '{}' nor '{}' names a guest: write one side as NAME:/path",
                args.src, args.dst
            ))
            .into());
        }
        (Some(g), None) => (g, false),
        (None, Some(g)) => (g, true),
    };
    if !guest.path.starts_with('/') {
        return Err(Usage(format!("the guest path in '{guest}' is not absolute")).into());
    }
    if to_guest && Path::new(&args.src).is_dir() {
        return Err(Usage(format!(
            "{} is a directory: cp copies one file (send a folder as a tar stream: \
             `tar -C DIR -cf - . | qemu-direct exec NAME --stdin -- tar -C /dest -xf -`)",
            args.src
        ))
        .into());
    }
    let inst = find(&guest.instance)?;
    let accel = accel_of(&inst);
    runtime()?.block_on(async {
        let wait = args.timeout.unwrap_or(vm::scale(accel, AGENT_WAIT));
        let agent = vm::connect_agent(&inst, wait, accel).await.map_err(lib)?;
        let copied = if to_guest {
            vm::copy_to_guest(&agent, Path::new(&args.src), &guest.path).await
        } else {
            vm::copy_from_guest(&agent, &guest.path, Path::new(&args.dst)).await
        };
        copied.map_err(lib)?;
        Ok(ExitCode::Success)
    })
}

/// `wait --agent`: until the agent answers; prints its version.
pub fn wait_agent(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let inst = find(&args.name)?;
    let accel = accel_of(&inst);
    let wait = args.timeout.unwrap_or(vm::scale(accel, vm::AGENT_WAIT));
    runtime()?.block_on(async {
        let agent = vm::connect_agent(&inst, wait, accel).await.map_err(lib)?;
        let info = agent.info().await.map_err(|e| lib(GuestError::from(e)))?;
        if args.json {
            crate::control::print_json(
                &serde_json::json!({ "name": inst.name, "agent_version": info.version }),
            )?;
        } else {
            println!("guest agent {}", info.version);
        }
        Ok(ExitCode::Success)
    })
}

/// `run [guest flags] -- CMD [ARGS...]`: boot, run CMD through the agent, print its output,
/// quit the guest (it is throw-away), exit with CMD's status. The console goes to the logs
/// only; a failure shows its last lines and where the log is.
pub fn run_command(
    cli: &Cli,
    args: &RunArgs,
    profiles: &ProfileSet,
    host: Option<HostFacts>,
) -> anyhow::Result<u8> {
    let (plan, incoming, unique_name) = match &args.restore {
        Some(dir) => crate::snapshot::restore_input(dir, &args.spec, profiles)?,
        None => {
            let input = spec_input(&args.spec, profiles)?;
            let unique_name = input.name.is_none();
            let host = host.context("no host facts")?;
            (make_plan(cli, input, profiles, host)?, None, unique_name)
        }
    };
    let argv = argv::build(&plan);
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(&argv::shell_line(&argv))?;
        out.write_all(b"\n")?;
        return Ok(ExitCode::Success as u8);
    }
    if args.verbose {
        announce(&plan, &argv, true);
    }
    let prepared = Prepared::from(&args.guest_command)?;
    let opts = options(args, unique_name);
    let verbose = args.verbose;
    let launch = builder(&plan, &opts).incoming(incoming);
    runtime()?.block_on(one_shot(launch, &opts, &args.command, &prepared, verbose))
}

/// Launches the guest (`launch`: booted, or restored from a snapshot, whose random pool is
/// then reseeded first), runs the command through its agent, stops the guest.
async fn one_shot(
    launch: vm::VmBuilder,
    opts: &RunOptions,
    command: &[String],
    prepared: &Prepared,
    verbose: bool,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    // With --verbose, where the time went: booting to an answering agent, the command, the
    // stop (scripts/bench reads these).
    let took = |what: &str, since: Instant| {
        if verbose {
            eprintln!(
                "qemu-direct: {what} after {:.3} s",
                since.elapsed().as_secs_f64()
            );
        }
        Instant::now()
    };
    let restored = launch.restores();
    let vm = launch.launch().await.map_err(lib)?;
    let left = |default: Duration| {
        ms(opts
            .timeout
            .map_or(default, |t| t.saturating_sub(started.elapsed())))
    };
    let work = async {
        let agent = vm.agent_within(left(vm.scale(vm::AGENT_WAIT))).await?;
        let answered = took("the guest agent answered", started);
        if restored && let Err(e) = qemu_direct::snapshot::reseed_through(agent).await {
            eprintln!("qemu-direct: {e}");
        }
        let request = prepared.request(command, opts.timeout.map(|_| left(Duration::ZERO)));
        let status = run_in_guest(agent, &request).await;
        took("the command ended", answered);
        Ok::<_, GuestError>(status)
    };
    let outcome = tokio::select! {
        r = work => r,
        () = interrupted() => {
            eprintln!("qemu-direct: interrupted; stopping the guest");
            Ok(Ok(ExitCode::Interrupted as u8))
        }
    };
    // QEMU went away under the command: say so, with the console.
    let ended = match vm.exited() {
        true => Some(vm.ended().await),
        false => None,
    };
    let stopping = Instant::now();
    vm.quit().await;
    let _ = vm.wait().await;
    took("the guest stopped", stopping);
    match (outcome, ended) {
        (Ok(Ok(code)), _) => Ok(code),
        (Ok(Err(_)), Some(ended)) => Err(lib(ended)),
        (Ok(Err(e)), None) => Err(e),
        (Err(e), _) => Err(lib(e)),
    }
}

/// Resolves on SIGINT or SIGTERM; never if the handlers cannot be installed.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
