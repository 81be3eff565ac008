//! Distro-style cloud images (issue 15): the Debian bookworm image of
//! `scripts/build-test-image.sh` (UEFI, cloud kernel, cloud-init, sshd, qemu-ga) booted under
//! its arch's firmware with `--ssh-key` (qemu-direct's NoCloud seed) and `--net user`, reached
//! with `qemu-direct ssh NAME -- CMD` (the forwarded port shown by `ps`, the host key in the
//! instance's own known_hosts) and through the guest agent; its root file system grown to a larger virtual size; a second instance of
//! the same image gets its own instance-id and host keys.
//!
//! The images are big and slow to build, so these tests need `QD_TEST_IMAGES` (the folder with
//! `x86_64/disk.qcow2` and `aarch64/disk.qcow2`; `scripts/test` builds them and sets it) and
//! skip, saying so, when it is unset. Set, a missing image fails the test.

use std::{
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

/// Runs a host tool that must succeed.
fn must(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {:?}", text(&out));
    out
}

/// A throw-away ed25519 key pair in the world: returns the public key's path (the private one
/// beside it, which `qemu-direct ssh` logs in with).
fn keypair(env: &TestEnv) -> PathBuf {
    let key = env.path("id_ed25519");
    if !key.exists() {
        must(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "qd-test", "-f"])
                .arg(&key),
        );
    }
    env.path("id_ed25519.pub")
}

/// A cloud guest running detached, reached with `qemu-direct ssh` as the user `qd` that
/// `--ssh-key` creates.
struct CloudGuest<'e> {
    env: &'e TestEnv,
    guest: Detached<'e>,
}

/// Boots `image` as instance `name` with `--ssh-key` (qemu-direct's seed, a fresh
/// instance-id) and `--net user` (qemu-direct forwards a free host port to 22), on an overlay
/// of virtual size [`GROWN`] (`--disk IMG,size=`), UEFI, 1 GiB, 2 vCPUs.
fn boot<'e>(env: &'e TestEnv, arch: &str, name: &str, image: &Path) -> CloudGuest<'e> {
    let key = keypair(env);
    // The throw-away overlay of the image, made larger: cloud-init's growpart grows the root.
    let mut disk = image.as_os_str().to_owned();
    disk.push(format!(",size={GROWN_ARG}"));
    let mut cmd = env.cmd(["run", "--name", name, "--arch", arch, "--firmware", "uefi"]);
    cmd.args(["--memory", "1G", "--smp", "2", "--disk"])
        .arg(disk)
        .arg("--ssh-key")
        .arg(key)
        .args(["--net", "user"]);
    let guest = env.launch_detached(cmd);
    CloudGuest { env, guest }
}

impl CloudGuest<'_> {
    /// `qemu-direct ssh NAME -- cmd`: waits for sshd (up to [`SSH_READY`]), then ssh.
    fn ssh(&self, cmd: &str) -> Output {
        let limit = format!("{}s", SSH_READY.as_secs());
        self.env.qd([
            "ssh",
            self.guest.name.as_str(),
            "--timeout",
            &limit,
            "--",
            cmd,
        ])
    }

    /// Waits until `qemu-direct ssh NAME -- cloud-init status --wait` works: sshd answers,
    /// cloud-init has made the user, and cloud-init has finished (until then it may restart
    /// sshd under a session, and the root may not be grown yet). Tries again while ssh itself
    /// fails (255); fails when anything else fails, or [`SSH_READY`] passes.
    fn wait_ssh(&self) {
        let start = Instant::now();
        loop {
            let out = self.ssh("cloud-init status --wait >/dev/null");
            if out.status.success() {
                eprintln!(
                    "{}: SSH answered and cloud-init finished after {:?}",
                    self.guest.name,
                    start.elapsed()
                );
                return;
            }
            let (o, e) = text(&out);
            assert_eq!(
                out.status.code(),
                Some(255),
                "{}: qemu-direct ssh failed: {o}{e}",
                self.guest.name
            );
            assert!(
                start.elapsed() < SSH_READY,
                "{}: ssh still fails after {SSH_READY:?}: {e}",
                self.guest.name,
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// `qemu-direct ssh NAME -- cmd`, which must succeed: its stdout, trimmed.
    fn ssh_ok(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        let (o, e) = text(&out);
        assert!(
            out.status.success(),
            "{}: ssh {cmd}: {}: {o}{e}",
            self.guest.name,
            out.status
        );
        o.trim().to_owned()
    }

    /// The instance-id in the instance's seed, as qemu-direct wrote it.
    fn seed_instance_id(&self) -> String {
        seed_instance_id(&self.guest.dir)
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

/// The instance-id in the seed of the instance in `dir`, as qemu-direct wrote it.
fn seed_instance_id(dir: &Path) -> String {
    let (_, files) = qemu_direct::util::fat::read_volume(&dir.join("cidata.img")).unwrap();
    let meta = files.iter().find(|(n, _)| n == "meta-data").unwrap();
    String::from_utf8_lossy(&meta.1)
        .lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .unwrap()
        .to_owned()
}

/// Boots the image, then checks over SSH: the arch (`uname -m`), the disk and the root file
/// system grown to [`GROWN`] (growpart and resize2fs by cloud-init), the instance-id of the
/// seed; and through the guest agent the same arch.
fn boots_answers_ssh_and_grows<'e>(env: &'e TestEnv, arch: &str, image: &Path) -> CloudGuest<'e> {
    let first = boot(env, arch, "cloud-a", image);
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
    let ps = text(&env.qd(["ps"])).0;
    let port = env.entry("cloud-a")["ssh_port"].as_u64().unwrap();
    assert!(ps.contains(&format!(" {port} ")), "ps shows the port: {ps}");
    assert_eq!(
        first.ssh_ok("cat /var/lib/cloud/data/instance-id"),
        first.seed_instance_id()
    );
    assert!(
        first.guest.dir.join("known_hosts").is_file(),
        "the host key went to the instance's own known_hosts"
    );
    assert_eq!(first.exec_ok(&["uname", "-m"]), arch);
    first
}

/// The x86_64 image twice, booting side by side: the first instance from the command line
/// ([`boots_answers_ssh_and_grows`]), the second through the Rust API: a `Vm` launched with an
/// `--ssh-key` login and a user network knows its forwarded port, and `vm.ssh_command` waits
/// for sshd, then runs the command as `qd` and returns its status and output. The second has
/// its own seed's instance-id and host keys of its own (cloud-init's per-instance stage ran
/// again for it).
#[test]
fn x86_64_image_boots_answers_ssh_grows_and_clones_get_new_ids() {
    let Some(image) = image("x86_64") else { return };
    let env = TestEnv::new();
    // Worker threads keep the Vm's console and QMP tasks going while the first instance's
    // checks run on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let second = rt.block_on(api_boot(&env, &image));
    let first = boots_answers_ssh_and_grows(&env, "x86_64", &image);
    rt.block_on(async {
        let ssh = |cmd: &'static str| {
            let vm = &second;
            async move {
                let out = vm.ssh_command([cmd]).await.unwrap();
                assert!(out.status.success(), "{cmd}: {:?}", out);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        };
        api_ssh_works(&second).await;
        let id = ssh("cat /var/lib/cloud/data/instance-id").await;
        assert_eq!(id, seed_instance_id(second.dir()));
        assert_ne!(id, first.seed_instance_id());
        let host_key = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub";
        assert_ne!(
            first.ssh_ok(host_key),
            ssh(host_key).await,
            "two instances of one image share a host key"
        );
    });
    let _ = rt.block_on(second.shutdown_quick());
}

#[test]
fn aarch64_image_boots_answers_ssh_and_grows() {
    let Some(image) = image("aarch64") else {
        return;
    };
    let env = TestEnv::new();
    boots_answers_ssh_and_grows(&env, "aarch64", &image);
}

/// The image as instance `cloud-b` through the Rust API: UEFI, 1 GiB, 2 vCPUs, an `--ssh-key`
/// seed and the user network.
async fn api_boot(env: &TestEnv, image: &Path) -> qemu_direct::vm::Vm {
    use qemu_direct::{host::caps::CapsCache, spec::cloud_init::CloudInitInput, vm::Vm};
    let key = keypair(env);
    Vm::guest("x86_64")
        .name("cloud-b")
        .memory("1G")
        .smp(2)
        .spec(|s| {
            s.disk = Some(image.to_owned());
            s.firmware = Some("uefi".into());
            s.net = Some("user".into());
            s.cloud_init = Some(CloudInitInput {
                ssh_key: Some(key),
                ..Default::default()
            });
        })
        .runtime_dir(env.instances())
        .caps_cache(CapsCache::at(crate::common::shared_cache()))
        .launch()
        .await
        .unwrap()
}

/// `vm.ssh_command` on a booting guest: waits for sshd, tries again while ssh itself fails
/// (255: sshd may answer before cloud-init has made the user) until cloud-init has finished,
/// then runs commands; their status and both outputs come back.
async fn api_ssh_works(vm: &qemu_direct::vm::Vm) {
    assert!(vm.ssh_port().is_some());
    let start = Instant::now();
    // cloud-init may restart sshd under a session until it has finished: wait for that too.
    let out = loop {
        let out = vm
            .ssh_command_within(["cloud-init status --wait >/dev/null"], SSH_READY)
            .await
            .unwrap();
        if out.status.code() != Some(255) || start.elapsed() > SSH_READY {
            break out;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let out = vm.ssh_command(["uname", "-m"]).await.unwrap();
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x86_64\n");
    let out = vm.ssh_command(["echo err >&2; exit 7"]).await.unwrap();
    // As with ssh itself, the arguments are one command line for the guest's shell.
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}
