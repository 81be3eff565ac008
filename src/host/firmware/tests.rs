//! Selection against the distribution's descriptors and against temp-dir ones, variable store
//! copies, and real firmware boots on the serial console.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use super::select::{glob, machine_matches};
use super::*;
use std::os::unix::fs::PermissionsExt;

const SYSTEM_DIR: &str = "/usr/share/qemu/firmware";

fn req(arch: &str, machine: &str, interface: &str, secure_boot: bool) -> FirmwareRequest {
    FirmwareRequest {
        arch: arch.into(),
        machine: machine.into(),
        interface: interface.into(),
        secure_boot,
    }
}

/// The distribution's descriptors alone (not /etc or the user's, which could differ between
/// hosts), or `None` with a message when the package that ships `file` is absent.
fn distro(file: &str) -> Option<Descriptors> {
    if !Path::new(SYSTEM_DIR).join(file).is_file() {
        eprintln!("skipped: {SYSTEM_DIR}/{file} is not installed");
        return None;
    }
    Some(Descriptors::load(&[SYSTEM_DIR.into()]).unwrap())
}

fn descriptor(arch: &str, machines: &[&str], features: &[&str], exe: &Path, vars: &Path) -> String {
    serde_json::json!({
        "description": format!("test firmware {}", exe.display()),
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": { "filename": exe, "format": "raw" },
            "nvram-template": { "filename": vars, "format": "raw" },
        },
        "targets": [{ "architecture": arch, "machines": machines }],
        "features": features,
        "tags": [],
    })
    .to_string()
}

/// A temp dir with `high/` and `low/` descriptor dirs and two existing images.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        for d in ["high", "low"] {
            fs::create_dir(root.path().join(d)).unwrap();
        }
        for f in ["CODE.fd", "VARS.fd"] {
            fs::write(root.path().join(f), f).unwrap();
        }
        Fixture { root }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }
    fn write(&self, rel: &str, text: &str) {
        fs::write(self.path(rel), text).unwrap();
    }
    /// A valid x86_64 q35 descriptor whose code image is `exe` (relative to the root).
    fn write_desc(&self, rel: &str, exe: &str) {
        self.write(
            rel,
            &descriptor(
                "x86_64",
                &["pc-q35-*"],
                &[],
                &self.path(exe),
                &self.path("VARS.fd"),
            ),
        );
    }
    fn load(&self) -> Descriptors {
        Descriptors::load(&[self.path("high"), self.path("low"), self.path("absent")]).unwrap()
    }
}

fn considered(err: FirmwareError) -> Vec<(PathBuf, String)> {
    match err {
        FirmwareError::NotFound { considered, .. } => considered,
        other => panic!("not NotFound: {other}"),
    }
}

#[test]
fn x86_64_q35_uefi_selects_the_plain_4m_ovmf() {
    let Some(set) = distro("60-edk2-x86_64.json") else {
        return;
    };
    for machine in ["q35", "pc-q35-7.2", "pc"] {
        let sel = set.select(&req("x86_64", machine, "uefi", false)).unwrap();
        assert_eq!(
            sel.descriptor,
            Path::new(SYSTEM_DIR).join("60-edk2-x86_64.json")
        );
        assert_eq!(sel.executable, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert_eq!(
            sel.nvram_template.as_deref(),
            Some(Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"))
        );
        assert_eq!((sel.device, sel.format.as_str()), (Device::Flash, "raw"));
        assert!(sel.machine_options().is_empty());
    }
}

#[test]
fn aarch64_virt_uefi_selects_aavmf() {
    let Some(set) = distro("60-edk2-aarch64.json") else {
        return;
    };
    let sel = set.select(&req("aarch64", "virt", "uefi", false)).unwrap();
    assert_eq!(sel.executable, Path::new("/usr/share/AAVMF/AAVMF_CODE.fd"));
    assert_eq!(
        sel.nvram_template.as_deref(),
        Some(Path::new("/usr/share/AAVMF/AAVMF_VARS.fd"))
    );
}

#[test]
fn secure_boot_selects_a_secure_build_needing_smm() {
    let Some(set) = distro("40-edk2-x86_64-secure-enrolled.json") else {
        return;
    };
    let sel = set.select(&req("x86_64", "q35", "uefi", true)).unwrap();
    assert!(sel.has_feature("secure-boot"), "{sel:?}");
    assert_eq!(
        sel.executable,
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
    );
    assert_eq!(sel.machine_options(), ["smm=on"]);
    let err = set.select(&req("x86_64", "pc", "uefi", true)).unwrap_err();
    assert!(err.to_string().contains("no Secure Boot"), "{err}");
}

#[test]
fn riscv64_finds_nothing_and_says_why_for_each_file() {
    let Some(set) = distro("60-edk2-x86_64.json") else {
        return;
    };
    let err = set
        .select(&req("riscv64", "virt", "uefi", false))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("no uefi firmware for riscv64 machine virt\n"),
        "{text}"
    );
    let considered = considered(err);
    assert_eq!(considered.len(), set.list(None).len());
    for (path, why) in &considered {
        assert!(why.ends_with(", not riscv64"), "{}: {why}", path.display());
        assert!(
            text.contains(&format!("{}: {why}", path.display())),
            "{text}"
        );
    }
}

#[test]
fn a_more_specific_directory_overrides_by_name() {
    let fx = Fixture::new();
    fs::copy(fx.path("CODE.fd"), fx.path("OTHER.fd")).unwrap();
    fx.write_desc("low/50-a.json", "CODE.fd");
    fx.write_desc("high/50-a.json", "OTHER.fd");
    let set = fx.load();
    let sel = set.select(&req("x86_64", "q35", "uefi", false)).unwrap();
    assert_eq!(sel.descriptor, fx.path("high/50-a.json"));
    assert_eq!(sel.executable, fx.path("OTHER.fd"));
    assert_eq!(set.list(None).len(), 1);
}

#[test]
fn an_empty_file_disables_the_name() {
    let fx = Fixture::new();
    fx.write_desc("low/50-a.json", "CODE.fd");
    fx.write("high/50-a.json", "");
    let set = fx.load();
    assert!(set.list(None).is_empty());
    let err = set
        .select(&req("x86_64", "q35", "uefi", false))
        .unwrap_err();
    assert_eq!(
        considered(err),
        [(
            fx.path("high/50-a.json"),
            "disabled (empty file)".to_string()
        )]
    );
    fx.write_desc("low/60-b.json", "CODE.fd");
    let sel = fx
        .load()
        .select(&req("x86_64", "q35", "uefi", false))
        .unwrap();
    assert_eq!(sel.descriptor, fx.path("low/60-b.json"));
}

#[test]
fn order_is_by_file_name_not_directory() {
    let fx = Fixture::new();
    fx.write_desc("high/20-b.json", "CODE.fd");
    fx.write_desc("low/10-a.json", "CODE.fd");
    fx.write("low/05-notes.txt", "not a descriptor");
    let set = fx.load();
    let files: Vec<PathBuf> = set.list(None).into_iter().map(|l| l.file).collect();
    assert_eq!(files, [fx.path("low/10-a.json"), fx.path("high/20-b.json")]);
    let sel = set.select(&req("x86_64", "q35", "uefi", false)).unwrap();
    assert_eq!(sel.descriptor, fx.path("low/10-a.json"));
}

#[test]
fn unknown_keys_and_values_are_tolerated() {
    let fx = Fixture::new();
    let future = serde_json::json!({
        "description": "from a newer QEMU",
        "interface-types": ["uefi", "hypothetical-interface"],
        "mapping": {
            "device": "flash",
            "mode": "split",
            "executable": { "filename": fx.path("CODE.fd"), "format": "raw", "extra": 1 },
            "nvram-template": { "filename": fx.path("VARS.fd"), "format": "raw" },
            "new-mapping-key": { "nested": [1, 2] },
        },
        "targets": [{ "architecture": "x86_64", "machines": ["pc-q35-*"], "new": true }],
        "features": ["acpi-s3", "feature-from-2030"],
        "tags": ["-DFOO"],
        "new-top-level-key": "x",
    });
    fx.write("low/30-future.json", &future.to_string());
    let kernel = serde_json::json!({
        "interface-types": ["uefi"],
        "mapping": { "device": "kernel", "filename": fx.path("CODE.fd") },
        "targets": [{ "architecture": "x86_64", "machines": ["*"] }],
    });
    fx.write("low/20-kernel.json", &kernel.to_string());
    fx.write("low/10-broken.json", "{ not json");
    let set = fx.load();
    let sel = set
        .select(&req("x86_64", "pc-q35-7.2", "uefi", false))
        .unwrap();
    assert_eq!(sel.descriptor, fx.path("low/30-future.json"));
    assert!(sel.has_feature("feature-from-2030"));

    let err = set
        .select(&req("x86_64", "q35", "bios", false))
        .unwrap_err();
    let why: Vec<String> = considered(err).into_iter().map(|(_, w)| w).collect();
    assert!(why[0].starts_with("not a firmware descriptor: "), "{why:?}");
    assert_eq!(why[1], "interface uefi, not bios");
    assert_eq!(why[2], "interface uefi, hypothetical-interface, not bios");
    let err = set
        .select(&req("x86_64", "q35", "uefi", false))
        .map(|s| s.descriptor);
    assert_eq!(err.unwrap(), fx.path("low/30-future.json"));
    fx.write("low/30-future.json", "");
    let err = fx
        .load()
        .select(&req("x86_64", "q35", "uefi", false))
        .unwrap_err();
    assert_eq!(considered(err)[1].1, "device kernel is not supported");

    let listed = set.list(Some("x86_64"));
    assert_eq!(listed.len(), 3);
    assert!(listed[0].problem.is_some());
    let json = serde_json::to_value(&listed[2]).unwrap();
    assert_eq!(json["device"], "flash");
    assert_eq!(json["files"][0]["exists"], true);
    assert!(
        set.list(Some("aarch64"))
            .iter()
            .all(|l| l.problem.is_some())
    );
}

#[test]
fn missing_files_are_skipped_with_the_reason() {
    let fx = Fixture::new();
    fx.write_desc("low/10-gone.json", "GONE.fd");
    fx.write_desc("low/20-ok.json", "CODE.fd");
    let set = fx.load();
    let sel = set.select(&req("x86_64", "q35", "uefi", false)).unwrap();
    assert_eq!(sel.descriptor, fx.path("low/20-ok.json"));
    assert!(!set.list(None)[0].files[0].exists);

    fs::remove_file(fx.path("low/20-ok.json")).unwrap();
    let err = fx
        .load()
        .select(&req("x86_64", "q35", "uefi", false))
        .unwrap_err();
    assert!(
        err.to_string().ends_with(&format!(
            "10-gone.json: {} does not exist",
            fx.path("GONE.fd").display()
        )),
        "{err}"
    );
}

#[test]
fn features_filter_secure_boot_both_ways() {
    let fx = Fixture::new();
    let exe = fx.path("CODE.fd");
    let vars = fx.path("VARS.fd");
    let d = |f: &[&str]| descriptor("x86_64", &["pc-q35-*"], f, &exe, &vars);
    fx.write("low/10-sb.json", &d(&["secure-boot", "requires-smm"]));
    fx.write("low/20-smm.json", &d(&["requires-smm"]));
    fx.write("low/30-plain.json", &d(&["acpi-s3"]));
    let set = fx.load();
    let plain = set.select(&req("x86_64", "q35", "uefi", false)).unwrap();
    assert_eq!(plain.descriptor, fx.path("low/30-plain.json"));
    let sb = set.select(&req("x86_64", "q35", "uefi", true)).unwrap();
    assert_eq!(sb.descriptor, fx.path("low/10-sb.json"));
    fs::remove_file(fx.path("low/30-plain.json")).unwrap();
    let err = fx
        .load()
        .select(&req("x86_64", "q35", "uefi", false))
        .unwrap_err();
    let why: Vec<String> = considered(err).into_iter().map(|(_, w)| w).collect();
    assert_eq!(
        why,
        [
            "has secure-boot, and Secure Boot was not asked for",
            "has requires-smm, and Secure Boot was not asked for"
        ]
    );
}

#[test]
fn machine_patterns_and_aliases() {
    assert!(machine_matches("pc-q35-*", "pc-q35-7.2"));
    assert!(machine_matches("pc-q35-*", "q35"));
    assert!(!machine_matches("pc-q35-*", "pc"));
    assert!(machine_matches("pc-i440fx-*", "pc"));
    assert!(machine_matches("virt-*", "virt"));
    assert!(machine_matches("virt", "virt"));
    assert!(machine_matches("*", "anything"));
    // A pattern narrower than the family cannot promise to cover what an alias means.
    assert!(!machine_matches("pc-q35-8.*", "q35"));
    assert!(glob("virt-?.2", "virt-7.2"));
    assert!(glob("a*b*c", "aXXbYYbc"));
    assert!(!glob("a*b", "aXXbc"));
    assert!(!glob("virt-*", "virtio"));
}

#[test]
fn copy_vars_makes_a_private_copy_and_keeps_it() {
    let fx = Fixture::new();
    let template = fx.path("VARS.fd");
    fs::set_permissions(&template, fs::Permissions::from_mode(0o444)).unwrap();
    let dest = copy_vars(&template, fx.root.path(), "vm1").unwrap();
    assert_eq!(dest, fx.path("vm1_VARS.fd"));
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::read(&dest).unwrap(), b"VARS.fd");
    fs::write(&dest, b"written by the guest").unwrap();
    assert_eq!(copy_vars(&template, fx.root.path(), "vm1").unwrap(), dest);
    assert_eq!(fs::read(&dest).unwrap(), b"written by the guest");
    assert_eq!(fs::read(&template).unwrap(), b"VARS.fd");
    assert_eq!(
        fs::metadata(&template).unwrap().permissions().mode() & 0o777,
        0o444
    );
    for bad in ["", "..", "a/b"] {
        assert!(matches!(
            copy_vars(&template, fx.root.path(), bad),
            Err(FirmwareError::VmName(_))
        ));
    }
    fs::copy(&template, fx.path("x_VARS.fd")).unwrap();
    let err = copy_vars(&fx.path("x_VARS.fd"), fx.root.path(), "x").unwrap_err();
    assert!(matches!(err, FirmwareError::VarsIsTemplate { .. }), "{err}");
    let err = copy_vars(&fx.path("nope"), fx.root.path(), "vm2").unwrap_err();
    assert!(matches!(err, FirmwareError::CopyVars { .. }), "{err}");
    assert_eq!(
        fs::read_dir(fx.root.path()).unwrap().count(),
        6,
        "no temp file left"
    );
}

/// One boot at a time: two emulated firmwares at once on a small host only blur the timings.
static BOOTS: Mutex<()> = Mutex::new(());

/// Boots `binary` on `machine` with `extra` options and the selected firmware until a marker
/// appears on the serial console, then checks that the firmware wrote to the VM's own variable
/// store. Panics with the serial output when no marker comes.
fn boot_firmware(binary: &str, machine: &str, extra: &[&str], sel: &Selected, markers: &[&str]) {
    let Ok(bin) = which::which(binary) else {
        eprintln!("skipped: {binary} is not installed");
        return;
    };
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let template = sel.nvram_template.as_ref().unwrap();
    let vars = copy_vars(template, dir.path(), "boot").unwrap();
    let machine = std::iter::once(machine.to_owned())
        .chain(sel.machine_options())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(bin)
        .args(["-machine", &machine])
        .args(extra)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(crate::argv::firmware::flash_or_bios(sel, Some(&vars)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let limit = Duration::from_secs(60);
    let mut seen = Vec::new();
    let found = loop {
        let text = String::from_utf8_lossy(&seen);
        if let Some(m) = markers.iter().find(|m| text.contains(*m)) {
            break Some(*m);
        }
        match rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
            Ok(chunk) => seen.extend(chunk),
            Err(_) => break None,
        }
    };
    let took = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&seen);
    let Some(marker) = found else {
        panic!("no {markers:?} within {limit:?} from {binary}; serial said:\n{text}");
    };
    eprintln!("{binary}: '{marker}' on serial after {took:.1?}");
    // Comparing by assert_ne! would print two 64 MiB images on failure.
    assert!(
        fs::read(&vars).unwrap() != fs::read(template).unwrap(),
        "the firmware did not write its boot options to the per-VM store"
    );
}

#[test]
fn aarch64_uefi_boots_to_its_boot_manager() {
    let Some(set) = distro("60-edk2-aarch64.json") else {
        return;
    };
    let sel = set.select(&req("aarch64", "virt", "uefi", false)).unwrap();
    let extra = ["-cpu", "max", "-m", "256"];
    boot_firmware(
        "qemu-system-aarch64",
        "virt",
        &extra,
        &sel,
        &["BdsDxe: starting"],
    );
}

#[test]
fn x86_64_uefi_boots_to_its_boot_manager() {
    let Some(set) = distro("60-edk2-x86_64.json") else {
        return;
    };
    let sel = set.select(&req("x86_64", "q35", "uefi", false)).unwrap();
    boot_firmware(
        "qemu-system-x86_64",
        "q35",
        &["-m", "256"],
        &sel,
        &["BdsDxe: starting"],
    );
}

#[test]
fn x86_64_secure_boot_refuses_the_unsigned_shell() {
    let Some(set) = distro("40-edk2-x86_64-secure-enrolled.json") else {
        return;
    };
    let sel = set.select(&req("x86_64", "q35", "uefi", true)).unwrap();
    // The enrolled Microsoft keys reject EDK II's unsigned shell: Secure Boot is enforced.
    boot_firmware(
        "qemu-system-x86_64",
        "q35",
        &["-m", "256"],
        &sel,
        &["Security Violation"],
    );
}
