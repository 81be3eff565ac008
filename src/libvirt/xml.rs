//! A small read-only XML tree for import, over quick-xml's reader. Every element and attribute
//! knows its place in the document (an XPath-like path and a line) and whether the importer
//! took it, so whatever it did not take can be listed afterwards ([`Element::untaken`]).

use std::cell::Cell;

use quick_xml::{
    XmlVersion,
    escape::resolve_predefined_entity,
    events::{BytesRef, BytesStart, Event},
    reader::Reader,
};

use super::{Item, LibvirtError};

/// Deeper than any domain XML goes; a bound keeps recursion over the tree safe.
const MAX_DEPTH: usize = 32;

/// One element, with its attributes, children and text.
#[derive(Debug)]
pub(crate) struct Element {
    /// The name as written, prefix included (`qemu:commandline`).
    pub name: String,
    /// `/domain/devices/disk[2]`: the index appears where siblings share the name.
    pub path: String,
    /// 1-based line of the start tag.
    pub line: usize,
    attrs: Vec<Attr>,
    children: Vec<Element>,
    text: String,
    taken: Cell<bool>,
    text_taken: Cell<bool>,
}

#[derive(Debug)]
struct Attr {
    name: String,
    value: String,
    taken: Cell<bool>,
}

impl Element {
    /// Parses a whole document into its root element.
    pub fn parse(text: &str) -> Result<Element, LibvirtError> {
        let mut reader = Reader::from_str(text);
        let lines = LineIndex::new(text);
        let malformed = |pos: u64, message: String| LibvirtError::Malformed {
            line: lines.line(pos),
            message,
        };
        // Open elements, innermost last.
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let pos = reader.buffer_position();
            let event = reader
                .read_event()
                .map_err(|e| malformed(reader.error_position(), e.to_string()))?;
            match event {
                Event::Start(_) | Event::Empty(_) if root.is_some() && stack.is_empty() => {
                    return Err(malformed(pos, "more than one root element".into()));
                }
                Event::Start(start) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(malformed(pos, format!("nested deeper than {MAX_DEPTH}")));
                    }
                    stack.push(element(&start, lines.line(pos)).map_err(|m| malformed(pos, m))?);
                }
                Event::Empty(start) => {
                    let e = element(&start, lines.line(pos)).map_err(|m| malformed(pos, m))?;
                    close(e, &mut stack, &mut root);
                }
                Event::End(_) => match stack.pop() {
                    Some(e) => close(e, &mut stack, &mut root),
                    None => return Err(malformed(pos, "an end tag with no start".into())),
                },
                Event::Text(t) => {
                    let t = t.xml10_content();
                    push_text(&mut stack, &t).map_err(|m| malformed(pos, m))?;
                }
                Event::CData(t) => {
                    let t = t.xml10_content();
                    push_text(&mut stack, &t).map_err(|m| malformed(pos, m))?;
                }
                Event::GeneralRef(r) => {
                    let resolved = reference(&r).map_err(|m| malformed(pos, m))?;
                    push_text(&mut stack, &resolved).map_err(|m| malformed(pos, m))?;
                }
                Event::DocType(_) => {
                    return Err(malformed(pos, "a DOCTYPE is not accepted".into()));
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        if let Some(open) = stack.last() {
            return Err(LibvirtError::Malformed {
                line: open.line,
                message: format!("<{}> is never closed", open.name),
            });
        }
        let mut root = root.ok_or_else(|| LibvirtError::Malformed {
            line: 1,
            message: "no root element".into(),
        })?;
        root.path = format!("/{}", root.name);
        root.set_paths();
        Ok(root)
    }

    fn set_paths(&mut self) {
        let names: Vec<String> = self.children.iter().map(|c| c.name.clone()).collect();
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for (child, name) in self.children.iter_mut().zip(&names) {
            let count = names.iter().filter(|n| *n == name).count();
            let index = match seen.iter_mut().find(|(n, _)| n == name) {
                Some((_, i)) => {
                    *i += 1;
                    *i
                }
                None => {
                    seen.push((name, 1));
                    1
                }
            };
            child.path = if count > 1 {
                format!("{}/{name}[{index}]", self.path)
            } else {
                format!("{}/{name}", self.path)
            };
            child.set_paths();
        }
    }

    /// Marks this element taken (its attributes and children still count separately).
    pub fn take(&self) -> &Element {
        self.taken.set(true);
        self
    }

    /// Takes this element and everything in it: content the importer deliberately skips.
    pub fn take_all(&self) {
        self.taken.set(true);
        self.text_taken.set(true);
        for a in &self.attrs {
            a.taken.set(true);
        }
        for c in &self.children {
            c.take_all();
        }
    }

    /// The value of an attribute, taking it.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.name == name).map(|a| {
            a.taken.set(true);
            a.value.as_str()
        })
    }

    /// The first child of that name, taken. A second one stays untaken, so it is reported.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(Element::take)
    }

    /// Every child of that name, taken.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children
            .iter()
            .filter(move |c| c.name == name)
            .map(Element::take)
    }

    /// Every child, not taken: the caller takes what it handles.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter()
    }

    /// The text content, trimmed, taken.
    pub fn text(&self) -> &str {
        self.text_taken.set(true);
        self.text.trim()
    }

    /// Everything in the tree that was not taken, in document order: an untaken element is
    /// one item (its content is not listed separately).
    pub fn untaken(&self, out: &mut Vec<Item>) {
        if !self.taken.get() {
            out.push(Item::new(
                self,
                &format!("<{}> is not supported", self.name),
            ));
            return;
        }
        for a in &self.attrs {
            if !a.taken.get() {
                out.push(Item {
                    path: format!("{}/@{}", self.path, a.name),
                    line: self.line,
                    what: format!("attribute {}='{}' is not supported", a.name, a.value),
                });
            }
        }
        if !self.text_taken.get() && !self.text.trim().is_empty() {
            out.push(Item::new(
                self,
                &format!("text '{}' is not supported", self.text.trim()),
            ));
        }
        for c in &self.children {
            c.untaken(out);
        }
    }
}

fn element(start: &BytesStart, line: usize) -> Result<Element, String> {
    let name = start.name().as_ref().to_owned();
    let mut attrs = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = a.key.as_ref().to_owned();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?
            .into_owned();
        // Namespace declarations say how names are spelled, not what the guest is.
        let is_namespace = key == "xmlns" || key.starts_with("xmlns:");
        attrs.push(Attr {
            name: key,
            value,
            taken: Cell::new(is_namespace),
        });
    }
    Ok(Element {
        name,
        path: String::new(),
        line,
        attrs,
        children: Vec::new(),
        text: String::new(),
        taken: Cell::new(false),
        text_taken: Cell::new(false),
    })
}

/// A character reference (`&#38;`) or one of XML's predefined entities (`&amp;`); a DTD's own
/// entities are refused with the DOCTYPE.
fn reference(r: &BytesRef) -> Result<String, String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => {
            let name = r.xml10_content();
            resolve_predefined_entity(&name)
                .map(str::to_owned)
                .ok_or_else(|| format!("unknown entity '&{name};'"))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn close(e: Element, stack: &mut [Element], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(e),
        None => *root = Some(e),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(e) => {
            e.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err("text outside the root element".into()),
    }
}

/// Byte offset to line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, pos: u64) -> usize {
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        self.starts.partition_point(|&s| s <= pos).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lines_and_untaken_parts() {
        let doc =
            "<?xml version='1.0'?>\n<a x='1'>\n  <b/>\n  <b y='&amp;'>t&lt;u</b>\n  <c/>\n</a>\n";
        let root = Element::parse(doc).unwrap();
        root.take();
        assert_eq!(root.attr("x"), Some("1"));
        let bs: Vec<&Element> = root.children_named("b").collect();
        assert_eq!(bs[1].path, "/a/b[2]");
        assert_eq!(bs[1].line, 4);
        assert_eq!(bs[1].text(), "t<u");
        let mut out = Vec::new();
        root.untaken(&mut out);
        let paths: Vec<&str> = out.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["/a/b[2]/@y", "/a/c"]);
        assert_eq!(out[1].line, 5);
    }

    #[test]
    fn malformed_documents_say_where() {
        for (doc, want) in [
            ("<a><b></a>", "line 1"),
            ("<a>\n<b>\n", "<b> is never closed"),
            ("", "no root element"),
            ("<a/><b/>", "more than one root"),
            ("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", "DOCTYPE"),
            ("<a>&nope;</a>", "unknown entity"),
            ("text<a/>", "text outside"),
        ] {
            let e = Element::parse(doc).unwrap_err().to_string();
            assert!(e.contains(want), "{doc:?}: {e}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(
            Element::parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
    }
}
