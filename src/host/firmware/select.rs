//! Whether one descriptor fits a request, and why not.

use std::path::PathBuf;

use super::{Body, Device, Entry, FirmwareRequest, Mapping, Selected, Target, machine_family};

/// The selection for one entry, or why it does not fit. The checks run from the most basic
/// mismatch (another architecture) to the most specific (a missing file), so the reason shown
/// is the one that matters.
pub(super) fn check(entry: &Entry, req: &FirmwareRequest) -> Result<Selected, String> {
    let d = match &entry.body {
        Body::Disabled => return Err("disabled (empty file)".into()),
        Body::Invalid(why) => return Err(why.clone()),
        Body::Parsed(d) => d,
    };
    let for_arch: Vec<&Target> = d
        .targets
        .iter()
        .filter(|t| t.architecture == req.arch)
        .collect();
    if for_arch.is_empty() {
        let archs: Vec<&str> = d.targets.iter().map(|t| t.architecture.as_str()).collect();
        return Err(format!("for {}, not {}", or_none(&archs), req.arch));
    }
    let patterns: Vec<&str> = for_arch
        .iter()
        .flat_map(|t| t.machines.iter().map(String::as_str))
        .collect();
    if !patterns.iter().any(|p| machine_matches(p, &req.machine)) {
        return Err(format!(
            "for {} machines {}, not {}",
            req.arch,
            or_none(&patterns),
            req.machine
        ));
    }
    if !d.interface_types.contains(&req.interface) {
        let offered: Vec<&str> = d.interface_types.iter().map(String::as_str).collect();
        return Err(format!(
            "interface {}, not {}",
            or_none(&offered),
            req.interface
        ));
    }
    let has = |f: &str| d.features.iter().any(|x| x == f);
    if req.secure_boot {
        if !has("secure-boot") {
            return Err("no Secure Boot".into());
        }
    } else if let Some(f) = ["secure-boot", "enrolled-keys", "requires-smm"]
        .into_iter()
        .find(|f| has(f))
    {
        return Err(format!("has {f}, and Secure Boot was not asked for"));
    }
    let (device, executable, nvram, format) = image(&d.mapping)?;
    for p in std::iter::once(&executable).chain(&nvram) {
        if !p.is_file() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    Ok(Selected {
        descriptor: entry.path.clone(),
        description: d.description.clone(),
        device,
        executable,
        nvram_template: nvram,
        format,
        features: d.features.clone(),
    })
}

pub(super) type Image = (Device, PathBuf, Option<PathBuf>, String);

/// What qemu-direct can attach from a mapping.
pub(super) fn image(m: &Mapping) -> Result<Image, String> {
    match m.device.as_str() {
        "flash" => {
            let exe = m
                .executable
                .as_ref()
                .ok_or("flash mapping without an executable")?;
            if !["raw", "qcow2"].contains(&exe.format.as_str()) {
                return Err(format!("flash format {} is not supported", exe.format));
            }
            let nvram = match m.mode.as_deref().unwrap_or("split") {
                "split" => m.nvram_template.as_ref(),
                "stateless" => None,
                // Code and variables in one writable image: a per-VM copy of the whole
                // firmware, which nothing here makes yet.
                other => return Err(format!("flash mode {other} is not supported")),
            };
            if let Some(n) = nvram.filter(|n| n.format != exe.format) {
                return Err(format!(
                    "variable store format {} differs from code format {}",
                    n.format, exe.format
                ));
            }
            Ok((
                Device::Flash,
                exe.filename.clone(),
                nvram.map(|n| n.filename.clone()),
                exe.format.clone(),
            ))
        }
        "memory" => {
            let f = m
                .filename
                .as_ref()
                .ok_or("memory mapping without a filename")?;
            Ok((Device::Memory, f.clone(), None, "raw".into()))
        }
        other => Err(format!("device {other} is not supported")),
    }
}

pub(super) fn or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

/// Whether a descriptor's machine pattern covers `machine`, or, for an alias, the whole family
/// the alias belongs to.
pub(super) fn machine_matches(pattern: &str, machine: &str) -> bool {
    glob(pattern, machine) || machine_family(machine).is_some_and(|fam| glob(pattern, fam))
}

/// fnmatch-style matching with `*` and `?`, which is all descriptors use.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and how much text it has swallowed, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
