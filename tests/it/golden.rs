//! Golden command lines: every arch under TCG (on an x86_64 host) and under KVM (on a native
//! host with usable KVM), from made-up host facts. `UPDATE_GOLDEN=1` rewrites the files; review
//! the diff before committing it.

use std::{ffi::OsString, os::unix::ffi::OsStrExt, path::PathBuf};

use qemu_direct::{
    argv,
    host::firmware::Descriptors,
    host::virtiofsd::{Virtiofsd, VirtiofsdKind},
    host::{HostFacts, KvmState},
    plan::{self, LaunchPlan},
    profile::{Accel, ProfileSet},
    spec::net::Net,
    spec::{
        AccelRequest, ArchChoice, Disk, DiskFormat, FirmwareChoice, KernelBoot, Share, ShareFs,
        VmSpec,
    },
};

use crate::common::fake_host;

fn spec(arch: &str, accel: AccelRequest) -> VmSpec {
    let set = ProfileSet::embedded().unwrap();
    VmSpec {
        name: None,
        arch: ArchChoice::Given {
            arch: set.resolve("arch", arch).unwrap().arch(),
            field: "arch".into(),
            host_required: None,
        },
        accel,
        machine: None,
        memory: None,
        smp: Some(2),
        kernel: Some(KernelBoot {
            kernel: format!("/guests/{arch}/kernel").into(),
            initrd: Some(format!("/guests/{arch}/initrd.gz").into()),
            append: Some("quiet".into()),
        }),
        disks: Vec::new(),
        net: Net::None,
        agent: true,
        shares: Vec::new(),
        firmware: None,
        qemu_args: Vec::new(),
        tb_size: None,
        nested_virt: false,
        emulator: None,
        cpu: Default::default(),
        cloud_init: None,
    }
}

fn plan_for(spec: &VmSpec, host: &HostFacts) -> LaunchPlan {
    plan::resolve(spec, &ProfileSet::embedded().unwrap(), host).unwrap()
}

fn render(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| String::from_utf8(a.as_bytes().to_vec()).unwrap() + "\n")
        .collect()
}

fn check(name: &str, argv: &[OsString]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.argv"));
    let got = render(argv);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(got, want, "argv for {name} differs from {}", path.display());
}

#[test]
fn every_arch_under_tcg_on_an_x86_64_host() {
    let host = fake_host("x86_64", KvmState::Usable);
    for p in ProfileSet::embedded().unwrap().iter() {
        // Native guests would get KVM here; ask for TCG to pin the emulated line.
        let plan = plan_for(&spec(&p.name, AccelRequest::Tcg), &host);
        assert_eq!(plan.accel, Accel::Tcg, "{}", p.name);
        check(&format!("{}-tcg", p.name), &argv::build(&plan));
    }
}

#[test]
fn every_kvm_capable_arch_under_kvm_on_its_native_host() {
    let mut seen = 0;
    for p in ProfileSet::embedded().unwrap().iter() {
        let Some(kvm) = p.accel.get(&Accel::Kvm) else {
            continue;
        };
        let host = fake_host(&kvm.hosts[0], KvmState::Usable);
        let plan = plan_for(&spec(&p.name, AccelRequest::Auto), &host);
        assert_eq!(plan.accel, Accel::Kvm, "{}: {}", p.name, plan.accel_reason);
        check(&format!("{}-kvm", p.name), &argv::build(&plan));
        seen += 1;
    }
    assert!(
        seen >= 5,
        "x86_64, i686, aarch64, ppc64le, s390x, riscv64 have KVM profiles"
    );
}

#[test]
fn aarch64_on_an_aarch64_host_without_kvm_falls_back_to_tcg() {
    let host = fake_host("aarch64", KvmState::Missing);
    let plan = plan_for(&spec("aarch64", AccelRequest::Auto), &host);
    assert_eq!(plan.accel, Accel::Tcg);
    check("aarch64-tcg", &argv::build(&plan));
}

#[test]
fn disk_boots_use_the_bus_suffix_and_never_write_by_default() {
    let host = fake_host("x86_64", KvmState::Missing);
    for (arch, writable) in [("x86_64", false), ("s390x", true)] {
        let mut s = spec(arch, AccelRequest::Auto);
        s.kernel = None;
        s.disks = vec![Disk {
            path: "/images/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            writable,
            size: None,
        }];
        check(&format!("{arch}-disk"), &argv::build(&plan_for(&s, &host)));
    }
    let mut s = spec("riscv64", AccelRequest::Auto);
    s.kernel.as_mut().unwrap().initrd = None;
    s.firmware = Some(FirmwareChoice::File {
        path: "/guests/riscv64/fw_jump.bin".into(),
    });
    s.disks = vec![Disk {
        path: "/guests/riscv64/boot".into(),
        format: DiskFormat::Dir,
        writable: false,
        size: None,
    }];
    check("riscv64-firmware-dir", &argv::build(&plan_for(&s, &host)));
}

#[test]
fn launched_overlays_replace_the_image_on_the_command_line() {
    let host = fake_host("x86_64", KvmState::Missing);
    let mut s = spec("x86_64", AccelRequest::Auto);
    s.disks = ["/img/a,b.raw", "/img/keep.qcow2"]
        .iter()
        .zip([(DiskFormat::Raw, false), (DiskFormat::Qcow2, true)])
        .map(|(p, (format, writable))| Disk {
            path: p.into(),
            format,
            writable,
            size: None,
        })
        .collect();
    let mut plan = plan_for(&s, &host);
    let drives = |plan: &LaunchPlan| -> Vec<String> {
        let argv = argv::build(plan);
        argv.windows(2)
            .filter(|w| w[0] == "-drive")
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect()
    };
    // Not launched: QEMU's own throw-away overlay, for a command line run by hand.
    assert_eq!(
        drives(&plan),
        [
            "if=none,id=disk0,file=/img/a,,b.raw,format=raw,snapshot=on",
            "if=none,id=disk1,file=/img/keep.qcow2,format=qcow2,snapshot=off"
        ]
    );
    assert!(plan.disks[0].wants_overlay() && !plan.disks[1].wants_overlay());
    // Launched: the overlay in the instance directory, its backing file the image.
    plan.disks[0].overlay = Some("/run/qd/x,86/disk0.qcow2".into());
    assert_eq!(
        drives(&plan),
        [
            "if=none,id=disk0,file=/run/qd/x,,86/disk0.qcow2,format=qcow2",
            "if=none,id=disk1,file=/img/keep.qcow2,format=qcow2,snapshot=off"
        ]
    );
}

#[test]
fn network_cards_per_arch() {
    let host = fake_host("x86_64", KvmState::Usable);
    for p in ProfileSet::embedded().unwrap().iter() {
        let mut s = spec(&p.name, AccelRequest::Tcg);
        s.net = Net::parse(
            "net",
            "user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53",
        )
        .unwrap();
        let argv = argv::build(&plan_for(&s, &host));
        let want = format!("virtio-net{},netdev=net0", p.device_suffix);
        assert!(argv.iter().any(|a| *a == *want), "{}: {argv:?}", p.name);
        check(&format!("{}-net", p.name), &argv);
    }
}

/// Shares over 9p (read-only too) and virtiofs, with the shared memory virtiofs needs; the
/// agent's channel on the arch's bus; no channel with `agent = false`.
#[test]
fn shares_and_the_agent_channel() {
    let mut host = fake_host("x86_64", KvmState::Missing);
    host.virtiofsd = Some(Virtiofsd {
        path: "/usr/lib/qemu/virtiofsd".into(),
        kind: VirtiofsdKind::C,
        readonly: false,
        unusable: None,
        sandbox_none: false,
    });
    let share = |path: &str, tag: &str, readonly, fs| Share {
        path: path.into(),
        tag: tag.into(),
        readonly,
        fs,
    };
    for arch in ["x86_64", "s390x"] {
        let mut s = spec(arch, AccelRequest::Tcg);
        s.shares = vec![
            share("/srv/a,b", "ab", false, ShareFs::NineP),
            // auto, read-only: the C virtiofsd cannot, so 9p.
            share("/srv/ro", "ro", true, ShareFs::Auto),
            share("/srv/fast", "fast", false, ShareFs::Auto),
        ];
        let plan = plan_for(&s, &host);
        let fs: Vec<_> = plan.shares.iter().map(|s| s.fs()).collect();
        check(&format!("{arch}-shares"), &argv::build(&plan));
        assert_eq!(argv::virtiofsd(&plan, 0, 7), None);
        if arch == "s390x" {
            // The profile offers no virtiofs for a big-endian guest: all 9p, no shared RAM.
            assert_eq!(fs, [ShareFs::NineP; 3]);
            assert!(plan.memory_backend.is_none());
            continue;
        }
        assert_eq!(fs, [ShareFs::NineP, ShareFs::NineP, ShareFs::Virtiofs]);
        assert!(plan.memory_backend.is_some());
        let daemon = argv::virtiofsd(&plan, 2, 7).unwrap();
        assert_eq!(
            render(&daemon),
            "/usr/lib/qemu/virtiofsd\n--fd=7\n-o\nsource=/srv/fast\n"
        );
    }
    // The Rust virtiofsd, read-only, run by a user: its own spelling, and no sandbox.
    let mut rust = host.clone();
    rust.virtiofsd = Some(Virtiofsd {
        path: "/usr/libexec/virtiofsd".into(),
        kind: VirtiofsdKind::Rust,
        readonly: true,
        unusable: None,
        sandbox_none: true,
    });
    let mut s = spec("x86_64", AccelRequest::Tcg);
    s.shares = vec![share("/srv/a,b", "ab", true, ShareFs::Auto)];
    let plan = plan_for(&s, &rust);
    assert_eq!(
        render(&argv::virtiofsd(&plan, 0, 3).unwrap()),
        "/usr/libexec/virtiofsd\n--fd=3\n--shared-dir\n/srv/a,b\n--readonly\n--sandbox\nnone\n"
    );
    let mut s = spec("x86_64", AccelRequest::Tcg);
    s.agent = false;
    let argv = render(&argv::build(&plan_for(&s, &host)));
    assert!(!argv.contains("virtserialport"), "{argv}");
    // Launched: the agent's socket is the launcher's descriptor.
    let plan = plan_for(&spec("aarch64", AccelRequest::Tcg), &host);
    let argv = render(&argv::build_with(&plan, argv::Fds { agent: Some(9) }));
    assert!(
        argv.contains(
            "\nsocket,id=qd-agent,fd=9,server=on,wait=off\n-device\nvirtio-serial-pci,id=qd-vser0\n"
        ),
        "{argv}"
    );
}

#[test]
fn commas_in_paths_cannot_inject_options() {
    let host = fake_host("x86_64", KvmState::Missing);
    let mut s = spec("x86_64", AccelRequest::Auto);
    s.kernel = Some(KernelBoot {
        kernel: "/tmp/a,file=/etc/shadow".into(),
        initrd: Some("/tmp/i,format=raw".into()),
        append: Some("x=1,y=2".into()),
    });
    s.disks = vec![Disk {
        path: "/tmp/d,file=/etc/shadow,format=raw".into(),
        format: DiskFormat::Raw,
        writable: false,
        size: None,
    }];
    let argv = argv::build(&plan_for(&s, &host));
    let pos = |flag: &str| argv.iter().position(|a| a == flag).unwrap() + 1;
    // Whole-argument options take the path literally: escaping would corrupt it.
    assert_eq!(argv[pos("-kernel")], "/tmp/a,file=/etc/shadow");
    assert_eq!(argv[pos("-initrd")], "/tmp/i,format=raw");
    // Inside an option list every comma is doubled, so QEMU sees one file= value.
    assert_eq!(
        argv[pos("-drive")],
        "if=none,id=disk0,file=/tmp/d,,file=/etc/shadow,,format=raw,format=raw,snapshot=on"
    );
    check("x86_64-commas", &argv);
}

#[test]
fn instance_names_are_escaped_too() {
    let host = fake_host("x86_64", KvmState::Missing);
    let mut s = spec("x86_64", AccelRequest::Auto);
    // Names are validated to exclude commas, but the argv layer does not rely on that.
    s.name = Some("a,process=evil".into());
    let argv = argv::build(&plan_for(&s, &host));
    let i = argv.iter().position(|a| a == "-name").unwrap();
    assert_eq!(argv[i + 1], "guest=a,,process=evil");
}

/// UEFI from made-up descriptors in a directory whose name has a comma: pflash drives with the
/// paths escaped, the per-VM variable store named after the instance, and `smm=on` plus secure
/// flash for firmware that requires SMM. The directory is shown as `/FW` in the golden files.
#[test]
fn uefi_firmware_from_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fw,dir");
    std::fs::create_dir(&dir).unwrap();
    for f in ["CODE.fd", "VARS.fd", "CODE.secboot.fd"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let desc = |arch: &str, machines: &[&str], code: &str, features: &[&str]| {
        serde_json::json!({
            "description": "test",
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": { "filename": dir.join(code), "format": "raw" },
                "nvram-template": { "filename": dir.join("VARS.fd"), "format": "raw" },
            },
            "targets": [{ "architecture": arch, "machines": machines }],
            "features": features,
        })
        .to_string()
    };
    std::fs::write(
        dir.join("50-x86_64-secure.json"),
        desc(
            "x86_64",
            &["pc-q35-*"],
            "CODE.secboot.fd",
            &["requires-smm", "secure-boot"],
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("60-x86_64.json"),
        desc("x86_64", &["pc-q35-*"], "CODE.fd", &[]),
    )
    .unwrap();
    std::fs::write(
        dir.join("60-aarch64.json"),
        desc("aarch64", &["virt-*"], "CODE.fd", &[]),
    )
    .unwrap();
    let mut host = fake_host("x86_64", KvmState::Missing);
    host.firmware = Some(Descriptors::load(std::slice::from_ref(&dir)).unwrap());
    let shown = |argv: Vec<OsString>| -> Vec<OsString> {
        let from = dir.to_str().unwrap().replace(',', ",,");
        argv.into_iter()
            .map(|a| a.to_str().unwrap().replace(&from, "/FW").into())
            .collect()
    };
    for (arch, secure_boot, name) in [
        ("aarch64", false, "aarch64-uefi"),
        ("x86_64", true, "x86_64-uefi-secure-boot"),
    ] {
        let mut s = spec(arch, AccelRequest::Auto);
        s.kernel = None;
        s.disks = vec![Disk {
            path: "/images/esp.img".into(),
            format: DiskFormat::Raw,
            writable: false,
            size: None,
        }];
        s.firmware = Some(FirmwareChoice::Uefi { secure_boot });
        let plan = plan_for(&s, &host);
        let fw = plan.descriptor_firmware.as_ref().unwrap();
        assert_eq!(
            fw.vars.as_deref(),
            Some(std::path::Path::new(&format!("{arch}_VARS.fd")))
        );
        check(name, &shown(argv::build(&plan)));
    }
}
