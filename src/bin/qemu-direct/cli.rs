//! Command-line syntax (clap derive types only). Doc comments here are the `--help` text.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCompleter;
use qemu_direct::spec::AccelRequest;

use crate::shell::{arch_names, instance_names};

/// Launch and control QEMU virtual machines directly, without libvirt.
#[derive(Debug, Parser)]
#[command(name = "qemu-direct", version, about)]
pub struct Cli {
    /// Read machine profiles from this directory instead of the built-in ones.
    #[arg(long, global = true, value_name = "DIR")]
    pub profile_dir: Option<PathBuf>,
    /// Use host facts from this file (as written by `probe --json`) instead of probing this host.
    #[arg(long, global = true, value_name = "FILE")]
    pub host_facts: Option<PathBuf>,
    /// The KVM device to probe.
    #[arg(long, global = true, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm_device: PathBuf,
    /// Read host-wide defaults from this file only, instead of /etc/qemu-direct/config.toml and
    /// ~/.config/qemu-direct/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the QEMU installed under this prefix (PREFIX/usr/bin or PREFIX/bin) instead of the
    /// one on PATH: its emulators, qemu-img, data folders (passed as -L when the build is not
    /// relocatable) and firmware descriptors. Recorded --host-facts keep their own emulators.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "QEMU_DIRECT_QEMU_PREFIX",
        value_hint = clap::ValueHint::DirPath
    )]
    pub qemu_prefix: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the host: its arch, the KVM verdict and why, the QEMU emulators found.
    Probe {
        /// Print the facts as JSON (usable with --host-facts).
        #[arg(long)]
        json: bool,
    },
    /// List the machine profiles (guest architectures).
    Profiles {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resolve a guest description into a launch plan and show it, with the reasons.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Print only the QEMU command line, shell-quoted, as `run --dry-run` does.
        #[arg(long, conflicts_with = "json")]
        dry_run: bool,
    },
    /// Write the resolved plan in another tool's format.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// Boot a guest: stream its serial console to stdout (and a log file) until it powers off.
    /// With `-- CMD [ARGS...]`: boot it, run CMD in it through the guest agent, print CMD's
    /// output, stop the guest and exit with CMD's status.
    Run(RunArgs),
    /// CPU models, a baseline CPU for several hosts, and whether a CPU runs on a host.
    Cpu {
        #[command(subcommand)]
        command: CpuCommand,
    },
    /// This host's traits, in os-traits names (COMPUTE_ARCH_*, HW_ARCH_*, COMPUTE_ADDRESS_SPACE_*),
    /// or as scheduler labels (qemu-direct.io/...) for Kubernetes, Node Feature Discovery and
    /// Nomad.
    Traits(TraitsArgs),
    /// The firmware QEMU's descriptor files describe here: for which arch and machines, with
    /// what features, and which one `--firmware uefi` picks.
    Firmware {
        /// Only firmware for this guest arch.
        #[arg(long, add = ArgValueCompleter::new(arch_names))]
        arch: Option<String>,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List running instances: name, arch, accelerator, QEMU pid, run state, uptime.
    Ps {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
        /// Also ask each instance's guest agent whether it answers (up to half a second):
        /// answers, no answer, or none (no agent channel).
        #[arg(long)]
        agent: bool,
    },
    /// Run a command in an instance's guest through its guest agent: its stdout and stderr
    /// to ours, exit with its status (128+N if signal N ended it). The agent keeps a
    /// command's output until it exits, so the output comes then.
    Exec(ExecArgs),
    /// Log in to an instance started with --ssh/--ssh-key (and --net user) through the system
    /// ssh, as user qd with the key's private half, once its SSH server answers; with -- CMD,
    /// run CMD and exit with its status. Host keys go to the instance's own known_hosts.
    Ssh(crate::ssh::SshArgs),
    /// Copy one file between the host and an instance's guest, bytes and permission bits kept;
    /// one side is NAME:/path. Directories are refused (send a tar stream through `exec
    /// --stdin` instead).
    Cp(CpArgs),
    /// Control a running instance over QMP.
    Qmp(QmpArgs),
    /// Print an instance's serial console so far.
    Console {
        /// Instance name.
        #[arg(add = ArgValueCompleter::new(instance_names))]
        name: String,
        /// Keep printing until the instance ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Wait until an instance's console prints a line matching a pattern (exit 0; the line is
    /// printed), a failure pattern (exit 4), or the time runs out (exit 5); or, with --agent,
    /// until its guest agent answers.
    Wait(WaitArgs),
    /// Stop an instance: system_powerdown, then quit, then SIGKILL; returns once it is gone.
    Stop {
        /// Instance name.
        #[arg(add = ArgValueCompleter::new(instance_names))]
        name: String,
        /// How long the guest gets to power off before QEMU is made to quit.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        timeout: std::time::Duration,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save a running instance's state (devices, RAM, disks) into a folder, for `run
    /// --restore`; the guest resumes afterwards unless --stop.
    Snapshot {
        /// Instance name.
        #[arg(add = ArgValueCompleter::new(instance_names))]
        name: String,
        /// The snapshot's folder: new, or empty.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Stop the instance once saved (as `stop` does), instead of resuming the guest.
        #[arg(long)]
        stop: bool,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a running guest live into a new instance on this host; the old one then ends.
    Migrate {
        /// Instance name.
        #[arg(add = ArgValueCompleter::new(instance_names))]
        name: String,
        /// The new instance's name.
        #[arg(long, value_name = "NEW")]
        to: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the script that makes SHELL complete qemu-direct's commands, options and the
    /// names of running instances (source it, or install it where SHELL looks for
    /// completions; the Debian package installs the bash, zsh and fish ones).
    Completions {
        /// The shell.
        shell: CompletionShell,
    },
    /// Write the manual pages (qemu-direct.1 and one per command) into DIR.
    Man {
        /// An existing directory.
        #[arg(value_hint = clap::ValueHint::DirPath)]
        dir: PathBuf,
    },
    /// Internal: the detached supervisor `run --detach` starts.
    #[command(name = "__supervise", hide = true)]
    Supervise,
    /// Would this guest run here: natively, emulated, or not, and why (Nova's prefilter).
    /// Exits 0 when it runs, 1 when it does not.
    Check {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    /// bash 4.4 or newer (older: no sorting option).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
    /// elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

/// `export` formats.
#[derive(Debug, Subcommand)]
pub enum ExportFormat {
    /// libvirt domain XML on stdout (`virsh define` takes it). What the XML cannot say is
    /// listed on stderr.
    Libvirt {
        #[command(flatten)]
        spec: SpecArgs,
        /// Fail (exit 2, no XML) if any part of the plan cannot be expressed.
        #[arg(long)]
        strict: bool,
    },
}

/// `cpu` subcommands.
#[derive(Debug, Subcommand)]
pub enum CpuCommand {
    /// List a guest arch's CPU models: usable here under the accelerator or not, and why.
    Models {
        /// Guest architecture [default: this host's].
        #[arg(long, add = ArgValueCompleter::new(arch_names))]
        arch: Option<String>,
        /// Under which accelerator: auto (what a guest would get), kvm or tcg.
        #[arg(long, value_name = "auto|kvm|tcg", default_value = "auto")]
        accel: AccelRequest,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One CPU model plus disabled features that runs on every host described (files written
    /// by `probe --json` on each host).
    Baseline {
        /// Guest architecture.
        #[arg(long, add = ArgValueCompleter::new(arch_names), default_value = "x86_64")]
        arch: String,
        /// Host descriptions.
        #[arg(required = true, value_name = "HOST.json")]
        hosts: Vec<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Would the guest's CPU run on each host described? Exits 0 when it runs on all, 1 if not.
    Compare {
        #[command(flatten)]
        spec: Box<SpecArgs>,
        /// Host descriptions (files written by `probe --json`).
        #[arg(required = true, value_name = "HOST.json")]
        hosts: Vec<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `traits`.
#[derive(Debug, Args)]
pub struct TraitsArgs {
    /// text: the os-traits, with why; json: the same as JSON; nfd: the scheduler labels as a
    /// Node Feature Discovery feature file; labels: the scheduler labels as name=value lines
    /// (for `kubectl label`, Nomad client meta).
    #[arg(long, value_enum, default_value_t = TraitsFormat::Text)]
    pub format: TraitsFormat,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// With --format nfd: write the file atomically into DIR (as DIR/qemu-direct) instead of
    /// stdout, and print its path [default DIR: /etc/kubernetes/node-feature-discovery/features.d,
    /// where NFD's worker reads].
    #[arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        default_missing_value = qemu_direct::labels::NFD_DIR
    )]
    pub write: Option<PathBuf>,
    /// With --format nfd: Node Feature Discovery drops the labels this long after the file is
    /// written (`# +expiry-time=`), e.g. 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expiry: Option<std::time::Duration>,
}

/// The formats of `traits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraitsFormat {
    /// The os-traits, a line each, with why.
    Text,
    /// The os-traits as JSON.
    Json,
    /// A Node Feature Discovery local feature file.
    Nfd,
    /// name=value lines.
    Labels,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Print the QEMU command line, shell-quoted, and exit without starting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop the guest and exit 5 after this long (e.g. 90s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Stop the guest and exit 0 once the console prints this text.
    #[arg(long, value_name = "TEXT")]
    pub until: Option<String>,
    /// Write the console here [default: $XDG_STATE_HOME/qemu-direct/logs/NAME.log].
    #[arg(long, value_name = "FILE", conflicts_with = "no_console_log")]
    pub console_log: Option<PathBuf>,
    /// Write no console log.
    #[arg(long)]
    pub no_console_log: bool,
    /// Print the QEMU command line before starting it.
    #[arg(long, short)]
    pub verbose: bool,
    /// Run in the background; return once QEMU answers on QMP, printing the instance name and
    /// directory.
    #[arg(long, short)]
    pub detach: bool,
    /// With --detach: print the instance as JSON.
    #[arg(long, requires = "detach")]
    pub json: bool,
    /// On SIGINT/SIGTERM, how long the guest gets to power off before QEMU is made to quit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stop_timeout: Option<std::time::Duration>,
    /// Restore the snapshot in DIR (written by `snapshot`) instead of booting: the guest goes
    /// on where it was. Only --name, and --memory/--arch equal to the snapshot's, go with it.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    #[command(flatten)]
    pub guest_command: GuestCommandArgs,
    /// A command to run in the guest (through its guest agent) instead of showing the
    /// console; the guest is stopped after it, and its status is ours. --timeout then bounds
    /// the whole run.
    #[arg(last = true, value_name = "CMD", conflicts_with_all = ["detach", "until"])]
    pub command: Vec<String>,
}

/// How a command runs in the guest (`exec`, `run -- CMD`).
#[derive(Debug, Args, Default)]
pub struct GuestCommandArgs {
    /// Add NAME=VALUE to the command's environment (through env(1) in the guest); repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Pass our stdin to the command (read whole first; the agent takes it in one piece).
    #[arg(long)]
    pub stdin: bool,
}

/// Options of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Instance name.
    #[arg(add = ArgValueCompleter::new(instance_names))]
    pub name: String,
    /// Give up waiting for the guest agent after this long, and kill the command in the guest
    /// once it has run this long; either way exit 5 [default: wait 30s for the agent under
    /// KVM, 5 times that under TCG; no limit for the command].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub guest_command: GuestCommandArgs,
    /// The command and its arguments (looked up in the agent's PATH).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options of `cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// The file to copy: a host path, or NAME:/path in an instance's guest.
    pub src: String,
    /// Where to: a file or an existing folder, on the host or NAME:/path in the guest (the
    /// other side from SRC).
    pub dst: String,
    /// How long to wait for the guest agent to answer [default: 30s under KVM, 5 times that
    /// under TCG].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// The guest description. Flags override the same keys of --spec.
#[derive(Debug, Args, Default)]
pub struct SpecArgs {
    /// Read the guest description from a TOML file.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Read the guest description from a libvirt domain XML file.
    #[arg(long, value_name = "FILE", conflicts_with = "spec")]
    pub libvirt_xml: Option<PathBuf>,
    /// Instance name [default: the guest arch].
    #[arg(long)]
    pub name: Option<String>,
    /// Guest architecture: x86_64, aarch64, ppc64le, s390x, mipsel, riscv64, i686, or an alias.
    #[arg(long, add = ArgValueCompleter::new(arch_names))]
    pub arch: Option<String>,
    /// Accelerator: auto (KVM when usable, else TCG), kvm, or tcg.
    #[arg(long, value_name = "auto|kvm|tcg")]
    pub accel: Option<AccelRequest>,
    /// QEMU machine type, overriding the profile's.
    #[arg(long)]
    pub machine: Option<String>,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, short = 'm')]
    pub memory: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    pub smp: Option<u32>,
    /// Kernel image to boot directly.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line (console= and panic=-1 are added unless given).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// A disk, repeatable: an image (raw or qcow2, as its header says, or format=) that the
    /// guest sees whole but whose writes go to a throw-away overlay unless persist, or a
    /// directory shown read-only as a FAT disk. Write a comma in PATH as ',,'.
    /// size=SIZE (e.g. 20G) gives the overlay that virtual size, at least the image's.
    #[arg(long, value_name = "PATH[,format=raw|qcow2][,persist][,size=SIZE]")]
    pub disk: Vec<OsString>,
    /// Persist every disk (the same as ,persist on each --disk; kept for old scripts).
    #[arg(long)]
    pub disk_writable: bool,
    /// The network: none (no network card; the default), or user: a virtio network card on
    /// QEMU's user-mode network, with host ports forwarded by hostfwd=RULE (repeatable),
    /// RULE being [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp::2222-:22.
    #[arg(long, value_name = "none|user[,hostfwd=RULE]...")]
    pub net: Option<String>,
    /// A host folder shared with the guest, repeatable: the guest mounts it by TAG (default:
    /// the folder's name), over virtiofs where a virtiofsd can serve it, else 9p (fs= chooses);
    /// ro: the guest may only read. Write a comma in HOSTDIR as ',,'.
    #[arg(long, value_name = "HOSTDIR[:TAG][,ro][,fs=9p|virtiofs|auto]")]
    pub share: Vec<OsString>,
    /// cloud-init: a NoCloud seed (a FAT volume labelled cidata, made in the instance
    /// directory, attached read-only) with this user-data (#cloud-config YAML, or a #! script or
    /// another format cloud-init reads), and meta-data (an instance-id is added) and
    /// network-config if given. Write a comma in a path as ',,'.
    #[arg(long, value_name = "USER-DATA[,meta-data=FILE][,network-config=FILE]")]
    pub cloud_init: Option<OsString>,
    /// cloud-init: a seed whose user-data creates the user qd, who logs in with this OpenSSH
    /// public key and may sudo (`qemu-direct ssh NAME`). A private key is refused.
    #[arg(long, value_name = "FILE.pub")]
    pub ssh_key: Option<PathBuf>,
    /// --ssh-key with your own key: ~/.ssh/id_ed25519.pub, else ~/.ssh/id_rsa.pub.
    #[arg(long)]
    pub ssh: bool,
    /// No guest agent channel (by default the guest gets a virtio-serial port
    /// org.qemu.guest_agent.0 for qemu-ga, on agent.sock in the instance directory).
    #[arg(long)]
    pub no_agent: bool,
    /// Firmware: uefi or bios (chosen from QEMU's firmware descriptors; bios falls back to the
    /// machine's own SeaBIOS), or an image file for QEMU -bios (write ./uefi for a file of
    /// that name).
    #[arg(long, value_name = "uefi|bios|FILE")]
    pub firmware: Option<PathBuf>,
    /// With --firmware uefi: firmware with Secure Boot only (default: without).
    #[arg(long)]
    pub secure_boot: bool,
    /// TCG translation cache size in MiB [default: the profile's, 256].
    #[arg(long, value_name = "MIB")]
    pub tb_size: Option<u32>,
    /// Virtualization extensions for the guest, so it can run KVM itself (aarch64 under TCG).
    #[arg(long)]
    pub nested_virt: bool,
    /// QEMU binary to use instead of the profile's from PATH.
    #[arg(long, value_name = "FILE")]
    pub emulator: Option<PathBuf>,
    /// CPU mode: host-passthrough (KVM only), maximum, host-model, custom (with --cpu-model),
    /// none (the machine's default).
    #[arg(long, value_name = "MODE")]
    pub cpu_mode: Option<String>,
    /// CPU model(s), most preferred first (implies --cpu-mode custom); repeat or comma-separate.
    #[arg(long, value_name = "MODEL", value_delimiter = ',')]
    pub cpu_model: Vec<String>,
    /// Extra CPU features: +f or f requires, -f disables; comma-separated, e.g. --cpu-flags=-pse36,+x2apic.
    #[arg(
        long,
        value_name = "FLAGS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub cpu_flags: Vec<String>,
    /// enforce: refuse CPU features the accelerator cannot provide (default); none: let QEMU drop them.
    #[arg(long, value_name = "enforce|none")]
    pub cpu_check: Option<String>,
    /// Guest physical-address bits: emulate:N, passthrough or passthrough:LIMIT (x86_64).
    #[arg(long, value_name = "MODE[:BITS]")]
    pub maxphysaddr: Option<String>,
    /// An extra QEMU option, repeatable, appended after qemu-direct's own: one argument each
    /// (`--qemu-arg=-device --qemu-arg=virtio-rng-pci`). Options qemu-direct manages (-qmp,
    /// -monitor, -serial, -S, -daemonize, -incoming, -m, -cpu, ...) are refused with the reason.
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// A Nova image property or flavor extra spec, KEY=VALUE (hw_emulation_architecture,
    /// hw_architecture, hw_machine_type, hw:maxphysaddr_mode, hw:maxphysaddr_bits).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

/// Options of `qmp`.
#[derive(Debug, Args)]
pub struct QmpArgs {
    /// Instance name.
    #[arg(add = ArgValueCompleter::new(instance_names))]
    pub name: String,
    #[command(subcommand)]
    pub action: QmpAction,
}

/// What to do over QMP.
#[derive(Debug, Subcommand)]
pub enum QmpAction {
    /// Print the run state (running, paused, internal-error, ...).
    Status,
    /// Pause the guest's CPUs.
    Stop,
    /// Resume the guest's CPUs.
    Cont,
    /// Reset the machine.
    Reset,
    /// Ask the guest to power off (ACPI power button); it may ignore this.
    Powerdown,
    /// Make QEMU exit at once.
    Quit,
    /// Print the QMP events so far as JSON lines.
    Events {
        /// Keep printing until the instance ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run any QMP command and print its JSON reply.
    Execute {
        /// The command, e.g. query-cpus-fast.
        command: String,
        /// Its arguments, a JSON object.
        arguments: Option<String>,
    },
}

/// Options of `wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Instance name.
    #[arg(add = ArgValueCompleter::new(instance_names))]
    pub name: String,
    /// The pattern (a regular expression) to wait for.
    #[arg(
        long = "for",
        value_name = "REGEX",
        required_unless_present = "agent",
        conflicts_with = "agent"
    )]
    pub pattern: Option<String>,
    /// Wait until the guest agent answers instead (exit 0; prints its version).
    #[arg(long)]
    pub agent: bool,
    /// Fail (exit 4) if a line matches this first; repeatable. A kernel panic always fails.
    #[arg(long, value_name = "REGEX", conflicts_with = "agent")]
    pub fail_on: Vec<String>,
    /// Give up (exit 5) after this long [default: 60s under KVM, 5 times that under TCG].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 90s, 2m or 500ms"))
}
