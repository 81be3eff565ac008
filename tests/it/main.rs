//! Integration tests, one binary. Modules:
//! - `common`: the one fixture: `TestEnv` (a test's own XDG directories, the real binary run in
//!   them, detached and foreground guests put down on drop), the test guests and what they
//!   print (`guest_proto`), `pid_gone` and friends, tripwire emulators, made-up hosts.
//! - `agent`: acting inside real guests through the guest agent: `run -- CMD` per arch, `exec`,
//!   `cp`, `wait --agent`, `ps --agent`; the harness API (a `Vm` whose runtime is gone, a guest
//!   serving several runtimes, `vm::run` and signal handlers, `examples/harness.rs`).
//! - `cpu`: CPU modes, features and phys-bits seen by real guests; baseline, cache, traits.
//! - `cpu_rules`: every CPU/maxphysaddr validation rule through the real binary: exit 2, a named
//!   error, no QEMU started.
//! - `cloud_init`: cloud-init seeds read back, attached to a real guest and read by it,
//!   exported to libvirt; bad seeds refused.
//! - `ssh`: `qemu-direct ssh` and `Vm::ssh_command` without an SSH server: the forward made,
//!   recorded and shown by `ps`, the banner wait timing out with the console tail or failing at
//!   once when the guest ends, the refusals.
//! - `disks`: overlays, persist, image locks, NIC per arch, hostfwd; `--disk`/`--net` syntax.
//! - `golden`: argv per arch x accelerator from made-up hosts, against `tests/golden/`.
//! - `cloud`: the Debian cloud image of `scripts/build-test-image.sh` (`QD_TEST_IMAGES`; skipped
//!   when unset) under UEFI with a NoCloud seed: SSH, the arch, the grown root, the agent,
//!   a second instance's fresh instance-id and host keys.
//! - `cli`: bad input through the real binary: exit 2, one clear line, nothing started or left.
//! - `boot`: real guests booted with real QEMU (TCG here), x86_64 and aarch64 and the rest.
//! - `libvirt`: exported XML against libvirt's schema and a real libvirtd (argv parity), import.
//! - `firmware`: UEFI boots through firmware from QEMU's descriptors, `firmware`, version gates.
//! - `json`: `--json` of every reporting command, run for real (a real aarch64 guest for the
//!   instance commands), against its JSON Schema in `docs/schemas/`.
//! - `labels`: scheduler labels (`traits --format nfd|labels`) against Kubernetes' label syntax,
//!   for the real host and made-up ones; the Node Feature Discovery file's atomic write.
//! - `kvm`: the KVM path on whatever /dev/kvm this host has (usable, PVM, or none).
//! - `nested`: the KVM path on a real /dev/kvm one level down: qemu-direct inside an x86_64
//!   guest that TCG runs with emulated SVM, booting guests there under KVM (`#[ignore]`d:
//!   `scripts/test --kvm-nested`).
//! - `signals`: launcher and QEMU live and die together.
//! - `lifecycle`: instances: detached guests over QMP, `ps`, `wait`, `stop`, clashing names,
//!   killed launchers and QEMUs, stale directories, and the library example.
//! - `reliability`: the bad-input corpus (`tests/corpus/bad-input/`), odd paths reaching QEMU
//!   literally on a real boot, and faults: a deleted QMP socket, a full runtime directory,
//!   racing launches, a guest that never prints what is awaited.
//! - `snapshot`: snapshots, restores (the heartbeat goes on), 8 clones at once, disks frozen
//!   and clones' writes kept apart, the restore and snapshot refusals, `migrate`, the harness
//!   example.
//! - `prefix`: a QEMU in a prefix of its own (`--qemu-prefix`: `-L` data folders, firmware
//!   descriptors, bad prefixes), extra QEMU options (`--qemu-arg`), and what differs between
//!   QEMU versions, asked of the QEMU under test (`QD_QEMU_PREFIX`).
//! - `share`: shared folders over 9p and virtiofs read and written by real guests through their
//!   agent, read-only shares, `--no-agent`, virtiofsd dying with its supervisor.
//! - `completions`: shell completion scripts (bash, zsh, fish) parsed by their shells, and
//!   bash and fish completing the names of running instances; manual pages rendered by `man`.
//! - `shape`: the layering of `src/` folders, and the length of files and functions.
//! - `docs`: every command shown in README.md and docs/ runs as written.
//! - `fuzz`: property tests (proptest) of the parsers, the libvirt XML import (generated and
//!   mutated domains), planning and the QMP client's framing;
//!   `QD_FUZZ_CASES` sets the cases per target.

mod agent;
mod boot;
mod cli;
mod cloud;
mod cloud_init;
mod common;
mod completions;
mod cpu;
mod cpu_rules;
mod disks;
mod docs;
mod firmware;
mod fuzz;
mod golden;
mod json;
mod kvm;
mod labels;
mod libvirt;
mod lifecycle;
mod nested;
mod prefix;
mod reliability;
mod shape;
mod share;
mod signals;
mod snapshot;
mod ssh;
