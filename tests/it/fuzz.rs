//! Property-based fuzzing (proptest) of everything that reads outside input: spec files and
//! their fields, `--property`, `--disk`/`--net`/memory/CPU-flag/maxphysaddr syntax, libvirt
//! domain XML (generated, and real domains mutated), planning and argv building from whatever
//! validates, and the QMP client's framing and decoding fed arbitrary bytes by a fake QEMU. The
//! properties: nothing panics or hangs; errors are errors; a QMP client either keeps working (a
//! real reply after garbage still reaches its caller) or ends with an error for every caller.
//!
//! Bounded for CI: each target runs `QD_FUZZ_CASES` cases (default [`DEFAULT_CASES`], about
//! a minute for the whole module on a 2-core machine in a debug build; the libvirt XML and QMP
//! targets run a quarter as many, each case being a whole document or conversation). `scripts/bench` records a longer run
//! in BENCHMARKS.md. Failures are not persisted to files; proptest prints the minimal input.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use proptest::{prelude::*, test_runner::Config};
use qemu_direct::{
    argv,
    cpu::{CpuSettings, Flag, MaxPhysAddr, normalize_flags},
    host::KvmState,
    libvirt::{self, LibvirtError},
    plan,
    profile::ProfileSet,
    qmp::{CloseReason, Qmp, QmpError},
    spec::config::Config as QdConfig,
    spec::disk::DiskInput,
    spec::net::Net,
    spec::{AccelRequest, PROPERTIES, SpecInput},
    util::size::MemSize,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::fake_host;

/// Cases per target unless `QD_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u32 = 5000;

fn cases() -> u32 {
    std::env::var("QD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn config(divisor: u32) -> Config {
    Config {
        cases: (cases() / divisor).max(1),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

fn profiles() -> &'static ProfileSet {
    static P: OnceLock<ProfileSet> = OnceLock::new();
    P.get_or_init(|| ProfileSet::embedded().unwrap())
}

/// Real files the generated specs may name: a kernel, a disk image, a directory.
fn files() -> &'static (tempfile::TempDir, Vec<String>) {
    static F: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    F.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vmlinuz"), b"not really a kernel").unwrap();
        std::fs::write(d.path().join("disk,1.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(d.path().join("empty"), b"").unwrap();
        let mut qcow = b"QFI\xfb".to_vec();
        qcow.resize(512, 0);
        std::fs::write(d.path().join("fake.qcow2"), qcow).unwrap();
        let paths = ["vmlinuz", "disk,1.img", "empty", "fake.qcow2", ""]
            .iter()
            .map(|f| d.path().join(f).to_str().unwrap().to_owned())
            .chain(["/nonexistent/file".into(), "relative,file=x".into()])
            .collect();
        (d, paths)
    })
}

/// Values real users (and typos) write, mixed with arbitrary text.
fn word() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "x86_64",
        "aarch64",
        "arm64",
        "AMD64",
        "i686",
        "mipsel",
        "s390x",
        "ppc64le",
        "riscv64",
        "vax",
        "",
        " ",
        "512M",
        "2G",
        "1P",
        "0",
        "16M",
        "3G",
        "1.5G",
        "-1",
        "emulate:42",
        "emulate:31",
        "emulate:53",
        "emulate:",
        "passthrough",
        "passthrough:40",
        "custom",
        "none",
        "maximum",
        "host-model",
        "host-passthrough",
        "Nehalem",
        "cortex-a57",
        "max",
        "+pse36",
        "-pse36",
        "pse36",
        "+",
        "-",
        "lahf_lm",
        "kvm",
        "tcg",
        "auto",
        "enforce",
        "q35",
        "virt",
        "pc",
        "no-such-board",
        "user",
        "none",
        "user,hostfwd=tcp::2222-:22",
        "user,hostfwd=udp:127.0.0.1:99999-:1",
        "user,hostfwd=",
        "raw",
        "qcow2",
        "vmdk",
        "hw_architecture",
        "hw_emulation_architecture",
        "hw_machine_type",
        "hw:maxphysaddr_mode",
        "hw:maxphysaddr_bits",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        4 => known,
        2 => "\\PC{0,24}",
        1 => any::<String>(),
        1 => "[-+,=:a-z0-9_ ]{0,16}",
    ]
}

const KEYS: &[&str] = &[
    "name",
    "arch",
    "accel",
    "machine",
    "memory",
    "smp",
    "append",
    "net",
    "cpu_mode",
    "cpu_models",
    "cpu_model_extra_flags",
    "cpu_check",
    "maxphysaddr",
    "disk_writable",
];
const PATH_KEYS: &[&str] = &["kernel", "initrd", "disk", "firmware"];

fn scalar() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        6 => word().prop_map(toml::Value::String),
        1 => any::<i64>().prop_map(toml::Value::Integer),
        1 => (0i64..70).prop_map(toml::Value::Integer),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        1 => any::<f64>().prop_map(toml::Value::Float),
    ]
}

fn value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        5 => scalar(),
        1 => prop::collection::vec(scalar(), 0..4).prop_map(toml::Value::Array),
        1 => prop::collection::btree_map(word(), scalar(), 0..3)
            .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
    ]
}

fn path_value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        4 => prop::sample::select(files().1.clone()).prop_map(toml::Value::String),
        1 => scalar(),
    ]
}

fn disk_table() -> impl Strategy<Value = toml::Value> {
    (
        path_value(),
        prop::option::of(word()),
        prop::option::of(scalar()),
        prop::option::of((word(), scalar())),
    )
        .prop_map(|(path, format, persist, extra)| {
            let mut t = toml::Table::new();
            t.insert("path".into(), path);
            if let Some(f) = format {
                t.insert("format".into(), toml::Value::String(f));
            }
            if let Some(p) = persist {
                t.insert("persist".into(), p);
            }
            if let Some((k, v)) = extra {
                t.insert(k, v);
            }
            toml::Value::Table(t)
        })
}

/// A spec file as a TOML table: known keys with plausible or wrong values, unknown keys, disks,
/// properties.
fn spec_table() -> impl Strategy<Value = toml::Table> {
    let entry = prop_oneof![
        6 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| (k.to_owned(), v)),
        3 => (prop::sample::select(PATH_KEYS), path_value()).prop_map(|(k, v)| (k.to_owned(), v)),
        1 => ("[a-z_]{1,12}", value()),
    ];
    let props = prop::collection::btree_map(
        prop_oneof![
            4 => prop::sample::select(PROPERTIES.iter().map(|(k, _)| (*k).to_owned()).collect::<Vec<_>>()),
            1 => word(),
        ],
        prop_oneof![4 => word().prop_map(toml::Value::String), 1 => scalar()],
        0..4,
    );
    (
        prop::collection::vec(entry, 0..10),
        prop::option::of(prop::collection::vec(disk_table(), 0..3)),
        prop::option::of(props),
    )
        .prop_map(|(entries, disks, props)| {
            let mut t: toml::Table = entries.into_iter().collect();
            if let Some(d) = disks {
                t.insert("disks".into(), toml::Value::Array(d));
            }
            if let Some(p) = props {
                t.insert(
                    "properties".into(),
                    toml::Value::Table(p.into_iter().collect()),
                );
            }
            t
        })
}

/// Validates, and when that passes, plans for three made-up hosts and builds the argv: none
/// of it may panic, whatever the input.
fn validate_and_plan(input: &SpecInput) {
    let Ok(spec) = input.validate(profiles()) else {
        return;
    };
    for host in [
        fake_host("x86_64", KvmState::Missing),
        fake_host("x86_64", KvmState::Usable),
        fake_host("aarch64", KvmState::Usable),
    ] {
        if let Ok(p) = plan::resolve_with(&spec, profiles(), &host, &QdConfig::default()) {
            let a = argv::build(&p);
            assert!(!a.is_empty());
            let _ = argv::shell_line(&a);
            // The plan survives its JSON form (plan --json, the supervisor's stdin).
            let json = serde_json::to_string(&p).unwrap();
            let back: plan::LaunchPlan = serde_json::from_str(&json).unwrap();
            assert_eq!(argv::build(&back), a);
        }
    }
}

proptest! {
    #![proptest_config(config(1))]

    /// Spec files: generated TOML, then the same text with bytes flipped. Parsing, validation,
    /// planning and the argv never panic; a file that parses survives overlaying.
    #[test]
    fn spec_files_never_panic(table in spec_table(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3)) {
        let text = toml::to_string(&table).unwrap_or_default();
        let mut bytes = text.into_bytes();
        for (i, b) in flips {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
        }
        let dir = &files().0;
        let file = dir.path().join(format!("spec-{}.toml", std::process::id()));
        std::fs::write(&file, &bytes).unwrap();
        if let Ok(input) = SpecInput::from_file(&file) {
            validate_and_plan(&input);
            let flags = SpecInput { memory: Some("1G".into()), ..Default::default() };
            validate_and_plan(&input.overlay(flags));
        }
    }

    /// Arbitrary text as a spec file.
    #[test]
    fn arbitrary_text_as_a_spec_never_panics(text in "\\PC{0,200}") {
        if let Ok(input) = toml::from_str::<SpecInput>(&text) {
            validate_and_plan(&input);
        }
    }

    /// `--property` as typed: any text, then validation with whatever was accepted.
    #[test]
    fn properties_never_panic(props in prop::collection::vec(prop_oneof![
        3 => (prop::sample::select(PROPERTIES.iter().map(|(k, _)| *k).collect::<Vec<_>>()), word())
            .prop_map(|(k, v)| format!("{k}={v}")),
        1 => word(),
        1 => any::<String>(),
    ], 0..5), arch in prop::option::of(word())) {
        let mut input = SpecInput { arch, ..Default::default() };
        for p in &props {
            if input.add_property(p).is_ok() {
                // What was accepted is KEY=VALUE split at the first '='.
                let (k, _) = p.split_once('=').unwrap();
                prop_assert!(input.properties.contains_key(k.trim()));
            }
        }
        validate_and_plan(&input);
    }

    /// CPU settings: mode, models, flags, check, maxphysaddr in every combination.
    #[test]
    fn cpu_settings_never_panic(
        mode in prop::option::of(word()),
        models in prop::option::of(prop::collection::vec(word(), 0..3)),
        flags in prop::option::of(prop::collection::vec(word(), 0..4)),
        check in prop::option::of(word()),
        phys in prop::option::of(word()),
    ) {
        for f in flags.iter().flatten() {
            if let Ok(flag) = Flag::parse("f", f) {
                let _ = normalize_flags("f", &[flag.clone(), flag]);
            }
        }
        let maxphys = phys.as_deref().and_then(|p| MaxPhysAddr::parse("maxphysaddr", p).ok());
        let settings = CpuSettings {
            cpu_mode: mode.clone(),
            cpu_models: models.clone(),
            cpu_model_extra_flags: flags.clone(),
            cpu_check: check.clone(),
        };
        let _ = settings.to_request("fuzz", maxphys);
        let input = SpecInput {
            arch: Some("x86_64".into()),
            kernel: Some(PathBuf::from(&files().1[0])),
            cpu_mode: mode,
            cpu_models: models,
            cpu_model_extra_flags: flags,
            cpu_check: check,
            maxphysaddr: phys,
            ..Default::default()
        };
        validate_and_plan(&input);
    }

    /// maxphysaddr: what parses prints back to itself.
    #[test]
    fn maxphysaddr_round_trips(text in prop_oneof![
        "(emulate|passthrough|EMULATE| emulate)(:[0-9]{0,3})?",
        "\\PC{0,12}",
    ]) {
        if let Ok(m) = MaxPhysAddr::parse("maxphysaddr", &text) {
            let again = MaxPhysAddr::parse("maxphysaddr", &m.to_string());
            prop_assert_eq!(again.ok(), Some(m));
        }
    }

    /// `--disk` (any bytes, not only UTF-8), `--net`, `--memory`, `--accel`.
    #[test]
    fn option_syntax_never_panics(
        disk in prop::collection::vec(any::<u8>(), 0..40),
        disk_text in "[a-z,=/. ]{0,30}",
        net in word(),
        mem in prop_oneof![word(), "[0-9]{1,22}[KMGTkmgtP]?(i?B)?"],
        accel in word(),
    ) {
        for d in [OsStr::from_bytes(&disk), OsStr::new(&disk_text)] {
            if let Ok(input) = DiskInput::parse(d) {
                let _ = qemu_direct::spec::disk::validate("disk", &input, false);
            }
        }
        let _ = Net::parse("net", &net);
        if let Ok(m) = mem.parse::<MemSize>() {
            // What parses prints back to the same size.
            prop_assert_eq!(m.to_string().parse::<MemSize>().ok(), Some(m));
        }
        let _ = accel.parse::<AccelRequest>();
    }
}

// ---------------------------------------------------------------------------------------------
// QMP framing and decoding

const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

/// Lines a confused or hostile QEMU might send: valid-looking messages with ids the client
/// never used, events of any shape, half objects, non-JSON, blank lines.
fn junk_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut v| {
            v.retain(|&b| b != b'\n');
            v
        }),
        (1000u64..u64::MAX, value()).prop_map(|(id, v)| {
            let v = serde_json::to_string(&v).unwrap_or_default();
            format!(r#"{{"return": {v}, "id": {id}}}"#).into_bytes()
        }),
        (word(), value()).prop_map(|(name, data)| {
            let d = serde_json::to_string(&data).unwrap_or_default();
            format!(
                r#"{{"event": {}, "data": {d}}}"#,
                serde_json::Value::String(name)
            )
            .into_bytes()
        }),
        value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        prop::sample::select(
            [
                &b""[..],
                b" ",
                b"{",
                b"}",
                b"[]",
                b"null",
                b"{\"id\": \"x\"}",
                b"{\"event\": 5}",
                b"{\"error\": {}}",
                b"{\"id\": -1, \"return\": {}}",
                b"\xff\xfe",
                b"{\"QMP\": {}}",
                b"\r",
            ]
            .map(|b: &[u8]| b.to_vec())
            .to_vec()
        ),
    ]
}

/// Splits `bytes` at the given fractions into chunks.
fn chunks(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bounded: a hang is a failure.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung"))
}

proptest! {
    #![proptest_config(config(4))]

    /// After a handshake, junk lines (in random chunks) arrive before the reply to a pending
    /// `query-status`; the reply still reaches its caller, decoded. Then the peer closes: the
    /// next call fails with `Closed`, and `closed()` ends.
    #[test]
    fn qmp_client_survives_junk_between_replies(
        junk in prop::collection::vec(junk_line(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        crlf in any::<bool>(),
    ) {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (cr, cw) = tokio::io::split(client);
            let (sr, mut sw) = tokio::io::split(server);
            let mut requests = BufReader::new(sr).lines();
            let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let connect = tokio::spawn(Qmp::handshake(cr, cw));
            sw.write_all(&[GREETING, eol].concat()).await.unwrap();
            let caps: serde_json::Value =
                serde_json::from_str(&within("caps request", requests.next_line()).await.unwrap().unwrap()).unwrap();
            sw.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes()).await.unwrap();
            let qmp = within("handshake", connect).await.unwrap().unwrap();

            let call = tokio::spawn({
                let qmp = qmp.clone();
                async move { qmp.query_status().await }
            });
            let req: serde_json::Value =
                serde_json::from_str(&within("request", requests.next_line()).await.unwrap().unwrap()).unwrap();
            prop_assert_eq!(&req["execute"], "query-status");
            let mut stream = Vec::new();
            for j in &junk {
                stream.extend_from_slice(j);
                stream.extend_from_slice(eol);
            }
            stream.extend_from_slice(
                format!(r#"{{"return": {{"status": "running", "running": true, "future-field": [1]}}, "id": {}}}"#, req["id"])
                    .as_bytes(),
            );
            stream.extend_from_slice(eol);
            for c in chunks(&stream, &cuts) {
                sw.write_all(&c).await.unwrap();
                sw.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            let status = within("reply", call).await.unwrap();
            prop_assert!(status.is_ok(), "{:?} after junk {:?}", status, junk);
            prop_assert_eq!(status.unwrap().status, "running");

            sw.shutdown().await.unwrap();
            drop(requests);
            let reason = within("closed", qmp.closed()).await;
            prop_assert!(matches!(reason, CloseReason::Eof | CloseReason::Io(_)), "{:?}", reason);
            let after = within("call after close", qmp.query_status()).await;
            prop_assert!(matches!(after, Err(QmpError::Closed(_))), "{:?}", after);
            Ok(())
        })?;
    }

    /// Any bytes at all as the whole conversation, cut anywhere, then the end of the stream:
    /// the handshake and a call end with a result or an error, never a panic or a hang.
    #[test]
    fn qmp_client_survives_arbitrary_streams(
        greet in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        lines in prop::collection::vec(junk_line(), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (cr, cw) = tokio::io::split(client);
            let (sr, mut sw) = tokio::io::split(server);
            // Read and drop whatever the client writes, so it never blocks on a full pipe.
            let sink = tokio::spawn(async move {
                let mut r = BufReader::new(sr).lines();
                while let Ok(Some(_)) = r.next_line().await {}
            });
            let mut stream = Vec::new();
            if greet {
                stream.extend_from_slice(GREETING);
                stream.push(b'\n');
                // Replies to the first ids, valid or not.
                stream.extend_from_slice(b"{\"return\": {}, \"id\": 0}\n");
            }
            for l in &lines {
                stream.extend_from_slice(l);
                stream.push(b'\n');
            }
            stream.extend_from_slice(&bytes);
            let connect = tokio::spawn(Qmp::handshake(cr, cw));
            for c in chunks(&stream, &cuts) {
                sw.write_all(&c).await.unwrap();
            }
            // The end of the stream (the read half lives on in `sink`, so dropping is not it).
            sw.shutdown().await.unwrap();
            if let Ok(qmp) = within("handshake", connect).await.unwrap() {
                let r = within("call", qmp.query_status()).await;
                prop_assert!(matches!(r, Ok(_) | Err(QmpError::Closed(_) | QmpError::Decode { .. } | QmpError::Command { .. } | QmpError::Malformed { .. })), "{:?}", r);
                within("closed", qmp.closed()).await;
            }
            sink.abort();
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// libvirt domain XML import

/// Elements of libvirt domains (the ones the import maps, and some it refuses).
const XML_ELEMENTS: &[&str] = &[
    "domain",
    "name",
    "uuid",
    "title",
    "description",
    "metadata",
    "memory",
    "currentMemory",
    "maxMemory",
    "vcpu",
    "os",
    "type",
    "kernel",
    "initrd",
    "cmdline",
    "dtb",
    "loader",
    "nvram",
    "boot",
    "firmware",
    "feature",
    "features",
    "acpi",
    "apic",
    "pae",
    "gic",
    "hap",
    "cpu",
    "model",
    "vendor",
    "topology",
    "maxphysaddr",
    "cache",
    "numa",
    "clock",
    "timer",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "suspend-to-mem",
    "devices",
    "emulator",
    "disk",
    "driver",
    "source",
    "target",
    "readonly",
    "shareable",
    "address",
    "interface",
    "mac",
    "controller",
    "serial",
    "console",
    "channel",
    "memballoon",
    "panic",
    "video",
    "input",
    "graphics",
    "rng",
    "tpm",
    "seclabel",
    "resource",
    "partition",
    "iothreads",
    "qemu:commandline",
    "qemu:arg",
];

/// Their attributes.
const XML_ATTRS: &[&str] = &[
    "type",
    "arch",
    "machine",
    "unit",
    "mode",
    "check",
    "match",
    "name",
    "policy",
    "bits",
    "limit",
    "fallback",
    "file",
    "dir",
    "dev",
    "bus",
    "device",
    "model",
    "sockets",
    "cores",
    "threads",
    "dies",
    "clusters",
    "port",
    "placement",
    "current",
    "readonly",
    "secure",
    "format",
    "offset",
    "xmlns:qemu",
    "value",
    "migratable",
    "enabled",
    "present",
    "index",
    "tickpolicy",
    "version",
    "state",
    "cpuset",
];

/// Values domains hold, right and wrong.
const XML_VALUES: &[&str] = &[
    "qemu",
    "kvm",
    "hvm",
    "xen",
    "linux",
    "x86_64",
    "i686",
    "aarch64",
    "ppc64le",
    "ppc64",
    "s390x",
    "riscv64",
    "mipsel",
    "armv7l",
    "q35",
    "pc",
    "virt",
    "pseries",
    "s390-ccw-virtio",
    "malta",
    "pc-q35-7.2",
    "virt-7.2",
    "b",
    "bytes",
    "KiB",
    "MiB",
    "GiB",
    "TiB",
    "k",
    "M",
    "G",
    "0",
    "1",
    "2",
    "64",
    "512",
    "524288",
    "-1",
    "99999999999999999999",
    "host-passthrough",
    "host-model",
    "custom",
    "maximum",
    "none",
    "minimum",
    "exact",
    "strict",
    "emulate",
    "passthrough",
    "require",
    "disable",
    "force",
    "optional",
    "forbid",
    "file",
    "dir",
    "block",
    "network",
    "virtio",
    "sata",
    "ide",
    "scsi",
    "usb",
    "sd",
    "vda",
    "sda",
    "disk",
    "cdrom",
    "floppy",
    "qcow2",
    "raw",
    "vmdk",
    "destroy",
    "restart",
    "preserve",
    "yes",
    "no",
    "on",
    "off",
    "pty",
    "stdio",
    "serial",
    "isa-serial",
    "uefi",
    "bios",
    "efi",
    "pflash",
    "rom",
    "utc",
    "static",
    "auto",
    "pvpanic",
    "Nehalem",
    "cortex-a57",
    "max",
    "",
    " ",
];

/// Generated XML: elements with attributes, text, and children.
#[derive(Debug, Clone)]
enum Xml {
    Text(String),
    Element {
        name: String,
        attrs: Vec<(String, String)>,
        children: Vec<Xml>,
    },
}

fn xml_name() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => prop::sample::select(XML_ELEMENTS).prop_map(str::to_owned),
        2 => "[a-zA-Z_][a-zA-Z0-9_.-]{0,8}",
        1 => "\\PC{0,6}",
    ]
}

fn xml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => prop::sample::select(XML_VALUES).prop_map(str::to_owned),
        3 => word(),
        2 => prop::sample::select(files().1.clone()),
        1 => "[0-9]{1,22}",
    ]
}

fn xml_attrs() -> impl Strategy<Value = Vec<(String, String)>> {
    let attr_name = prop_oneof![
        8 => prop::sample::select(XML_ATTRS).prop_map(str::to_owned),
        1 => "[a-zA-Z_:][a-zA-Z0-9_:.-]{0,8}",
    ];
    prop::collection::vec((attr_name, xml_value()), 0..4)
}

fn xml_node() -> impl Strategy<Value = Xml> {
    let leaf = prop_oneof![
        2 => xml_value().prop_map(Xml::Text),
        3 => (xml_name(), xml_attrs()).prop_map(|(name, attrs)| Xml::Element {
            name,
            attrs,
            children: Vec::new(),
        }),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        (xml_name(), xml_attrs(), prop::collection::vec(inner, 0..8)).prop_map(
            |(name, attrs, children)| Xml::Element {
                name,
                attrs,
                children,
            },
        )
    })
}

/// Where a value is a file: one of [`files`].
const FILE: &str = "@FILE@";

/// The shape of the domains the import reads: an element, how likely it is there, its
/// attributes (how likely each is there, and its plausible values), its text's plausible values
/// (none: no text), its children. The values are mostly ones the import takes, so that whole
/// documents get through to planning; some it refuses, so that refusals are listed.
struct Shape {
    name: &'static str,
    p: f64,
    attrs: &'static [Attr],
    text: &'static [&'static str],
    children: &'static [Shape],
}

type Attr = (&'static str, f64, &'static [&'static str]);

const fn el(
    name: &'static str,
    p: f64,
    attrs: &'static [Attr],
    text: &'static [&'static str],
    children: &'static [Shape],
) -> Shape {
    Shape {
        name,
        p,
        attrs,
        text,
        children,
    }
}

const UNITS: &[&str] = &["MiB", "MiB", "GiB"];
const YES_NO: &[&str] = &["yes", "no"];

const DOMAIN: Shape = el(
    "domain",
    1.0,
    &[("type", 0.97, &["qemu", "qemu", "kvm"])],
    &[],
    &[
        el("name", 0.8, &[], &["fuzz", "vm-1"], &[]),
        el(
            "uuid",
            0.2,
            &[],
            &["b6b5882a-9db5-4b31-ae3e-455e2ffbecdb"],
            &[],
        ),
        el(
            "memory",
            0.97,
            &[("unit", 0.9, UNITS)],
            &["256", "512", "1"],
            &[],
        ),
        el(
            "currentMemory",
            0.05,
            &[("unit", 0.9, UNITS)],
            &["256", "512"],
            &[],
        ),
        el(
            "vcpu",
            0.7,
            &[("placement", 0.3, &["static"]), ("current", 0.03, &["1"])],
            &["1", "2", "4"],
            &[],
        ),
        el(
            "os",
            0.97,
            &[("firmware", 0.05, &["efi", "bios"])],
            &[],
            &[
                el(
                    "type",
                    0.97,
                    &[
                        (
                            "arch",
                            0.97,
                            &[
                                "x86_64", "x86_64", "aarch64", "i686", "ppc64le", "s390x",
                                "riscv64", "mipsel",
                            ],
                        ),
                        (
                            "machine",
                            0.2,
                            &["q35", "pc", "virt", "pseries", "s390-ccw-virtio", "malta"],
                        ),
                    ],
                    &["hvm"],
                    &[],
                ),
                el("kernel", 0.8, &[], &[FILE], &[]),
                el("initrd", 0.5, &[], &[FILE], &[]),
                el("cmdline", 0.5, &[], &["console=ttyS0", "quiet"], &[]),
                el(
                    "loader",
                    0.1,
                    &[
                        ("readonly", 0.5, YES_NO),
                        ("type", 0.7, &["pflash", "rom"]),
                        ("secure", 0.3, YES_NO),
                    ],
                    &[FILE],
                    &[],
                ),
                el("nvram", 0.05, &[], &[FILE], &[]),
                el("boot", 0.1, &[("dev", 0.95, &["hd"])], &[], &[]),
            ],
        ),
        el(
            "features",
            0.15,
            &[],
            &[],
            &[
                el("acpi", 0.6, &[], &[], &[]),
                el("apic", 0.6, &[], &[], &[]),
                el("pae", 0.2, &[], &[], &[]),
                el(
                    "gic",
                    0.1,
                    &[("version", 0.8, &["2", "3", "max", "host"])],
                    &[],
                    &[],
                ),
            ],
        ),
        el(
            "cpu",
            0.5,
            &[
                (
                    "mode",
                    0.8,
                    &["host-passthrough", "host-model", "maximum", "custom"],
                ),
                ("match", 0.3, &["exact", "minimum", "strict"]),
                ("check", 0.3, &["none", "partial", "full"]),
                ("migratable", 0.1, &["on", "off"]),
            ],
            &[],
            &[
                el(
                    "model",
                    0.6,
                    &[("fallback", 0.3, &["allow", "forbid"])],
                    &["Nehalem", "cortex-a57", "max", "qemu64", "power8"],
                    &[],
                ),
                el(
                    "feature",
                    0.3,
                    &[
                        (
                            "policy",
                            0.8,
                            &["require", "disable", "force", "optional", "forbid"],
                        ),
                        (
                            "name",
                            0.95,
                            &["pdpe1gb", "lahf_lm", "sve", "pse36", "popcnt"],
                        ),
                    ],
                    &[],
                    &[],
                ),
                el(
                    "topology",
                    0.05,
                    &[
                        ("sockets", 0.9, &["1", "2"]),
                        ("dies", 0.3, &["1"]),
                        ("cores", 0.9, &["1", "2"]),
                        ("threads", 0.9, &["1", "2"]),
                    ],
                    &[],
                    &[],
                ),
                el(
                    "maxphysaddr",
                    0.2,
                    &[
                        ("mode", 0.9, &["emulate", "passthrough"]),
                        ("bits", 0.7, &["32", "40", "42", "52", "64"]),
                        ("limit", 0.2, &["39", "40"]),
                    ],
                    &[],
                    &[],
                ),
            ],
        ),
        el("clock", 0.2, &[("offset", 0.5, &["utc"])], &[], &[]),
        el("on_poweroff", 0.2, &[], &["destroy"], &[]),
        el("on_reboot", 0.2, &[], &["destroy"], &[]),
        el("on_crash", 0.2, &[], &["destroy"], &[]),
        el(
            "devices",
            0.8,
            &[],
            &[],
            &[
                el(
                    "emulator",
                    0.2,
                    &[],
                    &[
                        "/usr/bin/qemu-system-x86_64",
                        "/usr/bin/qemu-system-aarch64",
                        FILE,
                    ],
                    &[],
                ),
                el(
                    "disk",
                    0.4,
                    &[("type", 0.9, &["file"]), ("device", 0.8, &["disk"])],
                    &[],
                    &[
                        el(
                            "driver",
                            0.6,
                            &[("name", 0.9, &["qemu"]), ("type", 0.8, &["raw", "qcow2"])],
                            &[],
                            &[],
                        ),
                        el(
                            "source",
                            0.9,
                            &[("file", 0.95, &[FILE]), ("dir", 0.03, &[FILE])],
                            &[],
                            &[],
                        ),
                        el(
                            "target",
                            0.9,
                            &[("dev", 0.9, &["vda", "vdb"]), ("bus", 0.8, &["virtio"])],
                            &[],
                            &[],
                        ),
                        el("readonly", 0.2, &[], &[], &[]),
                    ],
                ),
                el(
                    "interface",
                    0.3,
                    &[("type", 0.9, &["user"])],
                    &[],
                    &[el("model", 0.6, &[("type", 0.9, &["virtio"])], &[], &[])],
                ),
                el("serial", 0.3, &[("type", 0.9, &["pty"])], &[], &[]),
                el(
                    "console",
                    0.3,
                    &[("type", 0.9, &["pty"])],
                    &[],
                    &[el(
                        "target",
                        0.5,
                        &[("type", 0.9, &["serial"]), ("port", 0.8, &["0"])],
                        &[],
                        &[],
                    )],
                ),
                el(
                    "panic",
                    0.05,
                    &[("model", 0.9, &["pvpanic", "isa"])],
                    &[],
                    &[],
                ),
                el(
                    "memballoon",
                    0.2,
                    &[("model", 0.9, &["none", "none", "virtio"])],
                    &[],
                    &[],
                ),
            ],
        ),
    ],
);

/// Mostly one of `values` (for [`FILE`] a file, mostly one a kernel can be), now and then
/// anything.
fn plausible(values: &'static [&'static str]) -> BoxedStrategy<String> {
    let listed = prop::sample::select(values).prop_flat_map(|v| {
        if v == FILE {
            let all = &files().1;
            // Mostly a non-empty file; else the empty one, a directory, a missing file, ...
            let good = vec![all[0].clone(), all[1].clone(), all[3].clone()];
            prop_oneof![
                4 => prop::sample::select(good),
                1 => prop::sample::select(all.clone()),
            ]
            .boxed()
        } else {
            Just(v.to_owned()).boxed()
        }
    });
    prop_oneof![60 => listed, 1 => xml_value()].boxed()
}

/// An element of `shape`, its attributes, text and children each there as likely as the shape
/// says, a child now and then twice, and now and then an element the shape does not have.
fn shaped(shape: &'static Shape) -> BoxedStrategy<Xml> {
    let attrs: Vec<_> = shape
        .attrs
        .iter()
        .map(|&(name, p, values)| {
            prop::option::weighted(p, plausible(values))
                .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
        })
        .collect();
    let text = if shape.text.is_empty() {
        Just(None).boxed()
    } else {
        prop::option::weighted(0.97, plausible(shape.text)).boxed()
    };
    let children: Vec<_> = shape
        .children
        .iter()
        .map(|c| {
            (
                prop::option::weighted(c.p, shaped(c)),
                prop::bool::weighted(0.01),
            )
                .prop_map(|(e, twice)| {
                    let n = if twice { 2 } else { 1 };
                    e.map(|e| vec![e; n]).unwrap_or_default()
                })
        })
        .collect();
    let stray = prop::option::weighted(0.02, (xml_name(), xml_attrs()));
    (attrs, text, children, stray)
        .prop_map(move |(attrs, text, children, stray)| {
            let mut kids: Vec<Xml> = text.into_iter().map(Xml::Text).collect();
            kids.extend(children.into_iter().flatten());
            if let Some((name, attrs)) = stray {
                kids.push(Xml::Element {
                    name,
                    attrs,
                    children: Vec::new(),
                });
            }
            Xml::Element {
                name: shape.name.to_owned(),
                attrs: attrs.into_iter().flatten().collect(),
                children: kids,
            }
        })
        .boxed()
}

/// Escapes a value for XML, unless `raw` (then `<`, `&` and quotes break the markup).
fn xml_escape(s: &str, raw: bool) -> String {
    if raw {
        return s.to_owned();
    }
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn render_xml(node: &Xml, raw: bool, out: &mut String) {
    match node {
        Xml::Text(t) => out.push_str(&xml_escape(t, raw)),
        Xml::Element {
            name,
            attrs,
            children,
        } => {
            out.push('<');
            out.push_str(name);
            for (k, v) in attrs {
                out.push_str(&format!(" {k}='{}'", xml_escape(v, raw)));
            }
            if children.is_empty() {
                out.push_str("/>");
                return;
            }
            out.push('>');
            for c in children {
                render_xml(c, raw, out);
            }
            out.push_str(&format!("</{name}>"));
        }
    }
}

/// Documents: mostly a `<domain>` of the [`DOMAIN`] shape with plausible and other values, or
/// one of any elements (escaped, or now and then raw), else any element as the root, any
/// text, or markup soup.
fn xml_document() -> impl Strategy<Value = String> {
    let domain = (
        any::<bool>(),
        prop::sample::select(vec!["qemu", "kvm", "xen", ""]),
        prop::collection::vec(xml_node(), 0..10),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(decl, kind, children, raw)| {
            let mut out = String::new();
            if decl {
                out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
            }
            out.push_str(&format!("<domain type='{kind}'>"));
            for c in &children {
                render_xml(c, raw, &mut out);
                out.push('\n');
            }
            out.push_str("</domain>\n");
            out
        });
    let shaped_domain = (shaped(&DOMAIN), prop::bool::weighted(0.05)).prop_map(|(d, raw)| {
        let mut out = String::new();
        render_xml(&d, raw, &mut out);
        out
    });
    prop_oneof![
        8 => shaped_domain,
        3 => domain,
        1 => xml_node().prop_map(|n| {
            let mut out = String::new();
            render_xml(&n, false, &mut out);
            out
        }),
        1 => "\\PC{0,300}",
        1 => "[<>/='\" a-z0-9&;!?:-]{0,200}",
    ]
}

/// Real domains to mutate: the fixtures of `tests/fixtures/libvirt` (their placeholders filled
/// with real files), the malformed ones of the bad-input corpus, and exports of plans for made-up
/// hosts. The fixtures and exports are checked to import (or, `-full`, to be refused as a
/// whole), so the mutations start from documents that reach every part of the import.
fn seed_domains() -> &'static [(String, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let f = &files().1;
        let (kernel, disk, qcow) = (Path::new(&f[0]), Path::new(&f[1]), Path::new(&f[3]));
        let mut seeds = Vec::new();
        for name in crate::libvirt::fixture_names() {
            let xml = crate::libvirt::fixture_text(
                &name,
                &[("@KERNEL@", kernel), ("@INITRD@", kernel), ("@DISK@", qcow)],
            );
            let got = libvirt::import(&xml, profiles());
            if name.ends_with("-full.xml") {
                assert!(
                    matches!(got, Err(LibvirtError::Refused(_))),
                    "{name}: {got:?}"
                );
            } else {
                assert!(got.is_ok(), "{name}: {got:?}");
            }
            seeds.push((name, xml.into_bytes()));
        }
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-input");
        for e in std::fs::read_dir(corpus).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "xml") {
                seeds.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
        let hosts = [
            fake_host("x86_64", KvmState::Missing),
            fake_host("x86_64", KvmState::Usable),
            fake_host("aarch64", KvmState::Usable),
        ];
        for p in profiles().iter() {
            for (i, host) in hosts.iter().enumerate() {
                let input = SpecInput {
                    name: Some(format!("fuzz-{}-{i}", p.name)),
                    arch: Some(p.name.clone()),
                    kernel: Some(kernel.to_owned()),
                    initrd: Some(kernel.to_owned()),
                    append: Some("console=ttyS0 quiet".into()),
                    disk: (i == 1).then(|| disk.to_owned()),
                    net: (i == 2).then(|| "user,hostfwd=tcp::2222-:22".into()),
                    smp: Some(2),
                    ..Default::default()
                };
                let Ok(spec) = input.validate(profiles()) else {
                    continue;
                };
                let Ok(plan) = plan::resolve_with(&spec, profiles(), host, &QdConfig::default())
                else {
                    continue;
                };
                let ex = libvirt::export(&plan, profiles()).unwrap();
                let back = libvirt::import(&ex.xml, profiles());
                assert!(back.is_ok(), "export of {}: {back:?}\n{}", p.name, ex.xml);
                seeds.push((
                    format!("export {} on host {i}", p.name),
                    ex.xml.into_bytes(),
                ));
            }
        }
        assert!(
            seeds
                .iter()
                .filter(|(n, _)| n.starts_with("export"))
                .count()
                >= 6,
            "too few exports to mutate: {:?}",
            seeds.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        seeds
    })
}

/// One element found in XML text: the whole of it, and where its start tag ends and its end
/// tag starts (both its end, for `<empty/>`).
#[derive(Debug, Clone)]
struct Span {
    whole: std::ops::Range<usize>,
    open_end: usize,
    close_start: usize,
}

/// The elements and attributes (` name='value'`, and the value alone) in XML text, by a
/// forgiving scan: exact on well-formed documents, and harmless on broken ones.
#[allow(clippy::type_complexity)]
fn scan_xml(
    xml: &[u8],
) -> (
    Vec<Span>,
    Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
) {
    let find = |from: usize, pat: &[u8]| {
        xml.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|i| from + i)
    };
    let (mut elements, mut attrs) = (Vec::new(), Vec::new());
    let mut open: Vec<(&[u8], usize, usize)> = Vec::new();
    let mut i = 0;
    while let Some(lt) = find(i, b"<") {
        if xml[lt..].starts_with(b"<!--") {
            i = find(lt, b"-->").map_or(xml.len(), |e| e + 3);
            continue;
        }
        let Some(gt) = find(lt, b">") else { break };
        i = gt + 1;
        let tag = &xml[lt + 1..gt];
        if tag.starts_with(b"?") || tag.starts_with(b"!") {
            continue;
        }
        if let Some(name) = tag.strip_prefix(b"/") {
            let name = name.trim_ascii();
            if let Some(at) = open.iter().rposition(|(n, _, _)| *n == name) {
                let (_, start, open_end) = open[at];
                open.truncate(at);
                elements.push(Span {
                    whole: start..gt + 1,
                    open_end,
                    close_start: lt,
                });
            }
            continue;
        }
        let name_len = tag
            .iter()
            .position(|b| b.is_ascii_whitespace() || *b == b'/')
            .unwrap_or(tag.len());
        // Attributes: whitespace, a name, '=', a quoted value.
        let mut j = lt + 1 + name_len;
        while j < gt {
            let Some(eq) = find(j, b"=").filter(|&e| e < gt) else {
                break;
            };
            let quote = xml.get(eq + 1).copied();
            let Some(q) = quote.filter(|q| *q == b'\'' || *q == b'"') else {
                j = eq + 1;
                continue;
            };
            let Some(close) = find(eq + 2, &[q]).filter(|&c| c < gt) else {
                break;
            };
            attrs.push((j..close + 1, eq + 2..close));
            j = close + 1;
        }
        if tag.ends_with(b"/") {
            elements.push(Span {
                whole: lt..gt + 1,
                open_end: gt + 1,
                close_start: gt + 1,
            });
        } else {
            open.push((&tag[..name_len], lt, gt + 1));
        }
    }
    (elements, attrs)
}

/// A change to a document.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, String),
    DeleteElement(prop::sample::Index),
    DuplicateElement(prop::sample::Index),
    /// A copy of one element put before another (a misplaced element).
    CopyElement(prop::sample::Index, prop::sample::Index),
    /// An element's content replaced with text.
    SetText(prop::sample::Index, String),
    DeleteAttr(prop::sample::Index),
    DuplicateAttr(prop::sample::Index),
    SetAttr(prop::sample::Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    let text = || prop_oneof![4 => xml_value(), 1 => "\\PC{0,12}"];
    prop_oneof![
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop_oneof!["[<>/='\"&;a-z ]{1,6}", xml_node().prop_map(|n| {
            let mut out = String::new();
            render_xml(&n, false, &mut out);
            out
        })])
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        3 => any::<Index>().prop_map(Mutation::DeleteElement),
        2 => any::<Index>().prop_map(Mutation::DuplicateElement),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::CopyElement(a, b)),
        3 => (any::<Index>(), text()).prop_map(|(i, t)| Mutation::SetText(i, t)),
        2 => any::<Index>().prop_map(Mutation::DeleteAttr),
        1 => any::<Index>().prop_map(Mutation::DuplicateAttr),
        3 => (any::<Index>(), text()).prop_map(|(i, t)| Mutation::SetAttr(i, t)),
    ]
}

/// Applies a mutation; one that finds nothing to act on (no elements left, say) does nothing.
fn mutate(xml: &mut Vec<u8>, m: &Mutation) {
    let (elements, attrs) = scan_xml(xml);
    let pick = |i: &prop::sample::Index, n: usize| (n > 0).then(|| i.index(n));
    match m {
        Mutation::FlipByte(i, b) => {
            if let Some(at) = pick(i, xml.len()) {
                xml[at] = *b;
            }
        }
        Mutation::Truncate(i) => xml.truncate(i.index(xml.len() + 1)),
        Mutation::Insert(i, s) => {
            let at = i.index(xml.len() + 1);
            xml.splice(at..at, s.bytes());
        }
        Mutation::DeleteElement(i) => {
            if let Some(e) = pick(i, elements.len()) {
                xml.drain(elements[e].whole.clone());
            }
        }
        Mutation::DuplicateElement(i) => {
            if let Some(e) = pick(i, elements.len()) {
                let r = elements[e].whole.clone();
                let copy = xml[r.clone()].to_vec();
                xml.splice(r.end..r.end, copy);
            }
        }
        Mutation::CopyElement(a, b) => {
            if let (Some(a), Some(b)) = (pick(a, elements.len()), pick(b, elements.len())) {
                let copy = xml[elements[a].whole.clone()].to_vec();
                let at = elements[b].whole.start;
                xml.splice(at..at, copy);
            }
        }
        Mutation::SetText(i, t) => {
            if let Some(e) = pick(i, elements.len()) {
                let e = &elements[e];
                let text = xml_escape(t, false);
                if e.open_end == e.whole.end {
                    // `<empty/>` becomes `<empty>text</empty>`.
                    let tag = &xml[e.whole.start + 1..e.whole.end - 2];
                    let name_len = tag
                        .iter()
                        .position(|b| b.is_ascii_whitespace())
                        .unwrap_or(tag.len());
                    let end = [b"</", &tag[..name_len], b">"].concat();
                    let new = [tag, b">", text.as_bytes(), &end].concat();
                    xml.splice(e.whole.start + 1..e.whole.end - 1, new);
                } else {
                    xml.splice(e.open_end..e.close_start, text.bytes());
                }
            }
        }
        Mutation::DeleteAttr(i) => {
            if let Some(a) = pick(i, attrs.len()) {
                xml.drain(attrs[a].0.clone());
            }
        }
        Mutation::DuplicateAttr(i) => {
            if let Some(a) = pick(i, attrs.len()) {
                let r = attrs[a].0.clone();
                let copy = xml[r.clone()].to_vec();
                xml.splice(r.end..r.end, copy);
            }
        }
        Mutation::SetAttr(i, v) => {
            if let Some(a) = pick(i, attrs.len()) {
                xml.splice(attrs[a].1.clone(), xml_escape(v, false).bytes());
            }
        }
    }
}

/// An error's whole chain, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!("\ncaused by: {s}"));
        source = s.source();
    }
    out
}

/// A document through the import, as text and as a file (its raw bytes, as `--libvirt-xml`
/// reads them): a result or an error, never a panic; the same answer for the same text; errors
/// that say something. What imports is validated, planned and built (with a flag layered on
/// top, as the CLI does), without a panic either.
fn import_never_panics(xml: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(xml);
    let first = libvirt::import(&text, profiles());
    let again = libvirt::import(&text, profiles());
    prop_assert_eq!(format!("{first:?}"), format!("{again:?}"));
    match first {
        Ok(imported) => {
            validate_and_plan(&imported.spec);
            let flags = SpecInput {
                memory: Some("1G".into()),
                ..Default::default()
            };
            validate_and_plan(&imported.spec.overlay(flags));
        }
        Err(e) => prop_assert!(!chain(&e).trim().is_empty(), "{:?}", e),
    }
    let file = files().0.path().join(format!(
        "domain-{}-{:?}.xml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, xml).unwrap();
    match libvirt::import_file(&file, profiles()) {
        Ok(imported) => validate_and_plan(&imported.spec),
        Err(e) => prop_assert!(!chain(&e).trim().is_empty(), "{:?}", e),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(4))]

    /// Generated documents: domains of known elements and attributes with plausible and wrong
    /// values, unknown elements, broken markup, any text.
    #[test]
    fn libvirt_xml_import_never_panics(doc in xml_document()) {
        import_never_panics(doc.as_bytes())?;
    }

    /// Real domains, changed: bytes flipped, cut short, elements and attributes deleted,
    /// duplicated, moved or given other values, text inserted anywhere.
    #[test]
    fn mutated_libvirt_domains_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seed_domains();
        let (_, xml) = &seeds[seed.index(seeds.len())];
        let mut xml = xml.clone();
        for m in &mutations {
            mutate(&mut xml, m);
        }
        import_never_panics(&xml)?;
    }
}

/// The scan the mutations rely on finds every element and attribute of a real domain, so they
/// do act on them.
#[test]
fn the_mutations_find_the_parts_of_real_domains() {
    for (name, xml) in seed_domains() {
        let (elements, attrs) = scan_xml(xml);
        // The text without comments and declarations, which are no elements (nor attributes).
        let mut text = String::from_utf8_lossy(xml).into_owned();
        for (open, close) in [("<!--", "-->"), ("<?", "?>")] {
            while let Some(start) = text.find(open) {
                let end = text[start..]
                    .find(close)
                    .map_or(text.len(), |e| start + e + close.len());
                text.replace_range(start..end, "");
            }
        }
        let tags = text.matches('<').count() - text.matches("</").count();
        if name.starts_with("export") || name.ends_with("x86_64.xml") {
            assert_eq!(elements.len(), tags, "{name}");
            assert_eq!(
                attrs.len(),
                text.matches("='").count() + text.matches("=\"").count(),
                "{name}"
            );
            // Removing the last element (the first to close) leaves a document that still parses.
            let mut cut = xml.clone();
            cut.drain(elements[0].whole.clone());
            assert!(
                !matches!(
                    libvirt::import(&String::from_utf8_lossy(&cut), profiles()),
                    Err(LibvirtError::Malformed { .. })
                ),
                "{name}"
            );
        }
    }
}
