//! `ssh NAME [-- CMD...]`: the system `ssh` into an instance started with `--ssh`/`--ssh-key`,
//! once its SSH server answers.

use std::{ffi::OsString, os::unix::process::CommandExt, time::Duration};

use clap::Args;
use clap_complete::ArgValueCompleter;
use qemu_direct::{
    Error, instance,
    vm::{SshError, SshTarget},
};

use crate::{cli::parse_duration, shell::instance_names, support::runtime};

/// Options of `ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// Instance name.
    #[arg(add = ArgValueCompleter::new(instance_names))]
    pub name: String,
    /// How long to wait for the guest's SSH server to answer (a cloud image runs cloud-init
    /// first; aarch64 under TCG takes minutes).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// The command to run in the guest (then ssh never prompts: BatchMode); none: a shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Waits for the SSH server, then becomes `ssh`: its exit status is ours.
pub fn ssh(args: &SshArgs) -> anyhow::Result<u8> {
    let root = instance::runtime_root().map_err(Error::from)?;
    let inst = instance::find(&root, &args.name).map_err(Error::from)?;
    let target = SshTarget::of_instance(&inst).map_err(Error::from)?;
    runtime()?
        .block_on(target.wait_instance(&inst, args.timeout))
        .map_err(Error::from)?;
    if target.identity.is_none() {
        eprintln!(
            "qemu-direct: no private key beside the instance's --ssh-key .pub; ssh picks its \
             own (agent, ~/.ssh/id_*)"
        );
    }
    let e = std::process::Command::new("ssh")
        .args(target.args(&args.command))
        .exec();
    Err(Error::from(SshError::Spawn(e)).into())
}
