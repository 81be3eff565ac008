//! Distro-style cloud images (issue 15): the Debian bookworm image of
//! `scripts/build-test-image.sh` (UEFI, cloud kernel, cloud-init, sshd, qemu-ga) booted under
//! its arch's firmware with a NoCloud seed, reached over SSH on a forwarded port and through
//! the guest agent; its root file system grown to a larger virtual size; a second instance of
//! the same image gets its own instance-id and host keys.
//!
//! The images are big and slow to build, so these tests need `QD_TEST_IMAGES` (the folder with
//! `x86_64/disk.qcow2` and `aarch64/disk.qcow2`; `scripts/test` builds them and sets it) and
//! skip, saying so, when it is unset. Set, a missing image fails the test.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::common::{Detached, TestEnv, text};

/// How long a guest may take from launch to answering SSH: a full systemd + cloud-init boot
/// under TCG, on a runner whose two cores other tests share.
const SSH_READY: Duration = Duration::from_secs(20 * 60);

/// The virtual size the tests give the image's overlay (the image itself is 2 GiB), as
/// `--disk IMG,size=` takes it and in bytes.
const GROWN_ARG: &str = "4G";
const GROWN: u64 = 4 << 30;

/// The test image of an arch, or None (printed) when `QD_TEST_IMAGES` is unset.
fn image(arch: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("QD_TEST_IMAGES") else {
        eprintln!(
            "SKIPPED: QD_TEST_IMAGES is unset: build the image with \
             scripts/build-test-image.sh {arch} DIR/{arch} and set QD_TEST_IMAGES=DIR \
             (scripts/test does both)"
        );
        return None;
    };
    let img = Path::new(&dir).join(arch).join("disk.qcow2");
    assert!(
        img.is_file(),
        "no {arch} test image at {}: run scripts/build-test-image.sh {arch} {}",
        img.display(),
        Path::new(&dir).join(arch).display()
    );
    Some(img)
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a host tool that must succeed.
fn must(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {:?}", text(&out));
    out
}

/// A throw-away ed25519 key pair in the world: returns the private key's path (`.pub` beside).
fn keypair(env: &TestEnv) -> PathBuf {
    let key = env.path("id_ed25519");
    must(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "qd-test", "-f"])
            .arg(&key),
    );
    key
}

/// A NoCloud seed made by hand: a FAT volume labelled CIDATA with `meta-data` (the
/// instance-id) and `user-data` (the public key for the image's default user).
fn seed(env: &TestEnv, name: &str, instance_id: &str, key: &Path) -> PathBuf {
    let dir = env.path(&format!("seed-{name}"));
    std::fs::create_dir(&dir).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(
        dir.join("meta-data"),
        format!("instance-id: {instance_id}\nlocal-hostname: {name}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("user-data"),
        format!(
            "#cloud-config\nssh_authorized_keys:\n  - {}\n",
            public.trim()
        ),
    )
    .unwrap();
    let img = env.path(&format!("seed-{name}.img"));
    must(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "CIDATA"])
            .arg(&img)
            .arg("2048"),
    );
    for f in ["meta-data", "user-data"] {
        must(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .arg(dir.join(f))
                .arg("::"),
        );
    }
    img
}

/// A cloud guest running detached, reached over SSH as the image's default user.
struct CloudGuest<'e> {
    env: &'e TestEnv,
    guest: Detached<'e>,
    port: u16,
    key: PathBuf,
}

/// Boots `image` as instance `name` with a seed of `instance_id`, on an overlay of virtual
/// size [`GROWN`] (`--disk IMG,size=`), UEFI, 1 GiB, 2 vCPUs, SSH forwarded from a free host
/// port.
fn boot<'e>(
    env: &'e TestEnv,
    arch: &str,
    name: &str,
    image: &Path,
    instance_id: &str,
) -> CloudGuest<'e> {
    let key = env.path("id_ed25519");
    if !key.exists() {
        keypair(env);
    }
    let seed = seed(env, name, instance_id, &key);
    let port = free_port();
    // The throw-away overlay of the image, made larger: cloud-init's growpart grows the root.
    let mut disk = image.as_os_str().to_owned();
    disk.push(format!(",size={GROWN_ARG}"));
    let mut cmd = env.cmd(["run", "--name", name, "--arch", arch, "--firmware", "uefi"]);
    cmd.args(["--memory", "1G", "--smp", "2", "--disk"])
        .arg(disk)
        .arg("--disk")
        .arg(seed)
        .arg("--net")
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:22"));
    let guest = env.launch_detached(cmd);
    CloudGuest {
        env,
        guest,
        port,
        key,
    }
}

impl CloudGuest<'_> {
    /// `ssh` to the guest running `cmd`, no prompts, no known_hosts written.
    fn ssh(&self, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=30", "debian@127.0.0.1", cmd])
            .output()
            .expect("run ssh")
    }

    /// Waits until `ssh true` works; fails with the console's tail when the guest ends or
    /// [`SSH_READY`] passes.
    fn wait_ssh(&self) {
        let start = Instant::now();
        loop {
            let out = self.ssh("true");
            if out.status.success() {
                eprintln!(
                    "{}: SSH answered after {:?}",
                    self.guest.name,
                    start.elapsed()
                );
                return;
            }
            let console = self.env.console(&self.guest.name);
            let tail: Vec<&str> = console.lines().rev().take(30).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            assert!(
                self.guest.dir.exists(),
                "{} ended before SSH answered; console tail:\n{tail}",
                self.guest.name
            );
            assert!(
                start.elapsed() < SSH_READY,
                "{}: no SSH on port {} after {SSH_READY:?} (last: {:?}); console tail:\n{tail}",
                self.guest.name,
                self.port,
                text(&out).1
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// `ssh` running `cmd`, which must succeed: its stdout, trimmed.
    fn ssh_ok(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        let (o, e) = text(&out);
        assert!(
            out.status.success(),
            "{}: ssh {cmd}: {o}{e}",
            self.guest.name
        );
        o.trim().to_owned()
    }

    /// `qemu-direct exec NAME -- ARGS` through the guest agent, which must succeed: stdout.
    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self
            .env
            .qd([&["exec", self.guest.name.as_str(), "--"][..], args].concat());
        let (o, e) = text(&out);
        assert!(out.status.success(), "exec {args:?}: {o}{e}");
        o.trim().to_owned()
    }
}

/// Boots the image, then checks over SSH: the arch (`uname -m`), the disk and the root file
/// system grown to [`GROWN`] (growpart and resize2fs by cloud-init), the instance-id of the
/// seed; and through the guest agent the same arch. With `second_instance`, a second instance
/// of the same image, booted beside the first with a seed of its own, has that seed's
/// instance-id and host keys of its own (cloud-init's per-instance stage ran again).
fn boots_answers_ssh_and_grows(arch: &str, second_instance: bool) {
    let Some(image) = image(arch) else { return };
    let env = TestEnv::new();
    let first = boot(&env, arch, "cloud-a", &image, "iid-cloud-a");
    // The second instance of the same image boots beside the first (the two share the cores
    // either way), with a seed of its own.
    let second = second_instance.then(|| boot(&env, arch, "cloud-b", &image, "iid-cloud-b"));
    first.wait_ssh();
    assert_eq!(first.ssh_ok("uname -m"), arch);
    let disk: u64 = first.ssh_ok("lsblk -bdno SIZE /dev/vda").parse().unwrap();
    assert_eq!(disk, GROWN, "the disk's virtual size");
    let root: u64 = first
        .ssh_ok("df -B1 --output=size / | tail -n1")
        .trim()
        .parse()
        .unwrap();
    // The ext4 root fills its partition (the disk less the 65 MiB before it), less ext4's own
    // metadata: far more than the image's 2 GiB.
    assert!(
        root > GROWN - (300 << 20),
        "root file system of {root} bytes, not grown to ~{GROWN}"
    );
    assert_eq!(
        first.ssh_ok("cat /var/lib/cloud/data/instance-id"),
        "iid-cloud-a"
    );
    assert_eq!(first.exec_ok(&["uname", "-m"]), arch);
    let Some(second) = second else { return };
    second.wait_ssh();
    assert_eq!(
        second.ssh_ok("cat /var/lib/cloud/data/instance-id"),
        "iid-cloud-b"
    );
    let host_key = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub";
    assert_ne!(
        first.ssh_ok(host_key),
        second.ssh_ok(host_key),
        "two instances of one image share a host key"
    );
}

#[test]
fn x86_64_image_boots_answers_ssh_grows_and_clones_get_new_ids() {
    boots_answers_ssh_and_grows("x86_64", true);
}

#[test]
fn aarch64_image_boots_answers_ssh_and_grows() {
    boots_answers_ssh_and_grows("aarch64", false);
}
