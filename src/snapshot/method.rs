//! How a snapshot stores the guest, chosen through the QEMU version gates
//! ([`crate::profile::gate`]): where the RAM goes, and how the migration stream reaches the
//! file.
//!
//! - RAM in a **memory file** (`memory`, sparse, the guest's physical memory at offset 0) and
//!   only the devices in the stream (`state`), written with the `x-ignore-shared` capability
//!   (QEMU 4.0) by a QEMU whose RAM is that file mapped shared (the machine's
//!   `memory-backend` property, 5.0). A restore maps the file private (copy-on-write) instead
//!   of reading it: it starts in the time QEMU takes to start, and clones of one snapshot
//!   share every page none of them wrote. Needs the machine type's default RAM id (from
//!   `query-machines`), which names the RAM block in the stream.
//! - Otherwise RAM **in the stream**, loaded by each restore.
//!
//! The stream is written by `exec:cat > FILE` before QEMU 8.2 and through the `file:` URI from
//! 8.2. `mapped-ram` (9.0: RAM pages at fixed offsets in the stream file) is not used: a
//! restore from it still reads the pages into its own memory, which the memory file avoids.

use serde::{Deserialize, Serialize};

use crate::profile::gate::{Gate, ProfileOption, QemuVersion};

/// Where a snapshot keeps the guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Memory {
    /// In the `memory` file, mapped copy-on-write by restores; `state` holds the devices.
    File,
    /// In the `state` stream with the devices, loaded by each restore.
    Stream,
}

/// How a running QEMU writes its migration stream to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `exec:cat > FILE`, through a shell and `cat`.
    Exec,
    /// The `file:FILE` URI (QEMU 8.2).
    File,
}

/// What was chosen, and why, in words for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Where the RAM is.
    pub memory: Memory,
    /// How the stream was written.
    pub transport: Transport,
    /// The migration capabilities a restore must turn on to read the stream.
    pub capabilities: Vec<String>,
    /// Why, one line per choice.
    pub why: Vec<String>,
}

/// The capability that leaves shared file-backed RAM out of the stream.
pub const IGNORE_SHARED: &str = "x-ignore-shared";

fn since(what: &str, version: QemuVersion) -> ProfileOption {
    ProfileOption {
        min_qemu: Some(version),
        ..ProfileOption::plain(what)
    }
}

/// The method for a QEMU of `version` (unknown: only what every QEMU we support has) and a
/// machine type whose default RAM id is `ram_id` (`None`: the machine has none).
pub fn choose(version: Option<QemuVersion>, ram_id: Option<&str>) -> Method {
    // An unknown version passes every gate; here that would choose what it may lack.
    let gate = Gate {
        qemu: Some(version.unwrap_or(QemuVersion::new(0, 0, 0))),
        host: None,
    };
    let mut why = Vec::new();
    let file_uri = since("the file: migration URI", QemuVersion::new(8, 2, 0));
    let transport = match gate.check(&file_uri) {
        Ok(()) => {
            why.push("stream written through the file: URI".to_owned());
            Transport::File
        }
        Err(e) => {
            why.push(format!(
                "stream written through exec:cat: {} {e}",
                file_uri.option
            ));
            Transport::Exec
        }
    };
    let backend = since(
        "a memory file with x-ignore-shared (the machine's memory-backend)",
        QemuVersion::new(5, 0, 0),
    );
    let memory = match (gate.check(&backend), ram_id) {
        (Ok(()), Some(id)) => {
            why.push(format!(
                "RAM in the memory file (RAM block {id}), mapped copy-on-write by restores; \
                 the stream holds the devices ({IGNORE_SHARED})"
            ));
            Memory::File
        }
        (Err(e), _) => {
            why.push(format!(
                "RAM in the stream, loaded by each restore: {} {e}",
                backend.option
            ));
            Memory::Stream
        }
        (Ok(()), None) => {
            why.push(
                "RAM in the stream, loaded by each restore: the machine type has no default \
                 RAM id to name a memory file's RAM block by"
                    .to_owned(),
            );
            Memory::Stream
        }
    };
    let mapped_ram = since("mapped-ram", QemuVersion::new(9, 0, 0));
    why.push(match gate.check(&mapped_ram) {
        Ok(()) => "mapped-ram not used: a restore from it still reads the pages into its own \
                   memory, which a memory file avoids"
            .to_owned(),
        Err(e) => format!("mapped-ram not used: it {e}"),
    });
    Method {
        memory,
        transport,
        capabilities: match memory {
            Memory::File => vec![IGNORE_SHARED.to_owned()],
            Memory::Stream => Vec::new(),
        },
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<QemuVersion> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_version_gates_choose() {
        let m = choose(v("7.2.22"), Some("mach-virt.ram"));
        assert_eq!((m.memory, m.transport), (Memory::File, Transport::Exec));
        assert_eq!(m.capabilities, [IGNORE_SHARED]);
        assert!(
            m.why[0].contains("needs QEMU >= 8.2, this is 7.2.22"),
            "{:?}",
            m.why
        );
        assert!(m.why[2].contains("needs QEMU >= 9.0"), "{:?}", m.why);
        let m = choose(v("8.2"), Some("pc.ram"));
        assert_eq!((m.memory, m.transport), (Memory::File, Transport::File));
        let m = choose(v("10.0.2"), None);
        assert_eq!((m.memory, m.transport), (Memory::Stream, Transport::File));
        assert!(m.capabilities.is_empty());
        assert!(m.why[1].contains("no default RAM id"), "{:?}", m.why);
        assert!(m.why[2].contains("still reads the pages"), "{:?}", m.why);
        let m = choose(v("4.2"), Some("pc.ram"));
        assert_eq!(m.memory, Memory::Stream);
        let m = choose(None, Some("pc.ram"));
        assert_eq!((m.memory, m.transport), (Memory::Stream, Transport::Exec));
    }
}
