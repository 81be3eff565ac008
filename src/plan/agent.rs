//! The guest agent's channel: a virtio-serial port named [`AgentPlan::PORT_NAME`] whose
//! chardev is a Unix socket in the instance directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::util::pathser;

use super::context::Context;

/// The guest agent's channel: a virtio-serial controller, and on it a port that `qemu-ga` in
/// the guest finds by its name, whose other end is a Unix socket on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPlan {
    /// The socket: in a plan, its file name in the instance directory ([`AgentPlan::SOCKET`]);
    /// once launched, its path there. The launcher binds it and hands QEMU the listening
    /// descriptor.
    #[serde(with = "pathser")]
    pub socket: PathBuf,
    /// The virtio-serial controller (`virtio-serial-pci`, `virtio-serial-ccw`).
    pub controller: String,
    /// The port device (`virtserialport`).
    pub port: String,
    /// The port's name, which the guest agent looks for ([`AgentPlan::PORT_NAME`]).
    pub name: String,
}

impl AgentPlan {
    /// The socket's file name in the instance directory
    /// ([`instance::AGENT_SOCKET`](crate::instance::AGENT_SOCKET)).
    pub const SOCKET: &'static str = "agent.sock";
    /// The port name `qemu-ga` opens (`/dev/virtio-ports/org.qemu.guest_agent.0`).
    pub const PORT_NAME: &'static str = "org.qemu.guest_agent.0";
    /// QEMU's device for a named port on a virtio-serial bus.
    pub const PORT_DEVICE: &'static str = "virtserialport";
}

/// The agent's channel, unless the spec turns it off or the profile has no virtio-serial
/// controller for this arch (noted).
pub(super) fn agent(cx: &mut Context) -> Option<AgentPlan> {
    if !cx.spec.agent {
        return None;
    }
    let Some(controller) = &cx.profile.devices.virtio_serial else {
        cx.notes.push(format!(
            "no guest agent channel: the {} profile names no virtio-serial controller",
            cx.profile.name
        ));
        return None;
    };
    Some(AgentPlan {
        socket: PathBuf::from(AgentPlan::SOCKET),
        controller: controller.clone(),
        port: AgentPlan::PORT_DEVICE.into(),
        name: AgentPlan::PORT_NAME.into(),
    })
}
