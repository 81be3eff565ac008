//! Pure tests: made-up hosts and capabilities, no QEMU, no libvirt. The checks against the
//! real libvirt (schema, `domxml-to-native`) are in tests/it/libvirt.rs.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::*;
use crate::{
    host::caps::{Caps, CpuFeatures, CpuModel, KvmInfo},
    host::{Emulator, HostFacts, KvmState},
    plan::{self, LaunchPlan},
    profile::{Accel, ProfileSet},
    spec::SpecInput,
    spec::config::Config,
};

fn profiles() -> ProfileSet {
    ProfileSet::embedded().unwrap()
}

fn names(n: &[&str]) -> BTreeSet<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// Made-up capabilities: every model offers `enabled`'s first two features, the accelerator
/// offers all of them.
fn caps(models: Option<&[&str]>, enabled: &[&str]) -> Caps {
    let base = &enabled[..enabled.len().min(2)];
    Caps {
        version: "7.2.0".into(),
        kvm: KvmInfo {
            enabled: false,
            present: false,
        },
        machines: Vec::new(),
        cpu_models: models.map(|m| {
            m.iter()
                .map(|name| CpuModel {
                    name: name.to_string(),
                    alias_of: None,
                    unavailable: Vec::new(),
                    deprecated: false,
                    features: Some(CpuFeatures {
                        vendor: Some("GenuineIntel".into()),
                        enabled: names(if matches!(*name, "max" | "host") {
                            enabled
                        } else {
                            base
                        }),
                    }),
                })
                .collect()
        }),
        host_cpu: Some(CpuFeatures {
            vendor: Some("GenuineIntel".into()),
            enabled: names(enabled),
        }),
        feature_names: Some(names(enabled)),
    }
}

fn caps_for(binary: &str) -> Caps {
    match binary {
        "qemu-system-x86_64" | "qemu-system-i386" => caps(
            Some(&["max", "host", "Nehalem", "qemu64"]),
            &["sse", "lahf-lm", "x2apic", "pse36", "avx"],
        ),
        "qemu-system-aarch64" => caps(
            Some(&["max", "host", "cortex-a57"]),
            &["pmu", "sve", "pauth-impdef"],
        ),
        "qemu-system-ppc64" => caps(Some(&["power9", "power8", "host"]), &[]),
        "qemu-system-s390x" => caps(Some(&["qemu", "max", "host"]), &[]),
        "qemu-system-mipsel" => caps(Some(&["24Kf"]), &[]),
        _ => caps(None, &[]),
    }
}

/// A host of `arch` with every emulator installed (a stand-in executable under `dir`, known
/// both by its binary name and by its path, as `<emulator>` names it) and probed.
fn host(dir: &Path, arch: &str, kvm: KvmState) -> HostFacts {
    let set = profiles();
    let mut emulators = BTreeMap::new();
    for p in set.iter() {
        let path = dir.join(&p.binary);
        std::fs::write(&path, "#!/bin/sh\nexit 97\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = caps_for(&p.binary);
        let e = Emulator {
            path: path.clone(),
            version: None,
            caps: [(Accel::Tcg, c.clone()), (Accel::Kvm, c)].into(),
        };
        emulators.insert(p.binary.clone(), e.clone());
        emulators.insert(path.to_string_lossy().into_owned(), e);
    }
    HostFacts {
        arch: Some(set.resolve("host", arch).unwrap().arch()),
        arch_detail: arch.into(),
        kvm_device: "/dev/kvm".into(),
        kvm,
        emulators,
        phys_bits: Some(48),
        firmware: None,
        virtiofsd: None,
    }
}

/// Files a spec can name: kernel, initrd, raw and qcow2 images, a directory, firmware.
fn files(dir: &Path) -> BTreeMap<&'static str, PathBuf> {
    let mut m = BTreeMap::new();
    for (name, bytes) in [
        ("kernel", &b"kernel"[..]),
        ("initrd", b"initrd"),
        ("raw.img", &[0u8; 512]),
        ("disk.qcow2", b"QFI\xfb\0\0\0\x03"),
        ("bios.bin", b"firmware"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        m.insert(name, p);
    }
    let d = dir.join("share");
    std::fs::create_dir_all(&d).unwrap();
    m.insert("dir", d);
    let d = dir.join("share2");
    std::fs::create_dir_all(&d).unwrap();
    m.insert("dir2", d);
    m
}

fn plan_of(input: SpecInput, host: &HostFacts) -> LaunchPlan {
    let set = profiles();
    let vm = input.validate(&set).unwrap();
    plan::resolve_with(&vm, &set, host, &Config::default()).unwrap()
}

/// The plan without its explanations (which say where each choice came from).
fn decisions(mut p: LaunchPlan) -> LaunchPlan {
    p.notes.clear();
    p.accel_reason.clear();
    for s in &mut p.shares {
        s.why.clear();
    }
    p
}

struct Case {
    label: &'static str,
    host_arch: &'static str,
    kvm: bool,
    input: SpecInput,
}

fn case(label: &'static str, arch: &str, f: &BTreeMap<&str, PathBuf>) -> Case {
    Case {
        label,
        host_arch: "x86_64",
        kvm: false,
        input: SpecInput {
            arch: Some(arch.into()),
            accel: Some(crate::spec::AccelRequest::Tcg),
            kernel: Some(f["kernel"].clone()),
            initrd: Some(f["initrd"].clone()),
            append: Some("quiet".into()),
            smp: Some(2),
            ..Default::default()
        },
    }
}

fn matrix(f: &BTreeMap<&str, PathBuf>) -> Vec<Case> {
    let mut v: Vec<Case> = profiles()
        .iter()
        .map(|p| case("default", &p.name, f))
        .collect();
    let with = |label, arch: &str, g: &dyn Fn(&mut SpecInput)| {
        let mut c = case(label, arch, f);
        g(&mut c.input);
        c
    };
    v.push(with("maximum+flags", "x86_64", &|i| {
        i.cpu_mode = Some("maximum".into());
        i.cpu_model_extra_flags = Some(vec!["-lahf_lm".into(), "+x2apic".into()]);
    }));
    v.push(with("custom", "x86_64", &|i| {
        i.cpu_models = Some(vec!["Nehalem".into()]);
        i.cpu_model_extra_flags = Some(vec!["-pse36".into(), "lahf-lm".into()]);
        i.cpu_check = Some("none".into());
    }));
    v.push(with("host-model", "x86_64", &|i| {
        i.cpu_mode = Some("host-model".into())
    }));
    v.push(with("host-model-emulate-unchecked", "x86_64", &|i| {
        i.cpu_mode = Some("host-model".into());
        i.maxphysaddr = Some("emulate:40".into());
        i.cpu_check = Some("none".into());
    }));
    v.push(with("none", "x86_64", &|i| {
        i.cpu_mode = Some("none".into())
    }));
    v.push(with("emulate", "x86_64", &|i| {
        i.maxphysaddr = Some("emulate:42".into());
        i.memory = Some("1G".into());
    }));
    v.push(with("custom", "aarch64", &|i| {
        i.cpu_models = Some(vec!["cortex-a57".into()])
    }));
    v.push(with("maximum-sve", "aarch64", &|i| {
        i.cpu_mode = Some("maximum".into());
        i.cpu_model_extra_flags = Some(vec!["-sve".into()]);
    }));
    v.push(with("custom", "ppc64le", &|i| {
        i.cpu_models = Some(vec!["POWER8".into()])
    }));
    v.push(with("maximum", "s390x", &|i| {
        i.cpu_mode = Some("maximum".into())
    }));
    for (label, disk, writable) in [
        ("disk-qcow2", "disk.qcow2", false),
        ("disk-raw-writable", "raw.img", true),
        ("disk-dir", "dir", false),
    ] {
        v.push(with(label, "x86_64", &|i| {
            i.kernel = None;
            i.initrd = None;
            i.append = None;
            i.disk = Some(f[disk].clone());
            i.disk_writable = writable.then_some(true);
        }));
    }
    v.push(with("two-disks-and-net", "aarch64", &|i| {
        i.disks = Some(vec![
            crate::spec::disk::DiskInput::plain(f["disk.qcow2"].clone()),
            crate::spec::disk::DiskInput {
                persist: true,
                ..crate::spec::disk::DiskInput::plain(f["raw.img"].clone())
            },
        ]);
        i.net = Some("user".into());
    }));
    v.push(with("disk-s390x", "s390x", &|i| {
        i.kernel = None;
        i.initrd = None;
        i.append = None;
        i.disk = Some(f["raw.img"].clone());
    }));
    v.push(with("firmware", "x86_64", &|i| {
        i.kernel = None;
        i.initrd = None;
        i.append = None;
        i.firmware = Some(f["bios.bin"].clone());
        i.disk = Some(f["raw.img"].clone());
    }));
    v.push(with("machine-pc", "x86_64", &|i| {
        i.machine = Some("pc".into())
    }));
    let shares = |i: &mut SpecInput| {
        let share = |s: String| crate::spec::share::ShareInput::parse(s.as_ref()).unwrap();
        i.shares = Some(vec![
            share(f["dir"].display().to_string()),
            share(format!("{}:ro-data,ro,fs=9p", f["dir2"].display())),
        ]);
    };
    v.push(with("shares", "x86_64", &shares));
    v.push(with("shares", "s390x", &shares));
    // With a virtiofsd on the host (host_for): the first share goes over virtiofs.
    v.push(with("shares-virtiofs", "aarch64", &shares));
    v.push(with("no-agent", "x86_64", &|i| i.agent = Some(false)));
    for (label, arch, g) in [
        (
            "kvm-host",
            "x86_64",
            &(|i: &mut SpecInput| i.cpu_mode = Some("host-passthrough".into()))
                as &dyn Fn(&mut SpecInput),
        ),
        ("kvm-passthrough", "x86_64", &|i: &mut SpecInput| {
            i.cpu_mode = Some("host-passthrough".into());
            i.maxphysaddr = Some("passthrough".into());
        }),
        ("kvm-host-emulate", "x86_64", &|i: &mut SpecInput| {
            i.cpu_mode = Some("host-passthrough".into());
            i.maxphysaddr = Some("emulate:40".into());
        }),
        ("kvm-default", "aarch64", &|_: &mut SpecInput| {}),
        ("kvm-default", "ppc64le", &|_: &mut SpecInput| {}),
        ("kvm-default", "s390x", &|_: &mut SpecInput| {}),
    ] {
        let mut c = with(label, arch, g);
        c.input.accel = Some(crate::spec::AccelRequest::Kvm);
        c.host_arch = if arch == "x86_64" { "x86_64" } else { arch };
        c.kvm = true;
        v.push(c);
    }
    v
}

fn host_for(dir: &Path, c: &Case) -> HostFacts {
    let mut h = host(
        dir,
        c.host_arch,
        if c.kvm {
            KvmState::Usable
        } else {
            KvmState::Missing
        },
    );
    if c.label.contains("virtiofs") {
        h.virtiofsd = Some(crate::host::virtiofsd::Virtiofsd {
            path: "/usr/lib/qemu/virtiofsd".into(),
            kind: crate::host::virtiofsd::VirtiofsdKind::C,
            readonly: false,
            unusable: None,
            sandbox_none: false,
        });
    }
    h
}

#[test]
fn export_then_import_gives_the_same_plan() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let set = profiles();
    for c in matrix(&f) {
        let what = format!("{} {}", c.input.arch.as_deref().unwrap_or("?"), c.label);
        let h = host_for(dir.path(), &c);
        let plan = plan_of(c.input.clone(), &h);
        let ex = export(&plan, &set).unwrap_or_else(|e| panic!("{what}: {e}"));
        let back = import(&ex.xml, &set).unwrap_or_else(|e| panic!("{what}: {e}\n{}", ex.xml));
        let again = plan_of(back.spec, &h);
        assert_eq!(
            decisions(again),
            decisions(plan),
            "{what}: round trip differs\n{}",
            ex.xml
        );
    }
}

#[test]
fn what_xml_cannot_say_is_reported_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let set = profiles();
    let h = host(dir.path(), "x86_64", KvmState::Missing);
    let unexpressed = |input: SpecInput| export(&plan_of(input, &h), &set).unwrap().unexpressed;

    let a64 = unexpressed(case("", "aarch64", &f).input);
    assert!(a64.iter().any(|u| u.contains("gic-version=max")), "{a64:?}");
    assert!(a64.iter().any(|u| u.contains("pauth-impdef=on")), "{a64:?}");
    assert!(a64.iter().any(|u| u.contains("pvpanic-pci")), "{a64:?}");
    let ppc = unexpressed(case("", "ppc64le", &f).input);
    assert_eq!(ppc.len(), 1, "{ppc:?}");
    assert!(ppc[0].contains("x-vof=on"), "{ppc:?}");
    let rv = unexpressed(case("", "riscv64", &f).input);
    assert!(
        rv[0].contains("-cpu rv64") && rv[0].contains("no CPU driver"),
        "{rv:?}"
    );
    assert!(unexpressed(case("", "x86_64", &f).input).is_empty());
    assert!(unexpressed(case("", "s390x", &f).input).is_empty());

    let mut hm = case("", "x86_64", &f).input;
    hm.cpu_mode = Some("host-model".into());
    assert!(unexpressed(hm)[0].starts_with("host-model CPU -cpu Nehalem,"));

    // A firmware-only x86 boot shows SeaBIOS's debug port, which libvirt has no device for.
    let mut fw = case("", "x86_64", &f).input;
    (fw.kernel, fw.initrd, fw.append) = (None, None, None);
    let u = unexpressed(fw);
    assert!(u[0].starts_with("console device isa-debugcon"), "{u:?}");

    let kvm = host(dir.path(), "x86_64", KvmState::Usable);
    let mut i = case("", "x86_64", &f).input;
    i.accel = None;
    i.maxphysaddr = Some("passthrough:40".into());
    i.cpu_mode = Some("host-passthrough".into());
    let u = export(&plan_of(i.clone(), &kvm), &set).unwrap().unexpressed;
    assert!(u[0].contains("limit 40"), "{u:?}");
    i.maxphysaddr = Some("emulate:40".into());
    let u = export(&plan_of(i, &kvm), &set).unwrap().unexpressed;
    assert!(
        u[0].starts_with("host-phys-bits=off next to phys-bits=40"),
        "{u:?}"
    );
}

#[test]
fn export_spells_names_the_libvirt_way() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let set = profiles();
    let h = host(dir.path(), "x86_64", KvmState::Missing);
    let mut i = case("", "x86_64", &f).input;
    i.cpu_models = Some(vec!["Nehalem".into()]);
    i.cpu_model_extra_flags = Some(vec!["-lahf-lm".into()]);
    i.append = Some("a<b && c>\"d\" 'e'".into());
    let xml = export(&plan_of(i, &h), &set).unwrap().xml;
    assert!(
        xml.contains(r#"<feature policy="disable" name="lahf_lm"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<model fallback="forbid">Nehalem</model>"#),
        "{xml}"
    );
    assert!(xml.contains("a&lt;b &amp;&amp; c&gt;"), "{xml}");
    let back = import(&xml, &set).unwrap();
    assert_eq!(
        back.spec.append.as_deref(),
        Some("console=ttyS0 panic=-1 a<b && c>\"d\" 'e'")
    );
    let ppc = export(&plan_of(case("", "ppc64le", &f).input, &h), &set)
        .unwrap()
        .xml;
    assert!(ppc.contains(">POWER9</model>"), "{ppc}");
    assert!(ppc.contains(r#"<cfpc value="broken"/>"#), "{ppc}");
    let s390 = export(&plan_of(case("", "s390x", &f).input, &h), &set)
        .unwrap()
        .xml;
    assert!(s390.contains(r#"<target type="sclp" port="0"/>"#), "{s390}");
    assert!(!s390.contains("<serial"), "{s390}");
    // The UUID follows the name.
    assert_eq!(domain_uuid("a"), domain_uuid("a"));
    assert_ne!(domain_uuid("a"), domain_uuid("b"));
}

#[test]
fn values_xml_cannot_carry_are_errors() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let set = profiles();
    let h = host(dir.path(), "x86_64", KvmState::Missing);
    let mut plan = plan_of(case("", "x86_64", &f).input, &h);
    plan.kernel.as_mut().unwrap().kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k\xff"));
    let e = export(&plan, &set).unwrap_err().to_string();
    assert!(e.contains("not UTF-8"), "{e}");
    plan.kernel.as_mut().unwrap().kernel = "/k\x07".into();
    let e = export(&plan, &set).unwrap_err().to_string();
    assert!(e.contains("control character"), "{e}");
}

#[test]
fn profile_feature_spellings_map_back() {
    for p in profiles().iter() {
        for (qemu, libvirt) in &p.libvirt.cpu_features {
            assert_eq!(
                p.cpu.feature_aliases.get(libvirt),
                Some(qemu),
                "{}: libvirt's {libvirt} must map back to {qemu}",
                p.name
            );
        }
    }
}

fn refused(xml: &str) -> Vec<Item> {
    match import(xml, &profiles()) {
        Err(LibvirtError::Refused(items)) => items,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const MINIMAL: &str = "<domain type='qemu'><name>m</name><memory unit='MiB'>256</memory>\
    <vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os></domain>";

#[test]
fn a_minimal_domain_imports() {
    let i = import(MINIMAL, &profiles()).unwrap();
    assert_eq!(i.spec.arch.as_deref(), Some("x86_64"));
    assert_eq!(i.spec.memory.as_deref(), Some("256M"));
    assert_eq!(i.spec.machine, None);
    // No <cpu>: QEMU's default CPU, as libvirt gives it.
    assert_eq!(i.spec.cpu_mode.as_deref(), Some("none"));
    let rv = MINIMAL.replace("x86_64", "riscv64").replace("q35", "virt");
    let i = import(&rv, &profiles()).unwrap();
    assert_eq!(i.spec.cpu_mode, None);
    assert!(i.notes[0].contains("no CPU driver"), "{:?}", i.notes);
}

#[test]
fn everything_unsupported_is_listed_at_once() {
    let xml = MINIMAL.replace(
        "</os>",
        "</os><memoryBacking><hugepages/></memoryBacking><cpu mode='host-model' match='minimum'><vendor>Intel</vendor></cpu>\
         <devices><interface type='bridge'/><graphics type='vnc'/><disk type='block'>\
         <source dev='/dev/sda'/></disk><serial type='tcp'/><panic model='hyperv'/></devices>\
         <on_reboot>restart</on_reboot>",
    );
    let items = refused(&xml);
    let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
    for want in [
        "/domain/memoryBacking/hugepages",
        "/domain/cpu/@match",
        "/domain/cpu/vendor",
        "/domain/devices/interface/@type",
        "/domain/devices/graphics",
        "/domain/devices/disk/@type",
        "/domain/devices/serial/@type",
        "/domain/devices/panic",
        "/domain/on_reboot",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let text = LibvirtError::Refused(items).to_string();
    assert!(text.starts_with("9 part(s) of the domain"), "{text}");
    assert!(
        text.contains("\n  line 1: /domain/devices/interface/@type: interface type 'bridge'"),
        "{text}"
    );
}

#[test]
fn bad_values_are_refused_with_their_place() {
    for (from, to, path, what) in [
        (
            "unit='MiB'>256",
            "unit='MiB'>lots",
            "/domain/memory",
            "not a size",
        ),
        (
            "unit='MiB'>256",
            "unit='parsecs'>1",
            "/domain/memory/@unit",
            "unknown unit",
        ),
        (
            "unit='MiB'>256",
            "unit='KiB'>1000",
            "/domain/memory",
            "whole number of MiB",
        ),
        ("<vcpu>1", "<vcpu>one", "/domain/vcpu", "not a number"),
        (
            "arch='x86_64'",
            "arch='sparc64'",
            "/domain/os/type/@arch",
            "no machine profile",
        ),
        (
            "type='qemu'",
            "type='xen'",
            "/domain/@type",
            "domain type 'xen'",
        ),
        (
            "</os>",
            "</os><cpu><topology sockets='2' cores='1' threads='1'/></cpu>",
            "/domain/cpu/topology",
            "1 socket of N cores",
        ),
        (
            "</os>",
            "</os><features><gic version='2'/></features>",
            "/domain/features/gic",
            "gic-version=2",
        ),
        (
            "</os>",
            "</os><currentMemory unit='MiB'>128</currentMemory>",
            "/domain/currentMemory",
            "balloon",
        ),
        ("hvm", "exe", "/domain/os/type", "hvm"),
    ] {
        let items = refused(&MINIMAL.replace(from, to));
        assert!(
            items
                .iter()
                .any(|i| i.path == path && i.what.contains(what)),
            "{to}: {items:?}"
        );
    }
    // A missing part does not hide the others.
    let items = refused("<domain><vcpu>1</vcpu><graphics/></domain>");
    let listed: Vec<&str> = items.iter().map(|i| i.what.as_str()).collect();
    assert_eq!(
        listed,
        [
            "<domain> needs type='kvm' or type='qemu'",
            "<memory> is required",
            "<os> is required",
            "<graphics> is not supported"
        ],
        "{items:?}"
    );
    let e = import("<domain", &profiles()).unwrap_err().to_string();
    assert!(e.starts_with("malformed XML at line 1"), "{e}");
    let items = refused("<vm/>");
    assert_eq!(items[0].what, "the root element must be <domain>");
}

#[test]
fn a_disk_format_that_contradicts_the_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let xml = MINIMAL.replace(
        "</os>",
        &format!(
            "</os><devices><disk type='file'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vda'/></disk></devices>",
            f["disk.qcow2"].display()
        ),
    );
    let items = refused(&xml);
    assert!(items[0].what.contains("header says qcow2"), "{items:?}");
    let ok = xml.replace("type='raw'", "type='qcow2'");
    let i = import(&ok, &profiles()).unwrap();
    let disks = i.spec.disks.unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].path, f["disk.qcow2"]);
    assert!(
        disks[0].persist,
        "no <transient/>: the guest writes the image"
    );
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let xml = MINIMAL.replace(
        "hvm</type>",
        "hvm</type><kernel>k</kernel><initrd>/abs/i</initrd>",
    );
    let path = dir.path().join("dom.xml");
    std::fs::write(&path, xml).unwrap();
    let i = import_file(&path, &profiles()).unwrap();
    assert_eq!(i.spec.kernel, Some(dir.path().join("k")));
    assert_eq!(i.spec.initrd, Some(PathBuf::from("/abs/i")));
    let e = import_file(&dir.path().join("nope.xml"), &profiles()).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot read libvirt domain XML"),
        "{e}"
    );
}
