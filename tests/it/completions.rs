//! Shell completions and manual pages through the real binary: the scripts of `completions`
//! parse in their shells, and bash and fish, sourcing them, complete the names of instances
//! really running (a booted test guest) and nothing once it is gone; `man DIR` writes pages
//! that `man` renders; an unknown shell or a missing folder is refused clearly.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::common::{Guest, TestEnv, files_under, guest, guest_proto::HOLD, text};

/// The shells `completions` knows, as its error must list them.
const SHELLS: [&str; 5] = ["bash", "zsh", "fish", "elvish", "powershell"];

/// `program` with the environment a `qemu-direct` of `env` gets (its XDG directories), and the
/// built binary first on PATH, as the completion scripts call `qemu-direct` from PATH.
fn in_env(env: &TestEnv, program: &str) -> Command {
    let qd = env.cmd(["--version"]);
    let mut c = Command::new(program);
    for (k, v) in qd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let bin_dir = Path::new(qd.get_program()).parent().unwrap().to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    c.env("PATH", std::env::join_paths(dirs).unwrap());
    c
}

/// `completions SHELL` written to a file in the env; must succeed.
fn script(env: &TestEnv, shell: &str) -> PathBuf {
    let out = env.qd(["completions", shell]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(!out.stdout.is_empty(), "an empty {shell} script");
    let path = env.path(&format!("completion.{shell}"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// What bash offers for the last word of `words`, after sourcing the bash script: the
/// completion function called as bash calls it on TAB (COMP_WORDS, COMP_CWORD).
fn bash_complete(env: &TestEnv, words: &[&str]) -> Vec<String> {
    let script = script(env, "bash");
    let quoted: Vec<String> = words
        .iter()
        .map(|w| shlex::try_quote(w).unwrap().into_owned())
        .collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { &quoted[cword - 1] } else { "''" };
    let program = format!(
        "set -e\nsource {}\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_TYPE=9\n\
         _clap_complete_qemu_direct qemu-direct {} {prev}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        quoted[cword],
    );
    let out = in_env(env, "bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "bash: {e}");
    o.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What fish offers for `line` (`complete -C`), after sourcing the fish script; the
/// candidates without their descriptions.
fn fish_complete(env: &TestEnv, line: &str) -> Vec<String> {
    let script = script(env, "fish");
    let out = in_env(env, "fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source {}; complete -C {}",
            script.display(),
            shlex::try_quote(line).unwrap()
        ))
        .output()
        .expect("fish is installed (scripts/install-deps installs it)");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "fish: {e}");
    o.lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_script_parses_in_its_shell() {
    let env = TestEnv::new();
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let path = script(&env, shell);
        let out = Command::new(shell)
            .arg(check)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{shell} ({e}): scripts/install-deps installs it"));
        assert!(out.status.success(), "{shell} {check}: {}", text(&out).1);
    }
    // The zsh file also serves autoloaded from fpath (the Debian package puts it there as
    // _qemu-direct): it then answers the first request itself.
    let zsh = std::fs::read_to_string(script(&env, "zsh")).unwrap();
    assert!(zsh.starts_with("#compdef qemu-direct"), "{zsh}");
    assert!(zsh.contains("== _qemu-direct ]]"), "{zsh}");
}

#[test]
fn an_unknown_shell_is_refused_with_the_shells_listed() {
    let env = TestEnv::new();
    let out = env.qd(["completions", "tcsh"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(o.is_empty(), "no script: {o}");
    assert!(
        e.starts_with("error: invalid value 'tcsh' for '<SHELL>'"),
        "{e}"
    );
    for shell in SHELLS {
        assert!(e.contains(shell), "{shell} not listed: {e}");
    }
}

#[test]
fn commands_and_arches_complete() {
    let env = TestEnv::new();
    assert_eq!(
        bash_complete(&env, &["qemu-direct", "compl"]),
        ["completions"]
    );
    assert_eq!(
        bash_complete(&env, &["qemu-direct", "completions", "f"]),
        ["fish"]
    );
    assert_eq!(
        bash_complete(&env, &["qemu-direct", "run", "--arch", "aa"]),
        ["aarch64"]
    );
    assert_eq!(
        fish_complete(&env, "qemu-direct plan --arch ri"),
        ["riscv64"]
    );
}

/// A held aarch64 guest running detached as `name` in `env`.
fn held_guest<'e>(env: &'e TestEnv, g: &Guest, name: &str) -> crate::common::Detached<'e> {
    env.launch_detached(env.run(g, ["--name", name, "--append", HOLD]))
}

#[test]
fn running_instances_complete_for_the_instance_commands() {
    let Some(g) = guest("aarch64") else { return };
    let env = TestEnv::new();
    let a = held_guest(&env, &g, "compl-a");
    let b = held_guest(&env, &g, "compl-b");
    for cmd in [
        "stop", "qmp", "console", "wait", "exec", "snapshot", "migrate",
    ] {
        let got = bash_complete(&env, &["qemu-direct", cmd, "compl-"]);
        assert_eq!(got, ["compl-a", "compl-b"], "bash: {cmd}");
    }
    assert_eq!(
        bash_complete(&env, &["qemu-direct", "stop", "compl-b"]),
        ["compl-b"]
    );
    assert_eq!(
        fish_complete(&env, "qemu-direct console compl-"),
        ["compl-a", "compl-b"]
    );
    a.stop();
    assert_eq!(
        bash_complete(&env, &["qemu-direct", "wait", "compl-"]),
        ["compl-b"]
    );
    b.stop();
    assert!(bash_complete(&env, &["qemu-direct", "stop", "compl-"]).is_empty());
}

#[test]
fn man_pages_render_one_per_command() {
    let env = TestEnv::new();
    let dir = env.path("man1");
    std::fs::create_dir(&dir).unwrap();
    let out = env.qd(["man".as_ref(), dir.as_os_str()]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let mut pages: Vec<String> = files_under(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        o.lines().count(),
        pages.len(),
        "one path printed per page: {o}"
    );
    for page in [
        "qemu-direct.1",
        "qemu-direct-run.1",
        "qemu-direct-cpu-models.1",
        "qemu-direct-qmp-execute.1",
        "qemu-direct-completions.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("supervise") || p.starts_with('.')),
        "no hidden command, no temporary file: {pages:?}"
    );
    let out = Command::new("man")
        .env("MANWIDTH", "100")
        .arg("-l")
        .arg(dir.join("qemu-direct-run.1"))
        .output()
        .expect("man is installed");
    let (o, e) = text(&out);
    assert!(out.status.success(), "man -l: {e}");
    assert!(o.contains("qemu-direct-run"), "{o}");
    assert!(o.contains("--kernel <FILE>"), "{o}");
    assert!(o.contains("Kernel image to boot directly"), "{o}");
}

#[test]
fn man_into_a_missing_folder_is_refused() {
    let env = TestEnv::new();
    let dir = env.path("no-such-dir");
    let out = env.qd(["man".as_ref(), dir.as_os_str()]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(o.is_empty(), "{o}");
    assert_eq!(
        e.trim_end(),
        format!(
            "error: man: {}: not an existing directory (create it first)",
            dir.display()
        )
    );
    assert!(!dir.exists());
}
