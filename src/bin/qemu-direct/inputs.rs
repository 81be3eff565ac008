//! What the commands start from: the machine profiles, host facts (probed, or from
//! --host-facts), the config files, the guest description (--spec or --libvirt-xml with the
//! flags over it), and the plan resolved from them.

use qemu_direct::{
    Error,
    host::caps::CapsCache,
    host::firmware::Descriptors,
    host::prefix::QemuPrefix,
    host::{HostFacts, ProbeOptions},
    plan::{self, LaunchPlan},
    profile::ProfileSet,
    spec::SpecInput,
    spec::cloud_init::CloudInitInput,
    spec::config::Config,
    spec::disk::DiskInput,
    spec::share::ShareInput,
};

use crate::{
    Usage,
    cli::{Cli, SpecArgs},
    support::block_on,
};

/// The machine profiles: --profile-dir's, else the built-in ones.
pub fn profiles(cli: &Cli) -> anyhow::Result<ProfileSet> {
    Ok(match &cli.profile_dir {
        Some(dir) => ProfileSet::from_dir(dir),
        None => ProfileSet::embedded(),
    }
    .map_err(Error::from)?)
}

/// The host-wide defaults: --config's file, else the standard ones.
pub fn load_config(cli: &Cli, profiles: &ProfileSet) -> Result<Config, Error> {
    Ok(match &cli.config {
        Some(path) => Config::load_file(path, profiles)?,
        None => Config::load_standard(profiles)?,
    })
}

/// This host's facts, or those --host-facts recorded. `virtiofsd`: look for it now, for the
/// commands that show the host; a plan looks for it itself when a share needs it.
pub fn host_facts(cli: &Cli, profiles: &ProfileSet, virtiofsd: bool) -> anyhow::Result<HostFacts> {
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
        None => {
            let mut facts = HostFacts::probe(
                profiles,
                &ProbeOptions {
                    kvm_device: cli.kvm_device.clone(),
                    versions: false,
                    virtiofsd,
                },
            );
            if let Some(dir) = &cli.qemu_prefix {
                facts.use_prefix(dir, profiles).map_err(Error::from)?;
            }
            Ok(facts)
        }
    }
}

/// The QEMU prefix of --qemu-prefix, opened, for the commands that need no host facts.
pub fn qemu_prefix(cli: &Cli) -> anyhow::Result<Option<QemuPrefix>> {
    Ok(match &cli.qemu_prefix {
        Some(dir) => Some(QemuPrefix::open(dir, None).map_err(Error::from)?),
        None => None,
    })
}

/// The guest description from --spec or --libvirt-xml, with the flags over it. Notes from a
/// libvirt domain (what it says that qemu-direct does not act on) go to stderr.
pub fn spec_input(args: &SpecArgs, profiles: &ProfileSet) -> Result<SpecInput, Error> {
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
        agent: args.no_agent.then_some(false),
        shares: (!args.share.is_empty())
            .then(|| args.share.iter().map(|s| ShareInput::parse(s)).collect())
            .transpose()?,
        firmware: args.firmware.clone(),
        secure_boot: args.secure_boot.then_some(true),
        tb_size: args.tb_size,
        nested_virt: args.nested_virt.then_some(true),
        emulator: args.emulator.clone(),
        cpu_mode: args.cpu_mode.clone(),
        cpu_models: (!args.cpu_model.is_empty()).then(|| args.cpu_model.clone()),
        cpu_model_extra_flags: (!args.cpu_flags.is_empty()).then(|| args.cpu_flags.clone()),
        cpu_check: args.cpu_check.clone(),
        maxphysaddr: args.maxphysaddr.clone(),
        qemu_args: (!args.qemu_args.is_empty()).then(|| args.qemu_args.clone()),
        cloud_init: cloud_init(args)?,
        properties: Default::default(),
    };
    for p in &args.properties {
        flags.add_property(p)?;
    }
    Ok(base.overlay(flags))
}

/// `--cloud-init`, `--ssh-key` and `--ssh` as a `[cloud_init]` table.
fn cloud_init(args: &SpecArgs) -> Result<Option<CloudInitInput>, Error> {
    let mut ci = match &args.cloud_init {
        Some(arg) => CloudInitInput::parse(arg)?,
        None => CloudInitInput::default(),
    };
    ci.ssh_key = args.ssh_key.clone();
    ci.ssh = args.ssh;
    Ok((!ci.is_empty()).then_some(ci))
}

/// The plan for `input` on `host`, probing emulators (through the cache) unless the host
/// facts come from a file.
pub fn make_plan(
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
    // After the plan: a guest that cannot run here is told so first.
    spec.check_boot_source().map_err(Error::from)?;
    Ok(plan)
}
