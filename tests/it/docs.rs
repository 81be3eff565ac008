//! The documentation's examples run as written, and its links lead somewhere.
//!
//! Every command in a fenced `sh` block of `README.md` and `docs/*.md` runs through `sh` with
//! the built binary first on `PATH`; the convention (what is a command, `(exit N)`, the
//! `<!-- docs-test: live -->` and `<!-- docs-test: skip: ... -->` markers, the `guests` link,
//! files from `# NAME` toml blocks) is written down for authors in `docs/README.md`, "Examples".
//! Self-contained on purpose: no helpers from `common`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::guests_dir;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

/// What a command may take before it is killed (the live session's `wait` allows 120 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);
/// The marker line before a block that runs for real.
const LIVE: &str = "<!-- docs-test: live -->";
/// The start of the marker line before a block that is not run.
const SKIP: &str = "<!-- docs-test: skip:";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md`, then `docs/*.md` by name.
fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut all = vec![repo().join("README.md")];
    all.extend(docs);
    all
}

fn rel(page: &Path) -> String {
    page.strip_prefix(repo())
        .unwrap_or(page)
        .display()
        .to_string()
}

/// A fenced code block.
struct Block {
    /// The word after the opening fence (`sh`, `toml`, ...).
    lang: String,
    /// The marker comment on the last non-blank line before the fence, if any.
    marker: Option<String>,
    /// 1-based line number of the first line inside the fence.
    first: usize,
    /// Its lines, with the fence's indentation removed.
    lines: Vec<String>,
}

/// The fenced blocks of a page, and the lines outside `sh` blocks that look like commands.
fn parse(text: &str) -> (Vec<Block>, Vec<(usize, String)>) {
    let mut blocks = Vec::new();
    let mut stray = Vec::new();
    let mut open: Option<(usize, Block)> = None;
    let mut last_text: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((fence_indent, block)) = open.as_mut() {
            if trimmed.starts_with("```") {
                blocks.push(open.take().unwrap().1);
                last_text = None;
            } else {
                let strip = line
                    .char_indices()
                    .take_while(|(n, c)| *n < *fence_indent && *c == ' ')
                    .count();
                let content = line[strip..].to_owned();
                if block.lang != "sh" {
                    stray_check(i + 1, &content, &mut stray);
                }
                block.lines.push(content);
            }
            continue;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            let marker = last_text
                .take()
                .filter(|l| l.starts_with("<!-- docs-test:"));
            open = Some((
                indent,
                Block {
                    lang: lang.trim().to_owned(),
                    marker,
                    first: i + 2,
                    lines: Vec::new(),
                },
            ));
            continue;
        }
        // Prose may start with the word; a prompt, or an indented code block, is a command.
        if trimmed.starts_with("$ qemu-direct") || indent >= 4 {
            stray_check(i + 1, line, &mut stray);
        }
        if !trimmed.is_empty() {
            last_text = Some(trimmed.trim_end().to_owned());
        }
    }
    assert!(open.is_none(), "a fenced block is not closed");
    (blocks, stray)
}

/// A line that reads like a command the test would not see (an indented code block, a
/// non-`sh` fence, a paragraph starting with the command).
fn stray_check(n: usize, line: &str, stray: &mut Vec<(usize, String)>) {
    let t = line.trim_start();
    if t.starts_with("qemu-direct ") || t.starts_with("$ qemu-direct") {
        stray.push((n, line.to_owned()));
    }
}

/// The commands of an `sh` block: `$ ` lines, joined with their `\` continuations.
fn commands(block: &Block) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut continuing = false;
    for (i, line) in block.lines.iter().enumerate() {
        if continuing {
            let cmd = &mut out.last_mut().unwrap().1;
            cmd.push('\n');
            cmd.push_str(line);
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            out.push((block.first + i, cmd.to_owned()));
        } else {
            continue;
        }
        continuing = line.ends_with('\\');
    }
    out
}

/// The exit code a command documents: `(exit N)`, N digits only, ending its line's comment;
/// else 0 (a comment such as `(exit 1: not)` tells what the command can do, not what it does
/// here).
fn expected_exit(cmd: &str) -> i32 {
    let t = cmd.trim_end();
    let Some(inner) = t.strip_suffix(')') else {
        return 0;
    };
    match inner.rfind("(exit ") {
        Some(at) if cmd[..at].contains('#') => inner[at + 6..].parse().unwrap_or(0),
        _ => 0,
    }
}

/// `cmd` with `--dry-run` after each `qemu-direct [global options] run` that lacks it.
fn dry(cmd: &str) -> String {
    const GLOBAL_WITH_VALUE: [&str; 4] =
        ["--profile-dir", "--host-facts", "--kvm-device", "--config"];
    if cmd.contains("--dry-run") {
        return cmd.to_owned();
    }
    let words: Vec<(usize, &str)> = cmd
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - cmd.as_ptr() as usize, w))
        .collect();
    let mut inserts = Vec::new();
    for (i, (_, w)) in words.iter().enumerate() {
        if *w != "qemu-direct" {
            continue;
        }
        let mut j = i + 1;
        while let Some((_, w)) = words.get(j) {
            if GLOBAL_WITH_VALUE.contains(w) {
                j += 2;
            } else if GLOBAL_WITH_VALUE
                .iter()
                .any(|g| w.starts_with(&format!("{g}=")))
            {
                j += 1;
            } else {
                break;
            }
        }
        if let Some((at, "run")) = words.get(j) {
            inserts.push(at + "run".len());
        }
    }
    let mut out = cmd.to_owned();
    for at in inserts.into_iter().rev() {
        out.insert_str(at, " --dry-run");
    }
    out
}

/// `# NAME` toml blocks: the files every page's commands see.
fn named_files(all: &[(PathBuf, Vec<Block>)]) -> BTreeMap<String, (String, String)> {
    let mut files: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (page, blocks) in all {
        for b in blocks.iter().filter(|b| b.lang == "toml") {
            let Some(name) = b.lines.first().and_then(|l| l.strip_prefix("# ")) else {
                continue;
            };
            let name = name.trim();
            if name.contains(' ') || !name.ends_with(".toml") {
                continue;
            }
            let at = format!("{}:{}", rel(page), b.first);
            if let Some((_, first)) = files.get(name) {
                panic!("{name} is written twice: {first} and {at}");
            }
            files.insert(name.to_owned(), (b.lines[1..].join("\n") + "\n", at));
        }
    }
    files
}

/// The private world the commands run in: a `PATH` with the binary, XDG directories and no
/// system config, all under one temporary directory.
struct World {
    root: tempfile::TempDir,
    path: String,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("bin");
        fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qemu-direct"), bin.join("qemu-direct"))
            .unwrap();
        for d in ["cache", "config", "state", "data", "run"] {
            fs::create_dir_all(root.path().join("xdg").join(d)).unwrap();
        }
        fs::set_permissions(
            root.path().join("xdg/run"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        World { root, path }
    }

    fn xdg(&self, d: &str) -> PathBuf {
        self.root.path().join("xdg").join(d)
    }

    /// A fresh working directory for a page: the `guests` link and the named files.
    fn workdir(&self, page: &str, files: &BTreeMap<String, (String, String)>) -> PathBuf {
        let dir = self.root.path().join("pages").join(page.replace('/', "_"));
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(guests_dir(), dir.join("guests")).unwrap();
        for (name, (text, _)) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    /// Runs one command line through `sh` in `dir`: exit code (None: killed after the
    /// timeout), stdout, stderr.
    fn run(&self, dir: &Path, cmd: &str) -> (Option<i32>, String, String) {
        let out = tempfile::NamedTempFile::new_in(self.root.path()).unwrap();
        let err = tempfile::NamedTempFile::new_in(self.root.path()).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", cmd])
            .current_dir(dir)
            .env("PATH", &self.path)
            .env("XDG_CACHE_HOME", self.xdg("cache"))
            .env("XDG_CONFIG_HOME", self.xdg("config"))
            .env("XDG_STATE_HOME", self.xdg("state"))
            .env("XDG_DATA_HOME", self.xdg("data"))
            .env("XDG_RUNTIME_DIR", self.xdg("run"))
            .env(
                "QEMU_DIRECT_SYSTEM_CONFIG",
                self.root.path().join("no-system-config.toml"),
            )
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .process_group(0)
            .spawn()
            .expect("run sh");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let read = |f: &tempfile::NamedTempFile| {
            String::from_utf8_lossy(&fs::read(f.path()).unwrap()).into_owned()
        };
        (code, read(&out), read(&err))
    }

    /// Stops whatever instance a live block left running (after a failure).
    fn stop_leftovers(&self, dir: &Path) {
        let Ok(entries) = fs::read_dir(self.xdg("run").join("qemu-direct")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                self.run(dir, &format!("qemu-direct stop '{name}' --timeout 1s"));
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[test]
fn every_documented_command_runs() {
    let guests = guests_dir();
    if !guests.join("aarch64/kernel").is_file() || !guests.join("x86_64/uefi.img").is_file() {
        if std::env::var_os("QD_SKIP_BOOT").is_some_and(|v| v == "1") {
            eprintln!(
                "SKIPPED: the documented commands use the test guests, not in {} (QD_SKIP_BOOT=1)",
                guests.display()
            );
            return;
        }
        panic!(
            "no test guests in {}: run scripts/fetch-test-guests.sh (or scripts/test), or set \
             QD_SKIP_BOOT=1",
            guests.display()
        );
    }
    let all: Vec<(PathBuf, Vec<Block>)> = pages()
        .into_iter()
        .map(|p| {
            let (blocks, stray) = parse(&fs::read_to_string(&p).unwrap());
            assert!(
                stray.is_empty(),
                "{}: commands outside a ```sh block, which the docs test cannot run: {stray:?}",
                rel(&p)
            );
            (p, blocks)
        })
        .collect();
    let files = named_files(&all);
    let world = World::new();

    let mut failures = Vec::new();
    let (mut ran, mut live_ran, mut skipped) = (0, 0, Vec::new());
    for (page, blocks) in &all {
        let page = rel(page);
        let dir = world.workdir(&page, &files);
        for b in blocks.iter().filter(|b| b.lang == "sh") {
            let cmds = commands(b);
            let at = format!("{page}:{}", b.first);
            if cmds.is_empty() {
                failures.push(format!("{at}: an sh block without a `$ ` command"));
                continue;
            }
            let live = match b.marker.as_deref() {
                Some(LIVE) => true,
                Some(m) if m.starts_with(SKIP) && m.ends_with("-->") => {
                    skipped.push(format!("{at} ({} commands): {m}", cmds.len()));
                    continue;
                }
                Some(m) => {
                    failures.push(format!("{at}: unknown marker {m}"));
                    continue;
                }
                None => false,
            };
            for (line, cmd) in cmds {
                let run = if live { cmd.clone() } else { dry(&cmd) };
                let want = expected_exit(&cmd);
                let (code, out, err) = world.run(&dir, &run);
                ran += 1;
                live_ran += usize::from(live);
                if code != Some(want) {
                    failures.push(format!(
                        "{page}:{line}: exit {code:?}, documented {want}\n  $ {run}\n--- stdout\n{}\n--- stderr\n{}",
                        tail(&out),
                        tail(&err)
                    ));
                }
            }
            if live {
                world.stop_leftovers(&dir);
            }
        }
    }
    eprintln!(
        "docs: ran {ran} documented commands ({live_ran} against a live guest); skipped {} blocks:",
        skipped.len()
    );
    for s in &skipped {
        eprintln!("  {s}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    assert!(
        ran >= 40,
        "only {ran} commands found: is the convention still followed?"
    );
    // Nothing escaped the private directories: no instance is left, no log outside XDG_STATE_HOME.
    let left: Vec<_> = fs::read_dir(world.xdg("run").join("qemu-direct"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instances left running: {left:?}");
}

/// GitHub's anchor for a heading: lower-case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let (blocks, _) = parse(text);
    let inside: BTreeSet<usize> = blocks
        .iter()
        .flat_map(|b| b.first..b.first + b.lines.len())
        .collect();
    text.lines()
        .enumerate()
        .filter(|(i, _)| !inside.contains(&(i + 1)))
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// Relative links `[text](target)` in prose (not in code blocks or inline code).
fn links(text: &str) -> Vec<(usize, String)> {
    let (blocks, _) = parse(text);
    let inside: BTreeSet<usize> = blocks
        .iter()
        .flat_map(|b| b.first - 1..b.first + b.lines.len() + 1)
        .collect();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if inside.contains(&(i + 1)) {
            continue;
        }
        // Drop inline code first: `[a](b)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push((i + 1, target.to_owned()));
            }
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn documentation_links_resolve_and_every_page_is_in_the_index() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap();
        for (line, target) in links(&text) {
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !dest.exists() {
                broken.push(format!("{}:{line}: {target}: no such file", rel(&page)));
            } else if !anchor.is_empty() {
                let ok = dest.extension().is_some_and(|e| e == "md")
                    && anchors(&fs::read_to_string(&dest).unwrap()).contains(anchor);
                if !ok {
                    broken.push(format!("{}:{line}: {target}: no such heading", rel(&page)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));

    let index = fs::read_to_string(repo().join("docs/README.md")).unwrap();
    let linked: BTreeSet<String> = links(&index).into_iter().map(|(_, t)| t).collect();
    for page in pages().iter().skip(1) {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        if name != "README.md" {
            assert!(
                linked.contains(&name),
                "docs/{name} is not linked from docs/README.md"
            );
        }
    }
}

#[test]
fn the_convention_reads_what_it_says() {
    let page = "text\n<!-- docs-test: live -->\n```sh\n$ qemu-direct run --arch x86_64 \\\n  --smp 2\nout\n$ qemu-direct --config c.toml run -d   # refused (exit 2)\n```\n  ```sh\n  $ mkdir x && qemu-direct run --arch a\n  ```\n    qemu-direct probe\n";
    let (blocks, stray) = parse(page);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].marker.as_deref(), Some(LIVE));
    assert_eq!(blocks[1].marker, None);
    assert_eq!(stray, [(12, "    qemu-direct probe".to_owned())]);
    let cmds = commands(&blocks[0]);
    assert_eq!(cmds.len(), 2);
    assert_eq!(
        cmds[0],
        (4, "qemu-direct run --arch x86_64 \\\n  --smp 2".to_owned())
    );
    assert_eq!(expected_exit(&cmds[0].1), 0);
    assert_eq!(expected_exit(&cmds[1].1), 2);
    assert_eq!(
        expected_exit("qemu-direct check   # not here (exit 1: not)"),
        0
    );
    assert_eq!(
        dry(&cmds[1].1),
        "qemu-direct --config c.toml run --dry-run -d   # refused (exit 2)"
    );
    let nested = commands(&blocks[1]);
    assert_eq!(
        dry(&nested[0].1),
        "mkdir x && qemu-direct run --dry-run --arch a"
    );
    assert_eq!(
        dry("qemu-direct plan --arch a"),
        "qemu-direct plan --arch a"
    );
    assert_eq!(
        slug("`[accel.tcg]` and `[accel.kvm]` (`AccelProfile`)"),
        "acceltcg-and-accelkvm-accelprofile"
    );
    assert_eq!(
        slug("Guest architecture, as Nova decides it"),
        "guest-architecture-as-nova-decides-it"
    );
}
