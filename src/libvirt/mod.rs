//! libvirt domain XML, both ways, without libvirt.
//!
//! - [`export()`] writes a [`LaunchPlan`](crate::plan::LaunchPlan) as a domain that libvirt's
//!   schema accepts and `virsh define` takes (written with quick-xml's writer). Whatever the plan
//!   holds that domain XML cannot say is returned in [`Export::unexpressed`], one line each,
//!   never dropped silently.
//! - [`import()`] reads the subset of domain XML that maps onto a guest description (the same
//!   elements export writes, plus what `virt-install` commonly writes) into a
//!   [`SpecInput`](crate::spec::SpecInput), so the normal validate/plan path applies. Every
//!   element or attribute outside that subset is listed, with its path and line, in one
//!   [`LibvirtError::Refused`]; nothing is half-applied. A few elements that change nothing
//!   qemu-direct could act on (`<uuid>`, `<clock>`, USB controllers with nothing on them...)
//!   are accepted and named in [`Imported::notes`].
//!
//! Export then import gives back the same plan. How the argv libvirt makes of an exported domain
//! compares with ours (measured against libvirt 9.0 with `virsh domxml-to-native`) is listed in
//! docs/libvirt.md, with every deliberate divergence.

mod export;
mod import;
mod xml;

#[cfg(test)]
mod tests;

use std::{fmt, path::PathBuf};

pub use export::{Export, domain_uuid, export};
pub use import::{Imported, import, import_file};

/// One part of a domain XML qemu-direct cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Where: `/domain/devices/interface[2]`, `/domain/cpu/@match`.
    pub path: String,
    /// The line of the element's start tag.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

impl Item {
    fn new(e: &xml::Element, what: &str) -> Item {
        Item {
            path: e.path.clone(),
            line: e.line,
            what: what.to_owned(),
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.path, self.what)
    }
}

/// Why a domain could not be exported or imported.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The XML file could not be read.
    #[error("cannot read libvirt domain XML {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A problem in a named file.
    #[error("libvirt domain XML {path}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: Box<LibvirtError>,
    },
    /// Not well-formed XML.
    #[error("malformed XML at line {line}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// The parser's words.
        message: String,
    },
    /// Parts of the domain qemu-direct cannot run as asked, every one of them.
    #[error("{} part(s) of the domain cannot be run by qemu-direct:{}", .0.len(), lines(.0))]
    Refused(Vec<Item>),
    /// `--strict` export: parts of the plan the XML cannot say.
    #[error("{} part(s) of the plan cannot be expressed in libvirt domain XML:{}", .0.len(), lines(.0))]
    Unexpressed(Vec<String>),
    /// A value that XML 1.0 cannot carry (not UTF-8, or control characters).
    #[error("{what} {value} cannot be written in XML: {why}")]
    NotXml {
        /// The field.
        what: &'static str,
        /// The value, escaped.
        value: String,
        /// Why not.
        why: &'static str,
    },
    /// The plan names an architecture these profiles do not have.
    #[error("no machine profile for {0}")]
    NoProfile(String),
    /// Writing to the in-memory buffer failed (does not happen in practice).
    #[error("cannot write the XML")]
    Write(#[source] std::io::Error),
}

fn lines<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| format!("\n  {i}")).collect()
}

/// `(QEMU machine property, libvirt <features> element, its attribute, the values libvirt
/// takes)`: machine properties domain XML can carry.
const MACHINE_FEATURES: &[(&str, &str, &str, &[&str])] = &[
    ("gic-version", "gic", "version", &["host", "2", "3"]),
    (
        "cap-cfpc",
        "cfpc",
        "value",
        &["broken", "workaround", "fixed"],
    ),
    (
        "cap-sbbc",
        "sbbc",
        "value",
        &["broken", "workaround", "fixed"],
    ),
    (
        "cap-ibs",
        "ibs",
        "value",
        &["broken", "workaround", "fixed-ibs", "fixed-ccd", "fixed-na"],
    ),
    ("cap-ccf-assist", "ccf-assist", "state", &["on", "off"]),
    ("cap-htm", "htm", "state", &["on", "off"]),
    ("cap-nested-hv", "nested-hv", "state", &["on", "off"]),
];

/// The `<features>` element for a `key=value` machine property, if domain XML has one.
fn machine_feature(option: &str) -> Option<(&'static str, &'static str, &str)> {
    let (key, value) = option.split_once('=')?;
    MACHINE_FEATURES
        .iter()
        .find(|(k, _, _, values)| *k == key && values.contains(&value))
        .map(|(_, element, attr, _)| (*element, *attr, value))
}

/// The machine property a `<features>` element asks for, if it is one of [`MACHINE_FEATURES`].
fn feature_option(element: &str, value: &str) -> Option<String> {
    MACHINE_FEATURES
        .iter()
        .find(|(_, e, _, _)| *e == element)
        .map(|(key, _, _, _)| format!("{key}={value}"))
}
