//! The QEMU command line for a [`LaunchPlan`], built by one small function per option group.
//!
//! Paths stay `OsString` from end to end. A value that goes inside a QEMU option list
//! (`-drive file=...`, `-name ...`) has every `,` doubled, QEMU's escape, so a path like
//! `/tmp/a,file=/etc/shadow` is one literal path and cannot add options. Options that take their
//! argument whole (`-kernel`, `-initrd`, `-append`, `-bios`) get it unescaped.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
};

use crate::{
    plan::{ConsolePlan, LaunchPlan},
    spec::DiskFormat,
    util::qemu_opt::escape,
};

mod channels;
pub mod firmware;

pub use channels::{AGENT_CHARDEV, AGENT_SERIAL, virtiofsd};

/// The chardev id of the guest console.
pub const CONSOLE_CHARDEV: &str = "con0";

/// Listening descriptors a launch hands QEMU in place of socket paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fds {
    /// The guest agent's socket.
    pub agent: Option<i32>,
}

/// The whole command line, binary first, with sockets named by their paths (for `--dry-run`
/// and anyone starting QEMU by hand).
pub fn build(plan: &LaunchPlan) -> Vec<OsString> {
    build_with(plan, Fds::default())
}

/// [`build`], with the sockets in `fds` given as the launcher's listening descriptors.
pub fn build_with(plan: &LaunchPlan, fds: Fds) -> Vec<OsString> {
    let mut argv = vec![plan.binary.clone().into_os_string()];
    for group in [
        common(),
        data_dirs(plan),
        name(plan),
        machine(plan),
        cpu(plan),
        resources(plan),
        channels::memory_backend(plan),
        console(plan),
        boot(plan),
        disks(plan),
        nics(plan),
        channels::agent(plan, fds.agent),
        channels::shares(plan),
        panic_device(plan),
    ] {
        argv.extend(group);
    }
    // The user's own, last: checked against what the groups above set (spec::validate).
    argv.extend(plan.qemu_args.iter().map(OsString::from));
    argv
}

fn os(s: impl Into<String>) -> OsString {
    OsString::from(s.into())
}

/// `key=value` pairs after a head, with the head as is: `q35,gic-version=max`.
fn list(head: &str, options: &[String]) -> OsString {
    let mut s = head.to_owned();
    for o in options {
        s.push(',');
        s.push_str(o);
    }
    os(s)
}

fn common() -> Vec<OsString> {
    // No default devices, no config files from /etc, no window; a guest reboot ends QEMU so a
    // panicking guest (panic=-1) cannot loop.
    [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .map(os)
    .to_vec()
}

fn data_dirs(plan: &LaunchPlan) -> Vec<OsString> {
    // -L takes its folder whole (no option list), so the path goes as it is.
    plan.data_dirs
        .iter()
        .flat_map(|d| [os("-L"), d.clone().into_os_string()])
        .collect()
}

fn name(plan: &LaunchPlan) -> Vec<OsString> {
    let mut v = OsString::from("guest=");
    v.push(escape(OsStr::new(&plan.name)));
    vec![os("-name"), v]
}

fn machine(plan: &LaunchPlan) -> Vec<OsString> {
    let mut options = plan.machine.options.clone();
    if let Some(m) = &plan.memory_backend {
        options.push(format!("memory-backend={}", m.id));
    }
    vec![
        os("-machine"),
        list(&plan.machine.kind, &options),
        os("-accel"),
        list(plan.accel.as_str(), &plan.accel_options),
    ]
}

fn cpu(plan: &LaunchPlan) -> Vec<OsString> {
    match &plan.cpu {
        // Model and feature names are checked to hold no commas (cpu::settings, cpu::Flag).
        Some(c) => vec![os("-cpu"), os(c.qemu_value())],
        None => Vec::new(),
    }
}

fn resources(plan: &LaunchPlan) -> Vec<OsString> {
    vec![
        os("-m"),
        os(format!("{}M", plan.memory.mib())),
        os("-smp"),
        os(plan.smp.to_string()),
    ]
}

fn console(plan: &LaunchPlan) -> Vec<OsString> {
    // stdio, not a file: the launcher reads QEMU's stdout, tees it to the user and the log, and
    // watches it for panics and markers. signal=off keeps Ctrl-C for the launcher.
    let mut v = vec![
        os("-chardev"),
        os(format!("stdio,id={CONSOLE_CHARDEV},signal=off")),
    ];
    match &plan.console {
        ConsolePlan::Serial { .. } => {
            v.extend([os("-serial"), os(format!("chardev:{CONSOLE_CHARDEV}"))])
        }
        ConsolePlan::Device { device } => v.extend([
            os("-device"),
            os(format!("{device},chardev={CONSOLE_CHARDEV}")),
        ]),
    }
    v
}

fn boot(plan: &LaunchPlan) -> Vec<OsString> {
    let mut v = Vec::new();
    if let Some(fw) = &plan.firmware {
        v.extend([os("-bios"), fw.clone().into_os_string()]);
    }
    if let Some(fw) = &plan.descriptor_firmware {
        v.extend(firmware::args(fw));
    }
    if let Some(k) = &plan.kernel {
        v.extend([os("-kernel"), k.kernel.clone().into_os_string()]);
        if let Some(i) = &k.initrd {
            v.extend([os("-initrd"), i.clone().into_os_string()]);
        }
        v.extend([os("-append"), os(k.append.clone())]);
    }
    v
}

fn disks(plan: &LaunchPlan) -> Vec<OsString> {
    let mut v = Vec::new();
    for (i, d) in plan.disks.iter().enumerate() {
        let id = format!("disk{i}");
        let mut drive = OsString::from(format!("if=none,id={id},file="));
        let format = match d.disk.format {
            DiskFormat::Dir => "raw",
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        match (&d.overlay, d.disk.format) {
            // The overlay names the image as its backing file, with its format; QEMU opens
            // that read-only.
            (Some(overlay), _) if d.wants_overlay() => {
                drive.push(escape(overlay.as_os_str()));
                drive.push(",format=qcow2");
            }
            (_, DiskFormat::Dir) => {
                drive.push("fat:");
                drive.push(escape(d.disk.path.as_os_str()));
                drive.push(",format=raw,readonly=on");
            }
            _ => {
                drive.push(escape(d.disk.path.as_os_str()));
                let snapshot = if d.disk.writable { "off" } else { "on" };
                drive.push(format!(",format={format},snapshot={snapshot}"));
            }
        }
        v.extend([
            os("-drive"),
            drive,
            os("-device"),
            os(format!("{},drive={id}", d.device)),
        ]);
    }
    if let Some(seed) = &plan.seed {
        let mut drive = OsString::from("if=none,id=cidata,file=");
        drive.push(escape(seed.path.as_os_str()));
        drive.push(",format=raw,readonly=on");
        v.extend([
            os("-drive"),
            drive,
            os("-device"),
            os(format!("{},drive=cidata", seed.device)),
        ]);
    }
    v
}

fn nics(plan: &LaunchPlan) -> Vec<OsString> {
    let mut v = Vec::new();
    for (i, n) in plan.nics.iter().enumerate() {
        let id = format!("net{i}");
        // Rules are checked (net::HostFwd): numbers, IPv4 addresses, tcp or udp; no commas.
        let mut netdev = format!("user,id={id}");
        for fwd in &n.user.hostfwd {
            netdev.push_str(&format!(",hostfwd={fwd}"));
        }
        v.extend([
            os("-netdev"),
            os(netdev),
            os("-device"),
            os(format!("{},netdev={id}", n.device)),
        ]);
    }
    v
}

fn panic_device(plan: &LaunchPlan) -> Vec<OsString> {
    match &plan.panic_device {
        Some(d) => vec![os("-device"), os(d.clone())],
        None => Vec::new(),
    }
}

/// The environment QEMU needs beside its command line: `QEMU_MODULE_DIR` for a prefix's
/// modules.
pub fn env(plan: &LaunchPlan) -> Vec<(OsString, OsString)> {
    plan.module_dir
        .iter()
        .map(|d| (os("QEMU_MODULE_DIR"), d.clone().into_os_string()))
        .collect()
}

/// The command line with its environment, as a shell would take it (`VAR=value qemu ...`).
pub fn shell_line_with_env(plan: &LaunchPlan, argv: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in env(plan) {
        // The name unquoted (a quoted `'A=b'` is a command, not an assignment); it is ours.
        out.extend(k.as_bytes());
        out.push(b'=');
        out.extend(shell_line(&[v]));
        out.push(b' ');
    }
    out.extend(shell_line(argv));
    out
}

/// The chardev ids of the two QMP monitors.
pub const QMP_CHARDEVS: [&str; 2] = ["qd-qmp-supervisor", "qd-qmp"];

/// What a launch adds to [`build`]'s command line: `-S` (CPUs start stopped, so the launcher
/// can subscribe to events before the guest runs) and two QMP monitors on listening sockets the
/// launcher bound and passes down as descriptors, the supervisor's and the clients' (QEMU 7.2
/// serves one client per monitor).
pub fn monitors(supervisor_fd: i32, client_fd: i32) -> Vec<OsString> {
    let mut v = vec![os("-S")];
    for (id, fd) in QMP_CHARDEVS.iter().zip([supervisor_fd, client_fd]) {
        v.extend([
            os("-chardev"),
            os(format!("socket,id={id},fd={fd},server=on,wait=off")),
            os("-mon"),
            os(format!("chardev={id},mode=control")),
        ]);
    }
    v
}

/// The command line as one shell-quoted line, for `--dry-run` and `--verbose`. Bytes, because
/// a path need not be UTF-8.
pub fn shell_line(argv: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match shlex::bytes::try_quote(a.as_bytes()) {
            Ok(q) => out.extend_from_slice(&q),
            // Only a NUL byte makes quoting fail, and no OS argument can hold one.
            Err(_) => out.extend_from_slice(&a.as_bytes().escape_ascii().collect::<Vec<u8>>()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_doubles_commas_only() {
        assert_eq!(
            escape(OsStr::new("/tmp/a,file=/etc/shadow")),
            "/tmp/a,,file=/etc/shadow"
        );
        assert_eq!(escape(OsStr::new("plain")), "plain");
        let raw = OsStr::from_bytes(b"\xff,\xfe");
        assert_eq!(escape(raw).as_bytes(), b"\xff,,\xfe");
    }

    #[test]
    fn a_memory_file_is_the_machines_memory_backend() {
        let mut plan: LaunchPlan = serde_json::from_value(serde_json::json!({
            "name": "vm", "arch": "aarch64", "binary": "qemu-system-aarch64",
            "accel": "tcg", "accel_reason": "", "machine": {"type": "virt", "options": ["gic-version=max"]},
            "cpu": null, "memory": "512M", "smp": 1, "kernel": null, "disks": [],
            "console": {"via": "serial", "kernel_name": "ttyAMA0"}, "notes": []
        }))
        .unwrap();
        let without = build(&plan);
        plan.memory_backend = Some(crate::plan::MemoryBackend::file(
            "mach-virt.ram",
            "/snap/a,b/memory",
            false,
        ));
        let with = build(&plan);
        let line = String::from_utf8(shell_line(&with)).unwrap();
        assert!(
            line.contains("-machine 'virt,gic-version=max,memory-backend=mach-virt.ram'"),
            "{line}"
        );
        assert!(
            line.contains(
                "-m 512M -smp 1 -object 'memory-backend-file,id=mach-virt.ram,size=512M,mem-path=/snap/a,,b/memory,share=off'"
            ),
            "{line}"
        );
        assert_eq!(with.len(), without.len() + 2);
    }

    #[test]
    fn shell_line_quotes_what_needs_it() {
        let argv = [
            os("qemu"),
            os("-append"),
            os("console=ttyS0 panic=-1"),
            os("it's"),
        ];
        assert_eq!(
            String::from_utf8(shell_line(&argv)).unwrap(),
            r#"qemu -append 'console=ttyS0 panic=-1' "it's""#
        );
    }
}
