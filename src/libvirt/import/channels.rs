//! The guest agent's `<channel>`, shared folders (`<filesystem>`), and the shared memory
//! (`<memoryBacking>`) virtiofs needs.

use super::{Cx, Element};
use crate::spec::{ShareFs, share::ShareInput};

/// The name of the guest agent's port.
const AGENT_PORT: &str = crate::plan::AgentPlan::PORT_NAME;

/// `<channel type='unix'>` to the guest agent's port: the agent channel qemu-direct adds by
/// itself (its socket in the instance directory). Any other channel is refused; a second agent
/// channel too.
pub(super) fn channel(e: &Element, cx: &mut Cx) {
    let target = e.child("target");
    let is_agent = target
        .is_some_and(|t| t.attr("type") == Some("virtio") && t.attr("name") == Some(AGENT_PORT));
    if !is_agent {
        return cx.bad(
            e,
            &format!(
                "a channel other than the guest agent's (virtio, name '{AGENT_PORT}'): \
                 qemu-direct adds no such channel"
            ),
        );
    }
    if cx.spec.agent == Some(true) {
        return cx.bad(e, "a second guest agent channel");
    }
    e.take();
    if e.attr("type") != Some("unix") {
        cx.bad_attr(
            e,
            "type",
            "the guest agent's channel is a Unix socket (type='unix') to qemu-direct",
        );
    }
    if let Some(t) = target {
        t.take_all();
    }
    if let Some(s) = e.child("source") {
        if s.attr("mode").is_some_and(|m| m != "bind") {
            cx.bad_attr(
                s,
                "mode",
                "qemu-direct listens on the agent's socket (mode='bind')",
            );
        }
        cx.accept(
            s,
            "qemu-direct puts the guest agent's socket in the instance directory (agent.sock)",
        );
    }
    cx.accept_children(e, &["address", "alias"], "QEMU places the devices itself");
    cx.spec.agent = Some(true);
}

/// `<filesystem type='mount'>`: a host folder over 9p (`driver type='path'`, libvirt's default)
/// or virtiofs.
pub(super) fn filesystem(e: &Element, cx: &mut Cx) {
    e.take();
    if let Some(kind) = e.attr("type").filter(|k| *k != "mount") {
        return cx.bad_attr(
            e,
            "type",
            &format!("filesystem type '{kind}': qemu-direct shares host folders (type='mount')"),
        );
    }
    let fs = match e.child("driver").map(|d| (d, d.attr("type"))) {
        None | Some((_, None | Some("path"))) => ShareFs::NineP,
        Some((_, Some("virtiofs"))) => ShareFs::Virtiofs,
        Some((d, Some(other))) => {
            return cx.bad_attr(
                d,
                "type",
                &format!(
                    "filesystem driver '{other}': qemu-direct shares over 9p (type='path') or \
                     virtiofs"
                ),
            );
        }
    };
    if let Some(d) = e.child("driver") {
        d.take_all();
    }
    access_mode(e, fs, cx);
    let Some(path) = e.child("source").and_then(|s| {
        s.take_all();
        s.attr("dir").map(|d| cx.path(d))
    }) else {
        return cx.missing(e, "a filesystem needs <source dir='...'>");
    };
    let Some(tag) = e.child("target").and_then(|t| {
        t.take_all();
        t.attr("dir").map(str::to_owned)
    }) else {
        return cx.missing(e, "a filesystem needs <target dir='TAG'>");
    };
    if let Some(b) = e.child("binary") {
        cx.accept(b, "qemu-direct runs the virtiofsd it finds itself");
    }
    let readonly = e.child("readonly").inspect(|r| r.take_all()).is_some();
    cx.accept_children(e, &["address", "alias"], "QEMU places the devices itself");
    cx.spec
        .shares
        .get_or_insert_with(Vec::new)
        .push(ShareInput {
            path,
            tag: Some(tag),
            readonly,
            fs: Some(fs),
        });
}

/// `accessmode`: qemu-direct serves 9p with `security_model=none` (libvirt's `squash`;
/// `passthrough` differs only for privileged operations, which it then ignores), and virtiofs
/// as `passthrough` (virtiofsd's only mode).
fn access_mode(e: &Element, fs: ShareFs, cx: &mut Cx) {
    match (e.attr("accessmode"), fs) {
        (None | Some("passthrough"), _) | (Some("squash"), ShareFs::NineP) => {}
        (Some(mode), _) => cx.bad_attr(
            e,
            "accessmode",
            &format!(
                "access mode '{mode}': qemu-direct serves 9p as squash (security_model=none) \
                 and virtiofs as passthrough"
            ),
        ),
    }
}

/// `<memoryBacking>`: shared memfd memory, which qemu-direct gives a guest with a virtiofs
/// share by itself; anything else (huge pages, locking) it does not do.
pub(super) fn memory_backing(d: &Element, cx: &mut Cx) {
    let Some(m) = d.child("memoryBacking") else {
        return;
    };
    m.take();
    for c in m.children() {
        match (c.name.as_str(), c.attr("type").or(c.attr("mode"))) {
            ("source", Some("memfd")) | ("access", Some("shared")) => cx.accept(
                c,
                "qemu-direct gives a guest with a virtiofs share shared memfd memory by itself",
            ),
            (other, _) => cx.bad(
                c,
                &format!("<memoryBacking><{other}>: qemu-direct backs guest memory as QEMU does"),
            ),
        }
    }
}
