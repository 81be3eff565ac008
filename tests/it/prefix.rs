//! QEMU in a prefix of its own (`--qemu-prefix`), extra QEMU options (`--qemu-arg`), and what
//! differs between QEMU versions, asked of the QEMU under test ([`qemu_prefix`]).
//!
//! Most cases use a *linked prefix*: `ROOT/usr/bin/qemu-system-*` links to the QEMU under test
//! and `ROOT/usr/share/{qemu,seabios}` links to its data files. Its emulators' `-L help` names
//! their build's folders, not ROOT's, just as Debian's QEMU unpacked into a prefix does, so
//! ROOT's folders must come as `-L`; the case holds on the system QEMU and on a
//! `scripts/install-qemu` one alike.

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::common::{
    BOOT_TIMEOUT, TestEnv, emulator, files_under, guest, guest_files, guest_proto, qemu_prefix,
    text,
};

/// The data folders of the QEMU under test: its prefix's, or the system's.
fn data_source(folder: &str) -> PathBuf {
    let share = Path::new("usr/share").join(folder);
    match qemu_prefix() {
        Some(p) => p.join(share),
        None => Path::new("/").join(share),
    }
}

/// A linked prefix (see the module doc) in `env`, with `binaries` linked; its
/// `usr/share/qemu/firmware` is a folder of its own, empty.
fn linked_prefix(env: &TestEnv, binaries: &[&str]) -> PathBuf {
    let root = env.path("prefix");
    let bin = root.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in binaries {
        symlink(emulator(b), bin.join(b)).unwrap();
    }
    for folder in ["qemu", "seabios"] {
        let to = root.join("usr/share").join(folder);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(data_source(folder)).unwrap().flatten() {
            if e.file_name() != "firmware" {
                symlink(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::create_dir_all(root.join("usr/share/qemu/firmware")).unwrap();
    root
}

/// The arguments of `-L` in an argv, in order.
fn data_args(argv: &[String]) -> Vec<PathBuf> {
    argv.windows(2)
        .filter(|w| w[0] == "-L")
        .map(|w| PathBuf::from(&w[1]))
        .collect()
}

/// `plan --dry-run ARGS` in `env`, which must succeed: the argv, the env assignment dropped.
fn dry_run(env: &TestEnv, args: &[&str]) -> Vec<String> {
    let out = env.cmd(["plan", "--dry-run"]).args(args).output().unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {e}");
    let mut argv = shlex::split(o.trim()).expect("a shell line");
    argv.retain(|a| !a.starts_with("QEMU_MODULE_DIR="));
    argv
}

/// What `-L help` lists for an emulator given `data` as `-L` first.
fn searched(emulator: &Path, data: &[PathBuf]) -> Vec<PathBuf> {
    let mut c = Command::new(emulator);
    for d in data {
        c.arg("-L").arg(d);
    }
    let out = c.args(["-L", "help"]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out).0.lines().map(PathBuf::from).collect()
}

#[test]
fn a_linked_prefix_gets_its_own_data_folders_and_boots() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let root = linked_prefix(&env, &["qemu-system-x86_64"]);
    let root = root.canonicalize().unwrap();
    let own = [root.join("usr/share/qemu"), root.join("usr/share/seabios")];
    let prefix = root.to_str().unwrap();
    let kernel = g.kernel.to_str().unwrap();
    let argv = dry_run(
        &env,
        &[
            "--arch",
            "x86_64",
            "--kernel",
            kernel,
            "--qemu-prefix",
            prefix,
        ],
    );
    assert_eq!(
        argv[0],
        root.join("usr/bin/qemu-system-x86_64").to_str().unwrap()
    );
    assert_eq!(data_args(&argv), own, "{argv:?}");
    // QEMU searches them first: the prefix's files are the ones it loads.
    let order = searched(&root.join("usr/bin/qemu-system-x86_64"), &own);
    assert_eq!(order[..2], own, "{order:?}");
    // The same prefix found from --emulator's path, without --qemu-prefix.
    let exe = root.join("usr/bin/qemu-system-x86_64");
    let out = env
        .cmd([
            "plan",
            "--dry-run",
            "--arch",
            "x86_64",
            "--kernel",
            kernel,
            "--emulator",
        ])
        .arg(&exe)
        .env_remove("QEMU_DIRECT_QEMU_PREFIX")
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert_eq!(data_args(&shlex::split(o.trim()).unwrap()), own, "{o}");

    let out = env
        .run(
            &g,
            ["--timeout", BOOT_TIMEOUT, "--qemu-prefix", prefix, "-v"],
        )
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "{o}");
    assert!(
        e.contains(&format!("qemu prefix {prefix} (not relocatable")),
        "{e}"
    );
}

/// For each test guest's emulator: the QEMU under test gets its own data folders as `-L`
/// exactly when its build does not search them already (`-L help` says), and QEMU then
/// searches them before its built-in ones. On the system QEMU: no `-L` at all.
#[test]
fn the_qemu_under_test_is_given_its_data_folders() {
    let env = TestEnv::new();
    let kernel = env.path("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    for (arch, binary) in [
        ("x86_64", "qemu-system-x86_64"),
        ("aarch64", "qemu-system-aarch64"),
        ("ppc64le", "qemu-system-ppc64"),
        ("s390x", "qemu-system-s390x"),
        ("mipsel", "qemu-system-mipsel"),
        ("riscv64", "qemu-system-riscv64"),
    ] {
        let argv = dry_run(
            &env,
            &["--arch", arch, "--kernel", kernel.to_str().unwrap()],
        );
        let exe = emulator(binary);
        assert_eq!(Path::new(&argv[0]), exe, "{arch}");
        let given = data_args(&argv);
        let builtin = searched(&exe, &[]);
        let want: Vec<PathBuf> = match qemu_prefix() {
            Some(p) if !builtin.iter().any(|d| d.starts_with(&p)) => builtin
                .iter()
                .map(|d| p.join(d.strip_prefix("/").unwrap()))
                .filter(|d| d.is_dir())
                .collect(),
            _ => Vec::new(),
        };
        assert_eq!(given, want, "{arch}: {argv:?}");
        let order = searched(&exe, &given);
        assert_eq!(order[..given.len()], given, "{arch}: {order:?}");
    }
}

#[test]
fn uefi_boots_from_a_descriptor_under_the_prefix() {
    let Some(guests) = guest_files("x86_64", &["uefi.img"]) else {
        return;
    };
    let img = guests.join("uefi.img");
    let env = TestEnv::new();
    let plan = |extra: &[&str]| -> Value {
        let out = env
            .cmd([
                "plan",
                "--json",
                "--arch",
                "x86_64",
                "--firmware",
                "uefi",
                "--disk",
            ])
            .arg(&img)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The descriptor the system would pick, copied under the prefix with a name that sorts
    // first and a description of its own.
    let system = plan(&[]);
    let source = system["descriptor_firmware"]["selected"]["descriptor"]
        .as_str()
        .unwrap()
        .to_owned();
    let root = linked_prefix(&env, &["qemu-system-x86_64"])
        .canonicalize()
        .unwrap();
    let mine = root.join("usr/share/qemu/firmware/10-prefix-edk2-x86_64.json");
    let mut d: Value = serde_json::from_slice(&std::fs::read(&source).unwrap()).unwrap();
    d["description"] = "the prefix's own UEFI".into();
    std::fs::write(&mine, d.to_string()).unwrap();
    let prefix = root.to_str().unwrap();

    let out = env.qd(["firmware", "--arch", "x86_64", "--qemu-prefix", prefix]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(o.contains(mine.to_str().unwrap()), "{o}");
    let p = plan(&["--qemu-prefix", prefix]);
    let sel = &p["descriptor_firmware"]["selected"];
    assert_eq!(sel["descriptor"], mine.to_str().unwrap(), "{p}");
    assert_eq!(sel["description"], "the prefix's own UEFI");

    let name = "uefi-prefix";
    let out = env
        .cmd([
            "run",
            "--name",
            name,
            "--arch",
            "x86_64",
            "--firmware",
            "uefi",
        ])
        .args(["--timeout", "300s", "--qemu-prefix", prefix, "--disk"])
        .arg(&img)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "{o}");
}

#[test]
fn a_prefix_without_the_guests_emulator_says_what_it_has() {
    let env = TestEnv::with_own_cache();
    let root = linked_prefix(&env, &["qemu-system-x86_64"]);
    let kernel = env.path("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    for verb in ["plan", "run"] {
        let out = env
            .cmd([verb, "--arch", "aarch64", "--qemu-prefix"])
            .arg(&root)
            .arg("--kernel")
            .arg(&kernel)
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{verb}: {e}");
        assert!(o.is_empty(), "{o}");
        let want = format!(
            "error: qemu-system-aarch64 (for aarch64 guests) is not in the QEMU prefix {}; it \
             has: qemu-system-x86_64",
            root.canonicalize().unwrap().display()
        );
        assert_eq!(e.lines().next(), Some(&*want), "{verb}: {e}");
    }
    let out = env
        .cmd(["cpu", "models", "--arch", "aarch64", "--qemu-prefix"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("it has: qemu-system-x86_64"));
    // No folder that holds no QEMU at all.
    let out = env.qd([
        "probe",
        "--qemu-prefix",
        env.path("state").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .contains("no QEMU emulator (qemu-system-*) in usr/bin/, bin/")
    );
    for d in [env.state(), env.cache(), env.instances()] {
        assert!(files_under(&d).is_empty(), "{}", d.display());
    }
}

#[test]
fn a_prefix_whose_qemu_does_not_run_shows_its_message() {
    let env = TestEnv::with_own_cache();
    let bin = env.path("broken/usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    // What the dynamic loader prints for a library this host lacks, and its exit status.
    let exe = bin.join("qemu-system-x86_64");
    std::fs::write(
        &exe,
        "#!/bin/sh\necho \"$0: error while loading shared libraries: libfoo.so.1: cannot open \
         shared object file: No such file or directory\" >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = env.path("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let prefix = env.path("broken");
    for args in [
        vec![
            "run",
            "--arch",
            "x86_64",
            "--kernel",
            kernel.to_str().unwrap(),
        ],
        vec!["probe"],
        vec!["cpu", "models", "--arch", "x86_64"],
    ] {
        let out = env
            .cmd(&args)
            .arg("--qemu-prefix")
            .arg(&prefix)
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {e}");
        assert!(o.is_empty(), "{o}");
        let first = e.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: --qemu-prefix "), "{e}");
        assert!(
            first.contains(
                "does not run: \
                 error while loading shared libraries: libfoo.so.1: cannot open shared object \
                 file"
            ) || first.contains("libfoo.so.1: cannot open shared object file"),
            "{e}"
        );
    }
    for d in [env.state(), env.cache(), env.instances()] {
        assert!(files_under(&d).is_empty(), "{}", d.display());
    }
}

#[test]
fn extra_options_come_after_ours_and_go_to_libvirt() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let kernel = g.kernel.to_str().unwrap();
    let extra = ["--qemu-arg=-device", "--qemu-arg", "virtio-rng-pci"];
    let argv = dry_run(
        &env,
        &[&["--arch", "x86_64", "--kernel", kernel][..], &extra].concat(),
    );
    assert_eq!(
        argv[argv.len() - 2..],
        ["-device", "virtio-rng-pci"],
        "{argv:?}"
    );
    let out = env
        .cmd(["plan", "--arch", "x86_64", "--kernel", kernel])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        text(&out).0.contains("extra:   -device virtio-rng-pci"),
        "{:?}",
        text(&out)
    );

    let out = env
        .cmd(["export", "libvirt", "--arch", "x86_64", "--kernel", kernel])
        .args(extra)
        .output()
        .unwrap();
    let (xml, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        xml.starts_with(
            "<domain type=\"qemu\" xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\">"
        ),
        "{xml}"
    );
    // After the prefix's -L folders, if the QEMU under test has any.
    assert!(
        xml.contains(
            "    <qemu:arg value=\"-device\"/>\n    <qemu:arg value=\"virtio-rng-pci\"/>\n"
        ) && xml.contains("</qemu:commandline>\n</domain>"),
        "{xml}"
    );

    // They reach QEMU: the guest boots with the device, which QEMU then lists.
    let vm = env.launch_detached({
        let mut c = env.run(&g, ["--name", "extra", "--append", guest_proto::HOLD]);
        c.args(extra);
        c
    });
    vm.wait_for(&guest_proto::heartbeat(1), BOOT_TIMEOUT);
    let devices: Value =
        serde_json::from_str(&env.qmp_ok("extra", &["execute", "query-pci"])).unwrap();
    // virtio-rng's PCI id: vendor 0x1af4, device 0x1005 (transitional) or 0x1044 (modern).
    let compact = devices.to_string();
    assert!(
        compact.contains("\"device\":4101") || compact.contains("\"device\":4164"),
        "{devices}"
    );
    vm.stop();
}

#[test]
fn an_option_qemu_does_not_know_is_its_error() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = env
        .run(&g, ["--qemu-arg=-frobnicate", "--no-console-log"])
        .output()
        .unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(
        e.contains("error: QEMU exited while starting (exit status 1): ")
            && e.contains("-frobnicate: invalid option"),
        "{e}"
    );
    assert!(files_under(&env.instances()).is_empty());
}

/// `Nehalem,+x2apic` under TCG: it runs where QEMU's TCG offers x2apic (from 8.0; 10.0 here)
/// and is refused, with the reason, where it does not (7.2). QEMU's own answer decides.
#[test]
fn nehalem_with_x2apic_follows_what_tcg_offers() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let out = env.qd(["probe", "--json"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let enabled = &facts["emulators"]["qemu-system-x86_64"]["caps"]["tcg"]["host_cpu"]["enabled"];
    let offered = enabled
        .as_array()
        .unwrap_or_else(|| panic!("no TCG expansion: {facts}"))
        .iter()
        .any(|f| f == "x2apic");
    let out = env
        .run(&g, ["--timeout", BOOT_TIMEOUT, "--accel", "tcg"])
        .args(["--cpu-model", "Nehalem", "--cpu-flags=+x2apic"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    if offered {
        assert_eq!(out.status.code(), Some(0), "{e}\n{o}");
        let flags = guest_proto::line(&o, "flags");
        assert!(flags.split_whitespace().any(|f| f == "x2apic"), "{flags}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{e}\n{o}");
        assert!(
            e.starts_with("error: no CPU model in cpu_models runs under tcg: Nehalem lacks x2apic"),
            "{e}"
        );
    }
}

/// `cpu models --qemu-prefix P` lists P's own QEMU's models (as its `-cpu help` does) and names
/// its version; with the QEMU under test in a prefix (10.0 in CI) that is not PATH's QEMU.
#[test]
fn cpu_models_come_from_the_prefixs_qemu() {
    let env = TestEnv::with_own_cache();
    let root = match qemu_prefix() {
        Some(p) => p,
        None => linked_prefix(&env, &["qemu-system-x86_64"]),
    };
    let exe = root.join("usr/bin/qemu-system-x86_64");
    let out = env
        .cmd([
            "cpu", "models", "--arch", "x86_64", "--accel", "tcg", "--json",
        ])
        .arg("--qemu-prefix")
        .arg(&root)
        .env_remove("QEMU_DIRECT_QEMU_PREFIX")
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let listed: Value = serde_json::from_str(&o).unwrap();
    let ours: std::collections::BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    // `-cpu help`: "x86 NAME ..." (7.2) or "  NAME ..." (10.0), up to the first empty line.
    let help = Command::new(&exe).args(["-cpu", "help"]).output().unwrap();
    let theirs: std::collections::BTreeSet<String> = text(&help)
        .0
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.trim_start_matches("x86 ").split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(theirs.len() > 20, "{theirs:?}");
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // The text form names the prefix's QEMU and its version.
    let out = env
        .cmd(["cpu", "models", "--arch", "x86_64", "--accel", "tcg"])
        .arg("--qemu-prefix")
        .arg(&root)
        .output()
        .unwrap();
    let version = crate::common::qemu_version("qemu-system-x86_64");
    let first = text(&out).0.lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with(&format!("qemu-system-x86_64 {version} under tcg")),
        "{first}"
    );
}

/// Options qemu-direct manages, given to `run` as `--qemu-arg`, are refused before anything
/// starts: exit 2, the option and the reason, no instance, nothing cached or recorded.
#[test]
fn a_managed_qemu_arg_is_refused_before_anything_starts() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::with_own_cache();
    for (args, want) in [
        (&["--qemu-arg=-qmp", "--qemu-arg=stdio"][..], "'-qmp': "),
        (&["--qemu-arg=-serial", "--qemu-arg=null"], "'-serial': "),
        (&["--qemu-arg=-S"], "'-S': "),
        (&["--qemu-arg=-daemonize"], "'-daemonize': "),
        (
            &["--qemu-arg=-incoming", "--qemu-arg=defer"],
            "'-incoming': ",
        ),
        (&["--qemu-arg=--monitor", "--qemu-arg=stdio"], "monitor"),
        (
            &["--qemu-arg=-chardev", "--qemu-arg=null,id=con0"],
            "chardev id 'con0'",
        ),
        (
            &["--qemu-arg=-cpu", "--qemu-arg=max"],
            "'-cpu': set by the spec",
        ),
    ] {
        let out = env.run(&g, args).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        assert!(o.is_empty(), "{args:?}: {o}");
        let first = e.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid qemu_args '") && first.contains(want),
            "{args:?}: {e}"
        );
    }
    for d in [env.state(), env.instances()] {
        assert!(files_under(&d).is_empty(), "{}", d.display());
    }
}

/// The QEMU under test, started as qemu-direct starts it (its module folder and `-L`), loads
/// every module it has without aborting: `-device help` loads them all, as libvirt's probe
/// (`qom-list-types`) does. A prefix missing a module its QEMU knows would have QEMU take the
/// system QEMU's copy, of another build, and abort (`module_load_dso: Assertion`).
#[test]
fn the_qemu_under_test_loads_all_its_modules() {
    let env = TestEnv::new();
    let kernel = env.path("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let out = env
        .cmd(["plan", "--dry-run", "--arch", "x86_64", "--kernel"])
        .arg(&kernel)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let words = shlex::split(o.trim()).unwrap();
    let mut c = Command::new(emulator("qemu-system-x86_64"));
    for w in words
        .iter()
        .take_while(|w| w.contains('=') && !w.starts_with('-'))
    {
        let (k, v) = w.split_once('=').unwrap();
        c.env(k, v);
    }
    for d in data_args(&words) {
        c.arg("-L").arg(d);
    }
    let out = c.args(["-device", "help"]).output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{:?}: {e}", out.status);
    assert!(o.contains("virtio-net-pci"), "{o}");
    assert!(!e.contains("Only modules from the same build"), "{e}");
}
