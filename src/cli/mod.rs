//! The command line: arguments (clap) become a request for `run`, and what comes back
//! is rendered as text or JSON (render.rs: all rendering is there). No stage logic lives
//! here. Exit codes are documented in the README and in `--help`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::config::DEFAULT_CONFIG;
use crate::error::{exit, Error, Result};
use crate::host::Host;
use crate::run::{self, Mode, PlanOutcome, Request};
use crate::state::RunOutcome;

pub(crate) mod args;
mod render;

use args::{Cli, Command, FleetArgs, FleetCommand, OsCommand, ReleaseCommand, Target};

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
    let request = |target: Option<&Target>, wait: u64| Request {
        host: &host,
        config_path: &config_path,
        wait: Duration::from_secs(wait),
        repo: target.and_then(|t| t.repo.clone()),
        device: target.and_then(|t| t.device.clone()),
        device_type: target.and_then(|t| t.device_type.clone()),
    };
    match &cli.command {
        Command::Pull { lock } => run::converge(&request(None, lock.wait), Mode::Pull, &mut |_| {}),
        Command::Apply { target, lock } => run::converge(
            &request(Some(target), lock.wait),
            Mode::Apply,
            &mut |planned| render::print(&render::plan_text(planned)),
        ),
        Command::Plan {
            target,
            json,
            all: true,
            fleet,
            detail,
            ..
        } => plan_all(target, fleet, *json, *detail),
        Command::Plan {
            target, json, lock, ..
        } => plan(&request(Some(target), lock.wait), *json),
        Command::Validate { dir, json } => validate(&host, &config_path, dir, *json),
        Command::Status { json } => {
            let (path, state) = run::status(&host, &config_path)?;
            render::print(&render::status(&path, state.as_ref(), *json));
            Ok(match state.and_then(|s| s.outcome) {
                Some(RunOutcome::Failed | RunOutcome::Invalid | RunOutcome::Refused) => exit::ERROR,
                _ => exit::OK,
            })
        }
        Command::Fleet { command } => fleet(command),
        Command::Release {
            command: ReleaseCommand::Retry { commit, lock },
        } => {
            let wait = Duration::from_secs(lock.wait);
            let cleared = run::release_retry(&host, &config_path, commit.as_deref(), wait)?;
            render::print(&match cleared {
                None => "no run recorded yet: nothing to retry\n".into(),
                Some(c) if c.is_empty() => {
                    "no commit failed its health checks here: nothing to retry\n".into()
                }
                Some(c) => format!(
                    "allowed again: {} (the next pull takes it when it is the branch's tip)\n",
                    c.join(", ")
                ),
            });
            Ok(exit::OK)
        }
        Command::Os { command } => match command {
            OsCommand::Status { json } => {
                let (_, state) = run::status(&host, &config_path)?;
                let os = state.map(|s| s.os_update).unwrap_or_default();
                render::print(&render::os_status(&os, *json));
                Ok(exit::OK)
            }
            OsCommand::Retry { lock } => {
                let wait = Duration::from_secs(lock.wait);
                let retried = run::os_retry(&host, &config_path, wait)?;
                render::print(&retried.summary());
                Ok(exit::OK)
            }
        },
    }
}

/// `plan`: exit 0 when nothing is to do, 2 when changes are pending.
fn plan(request: &Request, json: bool) -> Result<i32> {
    Ok(match run::plan(request)? {
        PlanOutcome::Planned(planned) => {
            render::print(&if json {
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
            render::print(&render::agent_upgrade(&upgrade, json));
            exit::CHANGES_PENDING
        }
    })
}

/// `fleet status`: exit 1 when a device's last run failed.
fn fleet(command: &FleetCommand) -> Result<i32> {
    let FleetCommand::Status {
        reports,
        branch,
        repo,
        not_seen_for,
        devices,
        device,
        json,
    } = command;
    let src = crate::fleetwide::Sources {
        reports: reports.clone(),
        repo: repo.clone(),
        branch: branch.clone(),
    };
    let status = crate::fleetwide::status(&src, *not_seen_for)?;
    render::print(&if *json {
        render::fleet_status_json(&status, device)
    } else {
        render::fleet_status(&status, *devices, device)
    });
    Ok(if status.any_failed() {
        exit::ERROR
    } else {
        exit::OK
    })
}

/// `plan --all`: exit 1 when a device fails to load or plan, else 2 when a device
/// would change, else 0.
fn plan_all(target: &Target, fleet: &FleetArgs, json: bool, detail: bool) -> Result<i32> {
    let src = crate::fleetwide::Sources {
        // clap requires --reports with --all.
        reports: fleet.reports.clone().unwrap_or_default(),
        repo: target.repo.clone().unwrap_or_else(|| PathBuf::from(".")),
        branch: fleet.branch.clone(),
    };
    let planned = crate::fleetwide::plan_all(&src)?;
    render::print(&if json {
        render::fleet_plan_json(&planned)
    } else {
        render::fleet_plan(&planned, detail)
    });
    Ok(if planned.devices.iter().any(|d| d.fails()) {
        exit::ERROR
    } else if planned.devices.iter().any(|d| d.changes()) {
        exit::CHANGES_PENDING
    } else {
        exit::OK
    })
}

/// `validate`: text (problems as the error) or JSON (problems in it, exit 1).
fn validate(host: &Host, config_path: &Path, dir: &Path, json: bool) -> Result<i32> {
    let v = run::validate(dir, host, config_path)?;
    if json {
        render::print(&render::validation_json(&v));
    }
    match v.outcome {
        Ok(checked) if !json => render::print(&render::validated(&v.dir, &checked)),
        Ok(_) => {}
        Err(problems) if !json => return Err(Error::Invalid(problems)),
        Err(_) => return Ok(exit::ERROR),
    }
    Ok(exit::OK)
}
