//! Disks and network on real guests, through the binary: a guest writes to its disk
//! (`qd.write=/dev/vda` in the test initramfs) and the base image stays byte-identical unless
//! the disk persists; overlays live and die with the instance directory; QEMU's image locks
//! become a clear error; every arch's guest sees its virtio network card, and a forwarded host
//! port listens. Bad `--disk`/`--net` syntax is refused before anything starts.

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{
    cli::refused,
    common::{
        BOOT_TIMEOUT, Detached, Guest, TestEnv, Tripwire, emulator, files_under, guest,
        guest_proto::{self, HEARTBEAT, HOLD, MARKER},
        sha256, text,
    },
};

/// `run --arch ARCH --timeout 240s ARGS --kernel K --initrd I`.
fn run(env: &TestEnv, g: &Guest, args: &[&OsStr]) -> Command {
    let mut c = env.run(g, ["--timeout", BOOT_TIMEOUT]);
    c.args(args);
    c
}

/// Starts a detached instance named `name`.
fn detach<'e>(env: &'e TestEnv, g: &Guest, name: &str, args: &[&OsStr]) -> Detached<'e> {
    let mut c = run(env, g, &[os("--name"), os(name)]);
    c.args(args);
    env.launch_detached(c)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A raw image with a recognisable first block, so a write to it shows.
fn raw_image(path: &Path) {
    let mut data = vec![0u8; 4 << 20];
    data[..16].copy_from_slice(b"BASE IMAGE BLOCK");
    std::fs::write(path, data).unwrap();
}

fn qemu_img(args: &[&OsStr]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {:?}", text(&out));
}

/// A qcow2 image (named as the caller likes: the header says what it is).
fn qcow2_image(path: &Path) {
    qemu_img(&[
        os("create"),
        os("-q"),
        os("-f"),
        os("qcow2"),
        path.as_os_str(),
        os("4M"),
    ]);
}

/// The guest's view of a qcow2 image, as raw bytes.
fn qcow2_contents(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("as-raw");
    qemu_img(&[
        os("convert"),
        os("-O"),
        os("raw"),
        path.as_os_str(),
        raw.as_os_str(),
    ]);
    std::fs::read(raw).unwrap()
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One guest per arch writes to its disk and lists its network cards: the base image is
/// byte-identical afterwards, the NIC is the arch's virtio-net device.
fn writes_to_an_overlay_and_sees_its_nic(arch: &'static str) {
    let Some(g) = guest(arch) else { return };
    let env = TestEnv::new();
    let base = env.path("base.img");
    raw_image(&base);
    let before = sha256(&base);
    let write = guest_proto::write("/dev/vda");
    let out = run(
        &env,
        &g,
        &[
            os("--disk"),
            base.as_os_str(),
            os("--net"),
            os("user"),
            os("--append"),
            os(&write),
        ],
    )
    .output()
    .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{arch}: {e}\n{o}");
    assert!(o.contains(&guest_proto::wrote("/dev/vda")), "{arch}: {o}");
    assert!(o.contains(&net_line("eth0(virtio_net)")), "{arch}: {o}");
    assert!(e.contains("guest writes go to an overlay"), "{e}");
    assert_eq!(sha256(&base), before, "{arch}: the base image changed");
    assert!(
        files_under(&env.runtime_dir()).is_empty(),
        "instance files left: {:?}",
        files_under(&env.runtime_dir())
    );
}

/// `qd-net: NICS`, the guest's list of network cards.
fn net_line(nics: &str) -> String {
    format!("{} {nics}", guest_proto::tag("net"))
}

#[test]
fn x86_64_writes_to_an_overlay_and_sees_virtio_net_pci() {
    writes_to_an_overlay_and_sees_its_nic("x86_64");
}

#[test]
fn aarch64_writes_to_an_overlay_and_sees_virtio_net_pci() {
    writes_to_an_overlay_and_sees_its_nic("aarch64");
}

#[test]
fn s390x_writes_to_an_overlay_and_sees_virtio_net_ccw() {
    writes_to_an_overlay_and_sees_its_nic("s390x");
}

#[test]
fn ppc64le_writes_to_an_overlay_and_sees_virtio_net_pci() {
    writes_to_an_overlay_and_sees_its_nic("ppc64le");
}

#[test]
fn mipsel_writes_to_an_overlay_and_sees_virtio_net_pci() {
    writes_to_an_overlay_and_sees_its_nic("mipsel");
}

/// Acceptance 4, for a qcow2 base (and a raw second disk): while the guest runs, its writes are
/// in the overlays in the instance directory; once it is stopped they are gone with the
/// directory, and both images hash as before.
#[test]
fn overlays_live_in_the_instance_directory_and_go_with_it() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let base = env.path("base.qcow2");
    qcow2_image(&base);
    let second = env.path("second.img");
    raw_image(&second);
    let hashes = [sha256(&base), sha256(&second)];
    let append = format!("{} {HOLD}", guest_proto::write("/dev/vda"));
    let ov = detach(
        &env,
        &g,
        "ov",
        &[
            os("--disk"),
            base.as_os_str(),
            os("--disk"),
            second.as_os_str(),
            os("--append"),
            os(&append),
        ],
    );
    let dir = ov.dir.clone();
    ov.wait_for(&guest_proto::wrote("/dev/vda"), BOOT_TIMEOUT);
    let plan: Value =
        serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
    let overlays: Vec<PathBuf> = plan["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["overlay"].as_str().expect("an overlay")))
        .collect();
    assert_eq!(
        overlays,
        [dir.join("disk0.qcow2"), dir.join("disk1.qcow2")],
        "{plan}"
    );
    assert_eq!(plan["disks"][0]["format"], "qcow2");
    // The write went to the first overlay (the guest fsynced it), not to the image.
    assert!(contains(&std::fs::read(&overlays[0]).unwrap(), MARKER));
    assert!(!contains(&qcow2_contents(&base), MARKER));
    ov.stop();
    assert!(!dir.exists(), "the instance directory outlived the guest");
    assert_eq!([sha256(&base), sha256(&second)], hashes);
}

/// `size=`: the guest sees a disk of that size (its overlay's), the qcow2 image keeps its own
/// 4 MiB and its bytes.
#[test]
fn size_grows_the_disk_the_guest_sees() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let base = env.path("base.qcow2");
    qcow2_image(&base);
    let before = sha256(&base);
    let disk = format!("{},size=64M", base.display());
    let grown = detach(
        &env,
        &g,
        "grown",
        &[os("--disk"), os(&disk), os("--append"), os(HOLD)],
    );
    let out = env.qd(["wait", "grown", "--agent", "--timeout", BOOT_TIMEOUT]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = env.qd(["exec", "grown", "--", "cat", "/sys/block/vda/size"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    // /sys/block counts 512-byte sectors.
    assert_eq!(o.trim(), ((64u64 << 20) / 512).to_string());
    grown.stop();
    assert_eq!(sha256(&base), before);
}

/// `persist` writes through, to a raw image at a path with a comma, and `--disk-writable`
/// (persist for all) to a qcow2 image; with no `--net` the guest has no network card.
#[test]
fn persist_writes_reach_the_image() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let raw = env.path("a,b.img");
    raw_image(&raw);
    let mut arg = env.path("a,,b.img").into_os_string();
    arg.push(",format=raw,persist");
    let write = guest_proto::write("/dev/vda");
    let out = run(&env, &g, &[os("--disk"), &arg, os("--append"), os(&write)])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}\n{o}");
    assert!(o.contains(&guest_proto::wrote("/dev/vda")), "{o}");
    assert!(o.contains(&net_line("none")), "{o}");
    assert!(!e.contains("overlay"), "{e}");
    let data = std::fs::read(&raw).unwrap();
    let marker = [&guest_proto::marker("x86_64")[..], b"\n"].concat();
    assert!(data.starts_with(&marker), "{:?}", &data[..32]);

    let q = env.path("q.qcow2");
    qcow2_image(&q);
    let out = run(
        &env,
        &g,
        &[
            os("--disk"),
            q.as_os_str(),
            os("--disk-writable"),
            os("--append"),
            os(&write),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(qcow2_contents(&q).starts_with(&marker));
}

/// Two guests persisting one image: the second fails as a QEMU startup failure (exit 3) with a
/// message naming the image and suggesting to drop persist. Nor can an overlay be made over an
/// image a guest writes to. Overlays of one image, which only read it, share it.
#[test]
fn image_lock_conflicts_are_explained() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let img = env.path("shared.img");
    raw_image(&img);
    let mut persist = img.clone().into_os_string();
    persist.push(",persist");
    // A held guest named NAME with one disk, in the foreground (it must fail) or detached.
    let held = |name: &str, disk: &OsStr| {
        run(
            &env,
            &g,
            &[
                os("--name"),
                os(name),
                os("--disk"),
                disk,
                os("--append"),
                os(HOLD),
            ],
        )
    };
    let writer = env.launch_detached(held("writer", &persist));

    let out = held("second", &persist).output().unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    let error = e.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
    assert_eq!(
        error,
        format!(
            "error: disk image {} is in use by another process (QEMU: Failed to get \"write\" lock)",
            img.display()
        )
    );
    assert!(e.contains("hint: drop persist from this disk"), "{e}");
    assert!(!env.instances().join("second").exists());

    let out = held("reader", img.as_os_str()).output().unwrap();
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("is in use by another process"), "{e}");
    assert!(
        e.contains("hint: a guest writes to this image (persist)"),
        "{e}"
    );
    writer.stop();

    let readers = ["ov1", "ov2"].map(|name| env.launch_detached(held(name, img.as_os_str())));
    for r in readers {
        r.wait_for(HEARTBEAT, BOOT_TIMEOUT);
        r.stop();
    }
}

/// A forwarded host port listens while the guest runs.
#[test]
fn hostfwd_listens_on_the_host() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    let port = free_port();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:22");
    let fwd = detach(
        &env,
        &g,
        "fwd",
        &[os("--net"), os(&net), os("--append"), os(HOLD)],
    );
    let line = fwd.wait_for(&guest_proto::tag("net"), BOOT_TIMEOUT);
    assert!(line.contains("eth0(virtio_net)"), "{line}");
    // slirp accepts on the host side, whether or not the guest has a server on 22.
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("nothing listens on 127.0.0.1:{port}: {e}"));
    fwd.stop();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
}

#[test]
fn bad_disk_and_net_syntax_is_refused_before_anything_starts() {
    let env = TestEnv::new();
    let img = env.path("a,b.img");
    raw_image(&img);
    let p = img.to_str().unwrap();
    fn with<'a>(more: &[&'a str]) -> Vec<&'a str> {
        [&["--arch", "x86_64"][..], more].concat()
    }
    refused(
        &with(&["--disk", p]),
        &format!(
            "invalid --disk '{p}': unknown option 'b.img'; options: format=raw|qcow2, persist, size=SIZE (write a comma in the path as ',,')"
        ),
    );
    let escaped = p.replace(',', ",,");
    refused(
        &with(&["--disk", &format!("{escaped},format=vmdk")]),
        "invalid --disk format 'vmdk': valid: raw, qcow2",
    );
    refused(
        &with(&["--disk", &format!("{escaped},persist=yes")]),
        "unknown option 'persist=yes'",
    );
    refused(
        &with(&["--disk", &format!("{escaped},format=qcow2")]),
        "format=qcow2, but the file has no qcow2 header",
    );
    refused(
        &with(&["--disk", &format!("{escaped},persist"), "--disk", &escaped]),
        "they are one image, and persist writes to it",
    );
    refused(
        &with(&["--disk", env.root().to_str().unwrap(), "--disk-writable"]),
        "a directory disk is read-only; drop persist",
    );
    // The image is 4 MiB: size= may grow it, never shrink it; a directory has its own size.
    refused(
        &with(&["--disk", &format!("{escaped},size=3M")]),
        "invalid disk size '3M': at least the image's virtual size, 4194304 bytes (4 MiB)",
    );
    // A plain number is MiB, as for --memory: 3 MiB is below the image's 4.
    refused(
        &with(&["--disk", &format!("{escaped},size=3")]),
        "invalid disk size '3': at least the image's virtual size",
    );
    refused(
        &with(&["--disk", &format!("{escaped},size=lots")]),
        "invalid --disk size 'lots': 'lots' is not a size",
    );
    refused(
        &with(&["--disk", &format!("{escaped},persist,size=1G")]),
        "size=1G grows the throw-away overlay, and persist writes to the image itself",
    );
    refused(
        &with(&["--net", "user,hostfwd=tcp::65536-:22"]),
        "invalid net hostfwd 'tcp::65536-:22': host port '65536' is not in 1..65535",
    );
    refused(
        &with(&["--net", "user,hostfwd=sctp::2222-:22"]),
        "invalid net hostfwd 'sctp::2222-:22': protocol 'sctp': valid: tcp, udp",
    );
    refused(
        &with(&["--net", "bridge"]),
        "invalid net 'bridge': unknown network 'bridge'; valid: none, user[,hostfwd=...]",
    );
    let spec = env.path("vm.toml");
    std::fs::write(&spec, "[[disks]]\npath = \"x.img\"\npersits = true\n").unwrap();
    let e = refused(&["--spec", spec.to_str().unwrap()], "vm.toml");
    assert!(e.contains("persits"), "{e}");
}

/// Without qemu-img an overlay cannot be made: exit 2 naming the package, nothing started or
/// left. A failing qemu-img: its words, exit 3, nothing started or left.
#[test]
fn overlays_need_a_working_qemu_img() {
    let env = TestEnv::with_own_cache();
    let bin_dir = env.path("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    // Only what the tripwire runs on PATH: no qemu-img.
    std::os::unix::fs::symlink(
        emulator("qemu-system-x86_64"),
        bin_dir.join("qemu-system-x86_64"),
    )
    .unwrap();
    let wire = env.tripwire(Tripwire::PassThrough);
    let img = env.path("base.img");
    raw_image(&img);
    let run = |extra: &[&OsStr]| {
        env.cmd(["run", "--arch", "x86_64", "--emulator"])
            .env("PATH", &bin_dir)
            .arg(&wire)
            .arg("--disk")
            .arg(&img)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("\nerror: qemu-img is not installed"), "{e}");
    assert!(
        e.contains("hint: install the Debian package qemu-utils"),
        "{e}"
    );
    assert!(!env.qemu_started());
    assert!(files_under(&env.runtime_dir()).is_empty());

    let fake = env.path("qemu-img");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'qemu-img: the disk is full' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&[]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(
        e.contains(&format!(
            "error: cannot make the overlay of disk {}: the disk is full",
            img.display()
        )),
        "{e}"
    );
    assert!(!env.qemu_started());
    assert!(
        files_under(&env.runtime_dir()).is_empty(),
        "{:?}",
        files_under(&env.runtime_dir())
    );
    // A disk that persists needs no overlay, so no qemu-img: QEMU starts (and runs the
    // firmware until the timeout).
    let out = run(&[os("--disk-writable"), os("--timeout"), os("2s")]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
    assert!(env.qemu_started());
}

/// Formats come from headers, not names; a spec file mixes `disk` and `[[disks]]` and names
/// the network; flags replace the file's disks.
#[test]
fn spec_files_and_formats_in_the_plan() {
    let env = TestEnv::new();
    let q = env.path("looks-raw.img");
    qcow2_image(&q);
    let r = env.path("looks-qcow2.qcow2");
    raw_image(&r);
    let spec = env.path("vm.toml");
    std::fs::write(
        &spec,
        "arch = \"x86_64\"\ndisk = \"looks-raw.img\"\nnet = \"user,hostfwd=tcp::2222-:22\"\n\
         [[disks]]\npath = \"looks-qcow2.qcow2\"\npersist = true\n",
    )
    .unwrap();
    let plan = |extra: &[&str]| -> Value {
        let mut args = vec!["plan", "--json", "--spec", spec.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = env.qd(&args);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p = plan(&[]);
    let disks = p["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{p}");
    assert_eq!(disks[0]["path"], q.to_str().unwrap());
    assert_eq!(disks[0]["format"], "qcow2");
    assert_eq!(disks[0]["writable"], false);
    assert_eq!(disks[1]["path"], r.to_str().unwrap());
    assert_eq!(disks[1]["format"], "raw");
    assert_eq!(disks[1]["writable"], true);
    assert_eq!(p["nics"][0]["device"], "virtio-net-pci");
    assert_eq!(
        p["nics"][0]["user"]["hostfwd"][0]["host_port"],
        serde_json::json!(2222)
    );
    let p = plan(&[
        "--disk",
        &format!("{},format=raw", q.display()),
        "--net",
        "none",
    ]);
    let disks = p["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{p}");
    assert_eq!(disks[0]["format"], "raw");
    assert_eq!(p["nics"], serde_json::json!([]));
}
