//! Each validation step on its own, without a host.

use std::collections::BTreeMap;

use crate::{
    cpu::MaxPhysAddr,
    spec::{input::SpecInput, net::Net, nova::NovaProperties},
};

fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn nova_properties_need_known_keys_and_values() {
    assert!(NovaProperties::check(&props(&[("hw_machine_type", "virt")])).is_ok());
    let e = NovaProperties::check(&props(&[("hw_cpu_mode", "x")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid property 'hw_cpu_mode': unknown key"),
        "{e}"
    );
    let e = NovaProperties::check(&props(&[("hw_machine_type", "")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid property hw_machine_type '': a value is required"
    );
}

#[test]
fn flavor_maxphysaddr_is_mode_and_bits_together() {
    let flavor = |kv: &[(&str, &str)]| {
        let p = props(kv);
        NovaProperties::check(&p)
            .unwrap()
            .maxphysaddr()
            .map_err(|e| e.to_string())
    };
    assert_eq!(flavor(&[]), Ok(None));
    assert_eq!(
        flavor(&[
            ("hw:maxphysaddr_mode", "emulate"),
            ("hw:maxphysaddr_bits", "42")
        ]),
        Ok(Some(MaxPhysAddr::Emulate { bits: 42 }))
    );
    assert_eq!(
        flavor(&[("hw:maxphysaddr_bits", "42")]).unwrap_err(),
        "hw:maxphysaddr_bits=42 conflicts with no hw:maxphysaddr_mode: \
         bits need hw:maxphysaddr_mode=emulate"
    );
    assert!(
        flavor(&[
            ("hw:maxphysaddr_mode", "emulate"),
            ("hw:maxphysaddr_bits", "many")
        ])
        .unwrap_err()
        .starts_with("invalid property hw:maxphysaddr_bits 'many'")
    );
    assert!(
        flavor(&[
            ("hw:maxphysaddr_mode", "passthrough"),
            ("hw:maxphysaddr_bits", "40")
        ])
        .unwrap_err()
        .starts_with("hw:maxphysaddr_mode=passthrough conflicts with hw:maxphysaddr_bits=40")
    );
}

#[test]
fn cpu_request_refuses_two_different_maxphysaddr() {
    let i = SpecInput {
        maxphysaddr: Some("emulate:40".into()),
        properties: props(&[
            ("hw:maxphysaddr_mode", "emulate"),
            ("hw:maxphysaddr_bits", "42"),
        ]),
        ..Default::default()
    };
    let nova = NovaProperties::check(&i.properties).unwrap();
    let e = i.cpu_request(&nova).unwrap_err().to_string();
    assert!(
        e.starts_with("--maxphysaddr emulate:40 conflicts with hw:maxphysaddr_* = emulate:42"),
        "{e}"
    );
    // Nothing asked for: the request names no source.
    let none = SpecInput::default();
    let nova = NovaProperties::check(&none.properties).unwrap();
    assert_eq!(none.cpu_request(&nova).unwrap().source, None);
}

#[test]
fn machine_comes_from_the_flag_or_the_property_when_they_agree() {
    let machine = |flag: Option<&str>, prop: Option<&str>| {
        let i = SpecInput {
            machine: flag.map(Into::into),
            properties: props(
                &prop
                    .map(|p| ("hw_machine_type", p))
                    .into_iter()
                    .collect::<Vec<_>>(),
            ),
            ..Default::default()
        };
        let nova = NovaProperties::check(&i.properties).unwrap();
        i.machine(&nova).map_err(|e| e.to_string())
    };
    assert_eq!(machine(None, None), Ok(None));
    assert_eq!(machine(Some("q35"), Some("q35")), Ok(Some("q35".into())));
    assert_eq!(machine(None, Some("virt")), Ok(Some("virt".into())));
    assert!(
        machine(Some("q35"), Some("pc"))
            .unwrap_err()
            .starts_with("--machine q35 conflicts with hw_machine_type=pc")
    );
    assert!(
        machine(None, Some("virt,gic-version=3"))
            .unwrap_err()
            .starts_with("invalid hw_machine_type 'virt,gic-version=3'")
    );
}

#[test]
fn boot_parts_need_a_kernel_and_one_line() {
    let i = SpecInput {
        initrd: Some("/initrd".into()),
        ..Default::default()
    };
    assert_eq!(
        i.kernel_boot().unwrap_err().to_string(),
        "initrd conflicts with no kernel: initrd only applies to a direct kernel boot; add --kernel"
    );
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"MZ").unwrap();
    let i = SpecInput {
        kernel: Some(kernel),
        append: Some("a\nb".into()),
        ..Default::default()
    };
    assert_eq!(
        i.kernel_boot().unwrap_err().to_string(),
        "invalid append 'a\\nb': one line without NUL bytes"
    );
    let i = SpecInput {
        secure_boot: Some(true),
        ..Default::default()
    };
    assert_eq!(
        i.firmware().unwrap_err().to_string(),
        "secure_boot conflicts with no firmware: Secure Boot is a UEFI feature; add --firmware uefi"
    );
}

#[test]
fn resources_and_devices_default_to_unset() {
    let i = SpecInput::default();
    assert_eq!(i.memory().unwrap(), None);
    assert_eq!(i.smp().unwrap(), None);
    assert_eq!(i.tb_size().unwrap(), None);
    assert_eq!(i.name().unwrap(), None);
    assert_eq!(i.emulator().unwrap(), None);
    assert!(i.disks().unwrap().is_empty());
    assert_eq!(i.net().unwrap(), Net::None);
    let i = SpecInput {
        emulator: Some("/".into()),
        ..Default::default()
    };
    assert_eq!(
        i.emulator().unwrap_err().to_string(),
        "emulator /: not an executable file"
    );
}
