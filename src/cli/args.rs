//! The command line's arguments (clap derive), apart from everything else so that
//! examples/completions.rs can include this file to generate shell completions at
//! release time (the binary carries no completion generator). Depends on clap only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The agent's version: `FLEET_AGENT_VERSION` at build time (tests build versions N and
/// N+1 from one source tree), else the crate's version.
pub(crate) const VERSION: &str = match option_env!("FLEET_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

const EXIT_CODES: &str = "\
Exit codes:
  0   success; for plan: nothing to do
  1   error: invalid fleet repository, failed read or change of the machine; for
      status: the last run failed or was invalid
  2   plan: changes pending
  3   pull: the fleet repository could not be reached; the last fetched commit was used
  4   another run holds the lock and did not release it in time
  5   pull: a reboot was requested (an OS update or its rollback)
  6   pull: the branch's tip is not trusted (signature, force-push, keys, see
      docs/signing.md); nothing was applied
  64  wrong command line or agent.toml";

#[derive(Parser, Debug)]
#[command(
    name = "fleet-agent",
    version = VERSION,
    about = "Converge this device to its branch of the fleet git repository",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Manage the system under DIR instead of / (image builds, tests). Every managed
    /// path, the state directory and agent.toml's default location are taken under DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,
    /// The agent configuration [default: ROOT/etc/fleet-agent/agent.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// More detail: -v adds the sync steps and what was read, -vv every comparison
    /// (why each resource is unchanged).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub(crate) verbose: u8,
    /// Errors only (no warnings, no progress).
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// The timer's job: lock, fetch the branch, plan, apply, record the state.
    #[command(after_help = EXIT_CODES)]
    Pull {
        #[command(flatten)]
        lock: Lock,
    },
    /// Show what applying would change. Exit 0: nothing to do, 2: changes pending.
    /// With --all: every device with a report, against its last report (exit 1 when
    /// one fails to load or plan).
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        target: Target,
        /// Print the plan as JSON (every change with its details, the notes, the OS
        /// update) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        lock: Lock,
        /// Plan every device that has a report against its last report's facts (no
        /// device is reached) with the working tree --repo (default: .), and print a
        /// summary: what a merge would do fleet-wide.
        #[arg(long, requires = "reports", conflicts_with_all = ["device", "device_type"])]
        all: bool,
        #[command(flatten)]
        fleet: FleetArgs,
        /// With --all: every device's plan after the summary.
        #[arg(long, requires = "all")]
        detail: bool,
    },
    /// Fetch (or use --repo), plan and apply, printing the plan.
    #[command(after_help = EXIT_CODES)]
    Apply {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        lock: Lock,
    },
    /// Validate a fleet repository for every device of its inventory, for the fleet
    /// repository's own CI: every problem at once, with file:line:column.
    #[command(after_help = EXIT_CODES)]
    Validate {
        /// The fleet repository's working tree.
        dir: PathBuf,
        /// Print the outcome as JSON (devices checked; problems with file, line,
        /// column and message) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The last run: when, which branch and commit, outcome. Exit 1 when it failed or
    /// the fleet repository was invalid.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// Print the recorded state as JSON (times in ISO 8601) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A/B OS updates (Mender): `status`, or `retry` to allow failed artifacts again.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
    /// The brakes of a release (docs/rollouts.md): `retry` to take a commit that
    /// failed its health checks on this device again.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// The fleet from its stored run reports (docs/reporting.md): `status`.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
}

/// Where the stored reports are, and which devices.
#[derive(clap::Args, Debug)]
pub(crate) struct FleetArgs {
    /// The stored reports: systemd-journal-remote's directory of journal files, or a
    /// `journalctl -o json` export of them.
    #[arg(long, value_name = "PATH")]
    pub(crate) reports: Option<PathBuf>,
    /// Only the devices that follow this branch (their last report says so).
    #[arg(long, value_name = "NAME")]
    pub(crate) branch: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum FleetCommand {
    /// Per branch and commit: devices converged (on the branch's tip), failed (with the
    /// error), pending (seen, not yet on the tip), not seen for a while; and inventory
    /// devices never seen. Exit 1 when a device's last run failed.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// The stored reports: systemd-journal-remote's directory of journal files, or a
        /// `journalctl -o json` export of them.
        #[arg(long, value_name = "PATH")]
        reports: PathBuf,
        /// Only the devices that follow this branch (their last report says so).
        #[arg(long, value_name = "NAME")]
        branch: Option<String>,
        /// The fleet repository (a clone's working tree, or a bare repository): branch
        /// tips (origin/BRANCH in a clone) and the inventory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// A device whose last report is older than this is not seen: 90s, 30m, 12h, 7d.
        #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
        not_seen_for: u64,
        /// One line per device after the summary.
        #[arg(long)]
        devices: bool,
        /// Only this device (repeatable), one line each.
        #[arg(long, value_name = "ID")]
        device: Vec<String>,
        /// Print the status as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// An age: seconds, or a number with s, m, h or d.
fn parse_age(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not an age such as 90s, 30m, 12h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` is not an age such as 90s, 30m, 12h or 7d"
            ))
        }
    };
    Ok(n * unit)
}

/// Which fleet repository and device to plan for.
#[derive(clap::Args, Debug)]
pub(crate) struct Target {
    /// Use this working tree of the fleet repository instead of fetching. Without
    /// --root, the plan compares it with the machine this runs on.
    #[arg(long, value_name = "DIR")]
    pub(crate) repo: Option<PathBuf>,
    /// Plan for this device id instead of the configured one (its device type then
    /// comes from its host_vars, unless --device-type says).
    #[arg(long, value_name = "ID")]
    pub(crate) device: Option<String>,
    /// Plan for this device type instead of the configured one.
    #[arg(long, value_name = "TYPE")]
    pub(crate) device_type: Option<String>,
}

/// How long to wait for another run's lock.
#[derive(clap::Args, Debug)]
pub(crate) struct Lock {
    /// Seconds to wait for another run to release the lock before giving up (exit 4).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub(crate) wait: u64,
}

#[derive(Subcommand, Debug)]
pub(crate) enum OsCommand {
    /// The OS update's phase, current artifact, failed artifacts and retry time.
    Status {
        /// Print the OS update's recorded state as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Allow failed artifacts again and forget the download/install backoff.
    Retry {
        #[command(flatten)]
        lock: Lock,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ReleaseCommand {
    /// Forget that a commit failed its health checks here, so that the next pull takes
    /// it again (when it is still the branch's tip) and checks it again.
    Retry {
        /// The failed commit, or a prefix of at least 7 hex digits (every failed commit
        /// it starts); every failed commit when left out.
        commit: Option<String>,
        #[command(flatten)]
        lock: Lock,
    },
}
