//! The guest agent's channel and shared folders on the command line: the devices that link the
//! guest to sockets and folders of the host.

use std::{
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use crate::{
    plan::{AgentPlan, LaunchPlan, ShareTransport},
    util::qemu_opt::escape,
};

use super::os;

/// The chardev id of the guest agent's socket.
pub const AGENT_CHARDEV: &str = "qd-agent";
/// The id of the virtio-serial controller the agent's port sits on.
pub const AGENT_SERIAL: &str = "qd-vser0";

/// `-chardev socket` (listening: on the launcher's descriptor `fd` when given, else on the
/// plan's path), the virtio-serial controller, and the named port on it.
pub(super) fn agent(plan: &LaunchPlan, fd: Option<i32>) -> Vec<OsString> {
    let Some(a) = &plan.agent else {
        return Vec::new();
    };
    vec![
        os("-chardev"),
        listening_socket(a, fd),
        os("-device"),
        os(format!("{},id={AGENT_SERIAL}", a.controller)),
        os("-device"),
        os(format!(
            "{},bus={AGENT_SERIAL}.0,chardev={AGENT_CHARDEV},name={}",
            a.port, a.name
        )),
    ]
}

fn listening_socket(a: &AgentPlan, fd: Option<i32>) -> OsString {
    let mut v = OsString::from(format!("socket,id={AGENT_CHARDEV},"));
    match fd {
        Some(fd) => v.push(format!("fd={fd}")),
        None => {
            v.push("path=");
            v.push(escape(a.socket.as_os_str()));
        }
    }
    v.push(",server=on,wait=off");
    v
}

/// Each share: 9p's `-fsdev local` and device, or virtiofs's chardev (a client of its
/// `virtiofsd`'s socket) and device.
pub(super) fn shares(plan: &LaunchPlan) -> Vec<OsString> {
    let mut v = Vec::new();
    for (i, s) in plan.shares.iter().enumerate() {
        // Tags are checked to hold only letters, digits, '-', '_' and '.'.
        match &s.transport {
            ShareTransport::NineP { device } => {
                let id = format!("qd-fs{i}");
                let mut fsdev = OsString::from(format!("local,id={id},path="));
                fsdev.push(escape(s.path.as_os_str()));
                fsdev.push(",security_model=none");
                if s.readonly {
                    fsdev.push(",readonly=on");
                }
                v.extend([
                    os("-fsdev"),
                    fsdev,
                    os("-device"),
                    os(format!("{device},fsdev={id},mount_tag={}", s.tag)),
                ]);
            }
            ShareTransport::Virtiofs { device, socket, .. } => {
                let id = format!("qd-vfs{i}");
                let mut chardev = OsString::from(format!("socket,id={id},path="));
                chardev.push(escape(socket.as_os_str()));
                v.extend([
                    os("-chardev"),
                    chardev,
                    os("-device"),
                    os(format!("{device},chardev={id},tag={}", s.tag)),
                ]);
            }
        }
    }
    v
}

/// The memory backend object, sized as the guest's RAM.
pub(super) fn memory_backend(plan: &LaunchPlan) -> Vec<OsString> {
    match &plan.memory_backend {
        Some(m) => vec![
            os("-object"),
            os(format!(
                "{},id={},size={}M,share={}",
                m.object,
                m.id,
                plan.memory.mib(),
                if m.share { "on" } else { "off" }
            )),
        ],
        None => Vec::new(),
    }
}

/// The `virtiofsd` command line for the `index`th share, serving its folder on the listening
/// socket the launcher passes as descriptor `fd`. `None` for a share over 9p.
pub fn virtiofsd(plan: &LaunchPlan, index: usize, fd: i32) -> Option<Vec<OsString>> {
    use crate::host::virtiofsd::VirtiofsdKind;
    let share = plan.shares.get(index)?;
    let ShareTransport::Virtiofs { daemon, .. } = &share.transport else {
        return None;
    };
    let mut v = vec![
        daemon.path.clone().into_os_string(),
        os(format!("--fd={fd}")),
    ];
    match daemon.kind {
        VirtiofsdKind::C => {
            // -o takes a comma-separated list, parsed by libfuse's option parser: there a
            // backslash makes the next byte literal.
            let mut source = b"source=".to_vec();
            for &b in share.path.as_os_str().as_bytes() {
                if matches!(b, b',' | b'\\') {
                    source.push(b'\\');
                }
                source.push(b);
            }
            let source = OsString::from_vec(source);
            v.extend([os("-o"), source]);
        }
        VirtiofsdKind::Rust => {
            v.extend([os("--shared-dir"), share.path.clone().into_os_string()]);
            if share.readonly {
                v.push(os("--readonly"));
            }
            if daemon.sandbox_none {
                v.extend([os("--sandbox"), os("none")]);
            }
        }
    }
    Some(v)
}
