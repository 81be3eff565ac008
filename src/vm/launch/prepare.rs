//! Before QEMU starts: the instance directory with what the guest needs in it (overlays, the
//! UEFI variable store, `plan.json`), and the files QEMU's output and events go to.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use crate::{
    host::firmware,
    instance::{self, Instance},
    plan::{LaunchPlan, SeedPlan, ShareTransport},
    spec::cloud_init,
    vm::{VmError, overlay},
};

/// Makes and locks the instance directory and fills it; the plan comes back with the
/// instance's final name and the files made for it. With `adopt`, the plan's overlays and
/// variable store are another instance's, hard-linked in rather than made anew.
pub(in crate::vm) async fn instance(
    mut plan: LaunchPlan,
    runtime_dir: Option<&Path>,
    unique_name: bool,
    adopt: bool,
) -> Result<(LaunchPlan, Instance), VmError> {
    let qemu_img = overlay::qemu_img_for(&plan)?;
    let root = root(runtime_dir)?;
    let inst = Instance::create(&root, &plan.name, unique_name)?;
    plan.name = inst.name().to_owned();
    if adopt {
        // On failure the instance, and so the links made so far, are removed.
        overlay::adopt_all(&mut plan, inst.dir())?;
    } else if let Some(qemu_img) = &qemu_img {
        // On failure the instance, and so the overlays made so far, are removed.
        overlay::create_all(&mut plan, qemu_img, inst.dir()).await?;
    }
    copy_vars(&mut plan, &inst)?;
    write_seed(&mut plan, &inst)?;
    place_sockets(&mut plan, &inst);
    inst.write_json(instance::PLAN, &plan)?;
    Ok((plan, inst))
}

/// Where instance directories go: `runtime_dir` (made private if missing), else
/// [`instance::runtime_root`].
fn root(runtime_dir: Option<&Path>) -> Result<PathBuf, VmError> {
    Ok(match runtime_dir {
        Some(d) => {
            instance::private_dir(d)?;
            d.to_owned()
        }
        None => instance::runtime_root()?,
    })
}

/// The VM's own UEFI variable store, beside everything else of the instance (and gone with
/// it); the descriptor's template is only read.
fn copy_vars(plan: &mut LaunchPlan, inst: &Instance) -> Result<(), VmError> {
    if let Some(fw) = plan.descriptor_firmware.as_mut()
        && let Some(template) = &fw.selected.nvram_template
    {
        fw.vars = Some(firmware::copy_vars(template, inst.dir(), &plan.name)?);
    }
    Ok(())
}

/// cloud-init's seed volume, in the instance directory and gone with it, with an instance id
/// of this instance's own.
fn write_seed(plan: &mut LaunchPlan, inst: &Instance) -> Result<(), VmError> {
    let name = plan.name.clone();
    let Some(seed) = plan.seed.as_mut() else {
        return Ok(());
    };
    let path = inst.dir().join(SeedPlan::FILE);
    cloud_init::write_seed(&seed.data, &name, &path).map_err(|source| VmError::Seed {
        path: path.clone(),
        source,
    })?;
    seed.path = path;
    Ok(())
}

/// The guest agent's and the virtiofsd sockets, named by file in the plan, go in the instance
/// directory.
fn place_sockets(plan: &mut LaunchPlan, inst: &Instance) {
    if let Some(a) = plan.agent.as_mut() {
        a.socket = inst.path(instance::AGENT_SOCKET);
    }
    for s in &mut plan.shares {
        if let ShareTransport::Virtiofs { socket, .. } = &mut s.transport {
            *socket = inst.dir().join(&*socket);
        }
    }
}

/// The files QEMU's output goes to, open before it starts.
pub(in crate::vm) struct Logs {
    /// The instance's `console.log`, written.
    pub(in crate::vm) live: (File, PathBuf),
    /// The same file, read back by the [`crate::vm::Console`].
    pub(in crate::vm) reader: File,
    /// The console log that outlives the instance, if one was asked for.
    pub(in crate::vm) durable: Option<(File, PathBuf)>,
}

impl Logs {
    /// Creates them: the live console log, and the durable one (`console_log`, else
    /// `console_log_dir/NAME.log`, its directory made if missing).
    pub(in crate::vm) fn create(
        inst: &Instance,
        name: &str,
        console_log: Option<PathBuf>,
        console_log_dir: Option<&Path>,
    ) -> Result<Logs, VmError> {
        let live_path = inst.path(instance::CONSOLE);
        let live = File::create(&live_path).map_err(log_err(&live_path))?;
        let reader = File::open(&live_path).map_err(log_err(&live_path))?;
        let durable_path =
            console_log.or_else(|| console_log_dir.map(|d| d.join(format!("{name}.log"))));
        let durable = durable_path.map(durable).transpose()?;
        Ok(Logs {
            live: (live, live_path),
            reader,
            durable,
        })
    }

    /// Where the durable console log is, if there is one.
    pub(in crate::vm) fn durable_path(&self) -> Option<PathBuf> {
        self.durable.as_ref().map(|d| d.1.clone())
    }
}

/// Creates the instance's `events.jsonl`, where the QMP events go.
pub(in crate::vm) fn events(inst: &Instance) -> Result<File, VmError> {
    let path = inst.path(instance::EVENTS);
    File::create(&path).map_err(log_err(&path))
}

/// Creates the durable console log at `path`, and its directory if missing.
fn durable(path: PathBuf) -> Result<(File, PathBuf), VmError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(log_err(&path))?;
    }
    Ok((File::create(&path).map_err(log_err(&path))?, path))
}

/// The error for a console or event log that cannot be made.
fn log_err(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + use<> {
    let path = path.to_owned();
    move |source| VmError::Log { path, source }
}
