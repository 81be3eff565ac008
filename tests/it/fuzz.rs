//! Property-based fuzzing (proptest) of everything that reads outside input: spec files and
//! their fields, `--property`, `--disk`/`--net`/memory/CPU-flag/maxphysaddr syntax, planning
//! and argv building from whatever validates, and the QMP client's framing and decoding fed
//! arbitrary bytes by a fake QEMU. The properties: nothing panics or hangs; errors are errors;
//! a QMP client either keeps working (a real reply after garbage still reaches its caller) or
//! ends with an error for every caller.
//!
//! Bounded for CI: each target runs `QD_FUZZ_CASES` cases (default [`DEFAULT_CASES`], about
//! a minute for the whole module on a 2-core machine in a debug build; the QMP targets run a
//! quarter as many, each being a whole conversation). `scripts/bench` records a longer run
//! in BENCHMARKS.md. Failures are not persisted to files; proptest prints the minimal input.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::PathBuf, sync::OnceLock, time::Duration};

use proptest::{prelude::*, test_runner::Config};
use qemu_direct::{
    argv,
    cpu::{CpuSettings, Flag, MaxPhysAddr, normalize_flags},
    host::KvmState,
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

/// Placeholder: libvirt domain XML import (`src/libvirt/`, `plan --libvirt-xml`) is on another
/// branch. After the merge, fill this in as a proptest like `spec_files_never_panic`: generated
/// domain XML (known elements with plausible and wrong values, unknown elements, broken
/// markup) through the import, then `validate_and_plan`: no panics, errors only.
#[test]
#[ignore = "libvirt XML import not merged yet: fill in fuzz::libvirt_xml_import_never_panics"]
fn libvirt_xml_import_never_panics() {}
