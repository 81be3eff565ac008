//! The shape of `src/` that ARCHITECTURE.md promises, kept by tests: folders import only the
//! layers below them (so no import cycle can appear), and no file or function outgrows a screen
//! or two.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The library's layers, lowest first. A layer may use only the layers before it. The same
/// list, with what lives where, is ARCHITECTURE.md's code map.
const LAYERS: &[&str] = &[
    "util", "profile", "qmp", "agent", "host", "cpu", "spec", "plan", "argv", "instance", "vm",
    "snapshot", "libvirt", "traits", "labels",
];

/// Lines a source file may have, its tests not counted.
const MAX_FILE_LINES: usize = 600;
/// Lines a function may have outside tests ("~80": a screen and a little).
const MAX_FN_LINES: usize = 90;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file's code without its test module and comments; `None` for a `tests.rs` file.
fn code_of(path: &Path) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let text = fs::read_to_string(path).unwrap();
    let mut lines = Vec::new();
    let mut it = text.lines().peekable();
    while let Some(l) = it.next() {
        let inline_tests = it
            .peek()
            .is_some_and(|n| n.starts_with("mod tests") && n.trim_end().ends_with('{'));
        if l.trim() == "#[cfg(test)]" && inline_tests {
            break;
        }
        lines.push(l.split("//").next().unwrap_or(""));
    }
    Some(lines.join("\n"))
}

/// The top-level module a file under `src/` belongs to (`host` for `src/host/caps.rs`).
fn layer_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules named by `crate::` paths in `code`, `use crate::{a::X, b}` groups
/// included.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && c.is_ascii_alphabetic() => {
                        item_start = false;
                        out.insert(ident_at(&group[j..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest));
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn folders_import_only_lower_layers() {
    let mut wrong = Vec::new();
    for path in rust_files(&src()) {
        let layer = layer_of(&path);
        if ["bin", "lib", "error"].contains(&layer.as_str()) {
            continue;
        }
        let Some(rank) = LAYERS.iter().position(|l| *l == layer) else {
            wrong.push(format!(
                "{}: layer '{layer}' is not in LAYERS",
                path.display()
            ));
            continue;
        };
        let Some(code) = code_of(&path) else { continue };
        for used in crate_refs(&code) {
            match LAYERS.iter().position(|l| *l == used) {
                Some(r) if r > rank => wrong.push(format!(
                    "{}: {layer} uses {used}, a layer above it",
                    path.display()
                )),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_layer_check_sees_grouped_and_plain_paths() {
    let code =
        "use crate::{\n    util::size::MemSize,\n    plan::{A, B},\n};\nfn f() { crate::vm::x(); }";
    let found: Vec<_> = crate_refs(code).into_iter().collect();
    assert_eq!(found, ["plan", "util", "vm"]);
}

/// Functions longer than `max` lines in `code`: (line, name, length). A function starts at an
/// `fn` line and ends at the first line that closes a block at its own indentation.
fn long_functions(code: &str, max: usize) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let is_fn = head.split_whitespace().all(|w| {
            [
                "pub",
                "pub(crate)",
                "pub(super)",
                "async",
                "const",
                "unsafe",
            ]
            .contains(&w)
        });
        if !is_fn || t[..].contains(';') && !t.contains('{') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        let Some(end) = lines[i + 1..].iter().position(|m| m.trim_end() == close) else {
            continue;
        };
        let len = end + 2;
        if len > max {
            out.push((i + 1, ident_at(&t[at + 3..]), len));
        }
    }
    out
}

#[test]
fn no_long_files_or_functions() {
    let mut long = Vec::new();
    for path in rust_files(&src()) {
        let Some(code) = code_of(&path) else { continue };
        let n = code.lines().count();
        if n > MAX_FILE_LINES {
            long.push(format!("{}: {n} lines", path.display()));
        }
        for (line, name, len) in long_functions(&code, MAX_FN_LINES) {
            long.push(format!("{}:{line}: fn {name}: {len} lines", path.display()));
        }
    }
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}

#[test]
fn the_length_check_measures_functions() {
    let body = "    x();\n".repeat(5);
    let code = format!(
        "pub fn short() {{\n{body}}}\n\nasync fn long() {{\n{}}}\n",
        body.repeat(3)
    );
    assert_eq!(long_functions(&code, 10), [(9, "long".to_owned(), 17)]);
}
