//! The guest's devices: disks, the network, shared folders.

use crate::spec::{
    cloud_init::{self, CloudInit},
    disk::{self, Disk, DiskInput},
    error::SpecError,
    input::SpecInput,
    net::Net,
    share::{self, Share},
};

impl SpecInput {
    /// Every disk, `disk` first and then `disks`, each checked, and no written image twice.
    pub(super) fn disks(&self) -> Result<Vec<Disk>, SpecError> {
        let persist_all = self.disk_writable.unwrap_or(false);
        let disks = self
            .disk
            .iter()
            .map(|d| disk::validate("disk", &DiskInput::plain(d), persist_all))
            .chain(
                self.disks
                    .iter()
                    .flatten()
                    .map(|d| disk::validate("disks", d, persist_all)),
            )
            .collect::<Result<Vec<_>, _>>()?;
        disk::check_distinct(&disks)?;
        Ok(disks)
    }

    /// The network; none unless asked for.
    pub(super) fn net(&self) -> Result<Net, SpecError> {
        Ok(self
            .net
            .as_deref()
            .map(|n| Net::parse("net", n))
            .transpose()?
            .unwrap_or_default())
    }
}

impl SpecInput {
    /// cloud-init's seed, if asked for; `--ssh` looks in `$HOME/.ssh`.
    pub(super) fn cloud_init(&self) -> Result<Option<CloudInit>, SpecError> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        self.cloud_init
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|c| cloud_init::validate(c, home.as_deref()))
            .transpose()
    }

    /// Every shared folder, checked, and no tag twice.
    pub(super) fn shares(&self) -> Result<Vec<Share>, SpecError> {
        let shares = self
            .shares
            .iter()
            .flatten()
            .map(|s| share::validate("share", s))
            .collect::<Result<Vec<_>, _>>()?;
        share::check_distinct(&shares)?;
        Ok(shares)
    }
}
