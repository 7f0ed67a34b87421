//! The command line: parse arguments, resolve the configuration, and wire the stages
//! (sync → load → plan → apply → state) for each subcommand. No stage logic lives here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use log::{info, warn};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::error::{exit, Error, Result};
use crate::host::Host;
use crate::load::{Device, Fleet};
use crate::lock::RunLock;
use crate::source::Source;
use crate::state::{self, Outcome, State};

#[derive(Parser, Debug)]
#[command(
    name = "fleet-agent",
    version = crate::selfupdate::VERSION,
    about = "Converge this device to its branch of the fleet git repository"
)]
pub struct Cli {
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
        command: crate::oscli::OsCommand,
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

/// Prints to stdout; a reader that went away (`| head`) is not an error worth a panic.
/// (SIGPIPE stays ignored, as Rust sets it: the ssh transport writes to a child's pipe.)
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

macro_rules! outp {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
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
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

fn run(cli: &Cli) -> Result<i32> {
    let host = Host::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| host.path(Path::new(DEFAULT_CONFIG)));
    match &cli.command {
        Command::Pull => converge(cli, &host, &config_path, &Target::none(), Mode::Pull),
        Command::Apply { target } => converge(cli, &host, &config_path, target, Mode::Apply),
        Command::Plan { target, json } => {
            converge(cli, &host, &config_path, target, Mode::Plan { json: *json })
        }
        Command::Validate { dir } => validate(dir, &host, &config_path),
        Command::Status { json } => status(&host, &config_path, *json),
        Command::Os { command } => crate::oscli::run(command, &host, &config_path, cli.wait),
    }
}

impl Target {
    fn none() -> Target {
        Target {
            repo: None,
            device: None,
            device_type: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pull,
    Apply,
    Plan { json: bool },
}

fn converge(
    cli: &Cli,
    host: &Host,
    config_path: &Path,
    target: &Target,
    mode: Mode,
) -> Result<i32> {
    let mut config = Config::load(config_path, host, target.repo.is_none())?;
    if let Some(d) = &target.device {
        config.device_id = d.clone();
    }
    if let Some(t) = &target.device_type {
        config.device_type = Some(t.clone());
    }
    let state_dir = host.path(&config.state_dir);
    let state_path = State::path(host, &config.state_dir);
    let reads_only = matches!(mode, Mode::Plan { .. }) && target.repo.is_some();
    let _lock = if reads_only {
        None
    } else {
        Some(RunLock::acquire(&state_dir, Duration::from_secs(cli.wait))?)
    };

    // Sync (or the maintainer's working tree).
    let synced;
    let (source, commit, offline, origin) = match &target.repo {
        Some(dir) => {
            let dir = dir
                .canonicalize()
                .map_err(|e| Error::io("cannot open the fleet repository", dir, e))?;
            let label = dir.display().to_string();
            (Source::Dir(dir), None, None, label)
        }
        None => {
            synced = sync_followed(host, &mut config)?;
            let source = Source::commit(&synced.repo, synced.commit)?;
            let origin = format!(
                "{}#{}",
                crate::transport::redact(&config.repo),
                config.branch
            );
            (
                source,
                Some(synced.commit.to_string()),
                synced.offline.clone(),
                origin,
            )
        }
    };
    let commit_label = commit
        .as_deref()
        .map(|c| c[..12].to_string())
        .unwrap_or_else(|| "working tree".into());

    // Load and validate.
    let builtin_dir = config.roles_dir.clone();
    let builtin = builtin_dir.is_dir().then(|| Source::Dir(builtin_dir));
    let mut device = Device {
        id: config.device_id.clone(),
        device_type: config.device_type.clone(),
    };
    let previous = State::load(&state_path);
    // A run that stops before applying records why (plan records nothing).
    let stopped = |outcome: Outcome, e: Error| -> Result<i32> {
        if !matches!(mode, Mode::Plan { .. }) {
            let mut recorded = record(&state_path, previous.clone(), |s| {
                s.last_commit = commit.clone();
                s.outcome = Some(outcome);
                s.message = Some(e.to_string());
                s.offline = offline.is_some();
                s.changes = 0;
            })?;
            // An OS update being verified cannot converge: its health timeout still runs.
            if mode == Mode::Pull {
                match crate::oscli::stopped_pull_step(host, &config, &mut recorded, &state_path) {
                    Ok(false) => {}
                    Ok(true) => {
                        log::error!("{e}");
                        return Ok(exit::REBOOTING);
                    }
                    // Both errors are shown: the load error first, then the OS step's.
                    Err(os) => {
                        log::error!("{e}");
                        return Err(os);
                    }
                }
            }
        }
        Err(e)
    };
    // The branch may need a newer agent: read before the full load, which an old agent
    // may not understand. `pull` on the device upgrades and re-executes (or fails).
    if let Some(req) = crate::selfupdate::required(&source)?.filter(|r| !r.is_met()) {
        if let Mode::Plan { json } = mode {
            return Ok(self_update_report(&req, &device, &origin, &commit, json));
        }
        if mode == Mode::Pull && crate::selfupdate::may_upgrade(host) {
            let pin = crate::selfupdate::pinned_version(&source)?;
            let e = crate::selfupdate::upgrade_and_reexec(host, &req, pin.as_deref());
            return stopped(Outcome::Failed, e);
        }
        // Elsewhere the full load rejects the branch and says why.
    }
    let desired = Fleet::load(&source, builtin.as_ref()).and_then(|fleet| {
        if device.device_type.is_none() {
            device.device_type = fleet.host_facts(&device.id)?.device_type;
        }
        let desired = fleet.desired_state(&device)?;
        Ok((desired, fleet.settings.clone(), fleet.os.clone()))
    });
    let (desired, settings, os_decl) = match desired {
        Ok(d) => d,
        Err(e) => return stopped(Outcome::Invalid, e),
    };

    // Plan against this root filesystem's state only.
    let rootfs = state::rootfs_id(host)?;
    let previous_here = previous
        .clone()
        .filter(|s| s.rootfs.is_some() && s.rootfs == rootfs);
    if previous.is_some() && previous_here.is_none() {
        info!("the root filesystem is not the one of the last run: converging everything");
    }
    let plan = match crate::plan::plan(
        host,
        &desired,
        previous_here.as_ref(),
        crate::plan::Options {
            prune: settings.prune,
            apt_lists_max_age: Duration::from_secs(settings.apt_lists_max_age_minutes * 60),
        },
        commit.clone(),
    ) {
        Ok(p) => p,
        Err(e) => return stopped(Outcome::Failed, e),
    };

    let os_declared =
        crate::osupdate::Declared::new(os_decl.as_ref(), desired.device_type.as_deref());
    let os_state = previous
        .as_ref()
        .map(|p| p.os_update.clone())
        .unwrap_or_default();
    if let Mode::Plan { json } = mode {
        let os_line = crate::osupdate::plan_line(&os_declared, &os_state);
        let os_pending = os_line.as_ref().is_some_and(|(_, pending)| *pending);
        if json {
            let value = serde_json::json!({
                "device": desired.device_id,
                "device_type": desired.device_type,
                "groups": desired.groups,
                "roles": desired.roles,
                "source": origin,
                "commit": commit,
                "changes": plan.changes,
                "notes": plan.notes,
                "os": crate::oscli::plan_json(&os_declared, &os_state, os_line.as_ref()),
            });
            out!(
                "{}",
                serde_json::to_string_pretty(&value).expect("plan serializes")
            );
        } else {
            outp!("{}", header(&desired, &origin, &commit_label));
            outp!("{}", plan.render());
            if let Some((line, _)) = &os_line {
                out!("{line}");
            }
        }
        return Ok(if plan.is_empty() && !os_pending {
            exit::OK
        } else {
            exit::CHANGES_PENDING
        });
    }

    // Apply.
    if mode == Mode::Apply {
        outp!("{}", header(&desired, &origin, &commit_label));
        outp!("{}", plan.render());
    }
    let (done, result) = if plan.is_empty() {
        (0, Ok(()))
    } else {
        let applied = crate::apply::apply(host, &plan, &commit_label);
        crate::selfupdate::note_installed(host);
        applied
    };
    let rootfs = state::ensure_rootfs_id(host)?;
    let failed = result.as_ref().err().map(|e| e.to_string());
    let mut recorded = record(&state_path, previous_here, |s| {
        s.os_update = os_state.clone();
        s.rootfs = Some(rootfs.clone());
        s.last_commit = commit.clone();
        s.source = Some(origin.clone());
        s.changes = done;
        s.offline = offline.is_some();
        match &failed {
            None => {
                s.applied_commit = commit.clone();
                s.outcome = Some(if plan.is_empty() {
                    Outcome::Unchanged
                } else {
                    Outcome::Applied
                });
                s.message = offline.clone();
                s.resources = plan.resources.clone();
            }
            Some(m) => {
                s.outcome = Some(Outcome::Failed);
                s.message = Some(m.clone());
                // Keep what is known: the resources applied before the failure count.
                for c in plan.changes.iter().take(done) {
                    let Some(id) = &c.resource_id else { continue };
                    match plan.resources.get(id) {
                        Some(r) => {
                            s.resources.insert(id.clone(), r.clone());
                        }
                        None => {
                            s.resources.remove(id);
                        }
                    }
                }
            }
        }
    })?;
    // The OS update step: after the roles, so that the new slot is converged first.
    if mode == Mode::Pull {
        let converged = result.is_ok() && offline.is_none();
        let rebooting = match crate::oscli::pull_step(
            host,
            &config,
            &os_declared,
            &mut recorded,
            &state_path,
            converged,
        ) {
            Ok(r) => r,
            // The apply error is the one to return; this one is logged.
            Err(e) if result.is_err() => {
                log::error!("{e}");
                false
            }
            Err(e) => return Err(e),
        };
        if rebooting {
            if let Err(e) = &result {
                log::error!("{e}");
            }
            return Ok(exit::REBOOTING);
        }
    }
    result?;
    if plan.is_empty() {
        info!("{}: no changes at {commit_label}", desired.device_id);
    } else {
        let (c, m, r) = plan.counts();
        info!(
            "{}: applied {commit_label}: {c} created, {m} changed, {r} removed",
            desired.device_id
        );
    }
    if let Some(why) = offline {
        warn!("the fleet repository could not be reached ({why}); converged to the last fetched commit");
        return Ok(exit::UNREACHABLE);
    }
    Ok(exit::OK)
}

/// Syncs the configured branch, then the branch the device's host_vars there tell it
/// to follow instead, if any (decided on the configured branch only: no flip-flop).
fn sync_followed(host: &Host, config: &mut Config) -> Result<crate::sync::Synced> {
    let first = crate::sync::sync(host, config)?;
    let follow = {
        let source = Source::commit(&first.repo, first.commit)?;
        Fleet::load(&source, None)
            .ok()
            .and_then(|f| f.host_facts(&config.device_id).ok())
            .and_then(|f| f.branch)
    };
    match follow {
        Some(branch) if branch != config.branch => {
            info!(
                "host_vars/{}.yml: following branch {branch} instead of {}",
                config.device_id, config.branch
            );
            config.branch = branch;
            drop(first);
            crate::sync::sync(host, config)
        }
        _ => Ok(first),
    }
}

fn header(desired: &crate::resource::DesiredState, origin: &str, commit: &str) -> String {
    format!(
        "Device {} (type {}; groups: {}; roles: {})\nFleet repository {origin} at {commit}\n",
        desired.device_id,
        desired.device_type.as_deref().unwrap_or("unknown"),
        if desired.groups.is_empty() {
            "none".into()
        } else {
            desired.groups.join(", ")
        },
        if desired.roles.is_empty() {
            "none".into()
        } else {
            desired.roles.join(", ")
        },
    )
}

/// `plan` for a branch that needs a newer agent: say so, install nothing. Exit 2: the
/// device has a change pending (the agent's upgrade).
fn self_update_report(
    req: &crate::selfupdate::Requirement,
    device: &Device,
    origin: &str,
    commit: &Option<String>,
    json: bool,
) -> i32 {
    if json {
        let value = serde_json::json!({
            "device": device.id,
            "source": origin,
            "commit": commit,
            "agent_upgrade": {
                "running": crate::selfupdate::VERSION,
                "min_agent_version": req.min.to_string(),
                "at": req.pos.to_string(),
            },
            "changes": [],
        });
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("plan serializes")
        );
    } else {
        out!(
            "Device {}\nFleet repository {origin}\n{}",
            device.id,
            req.report()
        );
    }
    exit::CHANGES_PENDING
}

/// Updates the state file from the previous state (or a fresh one).
fn record(path: &Path, previous: Option<State>, update: impl FnOnce(&mut State)) -> Result<State> {
    let mut s = previous.unwrap_or_default();
    update(&mut s);
    s.time = Some(state::now());
    s.save(path)?;
    Ok(s)
}

fn validate(dir: &Path, host: &Host, config_path: &Path) -> Result<i32> {
    let config = Config::load(config_path, host, false)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::io("cannot open the fleet repository", dir, e))?;
    let source = Source::Dir(dir.clone());
    let builtin = config
        .roles_dir
        .is_dir()
        .then(|| Source::Dir(config.roles_dir.clone()));
    let fleet = Fleet::load(&source, builtin.as_ref())?;
    let checked = fleet.validate_all()?;
    out!(
        "{}: valid ({} device{} checked)",
        dir.display(),
        checked.len(),
        if checked.len() == 1 { "" } else { "s" }
    );
    for d in checked {
        out!("  {d}");
    }
    Ok(exit::OK)
}

fn status(host: &Host, config_path: &Path, json: bool) -> Result<i32> {
    let config = Config::load(config_path, host, false)?;
    let path = State::path(host, &config.state_dir);
    let Some(s) = State::load(&path) else {
        if json {
            out!("null");
        } else {
            out!("no run recorded yet ({})", path.display());
        }
        return Ok(exit::OK);
    };
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&s).expect("state serializes")
        );
        return Ok(exit::OK);
    }
    let outcome = match s.outcome {
        Some(Outcome::Applied) => "applied",
        Some(Outcome::Unchanged) => "unchanged (device already matched)",
        Some(Outcome::Invalid) => "invalid fleet repository: nothing applied",
        Some(Outcome::Failed) => "failed",
        None => "unknown",
    };
    out!(
        "last run:       {}",
        s.time.map(format_time).unwrap_or_else(|| "never".into())
    );
    out!(
        "outcome:        {outcome}{}",
        if s.offline {
            " (server unreachable: used the last fetched commit)"
        } else {
            ""
        }
    );
    out!(
        "applied commit: {}",
        s.applied_commit.as_deref().unwrap_or("none")
    );
    if s.last_commit != s.applied_commit {
        out!(
            "last commit:    {}",
            s.last_commit.as_deref().unwrap_or("none")
        );
    }
    out!(
        "source:         {}",
        s.source.as_deref().unwrap_or("unknown")
    );
    out!("changes:        {}", s.changes);
    out!("resources:      {}", s.resources.len());
    if let Some(m) = &s.message {
        out!("message:        {m}");
    }
    Ok(exit::OK)
}

/// Seconds since the epoch as an ISO 8601 UTC time.
pub(crate) fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_time(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
