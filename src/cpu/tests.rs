//! Pure tests: made-up capabilities, no QEMU. The real-QEMU side is in tests/it/cpu*.rs.

use std::collections::BTreeSet;

use super::*;
use crate::{
    host::caps::{Caps, CpuFeatures, CpuModel, KvmInfo},
    profile::{Accel, ProfileSet},
    util::size::MemSize,
};

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn model(name: &str, vendor: &str, feats: &[&str], unavailable: &[&str]) -> CpuModel {
    CpuModel {
        name: name.into(),
        alias_of: None,
        unavailable: unavailable.iter().map(|s| s.to_string()).collect(),
        deprecated: false,
        features: Some(CpuFeatures {
            vendor: Some(vendor.into()),
            enabled: set(feats),
        }),
    }
}

/// A small x86 emulator: the host offers a, b, c, d (Intel).
fn caps() -> Caps {
    Caps {
        version: "7.2.0".into(),
        kvm: KvmInfo {
            enabled: false,
            present: false,
        },
        machines: Vec::new(),
        cpu_models: Some(vec![
            model("max", "AuthenticAMD", &["a", "b", "c", "d"], &[]),
            model("Small", "GenuineIntel", &["a"], &[]),
            model("Medium", "GenuineIntel", &["a", "b", "c"], &[]),
            model("Amd", "AuthenticAMD", &["a", "b", "c", "d"], &[]),
            model("Big", "GenuineIntel", &["a", "b", "c", "e"], &["e"]),
        ]),
        host_cpu: Some(CpuFeatures {
            vendor: Some("GenuineIntel".into()),
            enabled: set(&["a", "b", "c", "d"]),
        }),
        feature_names: Some(set(&["a", "b", "c", "d", "e", "lahf-lm", "pse36"])),
    }
}

fn resolve_x86(
    req: CpuRequest,
    accel: Accel,
    memory: &str,
    caps: &Caps,
) -> Result<Option<Cpu>, CpuError> {
    let profiles = ProfileSet::embedded().unwrap();
    let profile = profiles.resolve("arch", "x86_64").unwrap();
    resolve(
        &req,
        &CpuContext {
            profile,
            accel,
            binary: "qemu-system-x86_64",
            caps: Some(caps),
            host_phys_bits: Some(39),
            memory: memory.parse::<MemSize>().unwrap(),
            machine: "q35",
        },
    )
}

fn req(models: &[&str], flags: &[&str]) -> CpuRequest {
    CpuSettings {
        cpu_models: (!models.is_empty()).then(|| models.iter().map(|s| s.to_string()).collect()),
        cpu_model_extra_flags: Some(flags.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
    .to_request("test", None)
    .unwrap()
}

#[test]
fn flags_parse_lowercase_and_conflicts_are_caught() {
    assert_eq!(
        Flag::parse("f", "+PSE36").unwrap(),
        Flag {
            name: "pse36".into(),
            on: true
        }
    );
    assert!(!Flag::parse("f", "-x").unwrap().on);
    assert!(Flag::parse("f", "a=b").is_err());
    assert!(Flag::parse("f", "+").is_err());
    let flags = [
        Flag::parse("f", "x").unwrap(),
        Flag::parse("f", "+X").unwrap(),
    ];
    assert_eq!(normalize_flags("f", &flags).unwrap().len(), 1);
    let flags = [
        Flag::parse("f", "x").unwrap(),
        Flag::parse("f", "-x").unwrap(),
    ];
    assert!(matches!(
        normalize_flags("f", &flags),
        Err(CpuError::Conflict { .. })
    ));
}

#[test]
fn maxphysaddr_syntax() {
    assert_eq!(
        MaxPhysAddr::parse("m", "emulate:42").unwrap(),
        MaxPhysAddr::Emulate { bits: 42 }
    );
    assert_eq!(
        MaxPhysAddr::parse("m", "passthrough").unwrap(),
        MaxPhysAddr::Passthrough { limit: None }
    );
    assert_eq!(
        MaxPhysAddr::parse("m", "Passthrough:40").unwrap(),
        MaxPhysAddr::Passthrough { limit: Some(40) }
    );
    for bad in ["emulate", "emulate:x", "emulate:300", "sideways", ""] {
        assert!(MaxPhysAddr::parse("m", bad).is_err(), "{bad}");
    }
}

#[test]
fn mode_rules_need_no_host() {
    let r = |mode: &str, models: &[&str], flags: &[&str]| {
        CpuSettings {
            cpu_mode: Some(mode.into()),
            cpu_models: Some(models.iter().map(|s| s.to_string()).collect()),
            cpu_model_extra_flags: Some(flags.iter().map(|s| s.to_string()).collect()),
            cpu_check: None,
        }
        .to_request("t", None)
    };
    assert!(r("custom", &[], &[]).is_err());
    assert!(r("maximum", &["Small"], &[]).is_err());
    assert!(r("none", &[], &["-a"]).is_err());
    assert!(r("Host_Passthrough", &[], &["-a"]).is_ok());
    assert!(r("bogus", &[], &[]).is_err());
}

#[test]
fn overlay_replaces_the_cpu_or_adds_features() {
    let base = req(&["Small"], &["+a", "-b"]);
    // Features alone are added on top of the layer below, the top winning per feature.
    let top = req(&[], &["+b"]);
    let merged = base.clone().overlay(top);
    assert_eq!(merged.models, ["Small"]);
    assert_eq!(merged.flags.len(), 2);
    assert!(merged.flags.iter().any(|f| f.name == "b" && f.on));
    // A model replaces the model and its features.
    let merged = base.overlay(req(&["Medium"], &[]));
    assert_eq!(
        (merged.models, merged.flags.len()),
        (vec!["Medium".into()], 0)
    );
}

#[test]
fn custom_models_pick_the_first_that_runs() {
    let c = caps();
    let cpu = resolve_x86(req(&["big", "medium"], &[]), Accel::Tcg, "1G", &c)
        .unwrap()
        .unwrap();
    assert_eq!(cpu.model, "Medium");
    // Disabling what Big lacks makes Big runnable.
    let cpu = resolve_x86(req(&["big"], &["-e"]), Accel::Tcg, "1G", &c)
        .unwrap()
        .unwrap();
    assert_eq!(cpu.qemu_value(), "Big,e=off");
    let err = resolve_x86(req(&["big"], &[]), Accel::Tcg, "1G", &c).unwrap_err();
    assert!(err.to_string().contains("Big lacks e"), "{err}");
    let err = resolve_x86(req(&["Mediun"], &[]), Accel::Tcg, "1G", &c).unwrap_err();
    assert!(err.to_string().contains("did you mean Medium"), "{err}");
}

#[test]
fn features_are_checked_mapped_and_required_ones_must_be_offered() {
    let c = caps();
    let cpu = resolve_x86(req(&["Small"], &["-lahf_lm", "+a"]), Accel::Tcg, "1G", &c)
        .unwrap()
        .unwrap();
    assert_eq!(cpu.qemu_value(), "Small,lahf-lm=off,a=on");
    let err = resolve_x86(req(&["Small"], &["+ee"]), Accel::Tcg, "1G", &c).unwrap_err();
    assert!(matches!(err, CpuError::UnknownFeature { .. }), "{err}");
    // `e` is a known feature the host does not offer.
    let err = resolve_x86(req(&[], &["+e"]), Accel::Tcg, "1G", &c).unwrap_err();
    assert!(err.to_string().contains("cannot have e"), "{err}");
    let mut unchecked = req(&[], &["+e"]);
    unchecked.check = CpuCheck::None;
    assert!(resolve_x86(unchecked, Accel::Tcg, "1G", &c).is_ok());
}

#[test]
fn host_model_is_the_closest_runnable_model_plus_the_rest() {
    let c = caps();
    let mut r = CpuRequest {
        mode: Some(CpuMode::HostModel),
        ..Default::default()
    };
    r.source = Some("t".into());
    let cpu = resolve_x86(r, Accel::Kvm, "1G", &c).unwrap().unwrap();
    // Amd matches every feature but not the vendor; Big has e the host lacks.
    assert_eq!(cpu.qemu_value(), "Medium,d=on");
    assert_eq!(cpu.mode, CpuMode::HostModel);
}

#[test]
fn host_passthrough_and_passthrough_bits_need_kvm() {
    let c = caps();
    let hp = CpuRequest {
        mode: Some(CpuMode::HostPassthrough),
        ..Default::default()
    };
    assert!(matches!(
        resolve_x86(hp.clone(), Accel::Tcg, "1G", &c),
        Err(CpuError::NeedsKvm { .. })
    ));
    assert_eq!(
        resolve_x86(hp.clone(), Accel::Kvm, "1G", &c)
            .unwrap()
            .unwrap()
            .model,
        "host"
    );
    let pt = CpuRequest {
        maxphysaddr: Some(MaxPhysAddr::Passthrough { limit: Some(38) }),
        ..hp
    };
    assert_eq!(
        resolve_x86(pt.clone(), Accel::Kvm, "1G", &c)
            .unwrap()
            .unwrap()
            .qemu_value(),
        "host,host-phys-bits=on,host-phys-bits-limit=38"
    );
    assert!(matches!(
        resolve_x86(pt, Accel::Tcg, "1G", &c),
        Err(CpuError::NeedsKvm { .. })
    ));
}

#[test]
fn emulated_bits_are_range_checked_and_capped_by_the_kvm_host() {
    let c = caps();
    let bits = |n: u8| CpuRequest {
        maxphysaddr: Some(MaxPhysAddr::Emulate { bits: n }),
        ..Default::default()
    };
    assert!(resolve_x86(bits(31), Accel::Tcg, "1G", &c).is_err());
    assert!(resolve_x86(bits(53), Accel::Tcg, "1G", &c).is_err());
    assert!(resolve_x86(bits(52), Accel::Tcg, "1G", &c).is_ok());
    assert!(
        resolve_x86(bits(42), Accel::Kvm, "1G", &c).is_err(),
        "host has 39"
    );
    // 32 bits: QEMU skips the 64-bit hole, so it works while RAM stays under 4 GiB.
    assert!(resolve_x86(bits(32), Accel::Tcg, "1G", &c).is_ok());
    assert!(resolve_x86(bits(34), Accel::Tcg, "1G", &c).is_err());
}

/// Boundaries measured with QEMU 7.2 (`-machine q35|pc -cpu max|Nehalem,phys-bits=N -m SIZE`,
/// "phys-bits too low (N)" or not), so the layout data in x86_64.toml is checked against QEMU.
#[test]
fn memory_layout_matches_measured_qemu_7_2() {
    let profiles = ProfileSet::embedded().unwrap();
    let x86 = profiles.resolve("arch", "x86_64").unwrap();
    let map = |m: &str| x86.cpu.memory_map.iter().find(|mm| mm.matches(m)).unwrap();
    let top =
        |m: &str, ram: &str, amd: bool| highest_address(map(m), ram.parse().unwrap(), amd) - 1;
    // (machine, RAM, AMD vendor, QEMU's reported max used address)
    assert_eq!(top("q35", "2815M", true), 0x8ffffffff);
    assert_eq!(top("q35", "2816M", true), 0x93fffffff);
    assert_eq!(top("pc-q35-7.2", "31G", true), 0x103fffffff);
    assert_eq!(top("q35", "1000G", false), 0x1027fffffff);
    assert_eq!(top("q35", "1000G", true), 0x2017fffffff);
    let fits =
        |m: &str, ram: &str, bits: u8| phys_bits_fit(map(m), ram.parse().unwrap(), true, bits);
    for (m, ram, bits, ok) in [
        ("q35", "512M", 35, false),
        ("q35", "512M", 36, true),
        ("q35", "30G", 36, true),
        ("q35", "31G", 36, false),
        ("q35", "1000G", 41, false),
        ("q35", "2000G", 41, false),
        ("q35", "2000G", 42, true),
        ("pc", "512M", 33, true),
        ("pc", "4G", 34, true),
    ] {
        assert_eq!(fits(m, ram, bits), ok, "{m} {ram} {bits}");
    }
    assert_eq!(
        min_phys_bits(map("q35"), "64G".parse().unwrap(), false),
        Some(37)
    );
}

#[test]
fn arches_without_the_feature_say_so() {
    let profiles = ProfileSet::embedded().unwrap();
    let arm = profiles.resolve("arch", "aarch64").unwrap();
    let c = caps();
    let ctx = CpuContext {
        profile: arm,
        accel: Accel::Tcg,
        binary: "qemu-system-aarch64",
        caps: Some(&c),
        host_phys_bits: None,
        memory: MemSize::from_mib(512),
        machine: "virt",
    };
    let hm = CpuRequest {
        mode: Some(CpuMode::HostModel),
        ..Default::default()
    };
    let err = resolve(&hm, &ctx).unwrap_err();
    assert!(err.hint().unwrap().contains("host-passthrough"), "{err}");
    let mp = CpuRequest {
        maxphysaddr: Some(MaxPhysAddr::Emulate { bits: 40 }),
        ..Default::default()
    };
    assert!(matches!(
        resolve(&mp, &ctx),
        Err(CpuError::NotForArch { .. })
    ));
    // No capabilities and a non-default request: the caller must probe.
    let none = CpuContext { caps: None, ..ctx };
    assert!(matches!(resolve(&mp, &none), Err(CpuError::NoCaps { .. })));
    // The default needs no probe.
    assert_eq!(
        resolve(&CpuRequest::default(), &none)
            .unwrap()
            .unwrap()
            .qemu_value(),
        "max,pauth-impdef=on"
    );
}

#[test]
fn baseline_keeps_what_every_host_offers() {
    let a = caps();
    let mut b = caps();
    b.host_cpu.as_mut().unwrap().enabled = set(&["a", "b"]);
    for m in b.cpu_models.iter_mut().flatten() {
        let f = m.features.as_ref().unwrap();
        m.unavailable = f.enabled.difference(&set(&["a", "b"])).cloned().collect();
    }
    let hosts = [
        BaselineHost {
            label: "a",
            accel: Accel::Kvm,
            caps: &a,
        },
        BaselineHost {
            label: "b",
            accel: Accel::Tcg,
            caps: &b,
        },
    ];
    let base = baseline(&hosts).unwrap();
    // Intel (the KVM host's vendor); Medium keeps a and b, disables c.
    assert_eq!(base.model, "Medium");
    assert_eq!(base.cpu_flags(), "-c");
    // Two KVM hosts of different vendors have no common CPU.
    let mut amd = caps();
    amd.host_cpu.as_mut().unwrap().vendor = Some("AuthenticAMD".into());
    let mixed = [
        hosts[0],
        BaselineHost {
            label: "amd",
            accel: Accel::Kvm,
            caps: &amd,
        },
    ];
    assert!(
        baseline(&mixed)
            .unwrap_err()
            .to_string()
            .contains("vendors")
    );
}
