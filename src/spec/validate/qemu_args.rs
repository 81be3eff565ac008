//! `qemu_args` (`--qemu-arg`): extra QEMU options appended after qemu-direct's own, the escape
//! hatch for what the spec cannot say. Options that qemu-direct sets or relies on are refused
//! with the reason, since a second copy would override ours or break the launch (QEMU takes
//! the last `-m`, and a second `-serial` or `-daemonize` takes the console or the process away).

use crate::spec::{error::SpecError, input::SpecInput};

/// Options qemu-direct manages, and why one cannot be added.
const MANAGED: &[(&[&str], &str)] = &[
    (
        &["-qmp", "-qmp-pretty", "-monitor", "-mon"],
        "qemu-direct runs QEMU's monitors itself (two QMP sockets); use `qemu-direct qmp NAME`",
    ),
    (
        &["-serial", "-nographic"],
        "the console is qemu-direct's (the first serial port on stdio, logged and watched)",
    ),
    (
        &["-S"],
        "qemu-direct starts QEMU paused itself and resumes it once QMP is connected",
    ),
    (
        &["-daemonize"],
        "qemu-direct watches QEMU as its child; use `run --detach` to run in the background",
    ),
    (
        &["-incoming"],
        "qemu-direct decides how QEMU starts; an incoming migration is not an extra option",
    ),
    (
        &["-no-shutdown"],
        "a guest that powers off ends the run; QEMU must exit then",
    ),
    (&["-machine", "-M"], "set by the spec: use --machine"),
    (
        &["-accel", "-enable-kvm"],
        "set by the spec: use --accel (and --tb-size)",
    ),
    (
        &["-cpu"],
        "set by the spec: use --cpu-mode, --cpu-model and --cpu-flags",
    ),
    (&["-m"], "set by the spec: use --memory"),
    (&["-smp"], "set by the spec: use --smp"),
    (
        &["-kernel", "-initrd", "-append"],
        "set by the spec: use --kernel, --initrd and --append",
    ),
    (&["-bios"], "set by the spec: use --firmware"),
    (&["-name"], "set by the spec: use --name"),
];

/// The chardev ids qemu-direct's own console and monitors use.
const OWN_CHARDEVS: [&str; 3] = ["con0", "qd-qmp", "qd-qmp-supervisor"];

impl SpecInput {
    /// The extra QEMU options, each refused where it clashes with a managed one.
    pub(super) fn qemu_args(&self) -> Result<Vec<String>, SpecError> {
        let args = self.qemu_args.clone().unwrap_or_default();
        let refuse = |arg: &str, why: &str| SpecError::Invalid {
            field: "qemu_args".into(),
            value: arg.to_owned(),
            expected: why.to_owned(),
        };
        for (i, arg) in args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(refuse(arg, "an argument cannot hold a NUL byte"));
            }
            // QEMU takes `--opt` as `-opt`.
            let name = arg.strip_prefix('-').map(|a| a.trim_start_matches('-'));
            let Some(name) = name.map(|n| format!("-{n}")) else {
                continue;
            };
            if let Some((_, why)) = MANAGED.iter().find(|(names, _)| names.contains(&&*name)) {
                return Err(refuse(arg, why));
            }
            if name == "-chardev"
                && let Some(value) = args.get(i + 1)
                && let Some(id) = own_chardev(value)
            {
                return Err(refuse(
                    value,
                    &format!("chardev id '{id}' is qemu-direct's own; choose another id"),
                ));
            }
        }
        Ok(args)
    }
}

/// The id of one of qemu-direct's chardevs that a `-chardev` value claims, if any.
fn own_chardev(value: &str) -> Option<&'static str> {
    value
        .split(',')
        .filter_map(|kv| kv.strip_prefix("id="))
        .find_map(|id| OWN_CHARDEVS.into_iter().find(|own| *own == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<Vec<String>, String> {
        SpecInput {
            qemu_args: Some(args.iter().map(|a| a.to_string()).collect()),
            ..Default::default()
        }
        .qemu_args()
        .map_err(|e| e.to_string())
    }

    #[test]
    fn extra_options_pass() {
        let ok = [
            "-device",
            "virtio-rng-pci",
            "-L",
            "/opt/qemu/share",
            "-vnc",
            ":1",
        ];
        assert_eq!(check(&ok).unwrap(), ok);
        assert_eq!(
            check(&["-chardev", "socket,id=mine,path=/tmp/s,server=on"]).unwrap()[0],
            "-chardev"
        );
        assert!(check(&[]).unwrap().is_empty());
    }

    #[test]
    fn managed_options_are_refused_with_the_reason() {
        assert_eq!(
            check(&["-qmp", "unix:/tmp/q,server=on"]).unwrap_err(),
            "invalid qemu_args '-qmp': qemu-direct runs QEMU's monitors itself (two QMP \
             sockets); use `qemu-direct qmp NAME`"
        );
        // `--opt` is QEMU's `-opt`.
        assert!(
            check(&["--daemonize"])
                .unwrap_err()
                .contains("run --detach")
        );
        assert!(check(&["-m", "2G"]).unwrap_err().contains("use --memory"));
        assert!(check(&["-S"]).unwrap_err().contains("paused"));
        assert!(check(&["-incoming", "defer"]).is_err());
        assert_eq!(
            check(&["-chardev", "socket,id=qd-qmp,path=/tmp/x"]).unwrap_err(),
            "invalid qemu_args 'socket,id=qd-qmp,path=/tmp/x': chardev id 'qd-qmp' is \
             qemu-direct's own; choose another id"
        );
    }
}
