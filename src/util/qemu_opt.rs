//! Values inside QEMU's comma-separated option lists (`-drive file=...,format=...`).

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
};

/// Doubles every `,` so the value stays one value inside a QEMU option list.
pub fn escape(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Splits a value written the way QEMU's option lists are: a single `,` starts the next part
/// and `,,` is a literal comma (`my,,disk.img,persist` is `my,disk.img` and `persist`). Always
/// at least one part.
pub fn split(value: &OsStr) -> Vec<OsString> {
    let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b',', Some(b',')) => {
                parts.last_mut().expect("never empty").push(b',');
                i += 2;
            }
            (b',', _) => {
                parts.push(Vec::new());
                i += 1;
            }
            (b, _) => {
                parts.last_mut().expect("never empty").push(b);
                i += 1;
            }
        }
    }
    parts.into_iter().map(OsString::from_vec).collect()
}
