//! What the shell and `man` see of the command: `completions SHELL`, `man DIR`, and the
//! completion requests the scripts of `completions` send back (`COMPLETE=SHELL qemu-direct --
//! WORDS...`).
//!
//! Completions are clap_complete's dynamic ones: the script the shell sources is a small shim
//! that asks the `qemu-direct` on `PATH` for the candidates each time, so they always match the
//! installed binary and can name the instances running now.

use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::{
    CompleteEnv,
    engine::CompletionCandidate,
    env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Shells, Zsh},
};
use qemu_direct::{ExitCode, instance, profile::ProfileSet};

use crate::{
    Usage,
    cli::{Cli, CompletionShell},
};

/// The variable the completion scripts set when they ask for candidates.
const VAR: &str = "COMPLETE";
/// The command the scripts complete and call: the `qemu-direct` found on `PATH`, so one
/// script serves a `cargo install` and the Debian package alike.
const BIN: &str = "qemu-direct";

/// The shells, in [`CompletionShell`]'s order.
const SHELLS: Shells<'static> = Shells(&[&Bash, &Zsh, &Fish, &Elvish, &Powershell]);

/// Answers a completion request and exits, when the environment holds one; else returns.
pub fn answer_completion_request() {
    CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .shells(SHELLS)
        .complete();
}

/// `completions SHELL`: the script that registers completions for `qemu-direct` in SHELL.
pub fn completions(shell: CompletionShell, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let completer: &dyn EnvCompleter = match shell {
        CompletionShell::Bash => &Bash,
        CompletionShell::Zsh => &Zsh,
        CompletionShell::Fish => &Fish,
        CompletionShell::Elvish => &Elvish,
        CompletionShell::Powershell => &Powershell,
    };
    completer.write_registration(VAR, BIN, BIN, BIN, out)?;
    if let CompletionShell::Zsh = shell {
        // Sourced, the script registers its function for later requests. Autoloaded from
        // fpath as `_qemu-direct` (the Debian package's file), it runs for the first request
        // itself, so it must answer that one too.
        writeln!(
            out,
            "if [[ ${{funcstack[1]-}} == _qemu-direct ]]; then\n    \
             _clap_dynamic_completer_qemu_direct \"$@\"\nfi"
        )?;
    }
    Ok(ExitCode::Success)
}

/// The names of the instances running now that start with what was typed, each with its arch
/// and run state as help. Nothing when the runtime directory cannot be read: a completion
/// never fails loudly.
pub fn instance_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(current) = current.to_str() else {
        return Vec::new();
    };
    let Ok(all) = instance::runtime_root().and_then(|root| instance::list(&root)) else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|(r, _)| r.name.starts_with(current))
        .map(|(r, info)| {
            let help = match info {
                Some(i) => format!("{} {} {}", i.arch, i.accel, i.state),
                None => "starting".to_owned(),
            };
            CompletionCandidate::new(r.name).help(Some(help.into()))
        })
        .collect()
}

/// `man DIR`: one page per command into DIR (`qemu-direct.1`, `qemu-direct-run.1`,
/// `qemu-direct-cpu-models.1`, ...), each written to a dot-file first and renamed, so no
/// half-written page is ever seen. Prints the paths written.
pub fn man(dir: &Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        return Err(Usage(format!(
            "man: {}: not an existing directory (create it first)",
            dir.display()
        ))
        .into());
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect_pages(&cmd, &mut pages);
    for page in pages {
        let path = write_page(dir, page)?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(ExitCode::Success)
}

/// The command and its visible subcommands, depth first.
fn collect_pages(cmd: &clap::Command, pages: &mut Vec<clap_mangen::Man>) {
    pages.push(clap_mangen::Man::new(cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, pages);
    }
}

/// Renders one page into `.NAME.tmp` in `dir`, then renames it to NAME.
fn write_page(dir: &Path, page: clap_mangen::Man) -> anyhow::Result<PathBuf> {
    let name = page.get_filename();
    let mut text = Vec::new();
    page.render(&mut text)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("man: cannot write {}", path.display()))?;
    Ok(path)
}

/// The built-in guest architectures that start with what was typed, each with its summary as
/// help (aliases are accepted but not offered).
pub fn arch_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let (Some(current), Ok(set)) = (current.to_str(), ProfileSet::embedded()) else {
        return Vec::new();
    };
    set.iter()
        .filter(|p| p.name.starts_with(current))
        .map(|p| CompletionCandidate::new(&p.name).help(Some(p.summary.clone().into())))
        .collect()
}
