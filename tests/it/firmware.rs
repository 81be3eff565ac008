//! Firmware through the binary: guests that boot through UEFI firmware chosen from QEMU's
//! descriptor files (a FAT disk with systemd-boot, no `-kernel`), each VM with its own copy of
//! the variable store in its instance directory and the template untouched; the `firmware`
//! listing; the package named when firmware is missing; and version-gated options refused or
//! left out for a QEMU that cannot take them.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use qemu_direct::{host::KvmState, profile::ProfileSet};
use serde_json::Value;

use crate::common::{TestEnv, fake_host, guest_files, guest_proto, text, wait_until};

/// Boots `ARCH/uefi.img` detached, looks at the instance while it runs, waits for the marker
/// and for the end, and checks the variable store template before and after.
fn boots_through_uefi(arch: &str) {
    let Some(guests) = guest_files(arch, &["uefi.img"]) else {
        return;
    };
    let img = guests.join("uefi.img");
    let img = img.to_str().unwrap();
    let env = TestEnv::new();
    let name = format!("uefi-{arch}");
    let common = ["--arch", arch, "--firmware", "uefi", "--disk", img];

    // The plan names the descriptor's files; nothing about them is hard-coded here.
    let mut args = vec!["plan", "--json", "--name", &name];
    args.extend(common);
    let out = env.qd(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["kernel"].is_null(), "a firmware boot, not -kernel");
    let fw = &plan["descriptor_firmware"];
    assert_eq!(fw["interface"], "uefi");
    assert!(
        fw["selected"]["descriptor"]
            .as_str()
            .unwrap()
            .ends_with(".json"),
        "{fw}"
    );
    let template = PathBuf::from(fw["selected"]["nvram_template"].as_str().unwrap());
    assert_eq!(fw["vars"], format!("{name}_VARS.fd"));
    let before = std::fs::read(&template).unwrap();
    let before_meta = std::fs::metadata(&template).unwrap();

    let mut args = vec!["run", "--name", &name, "--timeout", "300s"];
    args.extend(common);
    let vm = env.launch_detached(env.cmd(&args));
    let inst = vm.dir.clone();

    // While it runs: the VM's own store, 0600, a copy of the template, named in plan.json.
    let vars = inst.join(format!("{name}_VARS.fd"));
    let meta = std::fs::metadata(&vars).unwrap_or_else(|e| panic!("{}: {e}", vars.display()));
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), before_meta.len());
    assert_ne!(meta.ino(), before_meta.ino());
    let running: Value =
        serde_json::from_slice(&std::fs::read(inst.join("plan.json")).unwrap()).unwrap();
    assert_eq!(
        running["descriptor_firmware"]["vars"],
        vars.to_str().unwrap(),
        "plan.json names the copy"
    );

    let marker = guest_proto::ready(arch);
    let out = env.qd(["wait", &name, "--for", &marker, "--timeout", "300s"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "wait: {o}{e}");
    // The guest powers off after the marker; the instance, store and all, goes with it.
    wait_until(
        &format!("{} gone", inst.display()),
        Duration::from_secs(120),
        || !inst.exists(),
    );
    // The console shows the boot loader's work: systemd-boot hands the kernel `initrd=`.
    let log = std::fs::read_to_string(env.log(&name)).unwrap();
    assert!(log.contains(&marker), "{log}");
    assert!(
        log.contains(&format!("{} initrd=", guest_proto::tag("cmdline"))),
        "{log}"
    );

    let after_meta = std::fs::metadata(&template).unwrap();
    assert_eq!(
        std::fs::read(&template).unwrap(),
        before,
        "template changed"
    );
    assert_eq!(after_meta.mtime(), before_meta.mtime());
    assert_eq!(after_meta.mtime_nsec(), before_meta.mtime_nsec());
}

#[test]
fn aarch64_boots_through_uefi_with_its_own_variable_store() {
    boots_through_uefi("aarch64");
}

#[test]
fn x86_64_boots_through_uefi_with_its_own_variable_store() {
    boots_through_uefi("x86_64");
}

#[test]
fn firmware_lists_the_descriptors_and_what_uefi_picks() {
    let env = TestEnv::new();
    let out = env.qd(["firmware", "--arch", "arm64", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in v["descriptors"].as_array().unwrap() {
        assert!(
            d["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["architecture"] == "aarch64"),
            "{d}"
        );
    }
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "uefi and bios for aarch64: {choices:?}");
    let uefi = &choices[0];
    assert_eq!(
        (uefi["arch"].as_str(), uefi["interface"].as_str()),
        (Some("aarch64"), Some("uefi"))
    );
    // Installed (scripts/install-deps): a descriptor; else the package to install.
    if uefi["choice"]["descriptor"].is_string() {
        assert!(Path::new(uefi["choice"]["executable"].as_str().unwrap()).is_file());
    } else {
        assert_eq!(uefi["choice"]["package"], "qemu-efi-aarch64");
    }
    assert_eq!(choices[1]["choice"]["missing"], true, "virt has no BIOS");

    let out = env.qd(["firmware"]);
    let (o, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        o.contains("x86_64   q35              --firmware bios  the machine's built-in BIOS"),
        "{o}"
    );
    let out = env.qd(["firmware", "--arch", "vax"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_firmware_names_the_debian_package_and_starts_nothing() {
    let env = TestEnv::new();
    let img = env.path("disk.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    // Debian's ovmf-ia32 has a Secure Boot build only, so plain UEFI for i686 never exists.
    let out = env.qd([
        "run",
        "--arch",
        "i686",
        "--firmware",
        "uefi",
        "--disk",
        img.to_str().unwrap(),
    ]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.starts_with(
            "error: no uefi firmware for i386 machine q35; the Debian package ovmf-ia32 provides it"
        ),
        "{e}"
    );
    assert!(o.is_empty());
    assert!(!env.instances().join("i686").exists());
    // Secure Boot is a UEFI feature.
    let out = env.qd(["run", "--arch", "x86_64", "--secure-boot", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("Secure Boot is a UEFI feature"));
}

/// A made-up x86_64 host whose emulators report `version`, as a `--host-facts` file.
fn host_file(dir: &Path, version: &str) -> PathBuf {
    let mut h = fake_host("x86_64", KvmState::Missing);
    for e in h.emulators.values_mut() {
        e.version = Some(version.into());
    }
    let f = dir.join(format!("host-{version}.json"));
    std::fs::write(&f, serde_json::to_string(&h).unwrap()).unwrap();
    f
}

#[test]
fn options_the_installed_qemu_cannot_take_are_left_out_or_refused() {
    let env = TestEnv::new();
    let k = env.kernel();
    let plan = |version: &str, extra: &[&str]| {
        let f = host_file(env.root(), version);
        let mut args = vec![
            "--host-facts",
            f.to_str().unwrap(),
            "plan",
            "--arch",
            "aarch64",
            "--kernel",
            &k,
        ];
        args.extend_from_slice(extra);
        env.qd(&args)
    };
    let out = plan("10.0.0", &[]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        o.contains("binary:  /usr/bin/qemu-system-aarch64 (QEMU 10.0)"),
        "{o}"
    );
    assert!(o.contains("cpu:     max (maximum)"), "{o}");
    assert!(
        o.contains(
            "note:    left out: cpu option pauth-impdef=on: is only for QEMU < 10.0, this is 10.0"
        ),
        "{o}"
    );
    let out = plan("4.2.1", &[]);
    let (o, _) = text(&out);
    assert!(o.contains("-accel tcg,thread=multi\n"), "{o}");
    assert!(
        o.contains(
            "note:    left out: -accel tcg option tb-size=256: needs QEMU >= 5.0, this is 4.2.1"
        ),
        "{o}"
    );
    // Asked for explicitly: refused, nothing started.
    let out = plan("4.2.1", &["--tb-size", "64"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert!(
        e.starts_with("error: --tb-size (-accel tcg,tb-size=64) needs QEMU >= 5.0, this is 4.2.1"),
        "{e}"
    );
    let out = plan("7.2.22", &["--tb-size", "64", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["accel_options"],
        serde_json::json!(["thread=multi", "tb-size=64"])
    );
    assert_eq!(v["qemu_version"], "7.2.22");
}

#[test]
fn every_profile_sets_tcg_speed_defaults() {
    // thread=multi where MTTCG runs the guest (gated per host), and a bounded tb-size.
    for p in ProfileSet::embedded().unwrap().iter() {
        let tcg = &p.accel[&qemu_direct::profile::Accel::Tcg];
        let keys: Vec<&str> = tcg.accel_options.iter().map(|o| o.key()).collect();
        assert_eq!(keys, ["thread", "tb-size"], "{}", p.name);
    }
}
