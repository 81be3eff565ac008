//! A libvirt domain read into a [`SpecInput`].
//!
//! The walk takes each element and attribute it maps (or deliberately accepts); whatever is
//! left untaken, and every value it cannot use, is listed in one [`LibvirtError::Refused`].
//! The result is a plain `SpecInput`, so flags can be layered over it and
//! [`SpecInput::validate`] checks it like any other guest description.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{Item, LibvirtError, xml::Element};
use crate::{profile::ProfileSet, spec::SpecInput};

mod channels;
mod cpu;
mod devices;
mod domain;
mod features;
mod os;

/// A domain read into a guest description.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The guest description; flags can be layered on top ([`SpecInput::overlay`]).
    pub spec: SpecInput,
    /// What the domain says that qemu-direct accepts without acting on it, one line each
    /// (`<uuid>`, `<clock>`, empty USB controllers, ...).
    pub notes: Vec<String>,
}

/// Reads a domain XML file. Relative paths in it are taken relative to the file.
pub fn import_file(path: &Path, profiles: &ProfileSet) -> Result<Imported, LibvirtError> {
    let text = fs::read_to_string(path).map_err(|source| LibvirtError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    read(&text, profiles, Some(base)).map_err(|e| LibvirtError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Reads a domain from its XML text.
pub fn import(text: &str, profiles: &ProfileSet) -> Result<Imported, LibvirtError> {
    read(text, profiles, None)
}

fn read(text: &str, profiles: &ProfileSet, base: Option<&Path>) -> Result<Imported, LibvirtError> {
    let root = Element::parse(text)?;
    let mut cx = Cx {
        base: base.map(Path::to_owned),
        ..Cx::default()
    };
    if root.name == "domain" {
        root.take();
        domain::domain(&root, profiles, &mut cx);
    } else {
        cx.bad(&root, "the root element must be <domain>");
    }
    root.untaken(&mut cx.items);
    if !cx.items.is_empty() {
        cx.items
            .sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
        cx.items.dedup();
        return Err(LibvirtError::Refused(cx.items));
    }
    let mut notes = cx.notes;
    notes.extend(cx.accepted.into_iter().filter_map(|(why, paths)| {
        let (first, rest) = paths.split_first()?;
        Some(if rest.is_empty() {
            format!("{first}: not applied: {why}")
        } else {
            format!(
                "{first} and {} more like it: not applied: {why}",
                rest.len()
            )
        })
    }));
    Ok(Imported {
        spec: cx.spec,
        notes,
    })
}

/// The import's state: what it has built and what it has found wrong.
#[derive(Default)]
struct Cx {
    /// Relative paths are relative to this (the file's directory).
    base: Option<PathBuf>,
    spec: SpecInput,
    items: Vec<Item>,
    notes: Vec<String>,
    /// Elements taken without acting on them: the reason, and where, in document order.
    accepted: Vec<(String, Vec<String>)>,
}

impl Cx {
    fn path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        match &self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    fn bad(&mut self, e: &Element, what: &str) {
        e.take_all();
        self.items.push(Item::new(e, what));
    }

    /// Something `e` lacks; its content is still checked.
    fn missing(&mut self, e: &Element, what: &str) {
        self.items.push(Item::new(e, what));
    }

    fn bad_attr(&mut self, e: &Element, attr: &str, what: &str) {
        self.items.push(Item {
            path: format!("{}/@{attr}", e.path),
            line: e.line,
            what: what.to_owned(),
        });
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Takes an element the importer accepts without acting on it, noting why (one note per
    /// reason, however many elements share it).
    fn accept(&mut self, e: &Element, why: &str) {
        e.take_all();
        match self.accepted.iter_mut().find(|(w, _)| w == why) {
            Some((_, paths)) => paths.push(e.path.clone()),
            None => self.accepted.push((why.to_owned(), vec![e.path.clone()])),
        }
    }

    /// [`Cx::accept`]s whichever of these children `e` has, for the same reason.
    fn accept_children(&mut self, e: &Element, names: &[&str], why: &str) {
        for name in names {
            if let Some(c) = e.child(name) {
                self.accept(c, why);
            }
        }
    }
}
