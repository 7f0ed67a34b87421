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
