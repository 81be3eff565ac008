//! `--json` on every command that reports: each run for real (the host's QEMU, a real aarch64
//! guest for the instance commands) and its output validated against its JSON Schema in
//! `docs/schemas/` (the `jsonschema` crate); the schemas themselves against the JSON Schema
//! meta-schema, and each listed in `docs/json.md`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

use crate::common::{BOOT_TIMEOUT, TestEnv, agent_guest, guest, guest_proto, text};

/// Every schema, by file stem; each is checked by a test here.
const SCHEMAS: &[&str] = &[
    "probe",
    "profiles",
    "plan",
    "cpu-models",
    "cpu-baseline",
    "cpu-compare",
    "traits",
    "check",
    "firmware",
    "ps",
    "run-detach",
    "wait",
    "snapshot",
    "migrate",
    "stop",
];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas")
}

fn schema(name: &str) -> Value {
    let path = schema_dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `cmd`, expects exit `code` and one JSON document on stdout that `schema` accepts;
/// returns it.
fn checked(name: &str, mut cmd: Command, code: i32) -> Value {
    let out: Output = cmd.output().unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(code), "{name}: {e}\n{o}");
    let v: Value = serde_json::from_str(&o).unwrap_or_else(|err| panic!("{name}: {err}:\n{o}"));
    let validator = jsonschema::validator_for(&schema(name)).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{o}");
    v
}

#[test]
fn the_schemas_are_valid_schemas_and_documented() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = SCHEMAS.iter().map(|s| format!("{s}.schema.json")).collect();
    assert_eq!(on_disk, listed, "docs/schemas/ and the list here differ");
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json.md"))
        .unwrap();
    for s in SCHEMAS {
        let v = schema(s);
        jsonschema::meta::validate(&v).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(
            doc.contains(&format!("schemas/{s}.schema.json")),
            "docs/json.md does not link {s}"
        );
    }
}

/// A schema that accepts anything would make every check here pass: each must refuse a
/// document of the wrong shape.
#[test]
fn the_schemas_refuse_a_wrong_shape() {
    for s in SCHEMAS {
        let validator = jsonschema::validator_for(&schema(s)).unwrap();
        for wrong in [serde_json::json!("text"), serde_json::json!([{"x": 1}])] {
            assert!(!validator.is_valid(&wrong), "{s} accepts {wrong}");
        }
    }
}

#[test]
fn the_host_commands_print_what_their_schemas_say() {
    let Some(g) = guest("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    let host = checked("probe", env.cmd(["probe", "--json"]), 0);
    let host_file = env.path("host.json");
    std::fs::write(&host_file, host.to_string()).unwrap();
    checked("profiles", env.cmd(["profiles", "--json"]), 0);
    let mut plan = env.guest_cmd(&g, ["plan", "--json", "--arch", "aarch64"]);
    plan.args(["--net", "user", "--memory", "256M"]);
    let p = checked("plan", plan, 0);
    assert_eq!(p["arch"], "aarch64");
    checked(
        "cpu-models",
        env.cmd([
            "cpu", "models", "--json", "--arch", "aarch64", "--accel", "tcg",
        ]),
        0,
    );
    let two = [host_file.as_os_str(), host_file.as_os_str()];
    let mut baseline = env.cmd(["cpu", "baseline", "--json", "--arch", "x86_64"]);
    baseline.args(two);
    checked("cpu-baseline", baseline, 0);

    // One host runs it, one (without the emulator) does not: exit 1, both rows.
    let mut bare = host.clone();
    bare["emulators"]
        .as_object_mut()
        .unwrap()
        .remove("qemu-system-aarch64");
    let bare_file = env.path("bare.json");
    std::fs::write(&bare_file, bare.to_string()).unwrap();
    let mut compare = env.cmd(["cpu", "compare", "--json", "--arch", "aarch64"]);
    compare.args([host_file.as_os_str(), bare_file.as_os_str()]);
    let rows = checked("cpu-compare", compare, 1);
    assert_eq!(rows[0]["runs"], true, "{rows}");
    assert_eq!(rows[1]["runs"], false, "{rows}");

    let traits = checked("traits", env.cmd(["traits", "--json"]), 0);
    assert_eq!(
        traits,
        checked("traits", env.cmd(["traits", "--format", "json"]), 0)
    );
    let ok = env.cmd([
        "check",
        "--json",
        "--property",
        "hw_emulation_architecture=aarch64",
    ]);
    // Native on an aarch64 host with KVM.
    let verdict = checked("check", ok, 0)["verdict"].clone();
    assert!(verdict == "emulated" || verdict == "native", "{verdict}");
    let no = env.cmd(["check", "--json", "--property", "hw_architecture=mipsel"]);
    assert_eq!(checked("check", no, 1)["verdict"], "no");
    checked("firmware", env.cmd(["firmware", "--json"]), 0);
    checked(
        "firmware",
        env.cmd(["firmware", "--json", "--arch", "aarch64"]),
        0,
    );
}

#[test]
fn the_instance_commands_print_what_their_schemas_say() {
    // With the guest agent where the test guests have it, so that `wait --agent` is checked.
    let (g, agent) = match agent_guest("aarch64") {
        Some(g) => (g, true),
        None => match guest("aarch64") {
            Some(g) => (g, false),
            None => return,
        },
    };
    let env = TestEnv::new();
    let mut run = env.run(&g, ["--name", "j", "--timeout", BOOT_TIMEOUT]);
    run.args(["--append", guest_proto::HOLD, "--detach", "--json"]);
    let started = checked("run-detach", run, 0);
    assert_eq!(started["name"], "j");

    let rows = checked("ps", env.cmd(["ps", "--json", "--agent"]), 0);
    assert_eq!(rows[0]["name"], "j", "{rows}");
    let mut wait = env.cmd(["wait", "j", "--json", "--timeout", BOOT_TIMEOUT, "--for"]);
    wait.arg(guest_proto::heartbeat(1));
    let seen = checked("wait", wait, 0);
    assert!(
        seen["line"]
            .as_str()
            .unwrap()
            .contains(&guest_proto::heartbeat(1)),
        "{seen}"
    );
    if agent {
        let mut wait = env.cmd(["wait", "j", "--agent", "--json", "--timeout"]);
        wait.arg(BOOT_TIMEOUT);
        checked("wait", wait, 0);
    }

    let dir = env.path("snap");
    let mut snap = env.cmd(["snapshot", "j", "--json", "--to"]);
    snap.arg(&dir);
    let saved = checked("snapshot", snap, 0);
    assert_eq!(saved["dir"], dir.to_str().unwrap());

    let moved = checked(
        "migrate",
        env.cmd(["migrate", "j", "--to", "k", "--json"]),
        0,
    );
    assert_eq!((&moved["name"], &moved["to"]), (&"j".into(), &"k".into()));

    let stopped = checked(
        "stop",
        env.cmd(["stop", "k", "--json", "--timeout", "0s"]),
        0,
    );
    assert_eq!(stopped["name"], "k");
    assert!(env.ps().is_empty());
}
