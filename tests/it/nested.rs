//! The KVM path on a real `/dev/kvm`: nested KVM inside an emulated x86_64 guest.
//!
//! This host's `/dev/kvm` (PVM, or none) cannot run the test guests, so the KVM side is tested
//! one level down. qemu-direct itself boots an x86_64 guest, L1, under TCG with `-cpu max`
//! (QEMU's TCG emulates AMD SVM there) and `-smp 1` (with two vCPUs some L2 boots triple-fault
//! or hang: QEMU 7.2's SVM emulation). L1 is the x86_64 test guest built with `--kvm-host`
//! (`scripts/fetch-test-guests.sh`: its `/init` loads kvm_amd, so L1 has a real `/dev/kvm`).
//! The host's `/usr` (QEMU, its data and firmware, libraries), the folder of the qemu-direct
//! binary under test and the test guests are shared into L1 over virtiofs;
//! `tests/guest/nested-l1.sh`, run through L1's guest agent, makes them read-only and builds a
//! root at `/h` around them with a tmpfs `/tmp`. Each check then runs
//! `chroot /h qemu-direct ...` inside L1 through the agent (`qemu-direct exec`), gets its
//! output and exit status back, and asserts on them: the KVM verdict and its reason, os-traits,
//! `check`, `cpu models --accel kvm`, the KVM capability cache (its entry as L1 sees it),
//! refusals, and L2 guests (the x86_64 test guest, and the i686 one under `qemu-system-i386`)
//! booted under KVM, each judged by what the L2 guest printed on its console (the marker, its
//! CPU flags, its address sizes), never by an exit status alone.
//!
//! One L1 boot serves every check (about 8 minutes on 2 cores, L2 boots 30-50 s each), so it is
//! one `#[ignore]`d test: `scripts/test --kvm-nested` (and its own step of `scripts/test`) runs
//! it. It skips, saying why, only on a host that cannot run it: not x86_64 (L1 runs this
//! host's binaries), or a QEMU whose TCG `max` CPU has no SVM. The L1 guests come from
//! `$QD_TEST_GUESTS_KVM_HOST` (default: the test guests' folder + `-kvm-host`).

use std::{
    cell::RefCell,
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::Value;

use crate::common::{Detached, TestEnv, guest, guest_proto, guests_dir, text};

/// Where L1 mounts the host's folders and builds its root (`tests/guest/nested-l1.sh`).
const ROOT: &str = "/h";
/// The emulators L1 offers its qemu-direct (its `PATH`); each one more costs ~10 s of probing.
const EMULATORS: &[&str] = &["qemu-system-x86_64", "qemu-system-i386"];
/// Bounds one L2 boot inside L1 (they take 30-50 s; a hang must not stall the step).
const L2_TIMEOUT: &str = "300s";
/// Bounds one command in L1, L2 boot included, through the agent.
const EXEC_TIMEOUT: &str = "900s";

/// The folder of the `--kvm-host` test guests (L1).
fn kvm_host_guests_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QD_TEST_GUESTS_KVM_HOST") {
        return d.into();
    }
    let mut d = guests_dir().into_os_string();
    d.push("-kvm-host");
    d.into()
}

/// One command run in L1: what it printed and how it ended.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails, with everything it printed, unless it exited with `code`.
    fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L1$ {}\n  exit {:?}\n  stdout:\n{}\n  stderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

/// The L1 guest, running detached in its own [`TestEnv`], with what its CPU offers.
struct L1<'e> {
    vm: Detached<'e>,
    env: &'e TestEnv,
    /// Its `/proc/cpuinfo` flags.
    flags: BTreeSet<String>,
    /// Its physical address bits (`/proc/cpuinfo`).
    phys_bits: u32,
    /// The flags an L2 under host-passthrough showed, once one has booted.
    passthrough_flags: RefCell<Option<BTreeSet<String>>>,
}

impl<'e> L1<'e> {
    /// Boots L1 and prepares its root; `None` (said why) where this host cannot.
    fn boot(env: &'e TestEnv) -> Option<L1<'e>> {
        let l1 = kvm_host_guests_dir().join("x86_64");
        assert!(
            l1.join("initrd.gz").is_file(),
            "no --kvm-host x86_64 guest in {}: run scripts/fetch-test-guests.sh --kvm-host \
             --arch x86_64 {} (or set QD_TEST_GUESTS_KVM_HOST)",
            l1.display(),
            kvm_host_guests_dir().display()
        );
        let bin = Path::new(env!("CARGO_BIN_EXE_qemu-direct"));
        let shares = [
            ("/usr".into(), "usr"),
            (bin.parent().unwrap().to_path_buf(), "qd"),
            (guests_dir(), "guests"),
        ];
        let mut append = guest_proto::HOLD.to_owned();
        let mut cmd = env.cmd(["run", "--name", "l1", "--arch", "x86_64", "--accel", "tcg"]);
        cmd.args(["--cpu-model", "max", "--smp", "1", "--memory", "2G"])
            .arg("--kernel")
            .arg(l1.join("kernel"))
            .arg("--initrd")
            .arg(l1.join("initrd.gz"));
        for (dir, tag) in &shares {
            let mut s = dir.clone().into_os_string();
            s.push(format!(":{tag},fs=virtiofs"));
            cmd.arg("--share").arg(s);
            append.push(' ');
            append.push_str(&guest_proto::mount(tag, &format!("{ROOT}/{tag}")));
        }
        cmd.args(["--append", &append]);
        let started = Instant::now();
        let vm = env.launch_detached(cmd);
        vm.wait_for(&guest_proto::ready("x86_64"), "300s");
        let mut l1 = L1 {
            vm,
            env,
            flags: BTreeSet::new(),
            phys_bits: 0,
            passthrough_flags: RefCell::new(None),
        };
        let setup = l1.sh(include_str!("../guest/nested-l1.sh"), EMULATORS);
        setup.expect(0);
        assert!(setup.stdout.contains("qd-l1: root /h ready"), "{setup}");
        let cpuinfo = l1.sh("cat /proc/cpuinfo", &[]);
        l1.flags = cpuinfo_flags(&cpuinfo.expect(0).stdout);
        l1.phys_bits = phys_bits(&cpuinfo.stdout);
        assert!(l1.flags.contains("svm"), "L1 has no svm: {cpuinfo}");
        eprintln!(
            "nested: L1 up, root ready in {:.1} s; L1 phys-bits {}",
            started.elapsed().as_secs_f64(),
            l1.phys_bits
        );
        Some(l1)
    }

    /// `sh -c SCRIPT nested ARGS...` in L1 through its agent.
    fn sh(&self, script: &str, args: &[&str]) -> Run {
        let mut c = self
            .env
            .cmd(["exec", &self.vm.name, "--timeout", EXEC_TIMEOUT]);
        c.args(["--", "sh", "-c", script, "nested"]).args(args);
        self.report(
            format!("sh -c {:?}", script.lines().next().unwrap_or("")),
            c,
        )
    }

    /// `qemu-direct ARGS` in L1's root, with XDG directories on its tmpfs.
    fn qd(&self, args: &[&str]) -> Run {
        let mut c = self
            .env
            .cmd(["exec", &self.vm.name, "--timeout", EXEC_TIMEOUT]);
        for (var, dir) in [
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_STATE_HOME", "state"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_CONFIG_HOME", "config"),
            ("HOME", "home"),
        ] {
            c.args(["--env", &format!("{var}=/tmp/{dir}")]);
        }
        c.args(["--env", "PATH=/qemu-bin"]);
        // An emulated host probes tens of times slower than the default limit expects.
        c.args(["--env", "QEMU_DIRECT_PROBE_TIMEOUT=600s"]);
        c.args(["--", "chroot", ROOT, "/qd/qemu-direct"]).args(args);
        self.report(format!("qemu-direct {}", args.join(" ")), c)
    }

    fn report(&self, what: String, mut c: std::process::Command) -> Run {
        let started = Instant::now();
        let out = c.output().expect("run qemu-direct exec");
        let (stdout, stderr) = text(&out);
        let run = Run {
            what,
            code: out.status.code(),
            stdout,
            stderr,
        };
        eprintln!(
            "nested: {} -> exit {:?} in {:.1} s",
            run.what,
            run.code,
            started.elapsed().as_secs_f64()
        );
        run
    }

    /// Boots the x86_64 test guest (L2) in L1 with `args`; see [`L1::l2_of`].
    fn l2(&self, args: &[&str], want: i32) -> L2 {
        self.l2_of("x86_64", args, want)
    }

    /// Boots the `arch` test guest (L2) in L1 with `args`; retries once (saying so) when the
    /// boot itself fails (no marker, or not the exit `want` asks for; not a refusal, exit 2).
    fn l2_of(&self, arch: &str, args: &[&str], want: i32) -> L2 {
        let (kernel, initrd) = (
            format!("/guests/{arch}/kernel"),
            format!("/guests/{arch}/initrd.gz"),
        );
        let mut all = vec!["run", "--arch", arch, "--timeout", L2_TIMEOUT];
        all.extend(["--kernel", &kernel, "--initrd", &initrd]);
        all.extend(args);
        let ready = guest_proto::ready(arch);
        let first = self.qd(&all);
        let arch = arch.to_owned();
        // Exit 2: refused before QEMU started; nothing a second boot would change.
        if first.code == Some(2) || (first.code == Some(want) && first.stdout.contains(&ready)) {
            return L2 { arch, run: first };
        }
        eprintln!("nested: RETRY (once) of an L2 boot that failed:\n{first}");
        L2 {
            arch,
            run: self.qd(&all),
        }
    }
}

/// An L2 boot's run: its console is the run's stdout.
struct L2 {
    /// The test guest booted, whose marker it prints.
    arch: String,
    run: Run,
}

impl L2 {
    /// Fails unless L2 printed its marker and the run exited with `code`.
    fn expect(&self, code: i32) -> &L2 {
        self.run.expect(code);
        assert!(
            self.run.stdout.contains(&guest_proto::ready(&self.arch)),
            "no marker from L2:\n{}",
            self.run
        );
        self
    }

    /// The flags L2's `/proc/cpuinfo` lists.
    fn flags(&self) -> BTreeSet<String> {
        cpuinfo_flags(guest_proto::line(&self.run.stdout, "flags"))
    }

    /// L2's physical address bits.
    fn phys_bits(&self) -> u32 {
        phys_bits(guest_proto::line(&self.run.stdout, "address-sizes"))
    }
}

/// The words after `flags :` in (a line of) `/proc/cpuinfo`.
fn cpuinfo_flags(text: &str) -> BTreeSet<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("flags"))
        .unwrap_or_else(|| panic!("no flags line in {text}"));
    let (_, list) = line.split_once(':').expect("flags : ...");
    list.split_whitespace().map(str::to_owned).collect()
}

/// N of `address sizes : N bits physical, ...`.
fn phys_bits(text: &str) -> u32 {
    let line = text
        .lines()
        .find(|l| l.contains("address sizes"))
        .unwrap_or_else(|| panic!("no address sizes line in {text}"));
    let (_, rest) = line.split_once(':').expect("address sizes : ...");
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad address sizes line: {line}"))
}

/// Why this host cannot run L1 with KVM inside, if it cannot.
fn cannot_run(env: &TestEnv) -> Option<String> {
    if !cfg!(target_arch = "x86_64") {
        return Some("L1 runs this host's x86_64 binaries (qemu-direct, QEMU) from a share".into());
    }
    let out = env.qd(["probe", "--json"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let x86 = &facts["emulators"]["qemu-system-x86_64"];
    let max = x86["caps"]["tcg"]["host_cpu"]["enabled"].as_array()?;
    if !max.iter().any(|f| f == "svm") {
        return Some(format!(
            "QEMU {} emulates no SVM for -cpu max under TCG",
            x86["version"]
        ));
    }
    None
}

/// One check, run against the shared L1.
type Check = fn(&L1);

/// Runs each check, going on after a failure; fails at the end naming every failed check.
#[test]
#[ignore = "nested KVM takes minutes: scripts/test --kvm-nested runs it"]
fn kvm_inside_an_emulated_x86_64_guest() {
    let env = TestEnv::new();
    if let Some(why) = cannot_run(&env) {
        eprintln!("SKIPPED: nested KVM: {why}");
        return;
    }
    guest("x86_64").expect("the x86_64 test guest (L2)");
    // Only fetched when named: scripts/test's nested step does.
    assert!(
        guests_dir().join("i686/initrd.gz").is_file(),
        "no i686 test guest (a 32-bit L2) in {0}: run scripts/fetch-test-guests.sh --arch i686 {0}",
        guests_dir().display()
    );
    let started = Instant::now();
    let Some(l1) = L1::boot(&env) else { return };
    let checks: [(&str, Check); 9] = [
        ("probe, traits, check", verdict),
        ("emulate beyond the host's bits refused", emulate_refused),
        ("cpu models --accel kvm", models),
        ("the KVM caps cache: hit, new CPU, new kernel", caps_cache),
        ("i686 under KVM", i686),
        ("host-passthrough, maxphysaddr passthrough", passthrough),
        ("maximum, maxphysaddr passthrough:LIMIT", passthrough_limit),
        (
            "host-model, maxphysaddr emulate below the host's bits",
            host_model,
        ),
        ("custom model -flag, then a panic", custom_then_panic),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        let t = Instant::now();
        eprintln!("nested: ==> {name}");
        let ok = catch_unwind(AssertUnwindSafe(|| check(&l1))).is_ok();
        eprintln!(
            "nested: ==> {name}: {} in {:.1} s",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(name);
        }
    }
    eprintln!(
        "nested: all checks done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed nested checks: {failed:?}");
}

/// `probe`: usable, and why; os-traits with the passthrough address space; `check`: natively.
fn verdict(l1: &L1) {
    let probe = l1.qd(&["probe"]);
    probe.expect(0);
    assert!(
        probe.stdout.contains("kvm:       usable (/dev/kvm)"),
        "{probe}"
    );
    let traits = l1.qd(&["traits"]);
    traits.expect(0);
    for t in ["COMPUTE_ADDRESS_SPACE_PASSTHROUGH", "HW_ARCH_X86_64"] {
        assert!(
            traits.stdout.lines().any(|l| l.starts_with(t)),
            "{t}: {traits}"
        );
    }
    let check = l1.qd(&[
        "check",
        "--arch",
        "x86_64",
        "--kernel",
        "/guests/x86_64/kernel",
    ]);
    check.expect(0);
    assert!(check.stdout.contains("runs here: native\n"), "{check}");
    assert!(
        check
            .stdout
            .contains("KVM: /dev/kvm is usable and x86_64 guests are native"),
        "{check}"
    );
}

/// `emulate:N` beyond L1's physical bits: refused under KVM, naming both numbers.
fn emulate_refused(l1: &L1) {
    let bits = l1.phys_bits + 4;
    let arg = format!("emulate:{bits}");
    let run = l1.qd(&[
        "plan",
        "--arch",
        "x86_64",
        "--maxphysaddr",
        &arg,
        "--kernel",
        "/guests/x86_64/kernel",
    ]);
    run.expect(2);
    let want = format!(
        "error: maxphysaddr {arg}: {bits} bits exceed the host CPU's {}",
        l1.phys_bits
    );
    assert!(run.stderr.contains(&want), "want {want:?}: {run}");
}

/// `cpu models --accel kvm`: KVM's own answers. KVM emulates x2apic for every guest, which
/// QEMU 7.2's TCG does not: no model lacks it here; models needing AVX-512 (which L1's CPU
/// has not) are unusable.
fn models(l1: &L1) {
    let run = l1.qd(&["cpu", "models", "--arch", "x86_64", "--accel", "kvm"]);
    run.expect(0);
    assert!(run.stdout.contains("under kvm:"), "{run}");
    let rows: Vec<&str> = run.stdout.lines().skip(1).collect();
    let row = |m: &str| {
        rows.iter()
            .find(|r| r.split_whitespace().nth(1) == Some(m))
            .unwrap_or_else(|| panic!("no {m} row: {run}"))
            .to_owned()
    };
    assert!(row("qemu64-v1").trim_start().starts_with("yes"), "{run}");
    assert!(!l1.flags.contains("avx512f"));
    let sky = row("Skylake-Server-v1");
    assert!(
        sky.trim_start().starts_with("no") && sky.contains("avx512f"),
        "{sky}"
    );
    assert!(
        rows.iter().all(|r| !r.contains("x2apic")),
        "a model lacks x2apic under KVM: {run}"
    );
}

/// The cache file of qemu-system-x86_64's capabilities under KVM in L1, as it is now.
struct Entry {
    /// Its inode: a probe writes a new file and renames it over the old one, a hit reads.
    inode: String,
    /// Its key's host CPU identity.
    host_cpu: String,
}

/// The sh script that prints the inode of the KVM cache entry and the entry (`$1`: a sed
/// expression to apply to it first, or none).
const ENTRY_SH: &str = r#"set -e
f=$(ls /h/tmp/cache/qemu-direct/caps/*qemu-system-x86_64.kvm.json)
[ -z "${1:-}" ] || sed -i "$1" "$f"
ls -i "$f"
cat "$f""#;

impl L1<'_> {
    /// The KVM cache entry, after applying the sed expression `edit` (if any) to it.
    fn kvm_entry(&self, edit: Option<&str>) -> Entry {
        let run = self.sh(ENTRY_SH, edit.as_slice());
        run.expect(0);
        let (ls, json) = run.stdout.split_once('\n').expect("ls -i, then the entry");
        let entry: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {run}"));
        let host_cpu = entry["key"]["host_cpu"].as_str();
        Entry {
            inode: ls.split_whitespace().next().unwrap_or_default().to_owned(),
            host_cpu: host_cpu
                .unwrap_or_else(|| panic!("no key.host_cpu: {run}"))
                .to_owned(),
        }
    }

    /// `cpu models --arch x86_64 --accel kvm`'s table.
    fn kvm_models(&self) -> String {
        let run = self.qd(&["cpu", "models", "--arch", "x86_64", "--accel", "kvm"]);
        run.expect(0);
        assert!(run.stdout.contains("under kvm:"), "{run}");
        run.stdout
    }
}

/// The KVM half of the capability cache, keyed by the host CPU and kernel: the entry that
/// `probe` wrote names L1's CPU vendor, its SVM flag and L1's kernel release (the TCG entry
/// names no CPU); `cpu models --accel kvm` answers from it (the file stays as it is) with the
/// same table; an entry whose CPU identity, then whose kernel release, is not this host's is
/// probed again (a new file, with L1's own identity back) with the same answers.
fn caps_cache(l1: &L1) {
    let facts = l1.sh(
        "uname -r; grep -m1 '^vendor_id' /proc/cpuinfo; \
         cat /h/tmp/cache/qemu-direct/caps/*qemu-system-x86_64.tcg.json",
        &[],
    );
    facts.expect(0);
    let mut lines = facts.stdout.lines();
    let (release, vendor) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let vendor = vendor.split_once(':').map_or("", |(_, v)| v.trim());
    let tcg: Value = serde_json::from_str(lines.next().unwrap_or("")).expect("the TCG entry");
    assert!(
        !vendor.is_empty() && !release.is_empty() && tcg["key"].get("host_cpu").is_none(),
        "{facts}"
    );
    let first = l1.kvm_entry(None);
    let id = &first.host_cpu;
    for part in [format!("vendor_id={vendor}"), format!("kernel={release}")] {
        assert!(id.contains(&part), "the key lacks {part}: {id}");
    }
    assert!(
        id.split("; ")
            .any(|p| p.starts_with("flags=") && p.contains(" svm ")),
        "no svm flag in the key: {id}"
    );
    let table = l1.kvm_models();
    let hit = l1.kvm_entry(None);
    assert_eq!(hit.inode, first.inode, "a second cpu models probed again");
    assert_eq!(&hit.host_cpu, id);
    for (what, edit) in [
        ("CPU", "s/vendor_id=/vendor_id=NotThisCPU/"),
        ("kernel", "s/; kernel=/; kernel=0.0.0-not-this-/"),
    ] {
        let edited = l1.kvm_entry(Some(edit));
        assert_ne!(&edited.host_cpu, id, "the edit {edit} changed nothing");
        assert_eq!(l1.kvm_models(), table, "after another {what}");
        let again = l1.kvm_entry(None);
        assert_ne!(
            again.inode, edited.inode,
            "an entry of another {what} was used, not probed again"
        );
        assert_eq!(&again.host_cpu, id, "after another {what}");
    }
}

/// An i686 guest (`qemu-system-i386`) under KVM on L1, an x86_64 host: it runs its 32-bit
/// kernel natively (`uname -m` i686) with L1's CPU, less long mode, which QEMU's 32-bit target
/// hides.
fn i686(l1: &L1) {
    let l2 = l1.l2_of("i686", &["--append", "quiet"], 0);
    l2.expect(0);
    let e = &l2.run.stderr;
    assert!(
        e.contains("KVM: /dev/kvm is usable") && e.contains("accelerator kvm (as QEMU reports it)"),
        "{}",
        l2.run
    );
    assert_eq!(
        guest_proto::line(&l2.run.stdout, "uname"),
        "i686",
        "{}",
        l2.run
    );
    let flags = l2.flags();
    assert!(
        l1.flags.contains("lm") && !flags.contains("lm"),
        "{flags:?}"
    );
    for f in ["sse2", "cx8", "pae"] {
        assert!(flags.contains(f), "L2 lacks {f}: {flags:?}");
    }
}

/// The default CPU under KVM is host-passthrough: L2 sees L1's own flags (SVM, nested paging,
/// LA57, which no named model has) and, with `--maxphysaddr passthrough`, L1's address bits.
fn passthrough(l1: &L1) {
    let l2 = l1.l2(&["--append", "quiet", "--maxphysaddr", "passthrough"], 0);
    l2.expect(0);
    let e = &l2.run.stderr;
    assert!(
        e.contains("KVM: /dev/kvm is usable") && e.contains("cpu: host-passthrough"),
        "{}",
        l2.run
    );
    assert!(
        e.contains("accelerator kvm (as QEMU reports it)"),
        "{}",
        l2.run
    );
    let flags = l2.flags();
    for f in ["svm", "npt", "la57", "fsgsbase", "umip"] {
        if l1.flags.contains(f) {
            assert!(flags.contains(f), "L2 lacks {f} of L1: {flags:?}");
        }
    }
    assert_eq!(l2.phys_bits(), l1.phys_bits, "{}", l2.run);
    *l1.passthrough_flags.borrow_mut() = Some(flags);
}

/// `--cpu-mode maximum --maxphysaddr passthrough:LIMIT`: L2 gets LIMIT address bits, fewer
/// than L1's.
fn passthrough_limit(l1: &L1) {
    let limit = l1.phys_bits - 3;
    let arg = format!("passthrough:{limit}");
    let args = [
        "--append",
        "quiet",
        "--cpu-mode",
        "maximum",
        "--maxphysaddr",
        &arg,
    ];
    let l2 = l1.l2(&args, 0);
    l2.expect(0);
    assert!(l2.run.stderr.contains("accelerator kvm"), "{}", l2.run);
    assert!(l2.flags().contains("svm"), "{}", l2.run);
    assert_eq!(l2.phys_bits(), limit, "{}", l2.run);
}

/// `--cpu-mode host-model`: L2's flags are those of the model and features qemu-direct
/// computed (`plan --json`, the model's own features from the caps under KVM), as far as L2
/// shows them under host-passthrough (its kernel turns XSAVE, and with it AVX, off), and
/// `--maxphysaddr emulate:N` (N below L1's bits: allowed under KVM) gives it N address bits.
fn host_model(l1: &L1) {
    let bits = l1.phys_bits - 1;
    let emulate = format!("emulate:{bits}");
    let args = ["--cpu-mode", "host-model", "--maxphysaddr", &emulate];
    let mut plan_args = vec!["plan", "--json", "--arch", "x86_64"];
    plan_args.extend(args);
    plan_args.extend(["--kernel", "/guests/x86_64/kernel"]);
    let plan = l1.qd(&plan_args);
    plan.expect(0);
    let plan: Value = serde_json::from_str(&plan.stdout).expect("plan --json");
    eprintln!("nested: host-model plan cpu: {}", plan["cpu"]);
    let probe = l1.qd(&["probe", "--json"]);
    let facts: Value = serde_json::from_str(&probe.expect(0).stdout).expect("probe --json");
    let (on, off) = plan_flags(&plan, &facts, "kvm");
    let mut boot = vec!["--append", "quiet"];
    boot.extend(args);
    let l2 = l1.l2(&boot, 0);
    l2.expect(0);
    assert!(l2.run.stderr.contains("cpu: host-model"), "{}", l2.run);
    let flags = l2.flags();
    let shown = l1.passthrough_flags.borrow().clone();
    let shown = shown.unwrap_or_else(|| l1.flags.clone());
    let missing: Vec<&String> = on
        .iter()
        .filter(|f| shown.contains(*f) && !flags.contains(*f))
        .collect();
    assert!(missing.is_empty(), "L2 lacks {missing:?}: {flags:?}");
    let extra: Vec<&String> = flags.iter().filter(|f| off.contains(*f)).collect();
    assert!(
        extra.is_empty(),
        "L2 has {extra:?}, which the plan disables"
    );
    assert_eq!(l2.phys_bits(), bits, "{}", l2.run);
}

/// `--cpu-mode custom --cpu-model qemu64 --cpu-flags=-svm`: L2 runs that model (no SSE4.2,
/// which L1 has) without SVM (which the model and L1 have); then its kernel panics and the
/// run says so (exit 4), not hangs.
fn custom_then_panic(l1: &L1) {
    for f in ["svm", "sse4_2"] {
        assert!(l1.flags.contains(f), "L1 lacks {f}");
    }
    let append = format!("quiet {}", guest_proto::PANIC);
    let args = [
        "--append",
        &append,
        "--cpu-mode",
        "custom",
        "--cpu-model",
        "qemu64",
    ];
    let l2 = l1.l2(&[&args[..], &["--cpu-flags=-svm"]].concat(), 4);
    l2.expect(4);
    let flags = l2.flags();
    assert!(!flags.contains("svm"), "L2 has svm: {flags:?}");
    assert!(!flags.contains("sse4_2"), "not qemu64: {flags:?}");
    assert!(
        flags.contains("sse2") && flags.contains("cx16"),
        "{flags:?}"
    );
    assert!(l2.run.stderr.contains("panic"), "{}", l2.run);
}

/// The plan's CPU (`plan --json`: model, `features`), as Linux names flags in
/// `/proc/cpuinfo`: (enabled by the model or a feature, disabled by a feature). The model's own
/// features come from the emulator's caps (`probe --json`, under `accel`).
fn plan_flags(plan: &Value, facts: &Value, accel: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let linux = |f: &str| match f {
        "lahf-lm" => "lahf_lm".to_owned(),
        "cr8legacy" => "cr8_legacy".to_owned(),
        other => other.replace(['-', '.'], "_"),
    };
    let model = plan["cpu"]["model"].as_str().expect("a model in the plan");
    let models = &facts["emulators"]["qemu-system-x86_64"]["caps"][accel]["cpu_models"];
    let def = models
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == model))
        .unwrap_or_else(|| panic!("no {model} in the caps under {accel}"));
    let def = match def["alias_of"].as_str() {
        Some(real) => models
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == real))
            .unwrap_or_else(|| panic!("no {real} in the caps")),
        None => def,
    };
    let mut on: BTreeSet<String> = def["features"]["enabled"]
        .as_array()
        .unwrap_or_else(|| panic!("no features of {model}: {def}"))
        .iter()
        .filter_map(|f| f.as_str().map(linux))
        .collect();
    let mut off = BTreeSet::new();
    for f in plan["cpu"]["features"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = linux(f["name"].as_str().unwrap_or_default());
        if f["on"] == true {
            on.insert(name);
        } else {
            on.remove(&name);
            off.insert(name);
        }
    }
    (on, off)
}
