//! A/B OS updates through the Mender client (`mender-update`, or 3.x `mender`): a state
//! machine persisted in state.json (`os_update`), advanced once per `pull` after the
//! roles are applied. `decide` is pure (declaration + persisted state + facts of this
//! boot → one `Action`); `step` gathers the facts, executes actions through the client
//! and the `Host` seam, and saves every transition before acting on it, so that a run
//! killed anywhere resumes on the next one. docs/os-updates.md has the diagram.
//!
//! Mender facts relied on (mendersoftware/mender, 4.x C++ client):
//! - exit codes: 2 "no update in progress" for commit/rollback, 4 "reboot required" for
//!   `install --reboot-exit-code` (src/mender-update/cli/cli.cpp:
//!   `NoUpdateInProgressExitStatus = 2`, `RebootExitStatus = 4`; without the flag a
//!   reboot-required install exits 0: src/mender-update/cli/actions.cpp InstallAction);
//!   3.x has had `--reboot-exit-code` since mender 2.5.0 (CHANGELOG.md).
//! - `show-artifact` prints the `artifact_name` of the stored provides, which are only
//!   replaced at commit, so during a pending update it still names the old artifact;
//!   "unknown" when there is none (src/mender-update/cli/actions.cpp ShowArtifactAction).
//! - Update Modules that cannot roll back commit during `install` ("Committing
//!   immediately", actions.cpp ResultHandler): a later `commit` then says 2.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::host::{sync_dir, Host};
use crate::osdecl::{Health, Image, OsDecl, Reboot, Retry};

/// Where the kernel says which boot this is (a new random id every boot).
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// A random marker written on the running slot just before each install (a fresh value
/// every time): an image built earlier cannot carry it, so finding it after a reboot
/// means the old slot. Separate from the agent's rootfs-id (state.rs), which must stay
/// put for the next run on the same slot to plan against its previous state.
pub const SLOT_MARKER: &str = "/etc/fleet-agent/os-update-slot";
/// A downloaded artifact, in the state directory (on /data on a Mender device).
pub const IMAGE_FILE: &str = "os-image";

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------- configuration

/// `[os_update]` in agent.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsUpdateConfig {
    /// "mender-update", "mender" or an absolute path; None: mender-update if it is on
    /// PATH, else mender.
    pub client: Option<String>,
    /// What asks the system to reboot.
    pub reboot_command: Vec<String>,
}

impl Default for OsUpdateConfig {
    fn default() -> Self {
        OsUpdateConfig {
            client: None,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
        }
    }
}

// ---------------------------------------------------------------- persisted state

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Idle,
    /// Downloading and `install` running (an update may be half written).
    Installing,
    /// Installed to the passive slot; waiting to reboot (window, operator).
    Installed,
    /// The reboot was asked for.
    Rebooting,
    /// Running the new slot, uncommitted: health checks until commit or timeout.
    Verifying,
    /// `commit` succeeded.
    Committed,
    /// Health failed: `rollback` and a reboot to the old slot.
    RollingBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Installing => "installing",
            Phase::Installed => "installed",
            Phase::Rebooting => "rebooting",
            Phase::Verifying => "verifying",
            Phase::Committed => "committed",
            Phase::RollingBack => "rolling-back",
        }
    }
}

/// Consecutive download/install failures of one artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backoff {
    pub artifact: String,
    pub attempts: u32,
    /// No new attempt before this time (seconds since the epoch).
    pub after: u64,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct OsState {
    pub phase: Phase,
    /// The artifact the client reported as committed (last seen).
    pub current: Option<String>,
    /// The artifact being installed / verified / rolled back.
    pub target: Option<String>,
    /// Artifacts that failed health or were fallen back from: never retried until
    /// `fleet-agent os retry`.
    pub failed: Vec<String>,
    pub backoff: Option<Backoff>,
    /// The boot during which the last transition happened (kernel boot id).
    pub boot_id: Option<String>,
    /// The marker (SLOT_MARKER) written on the slot the update started from, just
    /// before installing.
    pub old_rootfs: Option<String>,
    /// When the first run on the new slot began verifying.
    pub verify_since: Option<u64>,
    /// The declared health timeout when the install began: the bound still applies
    /// when a later run cannot load the branch.
    pub health_timeout: Option<u64>,
    /// What the last transition said (shown by `os status`).
    pub message: Option<String>,
    /// When the last transition happened.
    pub changed: Option<u64>,
}

// ---------------------------------------------------------------- decision

/// What the branch declares for this device, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub device_type: Option<String>,
    pub image: Option<Image>,
    pub reboot: Reboot,
    pub health: Health,
    pub retry: Retry,
}

impl Declared {
    pub fn new(decl: Option<&OsDecl>, device_type: Option<&str>) -> Declared {
        Declared {
            device_type: device_type.map(str::to_string),
            image: decl.and_then(|d| d.image_for(device_type)).cloned(),
            reboot: decl.map(|d| d.reboot).unwrap_or(Reboot::Now),
            health: decl.map(|d| d.health.clone()).unwrap_or_default(),
            retry: decl.map(|d| d.retry).unwrap_or_default(),
        }
    }
}

/// What this run observed, read before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Seconds since the epoch.
    pub now: u64,
    /// Device-local minutes after midnight.
    pub local_minutes: u16,
    pub boot_id: String,
    /// This root filesystem's OS-update marker (SLOT_MARKER; None on a new slot).
    pub rootfs: Option<String>,
    /// `show-artifact`.
    pub artifact: Option<String>,
    /// Why `show-artifact` failed (then `artifact` is None); a health problem while
    /// verifying.
    pub artifact_error: Option<String>,
    /// `fw_printenv upgrade_available`; None without fw_printenv.
    pub upgrade_available: Option<bool>,
    /// This run reached the fleet repository and converged every role without error.
    pub converged: bool,
}

/// Why nothing is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// No `os:` image for this device type.
    NotDeclared,
    /// The declared artifact is running.
    Current,
    /// The declared artifact failed before.
    Failed(String),
    /// Backing off after a failed download or install.
    Backoff { until: u64 },
    /// The bootloader has an update pending that this agent did not start.
    Foreign,
    /// This run did not converge; no update starts on a device that is not healthy.
    NotConverged,
    /// Installed; the reboot window is closed.
    Window(Reboot),
    /// Installed; `reboot: never` leaves the reboot to an operator.
    Operator,
    /// Verifying; the roles did not converge in this run, checks again next run.
    Unhealthy {
        deadline: u64,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing(Wait),
    /// idle → installing → installed (or idle with a backoff).
    Install(Image),
    /// An install that was interrupted or is no longer wanted: `rollback`, → idle.
    Cancel(String),
    /// installed → rebooting; the run ends with exit 5.
    Reboot,
    /// New boot on another root filesystem: → verifying.
    Arrived,
    /// New boot on the old root filesystem: the bootloader fell back. Mark failed,
    /// `rollback` (2 is fine), → idle.
    FellBack,
    /// Run the health checks (deadline: seconds since the epoch).
    Verify {
        deadline: u64,
    },
    /// Health passed: `commit`, → committed.
    Commit,
    /// → rolling-back: `rollback`, reboot to the old slot; the run ends with exit 5.
    RollBack(String),
    /// Back on the old slot after a rollback: → idle.
    RolledBack,
    /// committed → idle with current = target.
    Finish,
}

/// The next action, from the declaration, the persisted state and this run's facts.
pub fn decide(d: &Declared, s: &OsState, f: &Facts) -> Action {
    let rebooted = s.boot_id.as_deref() != Some(f.boot_id.as_str());
    let on_old_slot = f.rootfs.is_some() && f.rootfs == s.old_rootfs;
    match s.phase {
        Phase::Idle => {
            let Some(img) = &d.image else {
                return Action::Nothing(Wait::NotDeclared);
            };
            if f.artifact.as_deref() == Some(img.artifact.as_str()) {
                return Action::Nothing(Wait::Current);
            }
            if s.failed.contains(&img.artifact) {
                return Action::Nothing(Wait::Failed(img.artifact.clone()));
            }
            if f.upgrade_available == Some(true) {
                return Action::Nothing(Wait::Foreign);
            }
            if let Some(b) = &s.backoff {
                if b.artifact == img.artifact && f.now < b.after {
                    return Action::Nothing(Wait::Backoff { until: b.after });
                }
            }
            if !f.converged {
                return Action::Nothing(Wait::NotConverged);
            }
            Action::Install(img.clone())
        }
        // Cut after the client switched the boot slot and the device rebooted into it:
        // verify it (a commit the client refuses rolls back).
        Phase::Installing if rebooted && !on_old_slot => Action::Arrived,
        Phase::Installing => Action::Cancel("an install was interrupted".into()),
        // An operator (or a power cut) rebooted before the agent did: same as below.
        Phase::Installed | Phase::Rebooting if rebooted => {
            if on_old_slot {
                Action::FellBack
            } else {
                Action::Arrived
            }
        }
        Phase::Installed => {
            let wanted = d.image.as_ref().map(|i| &i.artifact);
            if wanted != s.target.as_ref() {
                return Action::Cancel(match wanted {
                    Some(a) => format!("the branch now declares {a}"),
                    None => "the branch no longer declares an OS image".into(),
                });
            }
            match d.reboot {
                Reboot::Now => Action::Reboot,
                Reboot::Never => Action::Nothing(Wait::Operator),
                w if w.window_open(f.local_minutes) => Action::Reboot,
                w => Action::Nothing(Wait::Window(w)),
            }
        }
        // The reboot was asked for and this is still the same boot: ask again.
        Phase::Rebooting => Action::Reboot,
        Phase::Verifying if on_old_slot => Action::FellBack,
        Phase::Verifying => Action::Verify {
            deadline: s.verify_since.unwrap_or(f.now) + d.health.timeout_seconds,
        },
        Phase::Committed => Action::Finish,
        // Rebooted but still on the failed, uncommitted image (the power was cut before
        // `rollback`, or the bootloader tried the new slot again): roll back again.
        Phase::RollingBack if rebooted && s.old_rootfs.is_some() && !on_old_slot => {
            Action::RollBack("the new root filesystem is still running after the reboot".into())
        }
        Phase::RollingBack if rebooted => Action::RolledBack,
        Phase::RollingBack => Action::RollBack("resuming an interrupted rollback".into()),
    }
}

/// After the health checks of a `Verify`: commit, roll back, check again in this run
/// (`None`), or wait for the next run.
pub fn verdict(deadline: u64, now: u64, problems: &[String], converged: bool) -> Option<Action> {
    if problems.is_empty() {
        Some(Action::Commit)
    } else if now >= deadline {
        Some(Action::RollBack(format!(
            "health checks failed: {}",
            problems.join("; ")
        )))
    } else if !converged {
        // The roles will not converge before the next run: no use waiting here.
        Some(Action::Nothing(Wait::Unhealthy {
            deadline,
            problems: problems.to_vec(),
        }))
    } else {
        None
    }
}

// ---------------------------------------------------------------- the client

/// The Mender client, run in the agent's own environment (not chrooted under --root).
pub struct Client {
    argv: Vec<String>,
}

impl Client {
    pub fn resolve(config: &OsUpdateConfig) -> Client {
        let program = match &config.client {
            Some(c) => c.clone(),
            None if on_path("mender-update") => "mender-update".into(),
            None => "mender".into(),
        };
        // No --datastore: 3.x only knows --data, and the client's own configuration
        // names its datastore (under --root too; tests point the double at theirs).
        Client {
            argv: vec![program],
        }
    }

    fn run(&self, host: &Host, args: &[&str]) -> Result<(i32, String, String)> {
        let mut argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        argv.extend_from_slice(args);
        host.run_status(&argv, false)
    }

    fn failed(&self, args: &[&str], code: i32, stderr: String) -> Error {
        Error::Command {
            command: format!("{} {}", self.argv[0], args.join(" ")),
            status: format!("exit code {code}"),
            stderr,
        }
    }

    pub fn show_artifact(&self, host: &Host) -> Result<Option<String>> {
        let (code, out, err) = self.run(host, &["show-artifact"])?;
        if code != 0 {
            return Err(self.failed(&["show-artifact"], code, err));
        }
        let name = out.lines().next().unwrap_or("").trim().to_string();
        Ok((!name.is_empty()).then_some(name))
    }

    /// `commit` or `rollback`: true when done, false for 2 "no update in progress".
    fn finish(&self, host: &Host, verb: &str) -> Result<bool> {
        match self.run(host, &[verb])? {
            (0, ..) => Ok(true),
            (2, ..) => Ok(false),
            (code, _, err) => Err(self.failed(&[verb], code, err)),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

// ---------------------------------------------------------------- the step

/// What the run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more this run.
    Done,
    /// A reboot was asked for (exit code 5).
    Rebooting,
}

pub struct Step<'a> {
    pub host: &'a Host,
    pub config: &'a OsUpdateConfig,
    /// The state directory on the device.
    pub state_dir: &'a Path,
    pub http_timeout: Duration,
}

impl Step<'_> {
    /// Reads the facts of this run.
    /// A failing `show-artifact` is an error when idle (nothing is under way, nothing
    /// starts), and otherwise a fact: an update under way must still reach its end.
    pub fn facts(&self, client: &Client, converged: bool, phase: Phase) -> Result<Facts> {
        let now = crate::state::now();
        let (artifact, artifact_error) = match client.show_artifact(self.host) {
            Ok(a) => (a, None),
            Err(e) if phase == Phase::Idle => return Err(e),
            Err(e) => {
                warn!("OS update: {e}");
                (None, Some(e.to_string()))
            }
        };
        Ok(Facts {
            now,
            local_minutes: local_minutes(now),
            boot_id: self.boot_id()?,
            rootfs: crate::state::read_marker(self.host, Path::new(SLOT_MARKER))?,
            artifact,
            artifact_error,
            upgrade_available: self.upgrade_available()?,
            converged,
        })
    }

    /// The kernel's id of this boot.
    fn boot_id(&self) -> Result<String> {
        let boot = self.host.read(Path::new(BOOT_ID))?;
        Ok(String::from_utf8_lossy(&boot).trim().to_string())
    }

    /// `fw_printenv upgrade_available` when fw_printenv is installed (u-boot env).
    /// Under --root, the root's /etc/fw_env.config is used, and without it there is
    /// no environment to look at.
    fn upgrade_available(&self) -> Result<Option<bool>> {
        if !on_path("fw_printenv") {
            return Ok(None);
        }
        let mut argv = vec!["fw_printenv".to_string()];
        if !self.host.is_live() {
            let config = self.host.path(Path::new("/etc/fw_env.config"));
            if !config.is_file() {
                return Ok(None);
            }
            argv.push("-c".into());
            argv.push(config.to_string_lossy().into_owned());
        }
        argv.push("upgrade_available".into());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, out, _) = self.host.run_status(&argv, false)?;
        // Not defined: fw_printenv exits 1 with "## Error: ... not defined".
        Ok(Some(
            code == 0 && out.trim().strip_prefix("upgrade_available=") == Some("1"),
        ))
    }

    /// Advances the state machine as far as this run can. `save` persists the state;
    /// it is called before every action that changes the machine.
    pub fn run(
        &self,
        declared: &Declared,
        state: &mut OsState,
        converged: bool,
        save: &mut dyn FnMut(&OsState) -> Result<()>,
    ) -> Result<Outcome> {
        if declared.image.is_none() && state.phase == Phase::Idle {
            return Ok(Outcome::Done);
        }
        // The no-op poll: the declared artifact was found running earlier in this same
        // boot. Only a reboot changes the running root filesystem, so the client (3.4's
        // `mender show-artifact` alone peaks at 16.8 MiB) is not started again.
        if state.phase == Phase::Idle
            && declared.image.as_ref().map(|i| &i.artifact) == state.current.as_ref()
            && state.boot_id.is_some()
            && state.boot_id == Some(self.boot_id()?)
        {
            return Ok(Outcome::Done);
        }
        let client = Client::resolve(self.config);
        let mut facts = self.facts(&client, converged, state.phase)?;
        if state.phase == Phase::Idle
            && (state.current != facts.artifact
                || state.boot_id.as_deref() != Some(facts.boot_id.as_str()))
        {
            state.current = facts.artifact.clone();
            state.boot_id = Some(facts.boot_id.clone());
            save(state)?;
        }
        // Each action moves to another phase; a handful covers the longest chain
        // (installing → idle → installing → installed → rebooting).
        for _ in 0..8 {
            let action = decide(declared, state, &facts);
            match self.execute(&client, declared, state, &facts, action, save)? {
                Some(outcome) => return Ok(outcome),
                None => facts.now = crate::state::now(),
            }
        }
        Ok(Outcome::Done)
    }

    /// Executes one action. None: decide again.
    fn execute(
        &self,
        client: &Client,
        declared: &Declared,
        s: &mut OsState,
        f: &Facts,
        action: Action,
        save: &mut dyn FnMut(&OsState) -> Result<()>,
    ) -> Result<Option<Outcome>> {
        match action {
            Action::Nothing(wait) => {
                report_wait(&wait, declared);
                Ok(Some(Outcome::Done))
            }
            Action::Install(img) => {
                s.target = Some(img.artifact.clone());
                s.boot_id = Some(f.boot_id.clone());
                // A fresh marker for this slot: the new image cannot carry it, so seeing
                // it after a reboot means the old slot (the bootloader fell back).
                s.old_rootfs = Some(crate::state::new_marker(self.host, Path::new(SLOT_MARKER))?);
                s.verify_since = None;
                s.health_timeout = Some(declared.health.timeout_seconds);
                enter(
                    save,
                    s,
                    Phase::Installing,
                    format!(
                        "installing {} from {}",
                        img.artifact,
                        crate::transport::redact(&img.uri)
                    ),
                )?;
                match self.install(client, &img) {
                    Ok(true) => {
                        s.backoff = None;
                        enter(
                            save,
                            s,
                            Phase::Installed,
                            format!("installed {}; reboot: {}", img.artifact, declared.reboot),
                        )?;
                        Ok(None)
                    }
                    Ok(false) => {
                        // No reboot needed (an Update Module without one): verify here.
                        s.backoff = None;
                        s.old_rootfs = None;
                        s.verify_since = Some(crate::state::now());
                        enter(
                            save,
                            s,
                            Phase::Verifying,
                            format!("installed {} (no reboot needed)", img.artifact),
                        )?;
                        Ok(None)
                    }
                    Err(e) => {
                        let attempts = match &s.backoff {
                            Some(b) if b.artifact == img.artifact => b.attempts + 1,
                            _ => 1,
                        };
                        let after = crate::state::now() + declared.retry.delay(attempts);
                        s.backoff = Some(Backoff {
                            artifact: img.artifact.clone(),
                            attempts,
                            after,
                            error: e.to_string(),
                        });
                        s.target = None;
                        self.remove_image();
                        enter(
                            save,
                            s,
                            Phase::Idle,
                            format!(
                                "installing {} failed (attempt {attempts}; next in {}s)",
                                img.artifact,
                                declared.retry.delay(attempts)
                            ),
                        )?;
                        Err(e)
                    }
                }
            }
            Action::Cancel(why) => {
                // 2: nothing was pending (the install had not started or was undone).
                let rollback = client.finish(self.host, "rollback");
                let target = s.target.take().unwrap_or_default();
                self.remove_image();
                if let Err(e) = rollback {
                    // Not stuck in installing: idle, and the artifact waits like after a
                    // failed install (the client may still refuse it while its pending
                    // update is there; every attempt is then logged).
                    let attempts = match &s.backoff {
                        Some(b) if b.artifact == target => b.attempts + 1,
                        _ => 1,
                    };
                    let delay = declared.retry.delay(attempts);
                    s.backoff = Some(Backoff {
                        artifact: target.clone(),
                        attempts,
                        after: crate::state::now() + delay,
                        error: e.to_string(),
                    });
                    enter(
                        save,
                        s,
                        Phase::Idle,
                        format!("cancelling {target} ({why}): rollback failed; next attempt in {delay}s"),
                    )?;
                    return Err(e);
                }
                enter(save, s, Phase::Idle, format!("cancelled {target}: {why}"))?;
                Ok(None)
            }
            Action::Reboot => {
                s.boot_id = Some(f.boot_id.clone());
                let target = s.target.clone().unwrap_or_default();
                enter(
                    save,
                    s,
                    Phase::Rebooting,
                    format!("rebooting into {target}"),
                )?;
                self.reboot()?;
                Ok(Some(Outcome::Rebooting))
            }
            Action::Arrived => {
                s.boot_id = Some(f.boot_id.clone());
                s.verify_since = Some(f.now);
                let target = s.target.clone().unwrap_or_default();
                enter(
                    save,
                    s,
                    Phase::Verifying,
                    format!("running the new root filesystem ({target}); checking health"),
                )?;
                Ok(None)
            }
            Action::FellBack => {
                let target = s.target.take().unwrap_or_default();
                if !target.is_empty() && !s.failed.contains(&target) {
                    s.failed.push(target.clone());
                }
                self.remove_image();
                let rollback = client.finish(self.host, "rollback");
                s.current = f.artifact.clone();
                let mut message = format!(
                    "the bootloader fell back to the old root filesystem: {target} failed and will not be retried"
                );
                if let Err(e) = &rollback {
                    message.push_str(&format!(" (rollback: {e})"));
                }
                warn!("{message}");
                enter(save, s, Phase::Idle, message)?;
                Ok(None)
            }
            Action::Verify { deadline } => loop {
                let mut problems = self.health(&declared.health, f.converged, deadline);
                if let Some(e) = &f.artifact_error {
                    problems.push(format!("the Mender client cannot say what runs: {e}"));
                }
                let now = crate::state::now();
                if let Some(next) = verdict(deadline, now, &problems, f.converged) {
                    return self.execute(client, declared, s, f, next, save);
                }
                let pause = deadline.saturating_sub(now).clamp(1, 5);
                std::thread::sleep(Duration::from_secs(pause));
            },
            Action::Commit => {
                let target = s.target.clone().unwrap_or_default();
                let committed = match client.finish(self.host, "commit") {
                    Ok(true) => true,
                    // 2: nothing pending. Committed already (an earlier run was cut
                    // after commit) if the client now reports the target.
                    Ok(false) => client.show_artifact(self.host)?.as_deref() == Some(&target),
                    Err(e) => {
                        return self.execute(
                            client,
                            declared,
                            s,
                            f,
                            Action::RollBack(format!("commit failed: {e}")),
                            save,
                        )
                    }
                };
                if committed {
                    enter(save, s, Phase::Committed, format!("committed {target}"))?;
                } else {
                    s.failed.push(target.clone());
                    s.target = None;
                    self.remove_image();
                    enter(
                        save,
                        s,
                        Phase::Idle,
                        format!("commit of {target}: no update in progress; marked failed"),
                    )?;
                }
                Ok(None)
            }
            Action::RollBack(why) => {
                let target = s.target.clone().unwrap_or_default();
                if !target.is_empty() && !s.failed.contains(&target) {
                    s.failed.push(target.clone());
                }
                s.boot_id = Some(f.boot_id.clone());
                enter(
                    save,
                    s,
                    Phase::RollingBack,
                    format!("rolling back {target}: {why}"),
                )?;
                // A reboot alone makes the bootloader fall back (the new slot is not
                // committed): a failing `rollback` does not stop it.
                if let Err(e) = client.finish(self.host, "rollback") {
                    log::error!("OS update: {e}; rebooting anyway");
                }
                self.reboot()?;
                Ok(Some(Outcome::Rebooting))
            }
            Action::RolledBack => {
                // The power may have been cut before `rollback` ran (the bootloader then
                // fell back on its own): without it the client keeps its record of the
                // pending update and refuses every later install. 2: already done.
                if let Err(e) = client.finish(self.host, "rollback") {
                    warn!("OS update: rollback after returning to the old slot: {e}");
                }
                let target = s.target.take().unwrap_or_default();
                s.current = f.artifact.clone();
                self.remove_image();
                enter(
                    save,
                    s,
                    Phase::Idle,
                    format!("rolled back from {target}; it will not be retried"),
                )?;
                Ok(None)
            }
            Action::Finish => {
                s.current = s.target.take();
                s.verify_since = None;
                s.old_rootfs = None;
                self.remove_image();
                let current = s.current.clone().unwrap_or_default();
                enter(save, s, Phase::Idle, format!("running {current}"))?;
                Ok(Some(Outcome::Done))
            }
        }
    }

    /// Fetches the artifact and runs `install --reboot-exit-code`. Ok(true): a reboot
    /// is needed; Ok(false): installed, no reboot needed.
    fn install(&self, client: &Client, img: &Image) -> Result<bool> {
        let file = if img.uri.starts_with('/') {
            let path = self.host.path(Path::new(&img.uri));
            if let Some(want) = &img.sha256 {
                let f = std::fs::File::open(&path)
                    .map_err(|e| Error::io("cannot read the OS image", &path, e))?;
                let got = hash_reader(f, None).map_err(|e| Error::io("cannot read", &path, e))?;
                check_sha(&img.uri, want, &got)?;
            }
            path
        } else {
            self.download(img)?
        };
        let file = file.to_string_lossy().into_owned();
        let args = ["install", "--reboot-exit-code", file.as_str()];
        match client.run(self.host, &args)? {
            (4, ..) => Ok(true),
            (0, ..) => Ok(false),
            (code, _, err) => Err(client.failed(&args, code, err)),
        }
    }

    /// Downloads to state_dir/os-image: a temporary file, checked, then renamed.
    fn download(&self, img: &Image) -> Result<PathBuf> {
        let dir = self.host.path(self.state_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create the state directory", &dir, e))?;
        let dest = dir.join(IMAGE_FILE);
        let part = dir.join(format!(".{IMAGE_FILE}.part"));
        let shown = crate::transport::redact(&img.uri);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(self.http_timeout))
            .timeout_per_read(Some(self.http_timeout))
            .timeout_recv_response(Some(self.http_timeout))
            .build()
            .into();
        let response = agent
            .get(&img.uri)
            .call()
            .map_err(|e| Error::Other(format!("cannot download {shown}: {e}")))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Error::Other(format!(
                "cannot download {shown}: HTTP {status}"
            )));
        }
        let reader = response.into_body().into_reader();
        let result = (|| -> std::io::Result<String> {
            let _ = std::fs::remove_file(&part);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)?;
            let digest = hash_reader(reader, Some(&mut out))?;
            out.sync_all()?;
            Ok(digest)
        })();
        let digest = match result {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(Error::Other(format!("cannot download {shown}: {e}")));
            }
        };
        if let Some(want) = &img.sha256 {
            if let Err(e) = check_sha(&shown, want, &digest) {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        }
        std::fs::rename(&part, &dest)
            .and_then(|()| sync_dir(&dir))
            .map_err(|e| Error::io("cannot write", &dest, e))?;
        Ok(dest)
    }

    fn remove_image(&self) {
        let path = self.host.path(self.state_dir).join(IMAGE_FILE);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    fn reboot(&self) -> Result<()> {
        let argv: Vec<&str> = self
            .config
            .reboot_command
            .iter()
            .map(String::as_str)
            .collect();
        self.host.run_output(&argv, false).map(|_| ())
    }

    /// Every failed check, described; empty when healthy.
    fn health(&self, h: &Health, converged: bool, deadline: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if !converged {
            problems
                .push("this run did not reach the fleet repository or converge every role".into());
        }
        for unit in &h.units {
            match self
                .host
                .run_status(&["systemctl", "is-active", "--quiet", unit], true)
            {
                Ok((0, ..)) => {}
                Ok(_) => problems.push(format!("{unit} is not active")),
                Err(e) => problems.push(format!("{unit}: {e}")),
            }
        }
        for command in &h.commands {
            match self.host.run_status(&["sh", "-c", command], true) {
                Ok((0, ..)) => {}
                Ok((code, _, err)) => problems.push(format!(
                    "`{command}` exited {code}{}",
                    if err.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", err.trim())
                    }
                )),
                Err(e) => problems.push(format!("`{command}`: {e}")),
            }
        }
        let left = deadline.saturating_sub(crate::state::now()).clamp(1, 10);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(left)))
            .build()
            .into();
        for url in &h.urls {
            match agent.get(url).call() {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => problems.push(format!("{url} answered {}", r.status().as_u16())),
                Err(e) => problems.push(format!("{url}: {e}")),
            }
        }
        problems
    }
}

fn check_sha(what: &str, want: &str, got: &str) -> Result<()> {
    if want.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{what}: sha256 is {got}, expected {want} (from fleet.yml)"
        )))
    }
}

fn hash_reader(mut r: impl Read, mut out: Option<&mut std::fs::File>) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n])?;
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Minutes after local midnight (TZ, /etc/localtime), UTC if the C library cannot say.
pub fn local_minutes(now: u64) -> u16 {
    let t = now as nix::libc::time_t;
    // SAFETY: a zeroed `tm` is a valid value; localtime_r only writes into it.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = unsafe { !nix::libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 60 + tm.tm_min) as u16
    } else {
        (now % 86_400 / 60) as u16
    }
}

/// Moves to `phase`, logs it (journal field OS_STATE) and saves the state.
fn enter(
    save: &mut dyn FnMut(&OsState) -> Result<()>,
    s: &mut OsState,
    phase: Phase,
    message: String,
) -> Result<()> {
    s.phase = phase;
    s.changed = Some(crate::state::now());
    log_transition(phase, &message);
    s.message = Some(message);
    save(s)
}

fn log_transition(phase: Phase, message: &str) {
    let p = phase.as_str();
    match phase {
        Phase::RollingBack => warn!(OS_STATE = p; "OS update: {message}"),
        _ => info!(OS_STATE = p; "OS update: {message}"),
    }
}

fn report_wait(wait: &Wait, d: &Declared) {
    match wait {
        Wait::NotDeclared | Wait::Current => {}
        Wait::Failed(a) => info!(
            "OS update: {a} failed before and is not retried (`fleet-agent os retry` allows it again)"
        ),
        Wait::Backoff { until } => info!(
            "OS update: retrying after a failed download or install in {}s",
            until.saturating_sub(crate::state::now())
        ),
        Wait::Foreign => warn!(
            "OS update: the bootloader has an update pending that fleet-agent did not start (upgrade_available=1): left alone"
        ),
        Wait::NotConverged => {
            info!("OS update: not started, this run did not converge every role")
        }
        Wait::Window(w) => info!("OS update: installed, rebooting {w}"),
        Wait::Operator => info!(
            "OS update: installed {}; reboot: never (operator)",
            d.image.as_ref().map(|i| i.artifact.as_str()).unwrap_or("")
        ),
        Wait::Unhealthy { deadline, problems } => warn!(
            "OS update: not healthy yet ({}); rolling back in {}s unless it recovers",
            problems.join("; "),
            deadline.saturating_sub(crate::state::now())
        ),
    }
}

/// `fleet-agent os status`: the persisted state in words.
pub fn status_text(s: &OsState, time: impl Fn(u64) -> String) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10}{v}\n"));
    line("phase:", s.phase.as_str().to_string());
    line(
        "current:",
        s.current.clone().unwrap_or_else(|| "unknown".into()),
    );
    if let Some(t) = &s.target {
        line("target:", t.clone());
    }
    line(
        "failed:",
        if s.failed.is_empty() {
            "none".into()
        } else {
            s.failed.join(", ")
        },
    );
    if let Some(b) = &s.backoff {
        line(
            "retry:",
            format!(
                "{} after {} (attempt {}): {}",
                b.artifact,
                time(b.after),
                b.attempts,
                b.error
            ),
        );
    }
    if let Some(m) = &s.message {
        line(
            "message:",
            format!(
                "{m}{}",
                s.changed
                    .map(|t| format!(" ({})", time(t)))
                    .unwrap_or_default()
            ),
        );
    }
    out
}

/// The `plan` line, from the declaration and the recorded state (plan runs nothing).
/// None when nothing is declared for the device and no update is under way.
pub fn plan_line(d: &Declared, s: &OsState) -> Option<(String, bool)> {
    let ty = d.device_type.as_deref().unwrap_or("unknown type");
    let Some(img) = &d.image else {
        return (s.phase != Phase::Idle).then(|| {
            (
                format!(
                    "OS: update in progress ({}), no image declared for {ty}",
                    s.phase.as_str()
                ),
                false,
            )
        });
    };
    let current = s.current.as_deref().unwrap_or("unknown");
    if s.phase != Phase::Idle {
        let target = s.target.as_deref().unwrap_or("?");
        return Some((
            format!("OS: {current} → {target} ({ty}), {}", s.phase.as_str()),
            false,
        ));
    }
    if current == img.artifact {
        return Some((format!("OS: {current} ({ty}), up to date"), false));
    }
    if s.failed.contains(&img.artifact) {
        return Some((
            format!(
                "OS: {current} ({ty}); {} failed before, not retried (fleet-agent os retry)",
                img.artifact
            ),
            false,
        ));
    }
    Some((
        format!(
            "OS: {current} → {} ({ty}), reboot: {}",
            img.artifact, d.reboot
        ),
        true,
    ))
}
