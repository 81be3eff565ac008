//! Spec parsing and validation, without a host.
use std::path::Path;

use super::*;
use crate::profile::{ProfileSet, arch::Arch};

fn profiles() -> ProfileSet {
    ProfileSet::embedded().unwrap()
}

fn input(props: &[&str]) -> SpecInput {
    let mut i = SpecInput::default();
    for p in props {
        i.add_property(p).unwrap();
    }
    i
}

#[test]
fn nova_arch_precedence_follows_the_spec_examples() {
    let set = profiles();
    // emulation=AARCH64 + hw=X86_64: an aarch64 guest emulated on an x86_64 host.
    let s = input(&[
        "hw_emulation_architecture=AARCH64",
        "hw_architecture=X86_64",
    ])
    .validate(&set)
    .unwrap();
    assert_eq!(
        s.arch,
        ArchChoice::Given {
            arch: Arch::new_canonical("aarch64"),
            field: "hw_emulation_architecture".into(),
            host_required: Some(Arch::new_canonical("x86_64")),
        }
    );
    // emulation=X86_64 alone: x86_64 on any host.
    let s = input(&["hw_emulation_architecture=x86_64"])
        .validate(&set)
        .unwrap();
    assert!(matches!(
        s.arch,
        ArchChoice::Given {
            host_required: None,
            ..
        }
    ));
    // hw=AARCH64 alone: native aarch64 hosts only.
    let s = input(&["hw_architecture=aarch64"]).validate(&set).unwrap();
    assert_eq!(
        s.arch,
        ArchChoice::NativeOnly {
            arch: Arch::new_canonical("aarch64")
        }
    );
    assert_eq!(input(&[]).validate(&set).unwrap().arch, ArchChoice::Host);
}

#[test]
fn bad_properties_are_named() {
    let set = profiles();
    let e = input(&["hw_cpu_mode=x"])
        .validate(&set)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "invalid property 'hw_cpu_mode': unknown key; valid: hw_emulation_architecture"
        ),
        "{e}"
    );
    let e = SpecInput::default()
        .add_property("hw_architecture")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid --property 'hw_architecture': write KEY=VALUE"),
        "{e}"
    );
    let e = input(&["hw_architecture=vax"])
        .validate(&set)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("unknown architecture 'vax' in hw_architecture; valid: "),
        "{e}"
    );
    let e = input(&["hw_architecture="])
        .validate(&set)
        .unwrap_err()
        .to_string();
    assert!(e.contains("property hw_architecture"), "{e}");
}

#[test]
fn conflicting_arch_sources_are_refused() {
    let set = profiles();
    let mut i = input(&["hw_emulation_architecture=aarch64"]);
    i.arch = Some("x86_64".into());
    let e = i.validate(&set).unwrap_err().to_string();
    assert!(
        e.contains("--arch x86_64 conflicts with hw_emulation_architecture=aarch64"),
        "{e}"
    );
    let mut i = input(&["hw_architecture=aarch64"]);
    i.arch = Some("amd64".into());
    assert!(i.validate(&set).is_err());
    // The same arch twice is no conflict.
    let mut i = input(&["hw_emulation_architecture=arm64"]);
    i.arch = Some("aarch64".into());
    assert!(i.validate(&set).is_ok());
}

#[test]
fn field_errors_name_field_and_value() {
    let set = profiles();
    let i = SpecInput {
        memory: Some("lots".into()),
        ..Default::default()
    };
    let e = i.validate(&set).unwrap_err().to_string();
    assert!(e.starts_with("invalid memory 'lots': "), "{e}");
    let i = SpecInput {
        kernel: Some("/nonexistent/vmlinuz".into()),
        ..Default::default()
    };
    assert_eq!(
        i.validate(&set).unwrap_err().to_string(),
        "kernel /nonexistent/vmlinuz: no such file"
    );
    let i = SpecInput {
        kernel: Some("/".into()),
        ..Default::default()
    };
    assert_eq!(
        i.validate(&set).unwrap_err().to_string(),
        "kernel /: not a regular file"
    );
    let i = SpecInput {
        append: Some("quiet".into()),
        ..Default::default()
    };
    assert!(
        i.validate(&set)
            .unwrap_err()
            .to_string()
            .contains("add --kernel")
    );
    let i = SpecInput {
        name: Some("../etc".into()),
        ..Default::default()
    };
    assert!(
        i.validate(&set)
            .unwrap_err()
            .to_string()
            .starts_with("invalid name '../etc'")
    );
    let i = SpecInput {
        machine: Some("q35,accel=kvm".into()),
        ..Default::default()
    };
    assert!(
        i.validate(&set)
            .unwrap_err()
            .to_string()
            .starts_with("invalid machine 'q35,accel=kvm'")
    );
    let i = SpecInput {
        smp: Some(0),
        ..Default::default()
    };
    assert!(
        i.validate(&set)
            .unwrap_err()
            .to_string()
            .starts_with("invalid smp '0'")
    );
}

#[test]
fn spec_files_reject_unknown_keys_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm.toml");
    std::fs::write(&p, "arch = \"aarch64\"\nmemroy = \"1G\"\n").unwrap();
    let e = SpecInput::from_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("vm.toml") && e.contains("memroy") && e.contains("line 2"),
        "{e}"
    );
    std::fs::write(&p, "smp = \"two\"\n").unwrap();
    let e = SpecInput::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("invalid type"), "{e}");
    std::fs::write(&p, "accel = \"kvmm\"\n").unwrap();
    let e = SpecInput::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("kvmm") && e.contains("tcg"), "{e}");
}

#[test]
fn spec_file_paths_are_relative_to_the_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm.toml");
    std::fs::write(
        &p,
        "arch = \"arm64\"\nkernel = \"k\"\nmemory = \"1G\"\n[properties]\nhw_machine_type = \"virt\"\n",
    )
    .unwrap();
    let file = SpecInput::from_file(&p).unwrap();
    assert_eq!(file.kernel.as_deref(), Some(dir.path().join("k").as_path()));
    let cli = SpecInput {
        memory: Some("2G".into()),
        ..Default::default()
    };
    let merged = file.overlay(cli);
    assert_eq!(merged.memory.as_deref(), Some("2G"));
    assert_eq!(merged.arch.as_deref(), Some("arm64"));
    assert_eq!(merged.properties["hw_machine_type"], "virt");
}

#[test]
fn firmware_is_a_kind_or_a_file() {
    let set = profiles();
    let fw = |f: &str, secure: Option<bool>| SpecInput {
        firmware: Some(f.into()),
        secure_boot: secure,
        ..Default::default()
    };
    assert_eq!(
        fw("uefi", None).validate(&set).unwrap().firmware,
        Some(FirmwareChoice::Uefi { secure_boot: false })
    );
    assert_eq!(
        fw("uefi", Some(true)).validate(&set).unwrap().firmware,
        Some(FirmwareChoice::Uefi { secure_boot: true })
    );
    assert_eq!(
        fw("bios", None).validate(&set).unwrap().firmware,
        Some(FirmwareChoice::Bios)
    );
    // Anything else is a file, checked like one; ./uefi is the file named uefi.
    assert_eq!(
        fw("./uefi", None).validate(&set).unwrap_err().to_string(),
        "firmware ./uefi: no such file"
    );
    let e = fw("bios", Some(true))
        .validate(&set)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "secure_boot conflicts with firmware bios: Secure Boot is a UEFI feature; add --firmware uefi"
    );
    let e = SpecInput {
        tb_size: Some(0),
        ..Default::default()
    }
    .validate(&set)
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("invalid tb_size '0'"), "{e}");

    // In a spec file, `firmware = "uefi"` is the kind, a relative file is the file's.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm.toml");
    std::fs::write(
        &p,
        "firmware = \"uefi\"\nsecure_boot = true\ntb_size = 128\nnested_virt = true\n",
    )
    .unwrap();
    let file = SpecInput::from_file(&p).unwrap();
    assert_eq!(file.firmware.as_deref(), Some(Path::new("uefi")));
    assert_eq!((file.secure_boot, file.tb_size), (Some(true), Some(128)));
    assert_eq!(file.nested_virt, Some(true));
    std::fs::write(&p, "firmware = \"fw.bin\"\n").unwrap();
    let file = SpecInput::from_file(&p).unwrap();
    assert_eq!(file.firmware, Some(dir.path().join("fw.bin")));
}
