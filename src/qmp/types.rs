//! What QEMU sends: its greeting, events, and the replies decoded leniently.

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// A QEMU version, ordered so that `greeting.version >= Version::new(8, 0, 0)` reads naturally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl Version {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        Version {
            major,
            minor,
            micro,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What QEMU announced on connecting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: Version,
    /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`; may be empty.
    pub package: String,
    /// Capabilities offered, such as `oob`; none are enabled by this client.
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// Reads `{"QMP": {"version": {"qemu": {..}, "package": ..}, "capabilities": [..]}}`,
    /// tolerating missing parts inside `QMP`: only its presence marks a QMP peer.
    pub(super) fn parse(line: &[u8]) -> Option<Greeting> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let qmp = v.get("QMP")?;
        let qemu = &qmp["version"]["qemu"];
        let part = |k: &str| qemu[k].as_u64().unwrap_or(0) as u32;
        Some(Greeting {
            version: Version::new(part("major"), part("minor"), part("micro")),
            package: qmp["version"]["package"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            capabilities: qmp["capabilities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// An asynchronous event from QEMU, such as `STOP`, `RESUME` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name. Any name is accepted: QEMU adds events over time.
    pub name: String,
    /// The event's `data`, or `Null` for events without any (e.g. `STOP`).
    pub data: Value,
    /// When QEMU emitted it: seconds and microseconds since the Unix epoch.
    pub timestamp: Option<(i64, i64)>,
}

/// What an event subscriber receives: an event, or news about the stream itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An event from QEMU.
    Event(Event),
    /// This subscriber fell behind and missed this many messages; later ones follow.
    Lagged(u64),
    /// A line that was not a QMP message or could not be matched to a request. Nothing else
    /// failed because of it; it is reported so that it is not lost silently.
    Garbage {
        /// The start of the line.
        line: String,
        /// What was wrong with it.
        problem: String,
    },
}

/// A subscription to the connection's events, from the moment it was made.
///
/// Ends (returns `None`) once the connection is closed and everything before that was read, or
/// once every [`Qmp`](super::Qmp) handle is dropped.
#[derive(Debug)]
pub struct Events {
    pub(super) rx: broadcast::Receiver<Notice>,
}

impl Events {
    /// The next notice, or `None` at the end of the stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Notice> {
        match self.rx.recv().await {
            Ok(n) => Some(n),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Notice::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next QEMU event, skipping other notices. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Notice::Event(e) = self.next().await? {
                return Some(e);
            }
        }
    }
}

/// `query-status`, kept lenient: QEMU adds run states, and removed `singlestep` in 8.1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Whether the guest's CPUs are running.
    pub running: bool,
    /// The run state, e.g. `prelaunch`, `running`, `paused`, `shutdown`, `internal-error`.
    pub status: String,
    /// Whether single-stepping is on (QEMU before 8.1 only).
    pub singlestep: Option<bool>,
}

/// `query-kvm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Kvm {
    /// This VM uses KVM.
    pub enabled: bool,
    /// This QEMU binary was built with KVM support.
    pub present: bool,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CpuInfo {
    /// QEMU's index of the CPU.
    pub cpu_index: i64,
    /// The CPU's QOM path.
    pub qom_path: String,
    /// The host thread running this vCPU.
    pub thread_id: i64,
    /// The target architecture, e.g. `x86_64`; a string because QEMU adds targets.
    pub target: String,
    /// Topology properties (`socket-id`, `core-id`, ...), which differ by target.
    pub props: Value,
    /// Target-specific fields, e.g. s390x's `cpu-state`.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}
