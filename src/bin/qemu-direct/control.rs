//! The instance commands: `ps`, `qmp`, `console`, `wait`, `stop`.

use std::{fs::File, io::Write, time::Duration};

use anyhow::Context;
use qemu_direct::{
    Error, ExitCode,
    instance::{self, InstanceRef},
    profile::Accel,
    qmp::Qmp,
    vm::{self, Expect, LogReader},
};

use crate::{
    Usage,
    cli::{QmpAction, QmpArgs, WaitArgs},
    support::runtime,
};

/// `wait` without `--timeout`, before scaling for the accelerator.
const WAIT_DEFAULT: Duration = Duration::from_secs(60);

/// How long `ps --agent` gives each guest agent to answer.
const AGENT_PING: Duration = Duration::from_millis(500);

/// `ps`; with `agent`, whether each guest agent answers (asked in parallel).
pub fn ps(json: bool, agent: bool) -> anyhow::Result<ExitCode> {
    let root = instance::runtime_root().map_err(Error::from)?;
    let all = instance::list(&root).map_err(Error::from)?;
    let agents = if agent {
        Some(runtime()?.block_on(agents(&all)))
    } else {
        None
    };
    let agent_of = |i: usize| agents.as_ref().map(|a| a[i]);
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .enumerate()
            .map(|(n, (r, info))| ps_row(r, info.as_ref(), agent_of(n)))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::Success);
    }
    // The AGENT column, when asked, goes before UPTIME, which stays last.
    let agent_col = |a: Option<&str>| a.map(|a| format!("{a:<10} ")).unwrap_or_default();
    writeln!(
        out,
        "{:<20} {:<8} {:<5} {:>8} {:<14} {}UPTIME",
        "NAME",
        "ARCH",
        "ACCEL",
        "PID",
        "STATE",
        agent_col(agent.then_some("AGENT"))
    )?;
    for (n, (r, info)) in all.iter().enumerate() {
        let a = agent_col(agent_of(n));
        match info {
            Some(i) => writeln!(
                out,
                "{:<20} {:<8} {:<5} {:>8} {:<14} {a}{}",
                r.name,
                i.arch,
                i.accel,
                i.pid,
                i.state,
                humantime::format_duration(Duration::from_secs(i.uptime_secs()))
            )?,
            None => writeln!(
                out,
                "{:<20} {:<8} {:<5} {:>8} {:<14} {a}",
                r.name, "", "", "", "starting"
            )?,
        }
    }
    Ok(ExitCode::Success)
}

/// `ps --json`'s row of an instance; `agent` if it was asked.
fn ps_row(
    r: &InstanceRef,
    info: Option<&instance::InstanceInfo>,
    agent: Option<&str>,
) -> serde_json::Value {
    let mut row = match info {
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
    };
    row["agent_channel"] = r.path(instance::AGENT_SOCKET).exists().into();
    if let Some(a) = agent {
        row["agent"] = a.into();
    }
    row
}

/// Whether each instance's guest agent answers: `answers`, `no answer` or `none` (no agent
/// channel), in the order of `all`.
async fn agents(all: &[(InstanceRef, Option<instance::InstanceInfo>)]) -> Vec<&'static str> {
    let mut set = tokio::task::JoinSet::new();
    for (n, (r, _)) in all.iter().enumerate() {
        let r = r.clone();
        set.spawn(async move { (n, vm::agent_answers(&r, AGENT_PING).await) });
    }
    let mut found = vec!["none"; all.len()];
    while let Some(Ok((n, answers))) = set.join_next().await {
        found[n] = match answers {
            Some(true) => "answers",
            Some(false) => "no answer",
            None => "none",
        };
    }
    found
}

/// The live instance `name`.
pub(crate) fn find(name: &str) -> anyhow::Result<InstanceRef> {
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
pub(crate) async fn client(inst: &InstanceRef) -> anyhow::Result<Qmp> {
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
    let info = inst.info().ok().flatten();
    // Still starting: assume the slower accelerator.
    let accel = info.as_ref().map_or(Accel::Tcg, |i| i.accel);
    let timeout = args.timeout.unwrap_or(vm::scale(accel, WAIT_DEFAULT));
    // clap requires --for unless --agent, which main sends elsewhere.
    let pattern = args.pattern.as_deref().unwrap_or_default();
    let mut expect = Expect::new(pattern).map_err(Error::from)?;
    for f in args
        .fail_on
        .iter()
        .map(String::as_str)
        .chain([regex::escape(vm::PANIC_MARKER).as_str()])
    {
        expect = expect.fail_on(f).map_err(Error::from)?;
    }
    let r = reader(&inst, instance::CONSOLE, true)?
        .describing(&inst.name, info.and_then(|i| i.console_log));
    let line = runtime()?
        .block_on(expect.run(r, timeout))
        .map_err(Error::from)?;
    if args.json {
        print_json(&serde_json::json!({ "name": inst.name, "line": line }))?;
    } else {
        println!("{line}");
    }
    Ok(ExitCode::Success)
}

/// `stop`: the stop ladder from outside, over the client QMP socket; the supervisor reaps QEMU
/// and removes the directory, which this waits for.
pub fn stop(name: &str, timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let inst = find(name)?;
    let step = runtime()?
        .block_on(vm::stop_instance(&inst, timeout))
        .map_err(Error::from)?;
    if json {
        print_json(&serde_json::json!({ "name": name, "step": step, "why": step.to_string() }))?;
    } else {
        println!("{name}: {step}");
    }
    Ok(ExitCode::Success)
}

/// One JSON document on stdout, pretty-printed, as every `--json` prints.
pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}
