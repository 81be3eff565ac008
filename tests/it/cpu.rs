//! The CPU on real guests: what the guest's own /proc/cpuinfo shows, not only the argv. Plus
//! baseline/compare over host descriptions recorded by the real probe, the capability cache,
//! traits and `check`.

use std::{path::Path, time::SystemTime};

use qemu_direct::{
    host::caps::{CacheUse, Caps, CapsCache},
    profile::{Accel, ProfileSet},
};
use serde_json::Value;

use crate::common::{
    BOOT_TIMEOUT, TestEnv, emulator, files_under, gated, guest, guest_proto, qd, text,
};

fn boot_x86(extra: &[&str]) -> Option<(String, String)> {
    let g = guest("x86_64")?;
    let env = TestEnv::new();
    let out = env
        .run(&g, ["--timeout", BOOT_TIMEOUT])
        .args(extra)
        .output()
        .expect("run qemu-direct");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "console:\n{o}");
    Some((o, e))
}

fn guest_flags(console: &str) -> Vec<String> {
    let line = guest_proto::line(console, "flags");
    let list = line.split_once(':').map_or(line, |(_, v)| v);
    list.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn maxphysaddr_emulate_42_is_what_the_guest_sees() {
    // The Nova flavor form and the flag form both reach the guest's /proc/cpuinfo.
    for args in [
        &["--maxphysaddr", "emulate:42", "--memory", "2G"][..],
        &[
            "--property",
            "hw:maxphysaddr_mode=emulate",
            "--property",
            "hw:maxphysaddr_bits=42",
        ][..],
    ] {
        let Some((console, _)) = boot_x86(args) else {
            return;
        };
        let sizes = guest_proto::line(&console, "address-sizes");
        assert!(sizes.contains("42 bits physical"), "{args:?}: {sizes}");
    }
}

#[test]
fn a_disabled_feature_is_missing_in_the_guest() {
    let Some((console, _)) = boot_x86(&["--cpu-model", "Nehalem", "--cpu-flags=-popcnt"]) else {
        return;
    };
    let flags = guest_flags(&console);
    assert!(!flags.iter().any(|f| f == "popcnt"), "{flags:?}");
    // Nehalem's own features are there, so the model is the one asked for.
    for f in ["sse4_1", "sse4_2", "ssse3"] {
        assert!(flags.iter().any(|x| x == f), "{f} missing from {flags:?}");
    }
}

#[test]
fn host_model_computed_without_libvirt_boots() {
    let Some((console, stderr)) = boot_x86(&["--cpu-mode", "host-model", "-v"]) else {
        return;
    };
    // The computed model is a named one, never `host` or `max` under TCG.
    let cpu = stderr
        .lines()
        .find(|l| l.contains("cpu: host-model"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(!cpu.contains(" max ") && !cpu.contains(" host "), "{cpu}");
    assert!(!guest_flags(&console).is_empty());
}

#[test]
fn aarch64_maximum_mode_boots() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let out = env
        .run(&g, ["--timeout", BOOT_TIMEOUT])
        .args(["--cpu-mode", "maximum", "-v"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}\n{o}");
    assert!(o.contains(&guest_proto::ready("aarch64")), "{o}");
    // pauth-impdef=on only where the profile's gate keeps it for this QEMU (before 10.0).
    let set = ProfileSet::embedded().unwrap();
    let tcg = &set.resolve("arch", "aarch64").unwrap().accel[&Accel::Tcg];
    let want = [
        vec!["max".to_owned()],
        gated(&tcg.cpu_options, "qemu-system-aarch64"),
    ]
    .concat()
    .join(",");
    let cpu_arg = format!("-cpu {}", shlex::try_quote(&want).unwrap());
    assert!(e.contains(&cpu_arg), "want {cpu_arg}: {e}");
}

/// The real probe of this host, as `probe --json` writes it.
fn probed() -> Value {
    let out = qd(["probe", "--json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn x86_caps(host: &Value, accel: &str) -> Option<Caps> {
    let v = host.pointer(&format!("/emulators/qemu-system-x86_64/caps/{accel}"))?;
    Some(serde_json::from_value(v.clone()).unwrap())
}

/// A host whose CPU offers exactly `model`'s features (a CI runner VM with that vCPU model):
/// derived from real capabilities, with QEMU's per-model verdict recomputed against it.
fn restricted(mut caps: Caps, model: &str) -> Caps {
    let offered = caps
        .model(model)
        .and_then(|m| caps.features(m))
        .cloned()
        .unwrap();
    let lacking: Vec<Vec<String>> = caps
        .cpu_models
        .iter()
        .flatten()
        .map(|m| {
            caps.features(m).map_or_else(Vec::new, |f| {
                f.enabled.difference(&offered.enabled).cloned().collect()
            })
        })
        .collect();
    for (m, l) in caps.cpu_models.iter_mut().flatten().zip(lacking) {
        m.unavailable = l;
    }
    caps.host_cpu = Some(offered);
    caps
}

fn write_host(
    dir: &Path,
    name: &str,
    mut host: Value,
    kvm: &str,
    caps: Option<(&str, Caps)>,
) -> String {
    host["kvm"] = serde_json::json!({ "state": kvm });
    host["arch"] = "x86_64".into();
    if let Some((accel, c)) = caps {
        host["emulators"]["qemu-system-x86_64"]["caps"][accel] = serde_json::to_value(c).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&host).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn baseline_of_three_hosts_runs_on_each_and_boots_here() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let dir = env.root();
    let host = probed();
    let tcg = x86_caps(&host, "tcg").expect("x86_64 TCG caps in the probe");
    // A: TCG's `max`. B: KVM's `host` where this machine's KVM answered the probe (PVM here),
    // else a runner whose CPU is Westmere. C: a runner whose CPU is Nehalem.
    let a = write_host(dir, "a.json", host.clone(), "missing", None);
    let b = match x86_caps(&host, "kvm") {
        Some(k) => write_host(dir, "b.json", host.clone(), "usable", Some(("kvm", k))),
        None => write_host(
            dir,
            "b.json",
            host.clone(),
            "missing",
            Some(("tcg", restricted(tcg.clone(), "Westmere"))),
        ),
    };
    let c = write_host(
        dir,
        "c.json",
        host.clone(),
        "missing",
        Some(("tcg", restricted(tcg, "Nehalem"))),
    );

    let out = env.qd(["cpu", "baseline", "--json", &a, &b, &c]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let base: Value = serde_json::from_str(&o).unwrap();
    let model = base["model"].as_str().unwrap().to_owned();
    let flags: Vec<String> = base["disabled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("-{}", f.as_str().unwrap()))
        .collect();
    let mut cpu_args = vec!["--cpu-model".to_owned(), model.clone()];
    if !flags.is_empty() {
        cpu_args.push(format!("--cpu-flags={}", flags.join(",")));
    }

    let out = env
        .cmd(["cpu", "compare", "--arch", "x86_64"])
        .args(&cpu_args)
        .args([&a, &b, &c])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert_eq!(
        o.lines().filter(|l| l.contains(": yes: -cpu ")).count(),
        3,
        "{o}"
    );

    // A model the restricted host cannot run is refused there, naming what it lacks.
    let out = env.qd([
        "cpu",
        "compare",
        "--arch",
        "x86_64",
        "--cpu-model",
        "Skylake-Client",
        &c,
    ]);
    let (o, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.contains(": no: ") && o.contains("Skylake-Client lacks"),
        "{o}"
    );

    // And the baseline boots here.
    let out = env
        .run(&g, ["--timeout", BOOT_TIMEOUT])
        .args(&cpu_args)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{cpu_args:?}\n{e}\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "{o}");
}

#[test]
fn the_capability_cache_is_reprobed_when_the_binary_changes() {
    let real = emulator("qemu-system-x86_64");
    let env = TestEnv::new();
    // A copy of Debian's binary cannot load its accelerator modules from elsewhere, so the
    // "binary" here is a program that runs the real one: replaced and touched like any other.
    let copy = env.path("qemu-system-x86_64");
    std::fs::write(
        &copy,
        format!("#!/bin/sh\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cache = CapsCache::at(env.path("cache"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = || rt.block_on(cache.get(&copy, Accel::Tcg)).unwrap();

    let (first, how) = get();
    assert_eq!(how, CacheUse::Probed);
    let (again, how) = get();
    assert_eq!(how, CacheUse::Hit);
    assert_eq!(first, again);

    // Same bytes, new mtime: a different binary as far as anyone can tell without hashing it.
    let f = std::fs::File::options().write(true).open(&copy).unwrap();
    f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert_eq!(get().1, CacheUse::Probed);
    assert_eq!(get().1, CacheUse::Hit);

    // A changed size too.
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes.extend_from_slice(b"# replaced\n");
    std::fs::write(&copy, bytes).unwrap();
    assert_eq!(get().1, CacheUse::Probed);
}

#[test]
fn traits_and_check_answer_like_novas_prefilter() {
    if guest("x86_64").is_none() {
        return;
    }
    let env = TestEnv::new();
    let out = env.qd(["traits", "--json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let traits: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = traits
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "COMPUTE_ARCH_X86_64",
        "COMPUTE_ARCH_AARCH64",
        "COMPUTE_ADDRESS_SPACE_EMULATED",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    if std::env::consts::ARCH == "x86_64" {
        assert!(names.contains(&"HW_ARCH_X86_64"), "{names:?}");
    }

    let check = |args: &[&str]| -> (Option<i32>, Value) {
        let out = env
            .cmd(["check"])
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        let v =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out).1));
        (out.status.code(), v)
    };
    let (code, v) = check(&["--property", "hw_emulation_architecture=aarch64"]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(0), Some("emulated")),
        "{v}"
    );
    assert_eq!(
        v["traits"][0],
        serde_json::json!({"name": "COMPUTE_ARCH_AARCH64", "present": true})
    );

    let (code, v) = check(&["--property", "hw_architecture=aarch64"]);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("no")), "{v}");
    assert!(v["why"].to_string().contains("natively"), "{v}");
}

/// A probe that runs into its time limit names the emulator, the limit and the knob a slow host
/// turns (`QEMU_DIRECT_PROBE_TIMEOUT`); it exits 3, as any emulator that fails its probe.
#[test]
fn a_probe_out_of_time_names_the_emulator_and_the_knob() {
    let env = TestEnv::with_own_cache();
    let out = env
        .cmd(["cpu", "models", "--arch", "x86_64"])
        .env("QEMU_DIRECT_PROBE_TIMEOUT", "1ms")
        .output()
        .unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(
        e.contains("qemu-system-x86_64 under tcg did not answer the capability probe within 1ms"),
        "{e}"
    );
    assert!(e.contains("QEMU_DIRECT_PROBE_TIMEOUT"), "{e}");
    // Nothing was cached from a probe that did not finish.
    let cached = files_under(&env.cache());
    assert!(cached.is_empty(), "{cached:?}");
}

/// `traits` with an emulator that runs out of time (a slow, emulated host: nested KVM) leaves
/// its traits out and says so on stderr, naming the emulator; it does not drop them silently.
#[test]
fn traits_say_which_emulator_did_not_answer() {
    let env = TestEnv::with_own_cache();
    let out = env
        .cmd(["traits"])
        .env("QEMU_DIRECT_PROBE_TIMEOUT", "1ms")
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        e.contains("qemu-direct: qemu-system-x86_64 under tcg: ")
            && e.contains("did not answer the capability probe within 1ms")
            && e.contains("(its traits are left out)"),
        "{e}"
    );
    assert!(!o.contains("COMPUTE_ARCH_X86_64"), "{o}");
}
