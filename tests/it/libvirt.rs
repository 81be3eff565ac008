//! libvirt domain XML against the real thing.
//!
//! One matrix of guests (every arch, every CPU mode, maxphysaddr both ways, kernel and disk
//! boots, TCG and KVM), planned with the capabilities the real emulators report, is exported
//! and:
//! - validated by libvirt's own schema (`virt-xml-validate FILE domain`);
//! - imported back into the same plan;
//! - given to a running libvirtd (`parity`): `virsh define` takes it, and `virsh
//!   domxml-to-native qemu-argv` makes the same command line as ours, apart from the deliberate
//!   divergences docs/libvirt.md lists.
//!
//! And domains not written by us are imported: a hand-written one boots the x86_64 test guest to
//! its marker, virt-install's output plans, a domain with devices qemu-direct does not have is
//! refused listing every one.
//!
//! The libvirt tools come with the Debian packages `libvirt-clients`, `libxml2-utils` and, for
//! the daemon, `libvirt-daemon-system` (`scripts/with-libvirtd` runs it). Without them these
//! tests print `SKIPPED: ...`; with `QD_REQUIRE_LIBVIRT=1` (set by `scripts/with-libvirtd`)
//! they fail instead.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use qemu_direct::{
    host::caps::CapsCache,
    host::{HostFacts, KvmState, ProbeOptions},
    libvirt::{self, Export},
    plan::{self, LaunchPlan},
    profile::{Accel, ProfileSet},
    spec::config::Config,
    spec::{AccelRequest, SpecInput, share::ShareInput},
};

use crate::common::{BOOT_TIMEOUT, TestEnv, guest, guest_proto, text};

mod parity;

/// Whether the environment promised libvirt (CI, through `scripts/with-libvirtd`).
fn required() -> bool {
    std::env::var_os("QD_REQUIRE_LIBVIRT").is_some_and(|v| v == "1")
}

/// Writes a line to stderr past the test harness's capture, so it shows when the test passes.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Skips with a visible message, or fails where libvirt was promised.
fn skip(why: &str) {
    assert!(!required(), "{why}, but QD_REQUIRE_LIBVIRT=1");
    say(&format!("SKIPPED: {why}"));
}

fn profiles() -> ProfileSet {
    ProfileSet::embedded().unwrap()
}

/// This host as probed, every emulator's TCG capabilities included (probed once, into a private
/// cache), with the files a spec can name.
struct Probed {
    host: HostFacts,
    files: BTreeMap<&'static str, PathBuf>,
    _env: TestEnv,
}

fn probed() -> &'static Probed {
    static PROBED: OnceLock<Probed> = OnceLock::new();
    PROBED.get_or_init(|| {
        let env = TestEnv::new();
        let set = profiles();
        let mut host = HostFacts::probe(&set, &ProbeOptions::default());
        let wanted: Vec<(String, Accel)> =
            set.iter().map(|p| (p.binary.clone(), Accel::Tcg)).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let failed = rt.block_on(host.add_caps(&CapsCache::at(env.path("caps")), &wanted));
        assert!(
            failed.is_empty(),
            "probing the emulators failed: {failed:?}"
        );
        let mut files = BTreeMap::new();
        for (name, bytes) in [
            ("kernel", &b"kernel"[..]),
            ("initrd", b"initrd"),
            ("raw.img", &[0u8; 4096]),
            ("disk.qcow2", b"QFI\xfb\0\0\0\x03"),
            ("bios.bin", b"firmware"),
        ] {
            let p = env.path(name);
            std::fs::write(&p, bytes).unwrap();
            files.insert(name, p);
        }
        let share = env.path("share");
        std::fs::create_dir_all(&share).unwrap();
        files.insert("dir", share);
        let share = env.path("share2");
        std::fs::create_dir_all(&share).unwrap();
        files.insert("dir2", share);
        Probed {
            host,
            files,
            _env: env,
        }
    })
}

/// One guest of the matrix.
#[derive(Clone)]
pub struct Case {
    /// Unique, also the domain's name.
    pub name: String,
    /// Under KVM, on a made-up native host of the guest's arch with KVM usable (and the TCG
    /// capabilities standing in for KVM's).
    pub kvm: bool,
    /// The guest.
    pub input: SpecInput,
}

impl Case {
    /// The host this case is planned for.
    pub fn host(&self) -> HostFacts {
        let mut h = probed().host.clone();
        if self.kvm {
            let set = profiles();
            let arch = self.input.arch.as_deref().unwrap();
            let p = set.resolve("arch", arch).unwrap();
            h.arch = Some(p.arch());
            h.kvm = KvmState::Usable;
            h.phys_bits = Some(48);
            for e in h.emulators.values_mut() {
                if let Some(tcg) = e.caps.get(&Accel::Tcg).cloned() {
                    e.caps.insert(Accel::Kvm, tcg);
                }
            }
        } else {
            h.kvm = KvmState::Missing;
        }
        // An imported domain names its <emulator> by path, and the capabilities of an emulator
        // given by path are recorded under that path.
        let by_path: Vec<(String, _)> = h
            .emulators
            .values()
            .map(|e| (e.path.to_string_lossy().into_owned(), e.clone()))
            .collect();
        h.emulators.extend(by_path);
        h
    }

    /// The plan.
    pub fn plan(&self) -> LaunchPlan {
        let set = profiles();
        let vm = self
            .input
            .validate(&set)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        plan::resolve_with(&vm, &set, &self.host(), &Config::default())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The plan, exported, and written to `dir/NAME.xml`.
    pub fn export(&self, dir: &Path) -> (LaunchPlan, Export, PathBuf) {
        let plan = self.plan();
        let ex =
            libvirt::export(&plan, &profiles()).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let path = dir.join(format!("{}.xml", self.name));
        std::fs::write(&path, &ex.xml).unwrap();
        (plan, ex, path)
    }
}

/// Every arch with its defaults, every CPU mode, maxphysaddr emulate and passthrough, kernel and
/// disk boots, firmware, TCG and KVM.
pub fn matrix() -> Vec<Case> {
    let f = &probed().files;
    let base = |name: &str, arch: &str| Case {
        name: format!("qd-{name}"),
        kvm: false,
        input: SpecInput {
            name: Some(format!("qd-{name}")),
            arch: Some(arch.into()),
            accel: Some(AccelRequest::Tcg),
            kernel: Some(f["kernel"].clone()),
            initrd: Some(f["initrd"].clone()),
            append: Some("quiet".into()),
            smp: Some(2),
            ..Default::default()
        },
    };
    let mut v: Vec<Case> = profiles()
        .iter()
        .map(|p| base(&format!("{}-default", p.name), &p.name))
        .collect();
    let mut add = |name: &str, arch: &str, kvm: bool, g: &dyn Fn(&mut SpecInput)| {
        let mut c = base(name, arch);
        g(&mut c.input);
        if kvm {
            c.kvm = true;
            c.input.accel = Some(AccelRequest::Kvm);
        }
        v.push(c);
    };
    let disk_boot = |i: &mut SpecInput, disk: &str| {
        (i.kernel, i.initrd, i.append) = (None, None, None);
        i.disk = Some(f[disk].clone());
    };
    let mode = |m: &str| {
        let m = m.to_owned();
        move |i: &mut SpecInput| i.cpu_mode = Some(m.clone())
    };
    add("x86_64-maximum-flags", "x86_64", false, &|i| {
        i.cpu_mode = Some("maximum".into());
        i.cpu_model_extra_flags = Some(vec!["-lahf_lm".into(), "+pdpe1gb".into()]);
    });
    add("x86_64-custom", "x86_64", false, &|i| {
        i.cpu_models = Some(vec!["Nehalem".into()]);
        i.cpu_model_extra_flags = Some(vec!["-pse36".into(), "+pdpe1gb".into()]);
    });
    add("x86_64-custom-unchecked", "x86_64", false, &|i| {
        i.cpu_models = Some(vec!["Skylake-Client".into()]);
        i.cpu_check = Some("none".into());
    });
    add("x86_64-host-model", "x86_64", false, &mode("host-model"));
    add("x86_64-host-model-emulate", "x86_64", false, &|i| {
        i.cpu_mode = Some("host-model".into());
        i.maxphysaddr = Some("emulate:40".into());
    });
    add("x86_64-none", "x86_64", false, &mode("none"));
    add("x86_64-emulate", "x86_64", false, &|i| {
        i.cpu_mode = Some("maximum".into());
        i.maxphysaddr = Some("emulate:42".into());
    });
    add("x86_64-custom-emulate", "x86_64", false, &|i| {
        i.cpu_models = Some(vec!["Nehalem".into()]);
        i.maxphysaddr = Some("emulate:40".into());
    });
    add("x86_64-disk-qcow2", "x86_64", false, &|i| {
        disk_boot(i, "disk.qcow2")
    });
    add("x86_64-disk-raw-writable", "x86_64", false, &|i| {
        disk_boot(i, "raw.img");
        i.disk_writable = Some(true);
    });
    add("x86_64-disk-dir", "x86_64", false, &|i| disk_boot(i, "dir"));
    add("x86_64-firmware", "x86_64", false, &|i| {
        disk_boot(i, "raw.img");
        i.firmware = Some(f["bios.bin"].clone());
    });
    add("x86_64-machine-pc", "x86_64", false, &|i| {
        i.machine = Some("pc".into())
    });
    add("i686-custom", "i686", false, &|i| {
        i.cpu_models = Some(vec!["pentium3".into()])
    });
    add("aarch64-custom", "aarch64", false, &|i| {
        i.cpu_models = Some(vec!["cortex-a57".into()])
    });
    add("aarch64-maximum-sve", "aarch64", false, &|i| {
        i.cpu_mode = Some("maximum".into());
        i.cpu_model_extra_flags = Some(vec!["-sve".into()]);
    });
    add("aarch64-disk", "aarch64", false, &|i| {
        disk_boot(i, "disk.qcow2")
    });
    add("ppc64le-custom", "ppc64le", false, &|i| {
        i.cpu_models = Some(vec!["power8".into()])
    });
    add("ppc64le-disk", "ppc64le", false, &|i| {
        disk_boot(i, "raw.img")
    });
    add("s390x-maximum", "s390x", false, &mode("maximum"));
    add("s390x-disk", "s390x", false, &|i| disk_boot(i, "raw.img"));
    add("riscv64-disk", "riscv64", false, &|i| {
        disk_boot(i, "raw.img")
    });
    for arch in ["aarch64", "x86_64"] {
        add(&format!("{arch}-uefi-disk"), arch, false, &|i| {
            disk_boot(i, "raw.img");
            i.firmware = Some("uefi".into());
        });
    }
    // Shares: over virtiofs where this host has a virtiofsd that can serve them, else 9p; and
    // one read-only over 9p.
    let shares = |i: &mut SpecInput| {
        let share = |s: String| ShareInput::parse(s.as_ref()).unwrap();
        i.shares = Some(vec![
            share(f["dir"].display().to_string()),
            share(format!("{}:ro-data,ro,fs=9p", f["dir2"].display())),
        ]);
    };
    for arch in ["x86_64", "aarch64", "s390x", "ppc64le"] {
        add(&format!("{arch}-shares"), arch, false, &shares);
    }
    add("x86_64-no-agent", "x86_64", false, &|i| {
        i.agent = Some(false)
    });
    add("x86_64-kvm-host", "x86_64", true, &mode("host-passthrough"));
    add("x86_64-kvm-passthrough", "x86_64", true, &|i| {
        i.cpu_mode = Some("host-passthrough".into());
        i.maxphysaddr = Some("passthrough".into());
    });
    add("x86_64-kvm-host-emulate", "x86_64", true, &|i| {
        i.cpu_mode = Some("host-passthrough".into());
        i.maxphysaddr = Some("emulate:40".into());
    });
    add("x86_64-kvm-maximum", "x86_64", true, &mode("maximum"));
    add("i686-kvm-default", "i686", true, &|_| {});
    add("aarch64-kvm-default", "aarch64", true, &|_| {});
    add(
        "ppc64le-kvm-host",
        "ppc64le",
        true,
        &mode("host-passthrough"),
    );
    add("s390x-kvm-default", "s390x", true, &|_| {});
    v
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_export_passes_libvirts_schema() {
    if !have("virt-xml-validate") {
        return skip(
            "libvirt schema: virt-xml-validate is not installed (Debian: libvirt-clients, \
             libxml2-utils)",
        );
    }
    let env = TestEnv::new();
    let mut failures = Vec::new();
    let cases = matrix();
    for c in &cases {
        let (_, _, path) = c.export(env.root());
        let out = Command::new("virt-xml-validate")
            .arg(&path)
            .arg("domain")
            .output()
            .unwrap();
        if !out.status.success() {
            let (o, e) = text(&out);
            failures.push(format!(
                "{}: {o}{e}\n{}",
                c.name,
                std::fs::read_to_string(&path).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    say(&format!(
        "libvirt schema: {} exported domains valid",
        cases.len()
    ));
}

#[test]
fn export_then_import_gives_the_same_plan_with_real_capabilities() {
    let set = profiles();
    for c in matrix() {
        let plan = c.plan();
        let ex = libvirt::export(&plan, &set).unwrap();
        let back = libvirt::import(&ex.xml, &set).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let again = Case {
            input: back.spec,
            ..c.clone()
        }
        .plan();
        let strip = |mut p: LaunchPlan| {
            p.notes.clear();
            p.accel_reason.clear();
            for s in &mut p.shares {
                s.why.clear();
            }
            p
        };
        // Lossy exports say so; the rest must come back whole.
        if ex.unexpressed.iter().any(|u| u.contains("limit")) {
            continue;
        }
        assert_eq!(strip(again), strip(plan), "{}:\n{}", c.name, ex.xml);
    }
}

/// The domain XML files in tests/fixtures/libvirt, by name.
pub(crate) fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    names.sort();
    names
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt")
}

/// A fixture from tests/fixtures/libvirt with its placeholders (`@KERNEL@`, ...) filled in.
pub(crate) fn fixture_text(name: &str, fill: &[(&str, &Path)]) -> String {
    let mut text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    for (from, to) in fill {
        text = text.replace(from, to.to_str().unwrap());
    }
    text
}

/// A fixture with its placeholders filled in, written to `dir`.
fn fixture(dir: &Path, name: &str, fill: &[(&str, &Path)]) -> PathBuf {
    let out = dir.join(name);
    std::fs::write(&out, fixture_text(name, fill)).unwrap();
    out
}

#[test]
fn a_hand_written_domain_boots_the_guest_to_its_marker() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let xml = fixture(
        env.root(),
        "hand-written-x86_64.xml",
        &[("@KERNEL@", &g.kernel), ("@INITRD@", &g.initrd)],
    );
    let out = env
        .cmd(["run", "--timeout", BOOT_TIMEOUT, "--libvirt-xml"])
        .arg(&xml)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "console:\n{o}");
    assert!(e.contains("x86_64 guest 'hand-written'"), "{e}");
    // The dry run shows what came from the XML: QEMU's default CPU (no -cpu), 256 MiB, the
    // command line with qemu-direct's panic=-1 added.
    let out = env
        .cmd(["plan", "--dry-run", "--libvirt-xml"])
        .arg(&xml)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(!o.contains(" -cpu "), "{o}");
    assert!(
        o.contains(" -m 256M ") && o.contains("'panic=-1 console=ttyS0 quiet'"),
        "{o}"
    );
}

#[test]
fn a_domain_with_devices_qemu_direct_lacks_is_refused_listing_them() {
    let env = TestEnv::new();
    let disk = probed().files["disk.qcow2"].clone();
    let xml = fixture(
        env.root(),
        "virt-install-x86_64-full.xml",
        &[("@DISK@", &disk)],
    );
    let out = env
        .cmd(["run", "--libvirt-xml"])
        .arg(&xml)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{o}\nstderr:\n{e}");
    assert!(o.is_empty(), "{o}");
    assert!(e.starts_with("error: libvirt domain XML "), "{e}");
    assert_eq!(e.matches("error:").count(), 1, "{e}");
    // Its guest agent channel is qemu-direct's own; the rest it lacks.
    assert!(!e.contains("/domain/devices/channel"), "{e}");
    for path in [
        "/domain/devices/input: a <input> device",
        "/domain/devices/graphics: a display",
        "/domain/devices/video: a display",
        "/domain/devices/memballoon: a memory balloon",
        "/domain/devices/rng: a <rng> device",
    ] {
        assert!(e.contains(path), "{path} not listed:\n{e}");
    }
    assert!(
        e.contains("caused by: 5 part(s) of the domain cannot be run"),
        "{e}"
    );
    // Nothing was started or left behind.
    assert!(!env.state().join("qemu-direct").exists());
}

#[test]
fn virt_install_output_plans_with_notes() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let disk = probed().files["disk.qcow2"].clone();
    let xml = fixture(
        env.root(),
        "virt-install-x86_64-kernel.xml",
        &[
            ("@KERNEL@", &g.kernel),
            ("@INITRD@", &g.initrd),
            ("@DISK@", &disk),
        ],
    );
    let out = env
        .cmd(["plan", "--dry-run", "--libvirt-xml"])
        .arg(&xml)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    for note in [
        "libvirt XML: /domain/uuid: not applied",
        "libvirt XML: /domain/clock: not applied",
        "libvirt XML: /domain/devices/controller[1] and 3 more like it: not applied: a USB \
         controller",
        "libvirt XML: /domain/devices/controller[6] and 13 more like it: not applied: PCI(e) \
         ports",
    ] {
        assert!(e.contains(note), "{note}:\n{e}");
    }
    assert!(o.contains(" -accel 'tcg,"), "{o}");
    assert!(o.contains(" -m 512M -smp 2 "), "{o}");
    assert!(o.contains("format=qcow2,snapshot=off"), "{o}");
    // Flags win over the XML, as over --spec.
    let out = env
        .cmd(["plan", "--dry-run", "--memory", "1G", "--libvirt-xml"])
        .arg(&xml)
        .output()
        .unwrap();
    assert!(text(&out).0.contains(" -m 1024M "), "{:?}", text(&out));
}

#[test]
fn export_reports_what_libvirt_cannot_say_and_strict_refuses() {
    let f = &probed().files;
    let env = TestEnv::new();
    let args = |strict: bool| {
        let mut c = env.cmd([
            "export", "libvirt", "--arch", "aarch64", "--accel", "tcg", "--kernel",
        ]);
        c.arg(&f["kernel"]);
        if strict {
            c.arg("--strict");
        }
        c.output().unwrap()
    };
    let out = args(false);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(o.starts_with("<domain type=\"qemu\">"), "{o}");
    assert!(
        e.contains("qemu-direct: libvirt XML cannot express: machine property gic-version=max"),
        "{e}"
    );
    let out = args(true);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(o.is_empty(), "{o}");
    assert!(
        e.starts_with("error: 3 part(s) of the plan cannot be expressed in libvirt domain XML:"),
        "{e}"
    );
    // A spec file works the same, and a plan with nothing lost passes --strict.
    let spec = env.path("vm.toml");
    std::fs::write(
        &spec,
        format!(
            "arch = \"x86_64\"\naccel = \"tcg\"\nkernel = {:?}\n",
            f["kernel"]
        ),
    )
    .unwrap();
    let out = env
        .cmd(["export", "libvirt", "--strict", "--spec"])
        .arg(&spec)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        o.contains("<type arch=\"x86_64\" machine=\"q35\">hvm</type>"),
        "{o}"
    );
}
