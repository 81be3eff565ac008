//! Pure tests: made-up hosts and descriptor files, no QEMU.

use super::kernel::kernel_command_line;
use super::*;
use crate::{
    host::{Emulator, KvmState},
    profile::Accel,
    spec::{AccelRequest, SpecInput},
};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn host(arch: &str, kvm: KvmState) -> HostFacts {
    let set = ProfileSet::embedded().unwrap();
    HostFacts {
        arch: Some(set.resolve("host", arch).unwrap().arch()),
        arch_detail: arch.into(),
        kvm_device: "/dev/kvm".into(),
        kvm,
        emulators: set
            .iter()
            .map(|p| {
                (
                    p.binary.clone(),
                    Emulator {
                        path: format!("/usr/bin/{}", p.binary).into(),
                        version: None,
                        caps: BTreeMap::new(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        phys_bits: Some(48),
        firmware: None,
        qemu_prefix: None,
        virtiofsd: None,
    }
}

fn plan(input: SpecInput, host: &HostFacts) -> Result<LaunchPlan, PlanError> {
    let set = ProfileSet::embedded().unwrap();
    resolve(&input.validate(&set).unwrap(), &set, host)
}

fn arch(a: &str) -> SpecInput {
    SpecInput {
        arch: Some(a.into()),
        ..Default::default()
    }
}

#[test]
fn auto_picks_kvm_only_when_usable_and_native() {
    let p = plan(arch("x86_64"), &host("x86_64", KvmState::Usable)).unwrap();
    assert_eq!(
        (p.accel, p.cpu.unwrap().model.as_str()),
        (Accel::Kvm, "host")
    );
    let p = plan(arch("aarch64"), &host("aarch64", KvmState::Usable)).unwrap();
    assert_eq!(p.accel, Accel::Kvm);
    assert_eq!(p.machine.options, ["gic-version=host"]);

    let p = plan(arch("aarch64"), &host("x86_64", KvmState::Usable)).unwrap();
    assert_eq!(p.accel, Accel::Tcg);
    assert!(
        p.accel_reason.contains("not native to this x86_64 host"),
        "{}",
        p.accel_reason
    );

    let p = plan(arch("x86_64"), &host("x86_64", KvmState::Pvm)).unwrap();
    assert_eq!(p.accel, Accel::Tcg);
    assert!(p.accel_reason.contains("PVM"), "{}", p.accel_reason);

    let p = plan(arch("x86_64"), &host("x86_64", KvmState::Missing)).unwrap();
    assert!(
        p.accel_reason
            .starts_with("TCG: KVM not used because /dev/kvm does not exist")
    );
}

#[test]
fn forced_kvm() {
    let kvm = |a: &str| SpecInput {
        accel: Some(AccelRequest::Kvm),
        ..arch(a)
    };
    let p = plan(kvm("x86_64"), &host("x86_64", KvmState::Pvm)).unwrap();
    assert_eq!(p.accel, Accel::Kvm);
    assert!(p.accel_reason.contains("forced"));
    let denied = KvmState::Denied {
        error: "Permission denied".into(),
    };
    let e = plan(kvm("x86_64"), &host("x86_64", denied)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--accel kvm: /dev/kvm cannot be opened read-write: Permission denied"
    );
    assert!(e.hint().unwrap().contains("--accel tcg"));
    let e = plan(kvm("aarch64"), &host("x86_64", KvmState::Usable)).unwrap_err();
    assert!(e.to_string().contains("not native"), "{e}");
    let e = plan(kvm("mipsel"), &host("x86_64", KvmState::Usable)).unwrap_err();
    assert!(
        e.to_string()
            .contains("no host runs mipsel guests under KVM"),
        "{e}"
    );
}

#[test]
fn hw_architecture_alone_needs_a_native_host() {
    let mut i = SpecInput::default();
    i.add_property("hw_architecture=aarch64").unwrap();
    let e = plan(i.clone(), &host("x86_64", KvmState::Usable)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hw_architecture=aarch64 needs a host that runs aarch64 natively; this host is x86_64 \
         (set hw_emulation_architecture=aarch64 to emulate it)"
    );
    // On an aarch64 host it runs, under TCG when KVM is missing.
    let p = plan(i, &host("aarch64", KvmState::Missing)).unwrap();
    assert_eq!((p.arch.as_str(), p.accel), ("aarch64", Accel::Tcg));

    let mut i = SpecInput::default();
    i.add_property("hw_emulation_architecture=aarch64").unwrap();
    i.add_property("hw_architecture=x86_64").unwrap();
    let p = plan(i.clone(), &host("x86_64", KvmState::Usable)).unwrap();
    assert_eq!((p.arch.as_str(), p.accel), ("aarch64", Accel::Tcg));
    let e = plan(i, &host("aarch64", KvmState::Usable)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hw_architecture=x86_64 asks for a host of arch x86_64; this host is aarch64"
    );

    // Nothing said: the host's own arch.
    let p = plan(SpecInput::default(), &host("aarch64", KvmState::Usable)).unwrap();
    assert_eq!(p.arch.as_str(), "aarch64");
}

#[test]
fn missing_emulator_names_the_package() {
    let mut h = host("x86_64", KvmState::Missing);
    h.emulators.remove("qemu-system-aarch64");
    let e = plan(arch("aarch64"), &h).unwrap_err();
    assert_eq!(
        e.to_string(),
        "qemu-system-aarch64 (for aarch64 guests) is not installed; install the Debian package \
         qemu-system-arm, or name one with --emulator"
    );
}

#[test]
fn memory_and_cpus_within_the_machine() {
    let h = host("x86_64", KvmState::Missing);
    let e = plan(
        SpecInput {
            memory: Some("4G".into()),
            ..arch("mipsel")
        },
        &h,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid memory '4G': mipsel guests take 16M to 2G"
    );
    let e = plan(
        SpecInput {
            memory: Some("8M".into()),
            ..arch("x86_64")
        },
        &h,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("invalid memory '8M'"));
    let e = plan(
        SpecInput {
            smp: Some(17),
            ..arch("mipsel")
        },
        &h,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid smp '17': mipsel guests take 1 to 16 vCPUs"
    );
}

#[test]
fn kernel_command_line_keeps_the_users_choices() {
    let set = ProfileSet::embedded().unwrap();
    let a64 = set.resolve("t", "aarch64").unwrap();
    assert_eq!(kernel_command_line(a64, None), "console=ttyAMA0 panic=-1");
    assert_eq!(
        kernel_command_line(a64, Some("console=ttyAMA0 quiet")),
        "panic=-1 console=ttyAMA0 quiet"
    );
    assert_eq!(
        kernel_command_line(a64, Some("panic=5")),
        "console=ttyAMA0 panic=5"
    );
}

#[test]
fn firmware_only_x86_boot_shows_the_firmware_console() {
    let p = plan(arch("x86_64"), &host("x86_64", KvmState::Usable)).unwrap();
    assert!(
        matches!(p.console, ConsolePlan::Device { ref device } if device.starts_with("isa-debugcon"))
    );
    let p = plan(arch("aarch64"), &host("x86_64", KvmState::Usable)).unwrap();
    assert!(matches!(p.console, ConsolePlan::Serial { .. }));
}

fn with_qemu(mut h: HostFacts, version: &str) -> HostFacts {
    for e in h.emulators.values_mut() {
        e.version = Some(version.into());
    }
    h
}

fn tcg(a: &str) -> SpecInput {
    SpecInput {
        accel: Some(AccelRequest::Tcg),
        ..arch(a)
    }
}

#[test]
fn profile_options_are_gated_by_the_qemu_version() {
    // 7.2: everything the aarch64 profile has applies.
    let h = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
    let p = plan(arch("aarch64"), &h).unwrap();
    assert_eq!(p.qemu_version, Some("7.2.22".parse().unwrap()));
    assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"]);
    assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max,pauth-impdef=on");
    assert!(
        !p.notes.iter().any(|n| n.starts_with("left out")),
        "{:?}",
        p.notes
    );

    // 10.0 made pauth-impdef the default: left out, saying so.
    let h = with_qemu(host("x86_64", KvmState::Missing), "10.0.2");
    let p = plan(arch("aarch64"), &h).unwrap();
    assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max");
    assert!(
        p.notes.contains(
            &"left out: cpu option pauth-impdef=on: is only for QEMU < 10.0, this is 10.0.2 \
              (the default from QEMU 10.0)"
                .to_string()
        ),
        "{:?}",
        p.notes
    );

    // 4.2: no tb-size property yet, no VOF, no pauth-impdef.
    let h = with_qemu(host("x86_64", KvmState::Missing), "4.2.1");
    let p = plan(arch("aarch64"), &h).unwrap();
    assert_eq!(p.accel_options, ["thread=multi"]);
    assert_eq!(p.cpu.as_ref().unwrap().qemu_value(), "max");
    assert!(p.notes.contains(
        &"left out: -accel tcg option tb-size=256: needs QEMU >= 5.0, this is 4.2.1".to_string()
    ));
    let kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kernel.path(), b"k").unwrap();
    let p = plan(
        SpecInput {
            kernel: Some(kernel.path().into()),
            ..arch("ppc64le")
        },
        &h,
    )
    .unwrap();
    assert!(!p.machine.options.iter().any(|o| o == "x-vof=on"));
    assert!(p.machine.options.iter().any(|o| o == "cap-ccf-assist=off"));
    assert!(
        p.notes
            .iter()
            .any(|n| n == "left out: machine option x-vof=on: needs QEMU >= 6.1, this is 4.2.1")
    );

    // Unknown version: nothing left out, and the plan says it could not check.
    let p = plan(arch("aarch64"), &host("x86_64", KvmState::Missing)).unwrap();
    assert_eq!(p.qemu_version, None);
    assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"]);
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("QEMU version unknown"))
    );
}

#[test]
fn mttcg_only_where_the_host_orders_memory_as_strongly_as_the_guest() {
    let on_arm = with_qemu(host("aarch64", KvmState::Missing), "7.2.22");
    let on_x86 = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
    for guest in ["x86_64", "i686", "s390x"] {
        let p = plan(tcg(guest), &on_x86).unwrap();
        assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"], "{guest}");
        let p = plan(tcg(guest), &on_arm).unwrap();
        assert_eq!(p.accel_options, ["tb-size=256"], "{guest}");
        assert!(
            p.notes.iter().any(|n| n.starts_with(
                "left out: -accel tcg option thread=multi: applies on x86_64, i686, s390x hosts only, this host is aarch64"
            )),
            "{guest}: {:?}",
            p.notes
        );
    }
    for guest in ["aarch64", "ppc64le", "riscv64", "mipsel"] {
        let p = plan(tcg(guest), &on_arm).unwrap();
        assert_eq!(p.accel_options, ["thread=multi", "tb-size=256"], "{guest}");
    }
}

#[test]
fn tb_size_overrides_the_profile_and_is_refused_where_qemu_lacks_it() {
    let h = with_qemu(host("x86_64", KvmState::Missing), "7.2.22");
    let p = plan(
        SpecInput {
            tb_size: Some(64),
            ..arch("aarch64")
        },
        &h,
    )
    .unwrap();
    assert_eq!(p.accel_options, ["thread=multi", "tb-size=64"]);
    let old = with_qemu(host("x86_64", KvmState::Missing), "4.2.1");
    let e = plan(
        SpecInput {
            tb_size: Some(64),
            ..arch("aarch64")
        },
        &old,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--tb-size (-accel tcg,tb-size=64) needs QEMU >= 5.0, this is 4.2.1"
    );
    assert!(e.hint().unwrap().contains("newer QEMU"));
    // Under KVM there is no translation cache: ignored, with a note.
    let kvm = with_qemu(host("x86_64", KvmState::Usable), "7.2.22");
    let p = plan(
        SpecInput {
            tb_size: Some(64),
            ..arch("x86_64")
        },
        &kvm,
    )
    .unwrap();
    assert_eq!(p.accel, Accel::Kvm);
    assert!(p.accel_options.is_empty());
    assert!(p.notes.iter().any(|n| n.starts_with("--tb-size ignored")));
}

#[test]
fn nested_virt_is_the_profiles_machine_property_or_refused() {
    let nested = |a: &str| SpecInput {
        nested_virt: Some(true),
        ..arch(a)
    };
    let x86 = host("x86_64", KvmState::Missing);
    let p = plan(nested("aarch64"), &x86).unwrap();
    assert_eq!(p.machine.options, ["gic-version=max", "virtualization=on"]);
    // Not asked for: not there.
    let p = plan(arch("aarch64"), &x86).unwrap();
    assert_eq!(p.machine.options, ["gic-version=max"]);
    let e = plan(nested("aarch64"), &host("aarch64", KvmState::Usable)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "nested_virt: aarch64 guests under kvm cannot have it; under tcg they can (--accel tcg)"
    );
    let e = plan(nested("x86_64"), &x86).unwrap_err().to_string();
    assert!(
        e.starts_with("nested_virt: x86_64 guests under tcg cannot have it: the profile names no")
            && e.contains("svm in max"),
        "{e}"
    );
    let other_machine = SpecInput {
        machine: Some("virt-7.2".into()),
        ..nested("aarch64")
    };
    assert_eq!(
        plan(other_machine, &x86).unwrap_err().to_string(),
        "nested_virt: aarch64 guests under tcg have it from properties of the machine virt, and \
         the spec names virt-7.2"
    );
}

#[test]
fn firmware_from_descriptors_or_the_package_to_install() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["CODE.fd", "VARS.fd"] {
        std::fs::write(dir.path().join(f), f).unwrap();
    }
    let desc = serde_json::json!({
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": { "filename": dir.path().join("CODE.fd") },
            "nvram-template": { "filename": dir.path().join("VARS.fd") },
        },
        "targets": [{ "architecture": "aarch64", "machines": ["virt-*"] }],
    });
    std::fs::write(dir.path().join("60-a.json"), desc.to_string()).unwrap();
    let mut h = host("x86_64", KvmState::Missing);
    h.firmware = Some(crate::host::firmware::Descriptors::load(&[dir.path().into()]).unwrap());
    let uefi = |a: &str| SpecInput {
        firmware: Some("uefi".into()),
        name: Some("vm1".into()),
        ..arch(a)
    };
    let p = plan(uefi("aarch64"), &h).unwrap();
    let fw = p.descriptor_firmware.unwrap();
    assert_eq!(fw.selected.executable, dir.path().join("CODE.fd"));
    assert_eq!(fw.vars, Some(PathBuf::from("vm1_VARS.fd")));
    assert_eq!(p.firmware, None);

    // None for x86_64 here: the error names the Debian package.
    let e = plan(uefi("x86_64"), &h).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "no uefi firmware for x86_64 machine q35; the Debian package ovmf provides it\n"
        ),
        "{e}"
    );
    let mut none = h.clone();
    none.firmware = None;
    let e = plan(uefi("aarch64"), &none).unwrap_err().to_string();
    assert_eq!(
        e,
        "no uefi firmware for aarch64 machine virt (no firmware descriptor files found); \
         the Debian package qemu-efi-aarch64 provides it"
    );

    // bios: no descriptor offers it, so x86 keeps its built-in SeaBIOS; aarch64 has none.
    let bios = |a: &str| SpecInput {
        firmware: Some("bios".into()),
        ..arch(a)
    };
    let p = plan(bios("x86_64"), &h).unwrap();
    assert!(p.descriptor_firmware.is_none() && p.firmware.is_none());
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("firmware: bios: the machine's built-in BIOS"))
    );
    assert!(plan(bios("aarch64"), &h).is_err());
}

#[test]
fn plans_round_trip_through_json() {
    let p = plan(arch("s390x"), &host("x86_64", KvmState::Missing)).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<LaunchPlan>(&json).unwrap(), p);
}

fn virtiofsd(kind: crate::host::virtiofsd::VirtiofsdKind, readonly: bool) -> HostFacts {
    let mut h = host("x86_64", KvmState::Missing);
    h.virtiofsd = Some(crate::host::virtiofsd::Virtiofsd {
        path: "/usr/libexec/virtiofsd".into(),
        kind,
        readonly,
        unusable: None,
        sandbox_none: false,
    });
    h
}

fn with_share(dir: &std::path::Path, opts: &str) -> SpecInput {
    let mut i = arch("x86_64");
    let arg = format!("{}{opts}", dir.display());
    i.shares = Some(vec![
        crate::spec::share::ShareInput::parse(std::ffi::OsStr::new(&arg)).unwrap(),
    ]);
    i
}

#[test]
fn the_agent_channel_is_on_the_arch_bus_unless_turned_off() {
    let h = host("x86_64", KvmState::Missing);
    let a = plan(arch("s390x"), &h).unwrap().agent.unwrap();
    assert_eq!(
        (a.controller.as_str(), a.name.as_str(), a.socket.to_str()),
        (
            "virtio-serial-ccw",
            "org.qemu.guest_agent.0",
            Some("agent.sock")
        )
    );
    let mut off = arch("x86_64");
    off.agent = Some(false);
    assert_eq!(plan(off, &h).unwrap().agent, None);
}

#[test]
fn auto_shares_take_virtiofs_where_a_virtiofsd_can_serve_them() {
    use crate::host::virtiofsd::VirtiofsdKind::{C, Rust};
    let dir = tempfile::tempdir().unwrap();
    let fs = |input, h: &HostFacts| {
        let p = plan(input, h).unwrap();
        let note = p.notes.iter().find(|n| n.starts_with("share ")).cloned();
        (p.shares[0].fs(), p.memory_backend.is_some(), note.unwrap())
    };
    use crate::spec::ShareFs::{NineP, Virtiofs};
    // No virtiofsd: 9p, saying why and with no shared memory.
    let (f, mem, note) = fs(
        with_share(dir.path(), ""),
        &host("x86_64", KvmState::Missing),
    );
    assert_eq!((f, mem), (NineP, false));
    assert!(
        note.contains("9p: not virtiofs: no virtiofsd is installed"),
        "{note}"
    );
    let (f, mem, note) = fs(with_share(dir.path(), ""), &virtiofsd(C, false));
    assert_eq!((f, mem), (Virtiofs, true));
    assert!(note.contains("virtiofs: virtiofs, faster than 9p, can run: QEMU's C virtiofsd"));
    // Read-only: the C virtiofsd has no such mode; a Rust one with --readonly does.
    let (f, _, note) = fs(with_share(dir.path(), ",ro"), &virtiofsd(C, false));
    assert_eq!(f, NineP);
    assert!(note.contains("has no read-only mode"), "{note}");
    assert_eq!(
        fs(with_share(dir.path(), ",ro"), &virtiofsd(Rust, true)).0,
        Virtiofs
    );
    assert_eq!(
        fs(with_share(dir.path(), ",fs=9p"), &virtiofsd(Rust, true)).0,
        NineP
    );
    // A tag too long for 9p still fits virtiofs.
    let tag = format!(":{}", "t".repeat(36));
    assert_eq!(
        fs(with_share(dir.path(), &tag), &virtiofsd(C, false)).0,
        Virtiofs
    );
}

#[test]
fn shares_that_cannot_go_as_asked_are_refused_with_the_way_out() {
    use crate::host::virtiofsd::VirtiofsdKind::C;
    let dir = tempfile::tempdir().unwrap();
    let err = |input, h: &HostFacts| {
        let e = plan(input, h).unwrap_err();
        (e.to_string(), e.hint().unwrap_or_default())
    };
    let (e, hint) = err(
        with_share(dir.path(), ",fs=virtiofs"),
        &host("x86_64", KvmState::Missing),
    );
    assert!(e.ends_with("(fs=virtiofs): no virtiofsd is installed (looked on PATH, in /usr/libexec and /usr/lib/qemu)"), "{e}");
    assert!(
        hint.contains("virtiofsd") && hint.contains("qemu-system-common"),
        "{hint}"
    );
    let (e, hint) = err(
        with_share(dir.path(), ",ro,fs=virtiofs"),
        &virtiofsd(C, false),
    );
    assert!(
        e.contains("a read-only share, and QEMU's C virtiofsd"),
        "{e}"
    );
    assert!(hint.contains("fs=9p"), "{hint}");
    let mut h = virtiofsd(C, false);
    h.virtiofsd.as_mut().unwrap().unusable = Some("runs only as root".into());
    let (e, _) = err(with_share(dir.path(), ",fs=virtiofs"), &h);
    assert!(e.ends_with("runs only as root"), "{e}");
    let (e, hint) = err(
        with_share(dir.path(), &format!(":{},fs=9p", "t".repeat(32))),
        &h,
    );
    assert!(e.contains("is 32 bytes, over 9p's 31"), "{e}");
    assert!(hint.contains("shorter tag"), "{hint}");
}
