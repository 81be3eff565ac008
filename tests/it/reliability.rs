//! The reliability suite: bad input from a corpus, injection through paths, and faults.
//!
//! - **Bad input** (`tests/corpus/bad-input/`): one file per case, each naming the error it
//!   must produce (`# expect: TEXT`, or `<!-- expect: TEXT -->` in XML). Every case runs as a
//!   real `run` (not `--dry-run`) against the recorded host of `cpu_rules` (real capability
//!   data, every emulator a tripwire): exit 2, `error: ...TEXT...` first on stderr, nothing on
//!   stdout, no QEMU started, no file written anywhere (state, cache, config, runtime dir).
//!   - `NN-name.toml`: a spec file, copied into the case's scratch directory (beside a kernel
//!     file named `vmlinuz`) and run as `run --spec FILE`.
//!   - `NN-name.args`: command-line arguments of `run`, one per line; `@DIR@` is the scratch
//!     directory, `@KERNEL@` its kernel file, `\n` a newline, `\\` a backslash (also in
//!     `expect:`).
//!   - `NN-name.xml`: a malformed libvirt domain, run as `plan --libvirt-xml FILE`; skipped,
//!     saying so, while the binary has no `--libvirt-xml`.
//! - **Injection**: a real boot whose kernel, initrd, disk and console log paths hold `,file=`,
//!   `=`, spaces, a newline, a leading `-` and non-UTF-8 bytes; QEMU gets them literally.
//! - **Faults** not covered elsewhere: the client QMP socket deleted under a running guest, a
//!   full runtime directory, two launches racing for one name, a guest that never prints what
//!   `--until` waits for. Covered elsewhere, not repeated here: SIGKILL of the launcher (QEMU
//!   gone within 1 s: `signals::sigkill_of_the_launcher_takes_qemu_with_it`,
//!   `lifecycle::a_launcher_killed_with_sigkill_...`), SIGKILL of QEMU (reported, cleaned up:
//!   `signals::qemu_killed_under_the_launcher_is_reported`,
//!   `lifecycle::qemu_killed_under_the_launcher_is_reported_with_the_console_tail`), SIGTERM
//!   (the stop ladder: `signals::sigterm_to_the_launcher_stops_qemu_and_exits_130`), a killed
//!   supervisor (`lifecycle::a_killed_supervisor_...`), QEMU failing to start
//!   (`lifecycle::a_qemu_that_fails_to_start_...`).

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use crate::{
    common::{
        BOOT_TIMEOUT, Detached, TestEnv, Tripwire, files_under, guest,
        guest_proto::{self, HOLD},
        text, wait_gone, wait_until,
    },
    cpu_rules::{Host, World},
};

/// The corpus must keep at least this many cases.
const MIN_CASES: usize = 40;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-input")
}

/// One corpus case, read from its file.
struct Case {
    file: PathBuf,
    /// The verb and its arguments.
    args: Vec<OsString>,
    expect: String,
}

/// The value of a `expect:` header line.
fn header(line: &str) -> Option<&str> {
    let l = line.trim();
    let l = l
        .strip_prefix('#')
        .or_else(|| l.strip_prefix("<!--").and_then(|r| r.strip_suffix("-->")))?;
    l.trim().strip_prefix("expect:").map(str::trim)
}

/// Fills in `@DIR@` and `@KERNEL@`, and turns `\n` into a newline and `\\` into `\`.
fn substitute(s: &str, w: &World) -> String {
    let s = s
        .replace("@DIR@", w.path("").to_str().unwrap().trim_end_matches('/'))
        .replace("@KERNEL@", w.path("vmlinuz").to_str().unwrap());
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

impl Case {
    /// Reads a case file and prepares it in `w`; `None` for files that are no case.
    fn load(file: &Path, w: &World) -> Option<Case> {
        let ext = file.extension()?.to_str()?;
        let body = std::fs::read_to_string(file).unwrap();
        let expect = body.lines().find_map(header).unwrap_or_else(|| {
            panic!("{}: no `expect:` header line", file.display());
        });
        let expect = substitute(expect, w);
        let name = file.file_name().unwrap();
        let args: Vec<OsString> = match ext {
            "toml" => {
                std::fs::write(w.path(name.to_str().unwrap()), &body).unwrap();
                vec!["run".into(), "--spec".into(), w.path(name.to_str()?).into()]
            }
            "args" => std::iter::once("run".to_owned())
                .chain(
                    body.lines()
                        .filter(|l| !l.starts_with('#') && !l.is_empty())
                        .map(|l| substitute(l, w)),
                )
                .map(OsString::from)
                .collect(),
            "xml" => {
                std::fs::write(w.path(name.to_str().unwrap()), &body).unwrap();
                vec![
                    "plan".into(),
                    "--libvirt-xml".into(),
                    w.path(name.to_str()?).into(),
                ]
            }
            _ => return None,
        };
        Some(Case {
            file: file.to_owned(),
            args,
            expect,
        })
    }
}

/// Whether this binary knows `plan --libvirt-xml` (the libvirt import, merged separately).
fn knows_libvirt_xml() -> bool {
    let out = crate::common::qd(["plan", "--help"]);
    String::from_utf8_lossy(&out.stdout).contains("--libvirt-xml")
}

/// Runs one case; returns what was wrong, if anything.
fn check_case(case: &Case, w: &World) -> Result<(), String> {
    let before = files_under(&w.path(""));
    let out = w.host_cmd().args(&case.args).output().unwrap();
    let (stdout, stderr) = text(&out);
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!("exit {:?}, want 2", out.status.code()));
    }
    let first = stderr.lines().next().unwrap_or_default();
    // The expected text is in the error (its first line, or a `caused by:` line for errors
    // that list parts, such as a refused libvirt domain), after one `error:` line.
    if !first.starts_with("error: ") || !stderr.contains(&case.expect) {
        problems.push(format!("want one error naming {:?}", case.expect));
    }
    if stderr.matches("error: ").count() != 1 {
        problems.push("want exactly one `error:` line".into());
    }
    if !stdout.is_empty() {
        problems.push(format!("stdout not empty: {stdout:?}"));
    }
    if w.env.qemu_started() {
        problems.push("QEMU was started".into());
    }
    for d in ["state", "cache", "config", "run"] {
        let left = files_under(&w.path(d));
        if !left.is_empty() {
            problems.push(format!("files left in {d}: {left:?}"));
        }
    }
    let after = files_under(&w.path(""));
    if after != before {
        problems.push(format!(
            "files appeared: before {before:?}, after {after:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} ({:?}):\n    {}\n    stderr: {stderr}",
            case.file.file_name().unwrap().to_string_lossy(),
            case.args,
            problems.join("\n    ")
        ))
    }
}

#[test]
fn every_bad_input_in_the_corpus_is_refused_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let xml = knows_libvirt_xml();
    let mut failures = Vec::new();
    let (mut ran, mut skipped) = (0, 0);
    for file in &files {
        let w = World::new(Host::Tcg);
        let Some(case) = Case::load(file, &w) else {
            continue;
        };
        if case.args[0] == "plan" && case.args[1] == "--libvirt-xml" && !xml {
            eprintln!(
                "SKIPPED: {}: this binary has no plan --libvirt-xml yet (libvirt import not merged)",
                file.file_name().unwrap().to_string_lossy()
            );
            skipped += 1;
            continue;
        }
        ran += 1;
        if let Err(e) = check_case(&case, &w) {
            failures.push(e);
        }
    }
    eprintln!("bad-input corpus: {ran} cases ran, {skipped} skipped");
    assert!(
        ran + skipped >= MIN_CASES,
        "the corpus has {} cases; keep at least {MIN_CASES}",
        ran + skipped
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} corpus cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_headers_are_well_formed() {
    // A case without an expectation would pass on any error; refuse it up front.
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        let body = std::fs::read_to_string(&p).unwrap();
        let expect = body.lines().find_map(header);
        assert!(
            expect.is_some_and(|x| !x.is_empty()),
            "{}: needs a non-empty `expect:` line",
            p.display()
        );
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.len() > 3 && name[..2].bytes().all(|b| b.is_ascii_digit()),
            "{name}: name cases NN-name.ext"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Injection

/// A path under `dir` made of `parts`, raw bytes (so not necessarily UTF-8).
fn odd_path(dir: &Path, parts: &[&[u8]]) -> PathBuf {
    let mut p = dir.to_owned();
    for part in parts {
        p.push(OsStr::from_bytes(part));
    }
    p
}

#[test]
fn odd_paths_reach_qemu_literally_on_a_real_boot() {
    let Some(g) = guest("x86_64") else { return };
    let env = TestEnv::new();
    // A directory name that is not UTF-8, with a space, a comma and a newline in it.
    let odd_dir = odd_path(env.root(), &[b"guest \xff\xfe,dir\nx"]);
    std::fs::create_dir_all(&odd_dir).unwrap();
    // Option-list syntax QEMU would act on if we passed these unescaped inside one, and
    // a leading '-' that an option parser would take for an option.
    let kernel = odd_dir.join("-vmlinuz,file=evil.img,format=raw");
    let initrd = odd_dir.join("initrd =x,,y.gz");
    let disk = odd_dir.join("-disk,file=passwd,if=none.img");
    let log = odd_dir.join("con sole,log=1\n.log");
    std::fs::copy(&g.kernel, &kernel).unwrap();
    std::fs::copy(&g.initrd, &initrd).unwrap();
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // --disk takes QEMU's option syntax itself: a comma in the path is written ',,'.
    let mut disk_arg = disk.as_os_str().as_bytes().to_vec();
    disk_arg = disk_arg
        .split(|&b| b == b',')
        .collect::<Vec<_>>()
        .join(&b",,"[..]);
    disk_arg.extend_from_slice(b",format=raw,persist");
    // A second disk, not persisted: its odd name goes to qemu-img as the overlay's backing
    // file, and from the overlay's header to QEMU.
    let backing = odd_dir.join("-over lay,file=x.img");
    std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
    let mut backing_arg = OsString::from_vec(
        backing
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b',')
            .collect::<Vec<_>>()
            .join(&b",,"[..]),
    );
    backing_arg.push(",format=raw");
    let out = env
        .cmd([
            "run",
            "--arch",
            "x86_64",
            "--timeout",
            BOOT_TIMEOUT,
            "--name",
            "odd",
        ])
        .current_dir(&odd_dir)
        // Relative paths starting with '-', given in the --flag=VALUE form.
        .arg(concat_os("--kernel=", kernel.file_name().unwrap()))
        .arg(concat_os("--initrd=", initrd.file_name().unwrap()))
        .arg("--disk")
        .arg(OsString::from_vec(disk_arg))
        .arg("--disk")
        .arg(&backing_arg)
        .arg("--append")
        .arg(guest_proto::write("/dev/vda"))
        .arg("--console-log")
        .arg(&log)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{e}\nconsole:\n{o}");
    assert!(o.contains(&guest_proto::ready("x86_64")), "{o}");
    assert!(o.contains(&guest_proto::wrote("/dev/vda")), "{o}");
    // The guest wrote into the very file named, through the odd name.
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written.starts_with(&guest_proto::marker("x86_64")),
        "the marker block is not in {}",
        disk.display()
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(&guest_proto::ready("x86_64"))
    );
    // Nothing was created from a fragment of a name (e.g. a file called `evil.img`).
    assert!(
        std::fs::read(&backing).unwrap().iter().all(|&b| b == 0),
        "the overlaid image was written"
    );
    for stray in ["evil.img", "passwd", "x,,y.gz", "x.img"] {
        assert!(
            !odd_dir.join(stray).exists() && !env.path(stray).exists(),
            "{stray} appeared"
        );
    }
}

fn concat_os(a: &str, b: &OsStr) -> OsString {
    let mut s = OsString::from(a);
    s.push(b);
    s
}

// ---------------------------------------------------------------------------------------------
// Faults

/// Starts a detached, held aarch64 guest named `name` in `env`; stopped when dropped.
fn held_aarch64<'e>(env: &'e TestEnv, name: &str, extra: &[&str]) -> Option<Detached<'e>> {
    let g = guest("aarch64")?;
    let args = [&["--name", name, "--append", HOLD][..], extra].concat();
    Some(env.launch_detached(env.run(&g, args)))
}

#[test]
fn a_deleted_qmp_socket_fails_qmp_commands_clearly_and_stop_still_works() {
    let env = TestEnv::new();
    let Some(vm) = held_aarch64(&env, "nosock", &[]) else {
        return;
    };
    let qemu = vm.entry()["pid"].as_u64().unwrap() as u32;
    let sock = env.instances().join("nosock").join("qmp.sock");
    std::fs::remove_file(&sock).unwrap();
    let out = env.qd(["qmp", "nosock", "status"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(o.is_empty(), "{o}");
    assert!(
        e.starts_with(&format!(
            "error: cannot connect to QMP socket {}\ncaused by: No such file or directory",
            sock.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("hint: the instance's QMP socket is gone or dead; `qemu-direct stop NAME`"),
        "{e}"
    );
    // The guest runs on; the supervisor still watches it.
    wait_until("run state running", Duration::from_secs(30), || {
        vm.entry()["state"] == "running"
    });
    // `stop` cannot ask QEMU over QMP, so it kills it, and the supervisor cleans up.
    let out = env.qd(["stop", "nosock", "--timeout", "1s"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert!(o.starts_with("nosock: QEMU was killed with SIGKILL"), "{o}");
    wait_gone(qemu, Duration::from_secs(5));
    assert!(
        !env.instances().join("nosock").exists(),
        "instance directory removed"
    );
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped; `None` where mounting is not
/// permitted (not root, or a container without CAP_SYS_ADMIN).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs to fill ({}); the full-runtime-dir test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_runtime_dir_is_a_clear_error_and_leaves_nothing() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let run = env.runtime_dir();
    let Some(_fs) = Tmpfs::mount(&run, "64k") else {
        return;
    };
    // Fill it to the last block.
    let filler = run.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let wire = env.tripwire(Tripwire::PassThrough);
    for detach in [false, true] {
        let mut cmd = env.cmd(["run", "--arch", "aarch64", "--name", "full", "--emulator"]);
        cmd.arg(&wire).arg("--kernel").arg(&g.kernel);
        if detach {
            cmd.arg("--detach");
        }
        let out = cmd.output().unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(1), "detach {detach}: {o}{e}");
        assert!(o.is_empty(), "{o}");
        // The plan's notes, then the error naming the file and the cause.
        let error = e
            .lines()
            .skip_while(|l| !l.starts_with("error: "))
            .collect::<Vec<_>>();
        assert!(
            error.len() == 2
                && error[0].starts_with("error: cannot write ")
                && error[0].contains("/run/qemu-direct/")
                && error[1] == "caused by: No space left on device (os error 28)",
            "detach {detach}: {e}"
        );
        assert!(!env.qemu_started(), "QEMU was started (detach {detach})");
        // Only the filler and the (empty) root of instances remain.
        let left: Vec<PathBuf> = files_under(&run)
            .into_iter()
            .filter(|p| p != &filler)
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let root = run.join("qemu-direct");
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "instance root not empty: {entries:?}");
    }
}

#[test]
fn instance_creation_races_have_exactly_one_winner() {
    let env = TestEnv::new();
    let root = env.path("qd");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for round in 0..20 {
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let results: Vec<_> = (0..n)
            .map(|_| {
                let (root, barrier) = (root.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    qemu_direct::instance::Instance::create(&root, "race", false)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, qemu_direct::instance::InstanceError::NameTaken { .. }),
                    "round {round}: {e}"
                );
            }
        }
        drop(results);
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
        assert!(left.is_empty(), "round {round}: left {left:?}");
    }
}

#[test]
fn two_launches_racing_for_one_name_one_wins_one_is_told() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let barrier = Arc::new(Barrier::new(2));
    let launches: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = env.run(&g, ["--detach", "--name", "race", "--append", HOLD]);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                cmd.output().unwrap()
            })
        })
        .collect();
    let outs: Vec<Output> = launches.into_iter().map(|h| h.join().unwrap()).collect();
    let stop = || env.qd(["stop", "race", "--timeout", "0s"]);
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    let won = outs.iter().filter(|o| o.status.code() == Some(0)).count();
    if won != 1 {
        let _ = stop();
    }
    assert_eq!(
        won,
        1,
        "exit codes {codes:?}: {:?}",
        outs.iter().map(text).collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| o.status.code() != Some(0)).unwrap();
    let (o, e) = text(lost);
    assert_eq!(lost.status.code(), Some(2), "{o}{e}");
    assert!(o.is_empty(), "{o}");
    assert!(
        e.contains("error: instance 'race' is already running"),
        "{e}"
    );
    assert!(
        e.contains("hint: stop it first (qemu-direct stop race)"),
        "{e}"
    );
    // The winner runs; one QEMU, one directory.
    let out = stop();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_dir(env.instances()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn a_guest_that_never_prints_the_marker_times_out_exits_5_and_is_cleaned_up() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let start = Instant::now();
    let out = env
        .run(
            &g,
            [
                "--name",
                "mute",
                "--append",
                HOLD,
                "--until",
                "NEVER-PRINTED",
                "--timeout",
                "8s",
            ],
        )
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(
        e.contains("qemu-direct: timed out after 8s; guest stopped"),
        "{e}"
    );
    assert!(!o.contains("NEVER-PRINTED"), "{o}");
    assert_eq!(
        std::fs::read_dir(env.instances()).unwrap().count(),
        0,
        "nothing left"
    );

    // Detached (in a world of its own): the supervisor applies the timeout, stops QEMU and
    // removes the directory.
    let env = TestEnv::new();
    let Some(vm) = held_aarch64(&env, "mute", &["--timeout", "5s"]) else {
        return;
    };
    let e = vm.entry();
    let (qemu, supervisor) = (
        e["pid"].as_u64().unwrap(),
        e["supervisor_pid"].as_u64().unwrap(),
    );
    wait_until("detached guest timed out", Duration::from_secs(60), || {
        !env.instances().join("mute").exists()
    });
    wait_gone(qemu as u32, Duration::from_secs(5));
    // The supervisor writes its report last, after removing the directory.
    wait_gone(supervisor as u32, Duration::from_secs(5));
    let log = std::fs::read_to_string(env.logs().join("mute.supervisor.log")).unwrap();
    assert!(log.contains("timed out after 5s"), "{log}");
}
