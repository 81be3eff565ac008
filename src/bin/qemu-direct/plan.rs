//! `plan` and `export`: the plan resolved for a guest description, shown or written in
//! another tool's format.

use std::io::Write;

use qemu_direct::{Error, ExitCode, argv, plan::LaunchPlan, profile::ProfileSet};

use crate::{
    cli::{Cli, SpecArgs},
    inputs::{host_facts, make_plan, spec_input},
};

/// How `plan` shows the plan.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// The plan as JSON.
    Json,
    /// Only the QEMU command line, shell-quoted.
    DryRun,
    /// The plan, a line per part, with the reasons.
    Text,
}

impl View {
    /// From `--json` and `--dry-run` (which clap keeps apart).
    pub fn of(json: bool, dry_run: bool) -> View {
        if json {
            View::Json
        } else if dry_run {
            View::DryRun
        } else {
            View::Text
        }
    }
}

/// `plan`.
pub fn show(
    cli: &Cli,
    spec: &SpecArgs,
    profiles: &ProfileSet,
    view: View,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let input = spec_input(spec, profiles)?;
    let plan = make_plan(cli, input, profiles, host_facts(cli, profiles, false)?)?;
    match view {
        View::Json => writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?,
        View::DryRun => {
            out.write_all(&argv::shell_line_with_env(&plan, &argv::build(&plan)))?;
            out.write_all(b"\n")?;
        }
        View::Text => print_plan(out, &plan)?,
    }
    Ok(ExitCode::Success)
}

/// The plan's cloud-init seed, written where the exported domain can name it (replacing the
/// one of an earlier export of the same name).
fn write_seed(plan: &mut qemu_direct::plan::LaunchPlan) -> anyhow::Result<()> {
    let name = plan.name.clone();
    let Some(seed) = plan.seed.as_mut() else {
        return Ok(());
    };
    let dir = qemu_direct::instance::seed_dir()
        .ok_or_else(|| {
            anyhow::anyhow!("no place for the cloud-init seed: set HOME or XDG_STATE_HOME")
        })?
        .join(&name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(qemu_direct::plan::SeedPlan::FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    qemu_direct::spec::cloud_init::write_seed(&seed.data, &name, &path)
        .map_err(|e| anyhow::anyhow!("cannot write the cloud-init seed {}: {e}", path.display()))?;
    eprintln!("qemu-direct: cloud-init seed written to {}", path.display());
    seed.path = path;
    Ok(())
}

/// `export libvirt`: the domain XML on stdout, what it cannot express on stderr (or, with
/// `strict`, as the error).
pub fn export_libvirt(
    cli: &Cli,
    spec: &SpecArgs,
    profiles: &ProfileSet,
    strict: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let input = spec_input(spec, profiles)?;
    let mut plan = make_plan(cli, input, profiles, host_facts(cli, profiles, false)?)?;
    write_seed(&mut plan)?;
    let export = qemu_direct::libvirt::export(&plan, profiles).map_err(Error::from)?;
    if strict && !export.unexpressed.is_empty() {
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

/// The plan, a line per part.
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
    match &plan.agent {
        Some(a) => writeln!(
            out,
            "agent:   {} port {} on {} ({})",
            a.port,
            a.name,
            a.controller,
            a.socket.display()
        )?,
        None => writeln!(out, "agent:   none")?,
    }
    if !plan.qemu_args.is_empty() {
        out.write_all(b"extra:   ")?;
        let extra: Vec<std::ffi::OsString> = plan.qemu_args.iter().map(Into::into).collect();
        out.write_all(&argv::shell_line(&extra))?;
        out.write_all(b"\n")?;
    }
    for note in &plan.notes {
        writeln!(out, "note:    {note}")?;
    }
    out.write_all(b"argv:    ")?;
    out.write_all(&argv::shell_line_with_env(plan, &argv::build(plan)))?;
    out.write_all(b"\n")?;
    Ok(())
}
