//! qemu-direct: launch and control QEMU virtual machines directly, with no libvirt in between.
//!
//! Data flows one way:
//!
//! ```text
//! CLI flags / TOML / Nova properties -> SpecInput -> VmSpec -> (HostFacts) -> LaunchPlan -> argv -> running QEMU
//! ```
//!
//! The modules are layers, lowest first; each uses only those before it (`ARCHITECTURE.md` has
//! the code map, and a test keeps the order):
//!
//! - [`util`]: sizes, paths in JSON, QEMU option escaping, instance names.
//! - [`profile`]: per-architecture facts from `machine-profiles/*.toml`, architecture names,
//!   and the QEMU-version and host gates of profile options.
//! - [`qmp`]: talking to a running QEMU over its machine protocol.
//! - [`agent`]: talking to the QEMU guest agent inside a guest: commands, files.
//! - [`host`]: what this host offers (arch, KVM verdict, emulators and their probed
//!   capabilities, firmware descriptors), as a plain value.
//! - [`cpu`]: the guest CPU: modes, models, features, physical-address bits, baselines.
//! - [`spec`]: the user's description (flags, TOML, Nova properties, disks, network, host-wide
//!   config), validated ([`spec::SpecInput::validate`]).
//! - [`plan`]: the pure decision ([`plan::resolve`]) of what to run and why.
//! - [`argv`]: the QEMU command line for a plan.
//! - [`instance`]: the private directory of each running guest, found by name (`ps`).
//! - [`vm`]: running a plan ([`vm::Vm`]): console, QMP, failure detection, the stop ladder, and
//!   the report of how it ended.
//! - [`snapshot`]: snapshots of a running guest, restores and clones of them, local live
//!   migration.
//! - [`libvirt`]: a plan as libvirt domain XML, and a libvirt domain as a guest description.
//! - [`traits`]: os-traits names for this host, and whether a guest runs here.
//! - [`labels`]: this host as scheduler labels (Kubernetes, Node Feature Discovery, Nomad).
//!
//! ```no_run
//! use qemu_direct::{host::{HostFacts, ProbeOptions}, plan, profile::ProfileSet, spec::SpecInput, vm};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let profiles = ProfileSet::embedded()?;
//! let spec = SpecInput {
//!     arch: Some("aarch64".into()),
//!     kernel: Some("guests/aarch64/kernel".into()),
//!     initrd: Some("guests/aarch64/initrd.gz".into()),
//!     ..Default::default()
//! }
//! .validate(&profiles)?;
//! let host = HostFacts::probe(&profiles, &ProbeOptions::default());
//! let plan = plan::resolve(&spec, &profiles, &host)?;
//! let report = vm::run(&plan, &vm::RunOptions::default(), &mut tokio::io::sink()).await?;
//! assert_eq!(report.outcome, vm::Outcome::PoweredOff);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod argv;
pub mod cpu;
mod error;
pub mod host;
pub mod instance;
pub mod labels;
pub mod libvirt;
pub mod plan;
pub mod profile;
pub mod qmp;
pub mod snapshot;
pub mod spec;
pub mod traits;
pub mod util;
pub mod vm;

pub use error::{Error, ExitCode};
pub use host::HostFacts;
pub use plan::LaunchPlan;
pub use profile::ProfileSet;
pub use spec::{SpecInput, VmSpec};
pub use vm::Vm;
