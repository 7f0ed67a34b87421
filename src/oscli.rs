//! The command-line side of A/B OS updates: the `os status|retry` subcommand, the OS
//! part of `plan --json`, and the hook `pull` calls after applying the roles. The state
//! machine itself is src/osupdate.rs.

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::error::{exit, Result};
use crate::host::Host;
use crate::lock::RunLock;
use crate::osupdate::{Declared, OsState, Outcome, Step};
use crate::state::State;

#[derive(Subcommand, Debug)]
pub enum OsCommand {
    /// The OS update's phase, current artifact, failed artifacts and retry time.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Allow failed artifacts again and forget the download/install backoff.
    Retry,
}

pub fn run(command: &OsCommand, host: &Host, config_path: &Path, wait: u64) -> Result<i32> {
    let config = Config::load(config_path, host, false)?;
    let path = State::path(host, &config.state_dir);
    match command {
        OsCommand::Status { json } => {
            let os = State::load(&path).map(|s| s.os_update).unwrap_or_default();
            let text = if *json {
                serde_json::to_string_pretty(&os).expect("state serializes") + "\n"
            } else {
                crate::osupdate::status_text(&os, crate::cli::format_time)
            };
            print(&text);
        }
        OsCommand::Retry => {
            let _lock = RunLock::acquire(&host.path(&config.state_dir), Duration::from_secs(wait))?;
            let Some(mut state) = State::load(&path) else {
                print("no run recorded yet: nothing to retry\n");
                return Ok(exit::OK);
            };
            let cleared = std::mem::take(&mut state.os_update.failed);
            let backoff = state.os_update.backoff.take();
            state.save(&path)?;
            let mut said = String::new();
            if !cleared.is_empty() {
                said.push_str(&format!("allowed again: {}\n", cleared.join(", ")));
            }
            if let Some(b) = backoff {
                said.push_str(&format!("backoff of {} cleared\n", b.artifact));
            }
            if said.is_empty() {
                said.push_str("nothing to retry\n");
            }
            log::info!(OS_STATE = state.os_update.phase.as_str(); "OS update: retry: {}", said.trim_end().replace('\n', "; "));
            print(&said);
        }
    }
    Ok(exit::OK)
}

fn print(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// The `os` value of `plan --json`; null when nothing is declared or under way.
pub fn plan_json(d: &Declared, s: &OsState, line: Option<&(String, bool)>) -> serde_json::Value {
    let Some((text, pending)) = line else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "device_type": d.device_type,
        "current": s.current,
        "artifact": d.image.as_ref().map(|i| &i.artifact),
        "uri": d.image.as_ref().map(|i| crate::transport::redact(&i.uri)),
        "reboot": d.reboot.to_string(),
        "phase": s.phase.as_str(),
        "failed": s.failed,
        "pending": pending,
        "summary": text,
    })
}

/// Runs the OS step of a `pull`; true when a reboot was requested (exit 5).
pub fn pull_step(
    host: &Host,
    config: &Config,
    declared: &Declared,
    state: &mut State,
    state_path: &Path,
    converged: bool,
) -> Result<bool> {
    let step = Step {
        host,
        config: &config.os_update,
        state_dir: &config.state_dir,
        http_timeout: Duration::from_secs(config.http.timeout_secs),
    };
    let mut os = state.os_update.clone();
    let mut save = |os: &OsState| -> Result<()> {
        state.os_update = os.clone();
        state.save(state_path)
    };
    let outcome = step.run(declared, &mut os, converged, &mut save)?;
    Ok(outcome == Outcome::Rebooting)
}

/// The OS step of a `pull` that stopped before applying (the branch did not load, or
/// the agent could not upgrade itself). A new slot waiting for its verdict cannot
/// converge its roles, so it counts as unhealthy: past the health timeout recorded at
/// install it rolls back and reboots, and an interrupted rollback or a reboot still
/// pending goes on. Installing or installed count too once the device has rebooted since
/// (it may run the new slot, which must reach its verdict in time); in the same boot
/// they wait, since without a declaration they would be cancelled over a typo. Idle
/// waits for a branch that loads. True: reboot requested.
pub fn stopped_pull_step(
    host: &Host,
    config: &Config,
    state: &mut State,
    state_path: &Path,
) -> Result<bool> {
    use crate::osupdate::Phase;
    let os = &state.os_update;
    let rebooted = || -> Result<bool> {
        let boot = host.read(Path::new(crate::osupdate::BOOT_ID))?;
        Ok(os.boot_id.as_deref() != Some(String::from_utf8_lossy(&boot).trim()))
    };
    let act = match os.phase {
        Phase::Rebooting | Phase::Verifying | Phase::RollingBack => true,
        Phase::Installing | Phase::Installed => rebooted()?,
        Phase::Idle | Phase::Committed => false,
    };
    if !act {
        return Ok(false);
    }
    let mut health = crate::osdecl::Health::default();
    if let Some(t) = os.health_timeout {
        health.timeout_seconds = t;
    }
    let declared = Declared {
        device_type: None,
        image: None,
        reboot: crate::osdecl::Reboot::Now,
        health,
        retry: Default::default(),
    };
    pull_step(host, config, &declared, state, state_path, false)
}
