//! Shared fixture for the integration tests.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use qemu_direct::{
    host::{Emulator, HostFacts, KvmState},
    profile::ProfileSet,
};

/// The built `qemu-direct` binary.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qemu-direct"));
    c.stdin(Stdio::null());
    c
}

/// Runs the binary with args and returns its output.
pub fn qd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    bin().args(args).output().expect("run qemu-direct")
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `qemu-direct ARGS --kernel K --initrd I` for a test guest, with logs under `state` and
/// instance directories under `state/run` (so parallel tests never share an instance name).
pub fn guest_cmd<I, S>(g: &Guest, state: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = bin();
    c.env("XDG_STATE_HOME", state)
        .env("XDG_RUNTIME_DIR", runtime_dir(state))
        .args(args)
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd);
    c
}

/// `state/run`, created: the XDG_RUNTIME_DIR of the commands a test runs.
pub fn runtime_dir(state: &Path) -> PathBuf {
    let run = state.join("run");
    std::fs::create_dir_all(&run).expect("create the runtime dir");
    run
}

/// A made-up host with every emulator "installed" under /usr/bin.
pub fn fake_host(arch: &str, kvm: KvmState) -> HostFacts {
    let set = ProfileSet::embedded().unwrap();
    HostFacts {
        arch: Some(set.resolve("host", arch).unwrap().arch()),
        arch_detail: arch.into(),
        kvm_device: "/dev/kvm".into(),
        kvm,
        emulators: set
            .iter()
            .map(|p| {
                let path = PathBuf::from(format!("/usr/bin/{}", p.binary));
                (
                    p.binary.clone(),
                    Emulator {
                        path,
                        version: None,
                        caps: BTreeMap::new(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        phys_bits: Some(48),
        firmware: None,
    }
}

/// A test guest built by `scripts/fetch-test-guests.sh`.
pub struct Guest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// initramfs printing `GUEST-READY <arch>`.
    pub initrd: PathBuf,
}

/// Where the test guests are: `$QD_TEST_GUESTS`, else the fetch script's default.
pub fn guests_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QD_TEST_GUESTS") {
        return d.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("qemu-direct/test-guests")
}

/// The test guest of an arch. Missing guests fail the test loudly (run the fetch script, or
/// `scripts/test`, which does), unless QD_SKIP_BOOT=1 asks to skip boots on purpose.
pub fn guest(arch: &str) -> Option<Guest> {
    let dir = guest_files(arch, &["kernel", "initrd.gz"])?;
    Some(Guest {
        kernel: dir.join("kernel"),
        initrd: dir.join("initrd.gz"),
    })
}

/// The directory of an arch's test guest, once `files` are all in it; see [`guest`].
pub fn guest_files(arch: &str, files: &[&str]) -> Option<PathBuf> {
    let dir = guests_dir().join(arch);
    if files.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    if std::env::var_os("QD_SKIP_BOOT").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: no {arch} test guest in {} and QD_SKIP_BOOT=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "no {arch} test guest in {}: run scripts/fetch-test-guests.sh (or scripts/test), \
         or set QD_SKIP_BOOT=1 to skip boot tests",
        dir.display()
    );
}

/// A private scratch directory, also used as XDG_STATE_HOME so logs land inside it.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Lists every file under a directory, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
