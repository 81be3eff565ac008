//! Every CPU validation rule (`shared/reference/semantics.md` §3-§4) through the real binary:
//! exit code 2, one `error:` line naming the field, the value and what would be valid, no QEMU
//! started, nothing left behind. Positive controls show the same inputs, corrected, do pass.
//!
//! The rules are checked against real capability data: `probe --json` runs once (real QEMU,
//! `-machine none`) and its answer is replayed with `--host-facts`, which never probes. Every
//! emulator path in it points at a tripwire, so a rule that stops refusing shows up as a start
//! instead of a boot. Two hosts are made from the one probe: `tcg` (no KVM, so x86_64 guests
//! run under TCG on any machine) and `kvm` (a made-up KVM host with 39 physical-address bits).

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

use crate::common::{TestEnv, Tripwire, files_under, text};

/// Stands for the tripwire's path in the stored host descriptions until a test writes its own.
const WIRE_PLACEHOLDER: &str = "@QD-TRIPWIRE@";

/// The made-up KVM host's physical-address width: below the 42 bits the rules ask for.
const KVM_HOST_BITS: u8 = 39;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Host {
    /// As probed, with KVM missing.
    Tcg,
    /// As probed, with KVM usable, an x86_64 host of [`KVM_HOST_BITS`] bits.
    Kvm,
}

/// The probe's answer and the two hosts made from it (serialized, tripwire path a placeholder).
struct Probed {
    facts: Value,
    tcg: String,
    kvm: String,
}

fn probed() -> &'static Probed {
    static PROBED: OnceLock<Probed> = OnceLock::new();
    PROBED.get_or_init(|| {
        // Its own cache, so neither a stale user cache nor this run's leftovers decide the data.
        let out = TestEnv::with_own_cache().qd(["probe", "--json"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "probe --json failed: {stderr}");
        let facts: Value = serde_json::from_str(&stdout).expect("probe --json prints JSON");
        assert!(
            facts["emulators"]["qemu-system-x86_64"]["caps"]["tcg"].is_object(),
            "the probe recorded no TCG capabilities for qemu-system-x86_64 (is it installed?): \
             {stderr}"
        );

        let mut base = facts.clone();
        for e in base["emulators"].as_object_mut().unwrap().values_mut() {
            e["path"] = WIRE_PLACEHOLDER.into();
        }
        // No virtiofsd, whatever this machine has: `fs=virtiofs` is then refused (a corpus case)
        // and no daemon can start.
        base.as_object_mut().unwrap().remove("virtiofsd");

        let mut tcg = base.clone();
        tcg["kvm"] = serde_json::json!({ "state": "missing" });

        let mut kvm = base;
        kvm["kvm"] = serde_json::json!({ "state": "usable" });
        kvm["arch"] = "x86_64".into();
        kvm["phys_bits"] = KVM_HOST_BITS.into();
        // Always TCG's answer, even where the probe recorded KVM caps: a PVM or foreign host's
        // KVM caps can mark Nehalem unrunnable, and the rules under test must be the first to
        // refuse. A KVM host whose CPU offers what TCG offers keeps every case deterministic.
        let x86 = &mut kvm["emulators"]["qemu-system-x86_64"]["caps"];
        x86["kvm"] = x86["tcg"].clone();

        Probed {
            tcg: tcg.to_string(),
            kvm: kvm.to_string(),
            facts,
        }
    })
}

/// What the probe says `binary` can do under TCG.
fn tcg_caps(binary: &str) -> &'static Value {
    let caps = &probed().facts["emulators"][binary]["caps"]["tcg"];
    assert!(
        caps.is_object(),
        "the probe recorded no TCG capabilities for {binary}"
    );
    caps
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A scratch world for one command: a [`TestEnv`] with its own cache, a host description whose
/// every emulator is a failing [`Tripwire`], a kernel file; its state, cache and config
/// directories must stay empty. The bad-input corpus (`reliability`) runs its cases in these
/// too.
pub(crate) struct World {
    pub(crate) env: TestEnv,
    /// The emulator every host description names.
    wire: PathBuf,
}

impl World {
    pub(crate) fn new(host: Host) -> World {
        let env = TestEnv::with_own_cache();
        let wire = env.tripwire(Tripwire::Fail);
        let w = World { env, wire };
        let facts = match host {
            Host::Tcg => &probed().tcg,
            Host::Kvm => &probed().kvm,
        };
        let wire_json = serde_json::to_string(w.wire.to_str().unwrap()).unwrap();
        std::fs::write(
            w.path("host.json"),
            facts.replace(&format!("\"{WIRE_PLACEHOLDER}\""), &wire_json),
        )
        .unwrap();
        // The plan only checks that the kernel is a readable, non-empty file.
        std::fs::write(w.path("vmlinuz"), b"not really a kernel").unwrap();
        w
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.env.path(name)
    }

    /// Writes a file into the world and returns its path as an argument.
    fn file(&self, name: &str, contents: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// `qemu-direct --host-facts HOST` in the env, which is cut off from this machine's config.
    pub(crate) fn host_cmd(&self) -> Command {
        let mut c = self.env.cmd(["--host-facts"]);
        c.arg(self.path("host.json"));
        c
    }

    /// `qemu-direct --host-facts HOST VERB ARGS --kernel K`.
    fn command(&self, verb: &str, args: &[&str]) -> Command {
        let mut c = self.host_cmd();
        c.arg(verb)
            .args(args)
            .arg("--kernel")
            .arg(self.path("vmlinuz"));
        c
    }

    /// No QEMU started, no log, cache or config written.
    fn assert_untouched(&self, args: &[&str]) {
        assert!(
            !self.env.qemu_started(),
            "QEMU was started for {args:?}: {}",
            self.env.qemu_starts()
        );
        for d in [self.env.state(), self.env.cache(), self.env.config()] {
            let left = files_under(&d);
            assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
        }
    }
}

/// Checks one refusal: exit 2, nothing on stdout, `error: ...` first (containing `expect`), then
/// only `caused by:` and `hint:` lines.
fn check_refusal(out: &Output, what: &str, expect: &str) -> String {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(2), "{what}\nstderr: {stderr}");
    assert!(stdout.is_empty(), "{what}: nothing on stdout, got {stdout}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{what}: {stderr}");
    assert!(
        first.contains(expect),
        "{what}: want {expect:?} in the first line\n{stderr}"
    );
    for line in stderr.lines().skip(1) {
        assert!(
            line.starts_with("caused by: ") || line.starts_with("hint: "),
            "{what}: one error line only, then causes and hints; got {line:?}\n{stderr}"
        );
    }
    stderr
}

/// Runs the args as `plan` and as a real `run` (no --dry-run: the one that would start QEMU);
/// both must refuse alike. Returns stderr.
fn refused_in(w: &World, args: &[&str], expect: &str) -> String {
    let plan = w.command("plan", args).output().expect("run qemu-direct");
    let plan_err = check_refusal(&plan, &format!("plan {args:?}"), expect);
    let run = w.command("run", args).output().expect("run qemu-direct");
    let run_err = check_refusal(&run, &format!("run {args:?}"), expect);
    assert_eq!(
        plan_err, run_err,
        "plan and run refuse {args:?} differently"
    );
    w.assert_untouched(args);
    run_err
}

fn refused(host: Host, args: &[&str], expect: &str) -> String {
    refused_in(&World::new(host), args, expect)
}

/// `run --dry-run`: exit 0, the argv printed names the tripwire (so the host description was
/// used, not a probe), nothing started. Returns the argv.
fn accepted_in(w: &World, args: &[&str]) -> Vec<String> {
    let out = w
        .command("run", &[args, &["--dry-run"]].concat())
        .output()
        .expect("run qemu-direct");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{args:?}\nstderr: {stderr}");
    let argv = shlex::split(stdout.trim()).expect("dry-run prints a shell line");
    assert_eq!(
        argv.first().map(PathBuf::from),
        Some(w.wire.clone()),
        "{args:?}: {stdout}"
    );
    w.assert_untouched(args);
    argv
}

fn accepted(host: Host, args: &[&str]) -> Vec<String> {
    accepted_in(&World::new(host), args)
}

/// The `-cpu` value of an argv.
fn cpu_arg(argv: &[String]) -> &str {
    let i = argv
        .iter()
        .position(|a| a == "-cpu")
        .unwrap_or_else(|| panic!("no -cpu in {argv:?}"));
    &argv[i + 1]
}

#[test]
fn cpu_mode_must_be_one_of_the_five() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-mode", "bogus"],
        "invalid cpu_mode 'bogus': one of host-passthrough, maximum, host-model, custom, none",
    );
}

#[test]
fn custom_mode_needs_a_model() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-mode", "custom"],
        "cpu_mode custom needs a model; name one with --cpu-model",
    );
}

#[test]
fn models_apply_only_to_custom_mode() {
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--cpu-mode",
            "maximum",
            "--cpu-model",
            "Nehalem",
        ],
        "cpu_models (Nehalem) given with cpu_mode maximum; models apply only to cpu_mode custom",
    );
}

#[test]
fn mode_none_takes_no_features() {
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--cpu-mode",
            "none",
            "--cpu-flags=-pse36",
        ],
        "cpu_model_extra_flags given with cpu_mode none",
    );
}

#[test]
fn mode_none_takes_no_maxphysaddr() {
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--cpu-mode",
            "none",
            "--maxphysaddr",
            "emulate:40",
        ],
        "maxphysaddr given with cpu_mode none",
    );
}

#[test]
fn unknown_model_suggests_the_nearest() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-model", "Nehalm"],
        "unknown CPU model 'Nehalm' for qemu-system-x86_64; did you mean Nehalem",
    );
}

#[test]
fn model_the_accelerator_cannot_run_lists_what_it_lacks() {
    // Skylake-Client where this QEMU's TCG cannot run it (7.2: no pcid, x2apic, ...), else the
    // first model TCG cannot run, so the case holds on newer QEMU too.
    let models = tcg_caps("qemu-system-x86_64")["cpu_models"]
        .as_array()
        .expect("qemu-system-x86_64 lists its CPU models");
    let lacking = |m: &&Value| !strings(&m["unavailable"]).is_empty();
    let model = models
        .iter()
        .filter(lacking)
        .find(|m| m["name"] == "Skylake-Client")
        .or_else(|| models.iter().find(lacking))
        .expect("some x86_64 model TCG cannot run");
    let name = model["name"].as_str().unwrap();
    let lacks = strings(&model["unavailable"]).join(", ");
    let e = refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-model", name],
        &format!("no CPU model in cpu_models runs under tcg: {name} lacks {lacks}"),
    );
    assert!(
        e.lines()
            .any(|l| l.starts_with("hint: ") && l.contains("--cpu-check none")),
        "{e}"
    );
}

#[test]
fn required_feature_the_accelerator_lacks_is_refused() {
    // x2apic where this QEMU's TCG lacks it (7.2), else any feature it knows but does not offer;
    // alias names are skipped, since they would be reported under QEMU's name.
    let caps = tcg_caps("qemu-system-x86_64");
    let offered = strings(&caps["host_cpu"]["enabled"]);
    let set = qemu_direct::profile::ProfileSet::embedded().unwrap();
    let aliases = &set.resolve("test", "x86_64").unwrap().cpu.feature_aliases;
    let feature = std::iter::once("x2apic")
        .chain(strings(&caps["feature_names"]))
        .find(|f| !offered.contains(f) && !aliases.contains_key(*f))
        .expect("a feature TCG does not offer");
    let e = refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--cpu-model",
            "Nehalem",
            &format!("--cpu-flags=+{feature}"),
        ],
        "no CPU model in cpu_models runs under tcg: Nehalem lacks ",
    );
    let first = e.lines().next().unwrap();
    assert!(first.contains(feature), "want {feature} named: {e}");
}

#[test]
fn unknown_feature_suggests_the_nearest() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-flags=+lahf"],
        "unknown CPU feature 'lahf' for qemu-system-x86_64; did you mean lahf-lm",
    );
}

#[test]
fn feature_both_required_and_disabled_is_a_conflict() {
    // libvirt's spelling and QEMU's are one feature, so this is a contradiction too.
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-flags=+lahf_lm,-lahf-lm"],
        "CPU feature 'lahf-lm' is both required and disabled; keep one of +lahf-lm and -lahf-lm",
    );
    // Feature names are case-insensitive.
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-flags=+pse36,-PSE36"],
        "CPU feature 'pse36' is both required and disabled",
    );
}

#[test]
fn malformed_feature_is_refused() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-flags=+a=b"],
        "invalid cpu_model_extra_flags '+a=b': +feature, feature or -feature",
    );
}

#[test]
fn host_passthrough_needs_kvm() {
    let e = refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-mode", "host-passthrough"],
        "cpu_mode host-passthrough (-cpu host) needs a hardware accelerator (KVM), but this \
         guest runs under TCG",
    );
    assert!(e.contains("hint: under TCG use --cpu-mode maximum"), "{e}");
}

#[test]
fn host_model_is_not_for_aarch64() {
    let e = refused(
        Host::Tcg,
        &["--arch", "aarch64", "--cpu-mode", "host-model"],
        "cpu_mode host-model is not supported for aarch64 guests",
    );
    let hint = e.lines().find(|l| l.starts_with("hint: ")).unwrap_or("");
    assert!(
        hint.contains("--cpu-mode host-passthrough") && hint.contains("--cpu-mode maximum"),
        "{e}"
    );
}

#[test]
fn maxphysaddr_is_x86_only() {
    refused(
        Host::Tcg,
        &["--arch", "aarch64", "--maxphysaddr", "emulate:40"],
        "maxphysaddr is not supported for aarch64 guests",
    );
}

#[test]
fn maxphysaddr_mode_and_bits_must_pair_up() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--maxphysaddr", "emulate"],
        "invalid maxphysaddr 'emulate': emulate needs the number of bits",
    );
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--property",
            "hw:maxphysaddr_mode=emulate",
        ],
        "invalid hw:maxphysaddr_mode 'emulate': emulate needs the number of bits",
    );
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--property",
            "hw:maxphysaddr_mode=passthrough",
            "--property",
            "hw:maxphysaddr_bits=40",
        ],
        "hw:maxphysaddr_mode=passthrough conflicts with hw:maxphysaddr_bits=40: bits apply only \
         with mode emulate",
    );
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--property", "hw:maxphysaddr_bits=40"],
        "hw:maxphysaddr_bits=40 conflicts with no hw:maxphysaddr_mode: bits need \
         hw:maxphysaddr_mode=emulate",
    );
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--property",
            "hw:maxphysaddr_mode=sideways",
        ],
        "invalid hw:maxphysaddr_mode 'sideways': ",
    );
}

#[test]
fn emulated_bits_must_be_32_to_52() {
    for bits in ["emulate:31", "emulate:53"] {
        refused(
            Host::Tcg,
            &["--arch", "x86_64", "--maxphysaddr", bits],
            &format!("maxphysaddr {bits}: bits must be 32 to 52 for x86_64 guests"),
        );
    }
}

#[test]
fn emulated_bits_cannot_exceed_the_kvm_host() {
    refused(
        Host::Kvm,
        &[
            "--arch",
            "x86_64",
            "--accel",
            "kvm",
            "--maxphysaddr",
            "emulate:42",
        ],
        &format!("maxphysaddr emulate:42: 42 bits exceed the host CPU's {KVM_HOST_BITS}"),
    );
}

#[test]
fn passthrough_needs_kvm() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--maxphysaddr", "passthrough"],
        "maxphysaddr passthrough (the host's address width) needs a hardware accelerator (KVM)",
    );
}

#[test]
fn passthrough_limit_cannot_exceed_the_host() {
    refused(
        Host::Kvm,
        &[
            "--arch",
            "x86_64",
            "--accel",
            "kvm",
            "--cpu-mode",
            "host-passthrough",
            "--maxphysaddr",
            "passthrough:45",
        ],
        &format!(
            "maxphysaddr passthrough:45: the limit must be 32 to the host's {KVM_HOST_BITS} bits"
        ),
    );
}

#[test]
fn passthrough_needs_a_host_cpu_mode() {
    refused(
        Host::Kvm,
        &[
            "--arch",
            "x86_64",
            "--accel",
            "kvm",
            "--cpu-model",
            "Nehalem",
            "--maxphysaddr",
            "passthrough",
        ],
        "maxphysaddr passthrough with cpu_mode custom; passthrough goes with cpu_mode \
         host-passthrough or maximum",
    );
}

#[test]
fn too_few_bits_for_the_memory_names_the_minimum() {
    // q35 (profile memory_map): 64G of RAM puts 2G below 4G and 62G from 4G up, then the 32G
    // 64-bit PCI hole; the map ends at 4G + 62G + 32G = 98G, so 2^37 is the first that fits.
    const GIB: u64 = 1 << 30;
    let end = (4 + 62 + 32) * GIB;
    let need = (33..=52u32).find(|n| 1u64 << n >= end).unwrap();
    assert_eq!(need, 37);
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--memory",
            "64G",
            "--maxphysaddr",
            "emulate:36",
        ],
        &format!(
            "maxphysaddr emulate:36: 64G of RAM on q35 needs addresses up to {:#x}, beyond 2^36; \
             use at least {need} bits",
            end - 1
        ),
    );
}

#[test]
fn flag_and_flavor_disagreeing_on_bits_is_a_conflict() {
    refused(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--maxphysaddr",
            "emulate:40",
            "--property",
            "hw:maxphysaddr_mode=emulate",
            "--property",
            "hw:maxphysaddr_bits=42",
        ],
        "--maxphysaddr emulate:40 conflicts with hw:maxphysaddr_* = emulate:42: they ask for \
         different physical-address bits",
    );
}

#[test]
fn config_file_errors_name_the_file() {
    let w = World::new(Host::Tcg);
    let typo = w.file("typo.toml", "[cpu.x86_64]\ncpu_mdoe = \"custom\"\n");
    let e = refused_in(
        &w,
        &["--config", &typo, "--arch", "x86_64"],
        &format!("invalid config file {typo}: "),
    );
    let first = e.lines().next().unwrap();
    assert!(
        first.contains("line 2") && first.contains("cpu_mdoe"),
        "{e}"
    );

    let w = World::new(Host::Tcg);
    let vax = w.file("vax.toml", "[cpu.vax]\ncpu_mode = \"maximum\"\n");
    refused_in(
        &w,
        &["--config", &vax, "--arch", "x86_64"],
        &format!("config file {vax}: unknown architecture 'vax' in [cpu.vax]; valid: "),
    );

    // The rule itself is the cause; the first line says where it was broken.
    let w = World::new(Host::Tcg);
    let custom = w.file("custom.toml", "[cpu.x86_64]\ncpu_mode = \"custom\"\n");
    let e = refused_in(
        &w,
        &["--config", &custom, "--arch", "x86_64"],
        &format!("config file {custom}, [cpu.x86_64]"),
    );
    assert!(
        e.contains("caused by: cpu_mode custom needs a model"),
        "{e}"
    );
}

#[test]
fn cpu_check_must_be_enforce_or_none() {
    refused(
        Host::Tcg,
        &["--arch", "x86_64", "--cpu-check", "sometimes"],
        "invalid cpu_check 'sometimes': enforce or none",
    );
}

#[test]
fn features_unverifiable_without_expansion_are_refused() {
    let caps = tcg_caps("qemu-system-ppc64");
    assert!(
        caps["feature_names"].is_null(),
        "this case needs a qemu-system-ppc64 that cannot list its CPU features; this one can"
    );
    let version = caps["version"].as_str().unwrap();
    let e = refused(
        Host::Tcg,
        &["--arch", "ppc64le", "--cpu-flags=+altivec"],
        &format!(
            "qemu-system-ppc64 {version} cannot list its CPU features, so '+altivec' cannot be \
             checked"
        ),
    );
    assert!(e.contains("hint: pass --cpu-check none"), "{e}");
}

#[test]
fn models_unverifiable_without_a_list_are_refused_unless_unchecked() {
    let caps = tcg_caps("qemu-system-riscv64");
    assert!(
        caps["cpu_models"].is_null(),
        "this case needs a qemu-system-riscv64 that cannot list its CPU models; this one can"
    );
    let version = caps["version"].as_str().unwrap();
    let e = refused(
        Host::Tcg,
        &["--arch", "riscv64", "--cpu-model", "rv64"],
        &format!(
            "qemu-system-riscv64 {version} cannot list its CPU models, so 'rv64' cannot be checked"
        ),
    );
    assert!(e.contains("hint: pass --cpu-check none"), "{e}");
    // What the hint offers: the model goes to QEMU unchecked.
    let argv = accepted(
        Host::Tcg,
        &[
            "--arch",
            "riscv64",
            "--cpu-model",
            "rv64",
            "--cpu-check",
            "none",
        ],
    );
    assert_eq!(cpu_arg(&argv), "rv64", "{argv:?}");
}

#[test]
fn maximum_needs_a_max_cpu() {
    refused(
        Host::Tcg,
        &["--arch", "mipsel", "--cpu-mode", "maximum"],
        "has no 'max' CPU) is not supported for mipsel guests",
    );
}

#[test]
fn spec_file_cpu_errors() {
    let w = World::new(Host::Tcg);
    let spec = w.file(
        "vm.toml",
        "arch = \"x86_64\"\ncpu_mode = \"custom\"\ncpu_models = []\n",
    );
    refused_in(
        &w,
        &["--spec", &spec],
        "cpu_mode custom needs a model; name one with --cpu-model",
    );

    let w = World::new(Host::Tcg);
    let spec = w.file("vm.toml", "arch = \"x86_64\"\ncpu_model = [\"Nehalem\"]\n");
    let e = refused_in(
        &w,
        &["--spec", &spec],
        &format!("invalid spec file {spec}: "),
    );
    let first = e.lines().next().unwrap();
    assert!(
        first.contains("line 2") && first.contains("cpu_model"),
        "{e}"
    );
}

#[test]
fn named_model_and_libvirt_feature_names_reach_the_argv() {
    // Model names are case-insensitive, libvirt's lahf_lm is QEMU's lahf-lm, and a bare name
    // means required.
    let argv = accepted(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--cpu-model",
            "nehalem",
            "--cpu-flags=-popcnt,lahf_lm",
        ],
    );
    assert_eq!(cpu_arg(&argv), "Nehalem,popcnt=off,lahf-lm=on", "{argv:?}");
}

#[test]
fn flavor_and_flag_maxphysaddr_give_the_same_argv() {
    // One world for both, so the kernel and tripwire paths match too.
    let w = World::new(Host::Tcg);
    let flavor = accepted_in(
        &w,
        &[
            "--arch",
            "x86_64",
            "--property",
            "hw:maxphysaddr_mode=emulate",
            "--property",
            "hw:maxphysaddr_bits=42",
        ],
    );
    let flag = accepted_in(&w, &["--arch", "x86_64", "--maxphysaddr", "emulate:42"]);
    assert!(cpu_arg(&flag).ends_with(",phys-bits=42"), "{flag:?}");
    assert_eq!(flavor, flag);
}

#[test]
fn enough_bits_for_the_memory_pass() {
    let argv = accepted(
        Host::Tcg,
        &[
            "--arch",
            "x86_64",
            "--memory",
            "64G",
            "--maxphysaddr",
            "emulate:37",
        ],
    );
    assert!(cpu_arg(&argv).ends_with(",phys-bits=37"), "{argv:?}");
}
