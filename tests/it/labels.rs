//! Scheduler labels (`traits --format nfd|labels`): every name and value against Kubernetes'
//! label syntax (checked here from the rules, not with the code under test), the labels of the
//! real host and of made-up ones (`--host-facts`), the Node Feature Discovery file written by a
//! rename (watched with inotify), and no dot-file left after a success or a failure.

use std::{collections::BTreeMap, ffi::OsString, path::Path, process::Output};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use serde_json::Value;

use crate::common::{TestEnv, text};

/// Kubernetes' rule for a label (k8s.io/apimachinery `IsQualifiedName`, `IsValidLabelValue`):
/// the name is an optional DNS subdomain prefix (<= 253 characters, lower-case RFC 1123 labels
/// joined by dots) and `/`, then a name part of 1 to 63 characters
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`; the value is empty or matches the name part's
/// rule. `Err` says what is wrong.
fn k8s_label(name: &str, value: &str) -> Result<(), String> {
    let part = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    };
    let dns_label = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    let (prefix, local) = match name.split_once('/') {
        Some((p, l)) => (Some(p), l),
        None => (None, name),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !p.split('.').all(dns_label))
    {
        return Err(format!("prefix '{p}' of '{name}' is not a DNS subdomain"));
    }
    if !part(local) {
        return Err(format!(
            "name '{local}' of '{name}' breaks the label syntax"
        ));
    }
    if !value.is_empty() && !part(value) {
        return Err(format!(
            "value '{value}' of '{name}' breaks the label syntax"
        ));
    }
    Ok(())
}

#[test]
fn the_syntax_check_itself_refuses_what_kubernetes_refuses() {
    for (n, v) in [
        ("qemu-direct.io/kvm", "usable"),
        ("qemu-direct.io/guest.x86_64", "kvm"),
        ("a/b", ""),
        ("b", "7.2.22"),
    ] {
        assert_eq!(k8s_label(n, v), Ok(()), "{n}={v}");
    }
    for (n, v) in [
        ("Qemu.io/kvm", "x"),
        ("qemu-direct.io/", "x"),
        ("qemu-direct.io/-kvm", "x"),
        ("qemu-direct.io/kvm", "-x"),
        ("qemu-direct.io/kvm", "a b"),
        ("qemu-direct.io/kvm", &"a".repeat(64)),
        (&format!("q.io/{}", "a".repeat(64)), "x"),
        ("q_io/kvm", "x"),
    ] {
        assert!(k8s_label(n, v).is_err(), "{n}={v} passed");
    }
}

/// The `name=value` lines of a labels or feature file, comments (`#`) skipped; each checked
/// against [`k8s_label`] and the `qemu-direct.io/` prefix.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (n, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not name=value: '{line}'"));
        k8s_label(n, v).unwrap_or_else(|e| panic!("{e} (line '{line}')"));
        assert!(n.starts_with("qemu-direct.io/"), "{line}");
        assert!(
            out.insert(n.to_owned(), v.to_owned()).is_none(),
            "{n} twice"
        );
    }
    assert!(text.len() < 64 * 1024, "NFD reads files under 64 kB");
    out
}

fn ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "{err}");
    out
}

/// `probe --json` of this host: emulators, their capabilities and versions.
fn probed(env: &TestEnv) -> Value {
    serde_json::from_slice(&env.qd(["probe", "--json"]).stdout).unwrap()
}

#[test]
fn the_real_hosts_labels_are_valid_and_say_what_probe_says() {
    let env = TestEnv::new();
    let facts = probed(&env);
    let nfd = ok(&env.qd(["traits", "--format", "nfd", "--expiry", "2h"]));
    let (first, _) = nfd.split_once('\n').unwrap();
    let when = first.strip_prefix("# +expiry-time=").expect(&nfd);
    let t = humantime::parse_rfc3339(when).unwrap();
    let ahead = t.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(ahead.as_secs() > 3600 && ahead.as_secs() <= 7200, "{when}");
    let labels = parse_labels(&nfd);
    // `--format labels` is the same set without the comment.
    assert_eq!(
        parse_labels(&ok(&env.qd(["traits", "--format", "labels"]))),
        labels
    );

    assert_eq!(labels["qemu-direct.io/kvm"], facts["kvm"]["state"]);
    let profiles = qemu_direct::profile::ProfileSet::embedded().unwrap();
    for p in profiles.iter() {
        let label = labels.get(&format!("qemu-direct.io/guest.{}", p.name));
        match facts["emulators"].get(&p.binary) {
            // An installed emulator answers the probe here: kvm only where `probe` says
            // KVM runs this guest.
            Some(e) => {
                assert!(e["caps"].get("tcg").is_some(), "{e}");
                let want = if facts["kvm"]["state"] == "usable" && e["caps"].get("kvm").is_some() {
                    "kvm"
                } else {
                    "emulated"
                };
                assert_eq!(label.map(String::as_str), Some(want), "{}", p.name);
            }
            None => assert_eq!(label, None, "{}: no emulator, yet {label:?}", p.name),
        }
    }
    let newest = facts["emulators"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|e| e["version"].as_str())
        .max_by_key(|v| {
            v.split('.')
                .map(|n| n.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        });
    if let Some(v) = newest {
        assert_eq!(labels["qemu-direct.io/qemu-version"], v);
        let major = v.split('.').next().unwrap();
        assert_eq!(labels["qemu-direct.io/qemu-version.major"], major);
    }
    // Where a guest arch is emulated, its machine is the TCG one `firmware` reports on.
    let fw: Value = serde_json::from_slice(&env.qd(["firmware", "--json"]).stdout).unwrap();
    for c in fw["choices"].as_array().unwrap() {
        let arch = c["arch"].as_str().unwrap();
        let emulated =
            labels.get(&format!("qemu-direct.io/guest.{arch}")) == Some(&"emulated".to_owned());
        if c["interface"] == "uefi" && emulated {
            let label = labels.get(&format!("qemu-direct.io/uefi.{arch}"));
            let found = c["choice"].get("descriptor").is_some();
            assert_eq!(label.is_some(), found, "{arch}: {c}");
        }
    }
    if let Some(bits) = facts["phys_bits"].as_u64() {
        assert_eq!(labels["qemu-direct.io/phys-bits"], bits.to_string());
    }
}

/// The real host's probe, recorded and changed: x86_64, with KVM `kvm`, phys-bits 39, and
/// no aarch64 emulator; the labels `traits --format labels` gives for it.
fn faked_labels(env: &TestEnv, kvm: &str) -> Option<BTreeMap<String, String>> {
    let mut facts = probed(env);
    let emulators = facts["emulators"].as_object_mut().unwrap();
    for need in [
        "qemu-system-x86_64",
        "qemu-system-aarch64",
        "qemu-system-i386",
    ] {
        if emulators
            .get(need)
            .and_then(|e| e["caps"].get("tcg"))
            .is_none()
        {
            eprintln!("skipped: {need} is not installed or does not answer");
            return None;
        }
    }
    emulators.remove("qemu-system-aarch64");
    facts["arch"] = "x86_64".into();
    facts["arch_detail"] = "x86_64".into();
    facts["kvm"] = serde_json::json!({ "state": kvm });
    facts["phys_bits"] = 39.into();
    let file = env.path(&format!("host-{kvm}.json"));
    std::fs::write(&file, facts.to_string()).unwrap();
    let out = env
        .cmd(["--host-facts"])
        .arg(&file)
        .args(["traits", "--format", "labels"])
        .output()
        .unwrap();
    Some(parse_labels(&ok(&out)))
}

#[test]
fn the_labels_follow_a_made_up_host() {
    let env = TestEnv::new();
    let Some(none) = faked_labels(&env, "missing") else {
        return;
    };
    let Some(usable) = faked_labels(&env, "usable") else {
        return;
    };
    let get =
        |l: &BTreeMap<String, String>, k: &str| l.get(&format!("qemu-direct.io/{k}")).cloned();
    let s = |v: &str| Some(v.to_owned());

    assert_eq!(get(&none, "kvm"), s("missing"));
    assert_eq!(get(&none, "guest.x86_64"), s("emulated"));
    assert_eq!(get(&none, "guest.i686"), s("emulated"));
    assert_eq!(get(&none, "trait.COMPUTE_ADDRESS_SPACE_PASSTHROUGH"), None);

    assert_eq!(get(&usable, "kvm"), s("usable"));
    assert_eq!(get(&usable, "guest.x86_64"), s("kvm"));
    assert_eq!(get(&usable, "guest.i686"), s("kvm"));
    assert_eq!(
        get(&usable, "trait.COMPUTE_ADDRESS_SPACE_PASSTHROUGH"),
        s("true")
    );

    for l in [&none, &usable] {
        // No emulator: no label, and no os-trait.
        assert_eq!(get(l, "guest.aarch64"), None);
        assert_eq!(get(l, "trait.COMPUTE_ARCH_AARCH64"), None);
        assert_eq!(get(l, "host-arch"), s("x86_64"));
        assert_eq!(get(l, "phys-bits"), s("39"));
        assert_eq!(get(l, "trait.HW_ARCH_X86_64"), s("true"));
        // A foreign arch is emulated whatever KVM can do.
        if get(l, "guest.riscv64").is_some() {
            assert_eq!(get(l, "guest.riscv64"), s("emulated"));
        }
    }
}

/// What happened in a folder while `f` ran: (event, name) pairs, and the move cookies.
fn watch(dir: &Path, f: impl FnOnce()) -> Vec<InotifyEvent> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(dir, AddWatchFlags::IN_ALL_EVENTS).unwrap();
    f();
    let mut all = Vec::new();
    while let Ok(events) = ino.read_events() {
        all.extend(events);
    }
    all
}

fn named(e: &InotifyEvent) -> String {
    e.name
        .as_ref()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries of a folder.
fn entries(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

#[test]
fn the_feature_file_only_ever_appears_whole_by_a_rename() {
    let env = TestEnv::new();
    let dir = env.path("features.d");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("qemu-direct");
    for round in 0..2 {
        let mut out = None;
        let events = watch(&dir, || {
            out = Some(
                env.cmd(["traits", "--format", "nfd", "--write"])
                    .arg(&dir)
                    .output()
                    .unwrap(),
            );
        });
        let printed = ok(&out.unwrap());
        assert_eq!(printed.trim(), file.to_str().unwrap());
        // The final name is touched only by being moved to; the file's bytes went into a
        // dot-file that was moved from, with the same cookie.
        let on_final: Vec<&InotifyEvent> = events
            .iter()
            .filter(|e| named(e) == "qemu-direct")
            .collect();
        assert!(!on_final.is_empty(), "round {round}: no event for the file");
        for e in &on_final {
            assert!(
                e.mask.contains(AddWatchFlags::IN_MOVED_TO),
                "round {round}: {:?} on the final name",
                e.mask
            );
        }
        let cookie = on_final[0].cookie;
        let from = events
            .iter()
            .find(|e| e.mask.contains(AddWatchFlags::IN_MOVED_FROM) && e.cookie == cookie)
            .expect("a move from a temporary file");
        assert!(named(from).starts_with(".qemu-direct."), "{}", named(from));
        assert!(
            events
                .iter()
                .any(|e| named(e) == named(from) && e.mask.contains(AddWatchFlags::IN_CLOSE_WRITE)),
            "the dot-file was written and closed before the rename"
        );
        assert_eq!(entries(&dir), vec![OsString::from("qemu-direct")]);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    parse_labels(&std::fs::read_to_string(&file).unwrap());
}

#[test]
fn a_write_that_fails_leaves_no_dot_file() {
    let env = TestEnv::new();
    let dir = env.path("features.d");
    // The file's name is taken by a folder with something in it: the rename fails after the
    // dot-file was written.
    std::fs::create_dir_all(dir.join("qemu-direct/keep")).unwrap();
    let mut out = None;
    let events = watch(&dir, || {
        out = Some(
            env.cmd(["traits", "--format", "nfd", "--write"])
                .arg(&dir)
                .output()
                .unwrap(),
        );
    });
    let out = out.unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(o.is_empty(), "{o}");
    assert!(
        e.starts_with(&format!(
            "error: cannot write {}",
            dir.join("qemu-direct").display()
        )),
        "{e}"
    );
    let created: Vec<String> = events
        .iter()
        .filter(|e| e.mask.contains(AddWatchFlags::IN_CREATE))
        .map(named)
        .collect();
    assert!(
        created.iter().any(|n| n.starts_with(".qemu-direct.")),
        "the dot-file was made: {created:?}"
    );
    assert_eq!(entries(&dir), vec![OsString::from("qemu-direct")]);
    assert!(dir.join("qemu-direct/keep").is_dir());
}

#[test]
fn folders_that_cannot_take_the_file_are_refused_before_anything_is_written() {
    let env = TestEnv::new();
    let run = |dir: &Path| {
        let out = env
            .cmd(["traits", "--format", "nfd", "--write"])
            .arg(dir)
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(o.is_empty(), "{o}");
        e
    };
    let missing = env.path("nowhere/features.d");
    let e = run(&missing);
    assert!(
        e.starts_with(&format!(
            "error: cannot write the feature file into {}: no such folder",
            missing.display()
        )),
        "{e}"
    );
    assert!(e.contains("hint: create the folder"), "{e}");
    assert!(!env.path("nowhere").exists());

    let file = env.path("a-file");
    std::fs::write(&file, "x").unwrap();
    assert!(run(&file).contains("not a folder"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    // Not writable, even by root: sysfs takes no new files. (A read-only folder would do for
    // other users, but the tests may run as root.)
    let e = run(Path::new("/sys"));
    assert!(e.contains("/sys: not writable"), "{e}");

    // `--write` alone means NFD's own folder (only tried where it does not exist).
    let nfd = "/etc/kubernetes/node-feature-discovery/features.d";
    if !Path::new(nfd).exists() {
        let out = env.qd(["traits", "--format", "nfd", "--write"]);
        let e = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(e.contains(&format!("into {nfd}: no such folder")), "{e}");
    }
}

#[test]
fn flags_that_do_not_go_together_are_refused() {
    let env = TestEnv::new();
    let dir = env.path("out");
    std::fs::create_dir(&dir).unwrap();
    let refuse = |args: &[&str], want: &str| {
        let out = env.cmd(["traits"]).args(args).output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        assert!(o.is_empty());
        assert!(e.contains(want), "{args:?}: {e}");
    };
    refuse(
        &["--format", "yaml"],
        "[possible values: text, json, nfd, labels]",
    );
    let d = dir.to_str().unwrap();
    refuse(
        &["--format", "labels", "--write", d],
        "--write goes with --format nfd",
    );
    refuse(&["--expiry", "1h"], "feature file), not --format text");
    refuse(&["--json", "--format", "nfd"], "cannot be used with");
    refuse(&["--format", "nfd", "--expiry", "soon"], "--expiry");
    assert!(entries(&dir).is_empty());
}
