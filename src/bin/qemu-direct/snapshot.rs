//! `snapshot`, `run --restore`'s inputs, and `migrate`.

use std::{path::Path, time::Duration};

use anyhow::Context;
use qemu_direct::{
    Error, ExitCode,
    instance::{self, InstanceRef},
    plan::LaunchPlan,
    profile::ProfileSet,
    snapshot::{self, Saved, SnapshotOptions, Source, migrate as live},
    vm::{self, Incoming, RunOptions, Vm},
};

use crate::{Usage, cli::SpecArgs, control, run, support::runtime};

/// `snapshot NAME --to DIR [--stop]`: the folder on stdout, what was saved on stderr.
pub fn snapshot(name: &str, to: &Path, stop: bool, json: bool) -> anyhow::Result<ExitCode> {
    let inst = control::find(name)?;
    let plan = read_plan(&inst)?;
    let root = root_of(&inst);
    let saved = runtime()?.block_on(async {
        let qmp = control::client(&inst).await?;
        let src = Source {
            name,
            qmp: &qmp,
            plan: &plan,
            runtime_root: &root,
        };
        let opts = SnapshotOptions { stay_paused: stop };
        let saved = snapshot::save(&src, to, &opts).await.map_err(Error::from)?;
        // QEMU serves one client at a time: `stop` connects again.
        drop(qmp);
        if stop {
            vm::stop_instance(&inst, Duration::ZERO)
                .await
                .map_err(Error::from)?;
        }
        anyhow::Ok(saved)
    })?;
    say_saved(name, &saved, stop);
    if json {
        let m = &saved.manifest;
        control::print_json(&serde_json::json!({
            "name": name,
            "dir": saved.dir.to_string_lossy(),
            "stopped": stop,
            "paused_secs": saved.paused.as_secs_f64(),
            "total_secs": saved.total.as_secs_f64(),
            "files": m.files,
            "method": m.method,
            "qemu_version": m.qemu.version,
        }))?;
    } else {
        println!("{}", saved.dir.display());
    }
    Ok(ExitCode::Success)
}

/// What was saved, on stderr.
fn say_saved(name: &str, saved: &Saved, stopped: bool) {
    let m = &saved.manifest;
    let files: Vec<String> = m
        .files
        .iter()
        .map(|f| {
            format!(
                "{} {} ({} on disk)",
                f.name,
                human(f.bytes),
                human(f.allocated)
            )
        })
        .collect();
    eprintln!(
        "qemu-direct: snapshot of '{name}' in {}: guest paused {:.2}s, {:.2}s in all; {}",
        saved.dir.display(),
        saved.paused.as_secs_f64(),
        saved.total.as_secs_f64(),
        files.join(", ")
    );
    for why in &m.method.why {
        eprintln!("qemu-direct: {why}");
    }
    eprintln!(
        "qemu-direct: {}",
        if stopped {
            "instance stopped"
        } else {
            "guest resumed"
        }
    );
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `run --restore DIR`: the plan and incoming state of the snapshot, checked, and whether a
/// taken default name moves on to NAME-2, ... Spec flags other than --name are refused, and
/// --memory and --arch unless they are the snapshot's.
pub fn restore_input(
    dir: &Path,
    spec: &SpecArgs,
    profiles: &ProfileSet,
) -> anyhow::Result<(LaunchPlan, Option<Incoming>, bool)> {
    if let Some(flag) = spec_flag_given(spec) {
        return Err(Usage(format!(
            "--{flag} cannot be used with --restore: the snapshot fixes the guest (only --name \
             goes with it, and --memory and --arch if they are the snapshot's)"
        ))
        .into());
    }
    let mut restore = Vm::restore(dir).map_err(Error::from)?;
    if let Some(m) = &spec.memory {
        let given = m.parse().map_err(|e| Usage(format!("--memory {m}: {e}")))?;
        restore.check_memory(given).map_err(Error::from)?;
    }
    if let Some(a) = &spec.arch {
        let arch = profiles.resolve("arch", a).map_err(Error::from)?.arch();
        restore.check_arch(arch).map_err(Error::from)?;
    }
    if let Some(n) = &spec.name {
        restore = restore.name(n.clone());
    }
    Ok((restore.plan(), Some(restore.incoming()), !restore.named()))
}

/// The first flag of the guest description given besides --name, --memory and --arch.
fn spec_flag_given(s: &SpecArgs) -> Option<&'static str> {
    [
        ("spec", s.spec.is_some()),
        ("libvirt-xml", s.libvirt_xml.is_some()),
        ("accel", s.accel.is_some()),
        ("machine", s.machine.is_some()),
        ("smp", s.smp.is_some()),
        ("kernel", s.kernel.is_some()),
        ("initrd", s.initrd.is_some()),
        ("append", s.append.is_some()),
        ("disk", !s.disk.is_empty()),
        ("disk-writable", s.disk_writable),
        ("net", s.net.is_some()),
        ("firmware", s.firmware.is_some()),
        ("secure-boot", s.secure_boot),
        ("tb-size", s.tb_size.is_some()),
        ("nested-virt", s.nested_virt),
        ("emulator", s.emulator.is_some()),
        ("cpu-mode", s.cpu_mode.is_some()),
        ("cpu-model", !s.cpu_model.is_empty()),
        ("cpu-flags", !s.cpu_flags.is_empty()),
        ("cpu-check", s.cpu_check.is_some()),
        ("maxphysaddr", s.maxphysaddr.is_some()),
        ("property", !s.properties.is_empty()),
    ]
    .into_iter()
    .find_map(|(flag, given)| given.then_some(flag))
}

/// `migrate NAME --to NEW`: the new instance started detached and listening, the guest
/// migrated live into it, seen running there, and the old instance stopped.
pub fn migrate(name: &str, to: &str, json: bool) -> anyhow::Result<ExitCode> {
    let inst = control::find(name)?;
    let plan = read_plan(&inst)?;
    let root = root_of(&inst);
    let rt = runtime()?;
    let qmp = rt.block_on(control::client(&inst))?;
    let src = Source {
        name,
        qmp: &qmp,
        plan: &plan,
        runtime_root: &root,
    };
    let running = rt
        .block_on(snapshot::save::run_state(&src))
        .map_err(Error::from)?;
    live::runs_here(&src).map_err(Error::from)?;
    let mut dest = plan.clone();
    dest.name = to.to_owned();
    dest.notes = vec![format!("migrated from instance '{name}'")];
    let opts = RunOptions {
        console_log_dir: instance::log_dir(),
        ..RunOptions::default()
    };
    let incoming = Incoming::listen().resume(running);
    let ready = match run::start_detached(&dest, &opts, Some(incoming))? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let stats = rt.block_on(async {
        let stats = match live::live(&src, &ready.dir).await {
            Ok(s) => s,
            Err(e) => {
                // The destination may have ended by itself already.
                if let Ok(d) = instance::find(&root, &ready.name) {
                    let _ = vm::stop_instance(&d, Duration::ZERO).await;
                }
                return Err(anyhow::Error::from(Error::from(e)));
            }
        };
        let dest = instance::find(&root, &ready.name).map_err(Error::from)?;
        let dq = control::client(&dest).await?;
        live::wait_state(&dq, &ready.name, running)
            .await
            .map_err(Error::from)?;
        drop(dq);
        anyhow::Ok(stats)
    })?;
    drop(qmp);
    rt.block_on(vm::stop_instance(&inst, Duration::ZERO))
        .map_err(Error::from)?;
    eprintln!(
        "qemu-direct: migrated '{name}' to '{}': guest paused {} ms (QEMU's downtime), {} ms in all, {:.1} MiB sent; '{name}' stopped",
        ready.name,
        stats.downtime.as_millis(),
        stats.total.as_millis(),
        stats.bytes as f64 / f64::from(1 << 20)
    );
    if json {
        control::print_json(&serde_json::json!({
            "name": name,
            "to": ready.name,
            "dir": ready.dir.to_string_lossy(),
            "downtime_secs": stats.downtime.as_secs_f64(),
            "total_secs": stats.total.as_secs_f64(),
            "bytes": stats.bytes,
        }))?;
    } else {
        println!("{}\t{}", ready.name, ready.dir.display());
    }
    Ok(ExitCode::Success)
}

/// How long a restored guest's agent gets to answer the reseed.
const RESEED_WAIT: Duration = Duration::from_secs(60);

/// Reseeds a restored guest's random pool through its agent, on a task of its own (the guest
/// runs meanwhile); says how that went on stderr. Nothing without an agent channel.
pub fn reseed_in_background(vm: &Vm) {
    let Some(agent) = &vm.plan().agent else {
        return;
    };
    let (name, socket) = (vm.name().to_owned(), agent.socket.clone());
    tokio::spawn(async move {
        match snapshot::reseed(&name, &socket, RESEED_WAIT).await {
            Ok(()) => eprintln!(
                "qemu-direct: reseeded the random pool of '{name}' through its guest agent"
            ),
            Err(e) => eprintln!("qemu-direct: {e}"),
        }
    });
}

/// An instance's plan as launched.
fn read_plan(inst: &InstanceRef) -> anyhow::Result<LaunchPlan> {
    let path = inst.path(instance::PLAN);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("invalid {}", path.display()))
}

/// Where the instance's directory is, and helpers' go.
fn root_of(inst: &InstanceRef) -> std::path::PathBuf {
    inst.dir
        .parent()
        .map_or_else(|| std::path::PathBuf::from("/"), Path::to_owned)
}
