//! The guest agent's channel, shared folders and the shared memory virtiofs needs, as domain XML.

use super::{Node, xml_path, xml_text};
use crate::{
    libvirt::LibvirtError,
    plan::{LaunchPlan, ShareTransport},
};

/// `<memoryBacking>` with shared memfd memory, where the plan has it (for virtiofs).
pub(super) fn memory_backing(plan: &LaunchPlan) -> Option<Node> {
    let m = plan.memory_backend.as_ref()?;
    let mut n = Node::new("memoryBacking");
    if m.object == "memory-backend-memfd" {
        n.push(Node::new("source").attr("type", "memfd"));
    }
    if m.share {
        n.push(Node::new("access").attr("mode", "shared"));
    }
    Some(n)
}

/// The guest agent's `<channel>`: a Unix socket libvirt listens on, the virtio port named for
/// qemu-ga. Its path once launched (in the instance directory); before, none, and libvirt puts
/// it in its own channel directory. libvirt adds the virtio-serial controller by itself.
pub(super) fn agent(plan: &LaunchPlan, d: &mut Node) -> Result<(), LibvirtError> {
    let Some(a) = &plan.agent else {
        return Ok(());
    };
    let mut source = Node::new("source").attr("mode", "bind");
    if a.socket.is_absolute() {
        source = source.attr("path", xml_path("agent socket", &a.socket)?);
    }
    d.push(
        Node::new("channel")
            .attr("type", "unix")
            .child(source)
            .child(
                Node::new("target")
                    .attr("type", "virtio")
                    .attr("name", a.name.clone()),
            ),
    );
    Ok(())
}

/// One `<filesystem>` per share: `driver type='path'` (9p, QEMU's `-fsdev local`; `squash` is
/// libvirt's name for `security_model=none`) or `type='virtiofs'` with the daemon's binary.
pub(super) fn shares(
    plan: &LaunchPlan,
    d: &mut Node,
    un: &mut Vec<String>,
) -> Result<(), LibvirtError> {
    for s in &plan.shares {
        let (driver, access) = match &s.transport {
            ShareTransport::NineP { .. } => ("path", "squash"),
            ShareTransport::Virtiofs { .. } => ("virtiofs", "passthrough"),
        };
        let mut n = Node::new("filesystem")
            .attr("type", "mount")
            .attr("accessmode", access)
            .child(Node::new("driver").attr("type", driver));
        if let ShareTransport::Virtiofs { daemon, .. } = &s.transport {
            n.push(Node::new("binary").attr("path", xml_path("virtiofsd", &daemon.path)?));
        }
        n.push(Node::new("source").attr("dir", xml_path("share", &s.path)?));
        n.push(Node::new("target").attr("dir", xml_text("share tag", &s.tag)?));
        match (&s.transport, s.readonly) {
            (ShareTransport::NineP { .. }, true) => n.push(Node::new("readonly")),
            (ShareTransport::Virtiofs { .. }, true) => un.push(format!(
                "read-only virtiofs share {} (tag {}): libvirt 9.0 has no read-only virtiofs; \
                 the domain shares it writable",
                s.path.display(),
                s.tag
            )),
            _ => {}
        }
        d.push(n);
    }
    Ok(())
}
