//! cloud-init's NoCloud seed on real guests: the seed volume in the instance directory read
//! back with the FAT crate (label, user-data with the key, a fresh instance-id per instance),
//! attached read-only and read by the guest; exported to libvirt as a read-only disk that
//! libvirt's schema accepts; every bad input refused before anything starts.

use std::{path::Path, process::Command};

use crate::{
    cli::refused,
    common::{BOOT_TIMEOUT, Detached, Guest, TestEnv, guest, guest_proto::HOLD, text},
};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ5cWVtdS1kaXJlY3QtdGVzdA qd-test\n";

/// A public key, and a private one beside it.
fn keys(dir: &Path) -> (String, String) {
    let public = dir.join("id.pub");
    std::fs::write(&public, KEY).unwrap();
    let private = dir.join("id");
    std::fs::write(
        &private,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    (s(&public), s(&private))
}

fn detach<'e>(env: &'e TestEnv, g: &Guest, name: &str, key: &str) -> Detached<'e> {
    let mut c = env.run(g, ["--timeout", BOOT_TIMEOUT, "--name", name]);
    c.args(["--ssh-key", key, "--append", HOLD]);
    env.launch_detached(c)
}

/// The seed's label and files, read back with the FAT crate.
fn seed(dir: &Path) -> (String, Vec<(String, String)>) {
    let (label, files) = qemu_direct::util::fat::read_volume(&dir.join("cidata.img")).unwrap();
    let files = files
        .into_iter()
        .map(|(n, d)| (n, String::from_utf8(d).unwrap()))
        .collect();
    (label, files)
}

fn instance_id(files: &[(String, String)]) -> String {
    let meta = &files.iter().find(|(n, _)| n == "meta-data").unwrap().1;
    meta.lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .unwrap_or_else(|| panic!("no instance-id in {meta}"))
        .to_owned()
}

/// `--ssh-key`: the seed holds a #cloud-config user-data with the user qd and the key, and a
/// meta-data with an instance id; the guest sees it as a disk with the cidata label and the
/// key on it; a second instance of the same image gets another instance id.
#[test]
fn the_seed_is_read_back_and_attached() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let a = detach(&env, &g, "ci-a", &key);
    let (label, files) = seed(&a.dir);
    assert_eq!(label, "cidata");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["user-data", "meta-data"]);
    let user_data = &files[0].1;
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(user_data.contains("- name: qd\n"), "{user_data}");
    assert!(user_data.contains(KEY.trim()), "{user_data}");
    assert!(
        files[1].1.contains("local-hostname: ci-a"),
        "{}",
        files[1].1
    );
    let out = env.qd(["wait", "ci-a", "--agent", "--timeout", BOOT_TIMEOUT]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // The guest reads the volume: the label in its boot sector, the key in a file's cluster.
    let grep = |what: &str| {
        let out = env.qd(["exec", "ci-a", "--", "grep", "-a", "-c", what, "/dev/vda"]);
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(0), "grep {what}: {o}{e}");
    };
    grep("cidata");
    grep("qd-test");
    let out = env.qd(["exec", "ci-a", "--", "cat", "/sys/block/vda/ro"]);
    assert_eq!(text(&out).0.trim(), "1", "the seed is attached read-only");
    let b = detach(&env, &g, "ci-b", &key);
    let (_, files_b) = seed(&b.dir);
    assert_ne!(instance_id(&files), instance_id(&files_b));
    let (dir_a, dir_b) = (a.dir.clone(), b.dir.clone());
    a.stop();
    b.stop();
    assert!(
        !dir_a.exists() && !dir_b.exists(),
        "the seeds outlived their instances"
    );
}

/// `export libvirt` writes the seed where the domain names it, as a read-only disk that
/// libvirt's schema accepts.
#[test]
fn the_seed_is_exported_to_libvirt_as_a_read_only_disk() {
    let env = TestEnv::new();
    let (key, _) = keys(env.root());
    let out = env.qd([
        "export",
        "libvirt",
        "--arch",
        "x86_64",
        "--kernel",
        &env.kernel(),
        "--ssh-key",
        &key,
    ]);
    let (xml, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let seed = env.state().join("qemu-direct/seeds/x86_64/cidata.img");
    assert!(
        xml.contains(&format!("<source file=\"{}\"/>", seed.display())),
        "{xml}"
    );
    assert!(xml.contains("<readonly/>"), "{xml}");
    let (label, _) = qemu_direct::util::fat::read_volume(&seed).unwrap();
    assert_eq!(label, "cidata");
    let has_validator = Command::new("sh")
        .args(["-c", "command -v virt-xml-validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_validator {
        return eprintln!("SKIPPED: libvirt schema: virt-xml-validate is not installed");
    }
    let f = env.path("dom.xml");
    std::fs::write(&f, &xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&f)
        .arg("domain")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}\n{xml}", text(&out));
}

/// Bad cloud-init input: exit 2 naming the file and what is wrong, nothing started or left.
#[test]
fn bad_seeds_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, private) = keys(d);
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let bad_yaml = write("bad.yaml", "#cloud-config\nusers: [a\n");
    let no_header = write("plain.yaml", "users: []\n");
    let good = write("good.yaml", "#cloud-config\n");
    let kernel = write("vmlinuz", "not really a kernel");
    let with = |more: &[&str]| -> Vec<String> {
        ["--arch", "x86_64", "--kernel", &kernel]
            .iter()
            .chain(more)
            .map(|s| s.to_string())
            .collect()
    };
    let refuse = |more: &[&str], expect: &str| {
        let args = with(more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, expect)
    };
    refuse(
        &["--cloud-init", &bad_yaml],
        &format!("cloud-init user-data {bad_yaml}: not valid YAML: "),
    );
    refuse(
        &["--cloud-init", &no_header],
        &format!("cloud-init user-data {no_header}: no #cloud-config header on its first line"),
    );
    refuse(
        &["--ssh-key", &private],
        &format!("ssh-key {private}: a private key, which is never copied into a seed"),
    );
    let missing = d.join("none.pub");
    let missing = missing.to_str().unwrap();
    refuse(
        &["--ssh-key", missing],
        &format!("ssh-key {missing}: no such file"),
    );
    refuse(
        &["--cloud-init", &format!("{good},meta-data={missing}")],
        &format!("cloud-init meta-data {missing}: no such file"),
    );
    refuse(
        &["--cloud-init", &format!("{good},vendor-data=x")],
        "unknown option 'vendor-data=x'",
    );
    refuse(
        &["--cloud-init", &good, "--ssh-key", &key],
        "--ssh-key writes a user-data of its own",
    );
}
