//! Reseeding a clone's random number generator through its guest agent: every restore of one
//! snapshot starts with the same kernel random pool, so their "random" numbers are the same
//! until something new is mixed in.
//!
//! [`Vm::reseed`] writes bytes from the host's generator into the guest's `/dev/urandom`,
//! which mixes them into the kernel's input pool (without crediting entropy). The kernel's
//! generator takes them in at its next reseed: within seconds of a boot, within a minute
//! later. (A `vmgenid` device would make the kernel reseed at once on restore; the plans have
//! none yet.) What cannot be reseeded from outside stays shared: user-space generators already
//! seeded, `/etc/machine-id`, the hostname.

use std::{io::Read, path::Path, time::Duration};

use super::SnapshotError;
use crate::{agent::Agent, vm::Vm};

/// How many bytes of the host's randomness go in.
pub const RESEED_BYTES: usize = 512;

impl Vm {
    /// Mixes [`RESEED_BYTES`] of the host's randomness into the guest's random pool through its
    /// guest agent (the `Vm`'s own connection, [`Vm::agent_within`]), waiting up to `wait` for
    /// the agent to answer. Fails when the plan has no agent channel, or the agent does not
    /// answer (qemu-ga not in the guest).
    pub async fn reseed(&self, wait: Duration) -> Result<(), SnapshotError> {
        let agent = self
            .agent_within(wait)
            .await
            .map_err(|e| SnapshotError::Reseed {
                name: self.name().to_owned(),
                why: e.to_string(),
            })?;
        reseed_through(agent).await
    }
}

/// [`Vm::reseed`] for the instance `name` whose guest agent listens on `agent_socket`.
pub async fn reseed(name: &str, agent_socket: &Path, wait: Duration) -> Result<(), SnapshotError> {
    let agent = Agent::connect(agent_socket, wait)
        .await
        .map_err(|e| SnapshotError::Reseed {
            name: name.to_owned(),
            why: e.to_string(),
        })?;
    reseed_through(&agent).await
}

/// [`Vm::reseed`] through an agent already connected (its socket serves one client at a
/// time).
pub async fn reseed_through(agent: &Agent) -> Result<(), SnapshotError> {
    let mut seed = [0u8; RESEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(SnapshotError::io("cannot read", "/dev/urandom".as_ref()))?;
    agent
        .write_file("/dev/urandom", &seed, None)
        .await
        .map_err(|e| SnapshotError::Reseed {
            name: agent.path().display().to_string(),
            why: e.to_string(),
        })
}
