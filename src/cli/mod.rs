//! The command line: arguments (clap) become a request for `run`, and what comes back
//! is rendered as text or JSON (render.rs: all rendering is there). No stage logic lives
//! here. Exit codes are documented in the README and in `--help`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG;
use crate::error::{exit, Result};
use crate::host::Host;
use crate::run::{self, Mode, PlanOutcome, Request};

mod render;

#[derive(Parser, Debug)]
#[command(
    name = "fleet-agent",
    version = crate::VERSION,
    about = "Converge this device to its branch of the fleet git repository"
)]
pub(crate) struct Cli {
    /// Manage the system under DIR instead of / (image builds, tests). Every managed
    /// path, the state directory and agent.toml's default location are taken under DIR.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The agent configuration [default: ROOT/etc/fleet-agent/agent.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds to wait for another run to release the lock before giving up.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,
    /// More output (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The timer's job: lock, fetch the branch, plan, apply, record the state.
    Pull,
    /// Show what applying would change. Exit 0: nothing to do, 2: changes pending.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch (or use --repo), plan and apply, printing the plan.
    Apply {
        #[command(flatten)]
        target: Target,
    },
    /// Validate a fleet repository for every device of its inventory (for the fleet
    /// repository's own CI). Prints every problem at once.
    Validate {
        /// The fleet repository's working tree.
        dir: PathBuf,
    },
    /// The last run: when, which commit, outcome.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A/B OS updates (Mender): `status`, or `retry` to allow failed artifacts again.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Use this working tree of the fleet repository instead of fetching.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Plan for this device id instead of the configured one.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Plan for this device type instead of the configured one.
    #[arg(long, value_name = "TYPE")]
    device_type: Option<String>,
}

#[derive(Subcommand, Debug)]
enum OsCommand {
    /// The OS update's phase, current artifact, failed artifacts and retry time.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Allow failed artifacts again and forget the download/install backoff.
    Retry,
}

/// Entry point: returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::USAGE,
            };
        }
    };
    crate::logging::init(if cli.quiet { 0 } else { 1 + cli.verbose });
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: &Cli) -> Result<i32> {
    let host = Host::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| host.path(Path::new(DEFAULT_CONFIG)));
    let wait = Duration::from_secs(cli.wait);
    let request = |target: Option<&Target>| Request {
        host: &host,
        config_path: &config_path,
        wait,
        repo: target.and_then(|t| t.repo.clone()),
        device: target.and_then(|t| t.device.clone()),
        device_type: target.and_then(|t| t.device_type.clone()),
    };
    match &cli.command {
        Command::Pull => run::converge(&request(None), Mode::Pull, &mut |_| {}),
        Command::Apply { target } => {
            run::converge(&request(Some(target)), Mode::Apply, &mut |planned| {
                render::print(&render::plan_text(planned))
            })
        }
        Command::Plan { target, json } => Ok(match run::plan(&request(Some(target)))? {
            PlanOutcome::Planned(planned) => {
                render::print(&if *json {
                    render::plan_json(&planned)
                } else {
                    render::plan_text(&planned) + &render::os_line(&planned)
                });
                if planned.pending() {
                    exit::CHANGES_PENDING
                } else {
                    exit::OK
                }
            }
            upgrade @ PlanOutcome::AgentUpgrade { .. } => {
                render::print(&render::agent_upgrade(&upgrade, *json));
                exit::CHANGES_PENDING
            }
        }),
        Command::Validate { dir } => {
            let (dir, checked) = run::validate(dir, &host, &config_path)?;
            render::print(&render::validated(&dir, &checked));
            Ok(exit::OK)
        }
        Command::Status { json } => {
            let (path, state) = run::status(&host, &config_path)?;
            render::print(&render::status(&path, state.as_ref(), *json));
            Ok(exit::OK)
        }
        Command::Os { command } => match command {
            OsCommand::Status { json } => {
                let (_, state) = run::status(&host, &config_path)?;
                let os = state.map(|s| s.os_update).unwrap_or_default();
                render::print(&render::os_status(&os, *json));
                Ok(exit::OK)
            }
            OsCommand::Retry => {
                let retried = run::os_retry(&host, &config_path, wait)?;
                render::print(&retried.summary());
                Ok(exit::OK)
            }
        },
    }
}
