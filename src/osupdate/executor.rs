//! The executor: gathers the facts of this run, asks `decide` for the next action and
//! carries it out, one method per action, through the Mender client and the `Host`
//! seam. Every transition is saved before the action that follows it, so that a run
//! killed anywhere resumes on the next one.

use std::path::Path;
use std::time::Duration;

use log::{info, warn};

use crate::error::Result;
use crate::fleet::os::Image;
use crate::host::Host;
use crate::osupdate::client::{on_path, Cli, Mender};
use crate::osupdate::decide::{decide, verdict, Deadlines, Declared, Facts, OsAction};
use crate::osupdate::report::report_wait;
use crate::osupdate::{download, health, Backoff, OsPhase, OsState, OsUpdateConfig};
use crate::osupdate::{BOOT_ID, SLOT_MARKER};
use crate::time::{local_minutes, now};

/// What the run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    /// Nothing more this run.
    Done,
    /// A reboot was asked for (exit code 5).
    Rebooting,
}

/// What this run did before the OS step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunFacts {
    /// Every role applied without error.
    pub(crate) converged: bool,
    /// The fleet repository was reached.
    pub(crate) reached: bool,
}

/// Persists the OS state (into state.json).
pub(crate) type Save<'s> = dyn FnMut(&OsState) -> Result<()> + 's;

pub(crate) struct Step<'a> {
    pub(crate) host: &'a Host,
    pub(crate) config: &'a OsUpdateConfig,
    /// The state directory on the device.
    pub(crate) state_dir: &'a Path,
    pub(crate) http_timeout: Duration,
    /// The most the image download may take (agent.toml `[http] download_deadline_secs`).
    pub(crate) download_deadline: Duration,
}

impl Step<'_> {
    /// Advances the state machine as far as this run can. `save` persists the state;
    /// it is called before every action that changes the machine.
    pub(crate) fn run(
        &self,
        declared: &Declared,
        state: &mut OsState,
        this_run: RunFacts,
        save: &mut Save,
    ) -> Result<StepOutcome> {
        if declared.image.is_none() && state.phase == OsPhase::Idle {
            return Ok(StepOutcome::Done);
        }
        // The no-op poll: the declared artifact was found running earlier in this same
        // boot. Only a reboot changes the running root filesystem, so the client (3.4's
        // `mender show-artifact` alone peaks at 16.8 MiB) is not started again.
        if state.phase == OsPhase::Idle
            && declared.image.as_ref().map(|i| &i.artifact) == state.current.as_ref()
            && state.boot_id.is_some()
            && state.boot_id == Some(boot_id(self.host)?)
        {
            return Ok(StepOutcome::Done);
        }
        let client = Cli::resolve(self.host, self.config);
        let facts = self.facts(&client, this_run, state.phase)?;
        if state.phase == OsPhase::Idle
            && (state.current != facts.artifact
                || state.boot_id.as_deref() != Some(facts.boot_id.as_str()))
        {
            state.current = facts.artifact.clone();
            state.boot_id = Some(facts.boot_id.clone());
            save(state)?;
        }
        let mut x = Executor {
            step: self,
            client: &client,
            declared,
            facts,
            save,
        };
        // Each action moves to another phase; a handful covers the longest chain
        // (installing → idle → installing → installed → rebooting).
        for _ in 0..8 {
            let action = decide(declared, state, &x.facts);
            match x.execute(state, action)? {
                Some(outcome) => return Ok(outcome),
                None => x.facts.now = now(),
            }
        }
        Ok(StepOutcome::Done)
    }

    /// Reads the facts of this run.
    /// A failing `show-artifact` is an error when idle (nothing is under way, nothing
    /// starts), and otherwise a fact: an update under way must still reach its end.
    fn facts(&self, client: &dyn Mender, this_run: RunFacts, phase: OsPhase) -> Result<Facts> {
        let now = now();
        let (artifact, artifact_error) = match client.show_artifact() {
            Ok(a) => (a, None),
            Err(e) if phase == OsPhase::Idle => return Err(e),
            Err(e) => {
                warn!("OS update: {e}");
                (None, Some(e.to_string()))
            }
        };
        Ok(Facts {
            now,
            local_minutes: local_minutes(now),
            boot_id: boot_id(self.host)?,
            rootfs: self.host.read_marker(Path::new(SLOT_MARKER))?,
            artifact,
            artifact_error,
            upgrade_available: upgrade_available(self.host)?,
            converged: this_run.converged,
            reached: this_run.reached,
        })
    }
}

/// The kernel's id of this boot.
pub(crate) fn boot_id(host: &Host) -> Result<String> {
    let boot = host.read(Path::new(BOOT_ID))?;
    Ok(String::from_utf8_lossy(&boot).trim().to_string())
}

/// `fw_printenv upgrade_available` when fw_printenv is installed (u-boot env).
/// Under --root, the root's /etc/fw_env.config is used, and without it there is
/// no environment to look at.
fn upgrade_available(host: &Host) -> Result<Option<bool>> {
    if !on_path("fw_printenv") {
        return Ok(None);
    }
    let mut argv = vec!["fw_printenv".to_string()];
    if !host.is_live() {
        let config = host.path(Path::new("/etc/fw_env.config"));
        if !config.is_file() {
            return Ok(None);
        }
        argv.push("-c".into());
        argv.push(config.to_string_lossy().into_owned());
    }
    argv.push("upgrade_available".into());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, out, _) = host.run_status(&argv, false)?;
    // Not defined: fw_printenv exits 1 with "## Error: ... not defined".
    Ok(Some(
        code == 0 && out.trim().strip_prefix("upgrade_available=") == Some("1"),
    ))
}

/// Moves to `phase`, logs it (journal field OS_STATE) and saves the state.
fn transition(save: &mut Save, s: &mut OsState, phase: OsPhase, message: String) -> Result<()> {
    let failed = phase == OsPhase::RollingBack;
    transition_logged(save, s, phase, message, failed)
}

/// [`transition`], logged as a warning when `failed` (a rollback, a fall-back).
fn transition_logged(
    save: &mut Save,
    s: &mut OsState,
    phase: OsPhase,
    message: String,
    failed: bool,
) -> Result<()> {
    s.phase = phase;
    s.changed = Some(now());
    let p = phase.as_str();
    if failed {
        warn!(OS_STATE = p; "OS update: {message}");
    } else {
        info!(OS_STATE = p; "OS update: {message}");
    }
    s.message = Some(message);
    save(s)
}

/// Carries out actions for one run.
struct Executor<'x, 's> {
    step: &'x Step<'x>,
    client: &'x dyn Mender,
    declared: &'x Declared,
    facts: Facts,
    save: &'x mut Save<'s>,
}

impl Executor<'_, '_> {
    /// Executes one action. None: decide again.
    fn execute(&mut self, s: &mut OsState, action: OsAction) -> Result<Option<StepOutcome>> {
        match action {
            OsAction::Nothing(wait) => {
                report_wait(&wait, self.declared);
                Ok(Some(StepOutcome::Done))
            }
            OsAction::Install(img) => self.install(s, &img),
            OsAction::Cancel(why) => self.cancel(s, &why),
            OsAction::Reboot => self.reboot(s),
            OsAction::Arrived => self.arrived(s),
            OsAction::FellBack => self.fell_back(s),
            OsAction::Verify(deadlines) => self.verify(s, deadlines),
            OsAction::Commit => self.commit(s),
            OsAction::RollBack(why) => self.roll_back(s, &why, true),
            OsAction::RollBackUnverified(why) => self.roll_back(s, &why, false),
            OsAction::RolledBack => self.rolled_back(s),
            OsAction::Finish => self.finish(s),
        }
    }

    fn enter(&mut self, s: &mut OsState, phase: OsPhase, message: String) -> Result<()> {
        transition(self.save, s, phase, message)
    }

    fn remove_image(&self) {
        download::remove(self.step.host, self.step.state_dir);
    }

    /// A failed attempt at `artifact`: the next one waits, exponentially longer.
    fn back_off(&self, s: &mut OsState, artifact: &str, error: String) -> u64 {
        let attempts = match &s.backoff {
            Some(b) if b.artifact == artifact => b.attempts + 1,
            _ => 1,
        };
        let delay = self.declared.retry.delay(attempts);
        s.backoff = Some(Backoff {
            artifact: artifact.to_string(),
            attempts,
            after: now() + delay,
            error,
        });
        delay
    }

    /// idle → installing → installed (or verifying without a reboot; or idle with a
    /// backoff).
    fn install(&mut self, s: &mut OsState, img: &Image) -> Result<Option<StepOutcome>> {
        s.target = Some(img.artifact.clone());
        s.boot_id = Some(self.facts.boot_id.clone());
        // A fresh marker for this slot: the new image cannot carry it, so seeing it
        // after a reboot means the old slot (the bootloader fell back).
        s.old_rootfs = Some(self.step.host.new_marker(Path::new(SLOT_MARKER))?);
        s.verify_since = None;
        s.reached_at = None;
        s.health_timeout = Some(self.declared.health.timeout_seconds);
        s.offline_timeout = Some(self.declared.health.offline_timeout_seconds);
        let uri = crate::config::redact(&img.uri);
        self.enter(
            s,
            OsPhase::Installing,
            format!("installing {} from {uri}", img.artifact),
        )?;
        let installed = download::fetch(
            self.step.host,
            self.step.state_dir,
            img,
            self.step.http_timeout,
            self.step.download_deadline,
        )
        .and_then(|file| self.client.install(&file.to_string_lossy()));
        match installed {
            Ok(true) => {
                s.backoff = None;
                let reboot = self.declared.reboot;
                self.enter(
                    s,
                    OsPhase::Installed,
                    format!("installed {}; reboot: {reboot}", img.artifact),
                )?;
                Ok(None)
            }
            Ok(false) => {
                // No reboot needed (an Update Module without one): verify here.
                s.backoff = None;
                s.old_rootfs = None;
                s.verify_since = Some(now());
                self.enter(
                    s,
                    OsPhase::Verifying,
                    format!("installed {} (no reboot needed)", img.artifact),
                )?;
                Ok(None)
            }
            Err(e) => {
                let delay = self.back_off(s, &img.artifact, e.to_string());
                let attempts = s.backoff.as_ref().map_or(1, |b| b.attempts);
                s.target = None;
                self.remove_image();
                self.enter(
                    s,
                    OsPhase::Idle,
                    format!(
                        "installing {} failed (attempt {attempts}; next in {delay}s)",
                        img.artifact
                    ),
                )?;
                Err(e)
            }
        }
    }

    /// An install that was interrupted or is no longer wanted: `rollback`, → idle.
    fn cancel(&mut self, s: &mut OsState, why: &str) -> Result<Option<StepOutcome>> {
        // 2: nothing was pending (the install had not started or was undone).
        let rollback = self.client.rollback();
        let target = s.target.take().unwrap_or_default();
        self.remove_image();
        if let Err(e) = rollback {
            // Not stuck in installing: idle, and the artifact waits like after a
            // failed install (the client may still refuse it while its pending
            // update is there; every attempt is then logged).
            let delay = self.back_off(s, &target, e.to_string());
            self.enter(
                s,
                OsPhase::Idle,
                format!("cancelling {target} ({why}): rollback failed; next attempt in {delay}s"),
            )?;
            return Err(e);
        }
        self.enter(s, OsPhase::Idle, format!("cancelled {target}: {why}"))?;
        Ok(None)
    }

    /// installed → rebooting; the run ends with exit 5.
    fn reboot(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        s.boot_id = Some(self.facts.boot_id.clone());
        let target = s.target.clone().unwrap_or_default();
        self.enter(s, OsPhase::Rebooting, format!("rebooting into {target}"))?;
        self.run_reboot()?;
        Ok(Some(StepOutcome::Rebooting))
    }

    fn run_reboot(&self) -> Result<()> {
        let argv: Vec<&str> = self
            .step
            .config
            .reboot_command
            .iter()
            .map(String::as_str)
            .collect();
        self.step.host.run_output(&argv, false).map(|_| ())
    }

    /// A new boot on another root filesystem: → verifying.
    fn arrived(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        s.boot_id = Some(self.facts.boot_id.clone());
        s.verify_since = Some(self.facts.now);
        s.reached_at = None;
        let target = s.target.clone().unwrap_or_default();
        self.enter(
            s,
            OsPhase::Verifying,
            format!("running the new root filesystem ({target}); checking health"),
        )?;
        Ok(None)
    }

    /// A new boot on the old root filesystem: the bootloader fell back. Mark failed,
    /// `rollback` (2 is fine), → idle.
    fn fell_back(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        let target = s.target.take().unwrap_or_default();
        if !target.is_empty() && !s.failed.contains(&target) {
            s.failed.push(target.clone());
        }
        self.remove_image();
        let rollback = self.client.rollback();
        s.current = self.facts.artifact.clone();
        let mut message = format!(
            "the bootloader fell back to the old root filesystem: {target} failed and will not be retried"
        );
        if let Err(e) = &rollback {
            message.push_str(&format!(" (rollback: {e})"));
        }
        // Logged once, as a warning, with the transition.
        transition_logged(self.save, s, OsPhase::Idle, message, true)?;
        Ok(None)
    }

    /// Runs the health checks until a verdict, pausing between rounds.
    fn verify(&mut self, s: &mut OsState, d: Deadlines) -> Result<Option<StepOutcome>> {
        let (converged, reached) = (self.facts.converged, self.facts.reached);
        if reached && s.reached_at.is_none() {
            s.reached_at = Some(self.facts.now);
            (self.save)(s)?;
        }
        loop {
            let roles_failed = reached && !converged;
            let mut problems = health::check(
                self.step.host,
                &self.declared.health,
                roles_failed,
                d.health,
            );
            if let Some(e) = &self.facts.artifact_error {
                problems.push(format!("the Mender client cannot say what runs: {e}"));
            }
            let now = now();
            if let Some(next) = verdict(d, now, &problems, converged, reached) {
                return self.execute(s, next);
            }
            let pause = d.health.saturating_sub(now).clamp(1, 5);
            std::thread::sleep(Duration::from_secs(pause));
        }
    }

    /// Health passed: `commit`, → committed.
    fn commit(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        let target = s.target.clone().unwrap_or_default();
        let committed = match self.client.commit() {
            Ok(true) => true,
            // 2: nothing pending. Committed already (an earlier run was cut after
            // commit) if the client now reports the target.
            Ok(false) => self.client.show_artifact()?.as_deref() == Some(&target),
            Err(e) => return self.roll_back(s, &format!("commit failed: {e}"), true),
        };
        if committed {
            self.enter(s, OsPhase::Committed, format!("committed {target}"))?;
        } else {
            s.failed.push(target.clone());
            s.target = None;
            self.remove_image();
            self.enter(
                s,
                OsPhase::Idle,
                format!("commit of {target}: no update in progress; marked failed"),
            )?;
        }
        Ok(None)
    }

    /// → rolling-back: `rollback`, reboot to the old slot; the run ends with exit 5.
    /// On evidence (`blame`) the artifact is marked failed; otherwise (unverified) it
    /// waits a backoff and is tried again.
    fn roll_back(
        &mut self,
        s: &mut OsState,
        why: &str,
        blame: bool,
    ) -> Result<Option<StepOutcome>> {
        let target = s.target.clone().unwrap_or_default();
        let mut message = format!("rolling back {target}: {why}");
        if blame && !target.is_empty() && !s.failed.contains(&target) {
            s.failed.push(target.clone());
        } else if !blame {
            let delay = self.back_off(s, &target, why.to_string());
            message.push_str(&format!("; it will be tried again in {delay}s"));
        }
        s.boot_id = Some(self.facts.boot_id.clone());
        self.enter(s, OsPhase::RollingBack, message)?;
        // A reboot alone makes the bootloader fall back (the new slot is not
        // committed): a failing `rollback` does not stop it.
        if let Err(e) = self.client.rollback() {
            log::error!("OS update: {e}; rebooting anyway");
        }
        self.run_reboot()?;
        Ok(Some(StepOutcome::Rebooting))
    }

    /// Back on the old slot after a rollback: → idle.
    fn rolled_back(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        // The power may have been cut before `rollback` ran (the bootloader then fell
        // back on its own): without it the client keeps its record of the pending
        // update and refuses every later install. 2: already done.
        if let Err(e) = self.client.rollback() {
            warn!("OS update: rollback after returning to the old slot: {e}");
        }
        let target = s.target.take().unwrap_or_default();
        s.current = self.facts.artifact.clone();
        self.remove_image();
        let next = match &s.backoff {
            Some(b) if b.artifact == target && !s.failed.contains(&target) => format!(
                "it will be tried again after {}",
                crate::time::format_time(b.after)
            ),
            _ => "it will not be retried".into(),
        };
        self.enter(
            s,
            OsPhase::Idle,
            format!("rolled back from {target}; {next}"),
        )?;
        Ok(None)
    }

    /// committed → idle with current = target.
    fn finish(&mut self, s: &mut OsState) -> Result<Option<StepOutcome>> {
        s.current = s.target.take();
        s.verify_since = None;
        s.old_rootfs = None;
        self.remove_image();
        let current = s.current.clone().unwrap_or_default();
        self.enter(s, OsPhase::Idle, format!("running {current}"))?;
        Ok(Some(StepOutcome::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::transition;
    use crate::osupdate::{OsPhase, OsState};

    /// Captures the OS_STATE key-value of log records (the journal logger turns keys into
    /// journal fields, so `journalctl -t fleet-agent OS_STATE=rolling-back` finds these).
    struct Capture(std::sync::Mutex<Vec<(String, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if let Some(v) = record.key_values().get(log::kv::Key::from_str("OS_STATE")) {
                self.0
                    .lock()
                    .unwrap()
                    .push((v.to_string(), record.args().to_string()));
            }
        }
        fn flush(&self) {}
    }

    #[test]
    fn every_transition_is_logged_with_an_os_state_field() {
        static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));
        log::set_logger(&CAPTURE).expect("no other test installs a logger");
        log::set_max_level(log::LevelFilter::Info);
        let mut s = OsState::default();
        let mut saved = Vec::new();
        let mut save = |s: &OsState| -> crate::error::Result<()> {
            saved.push(s.phase);
            Ok(())
        };
        transition(
            &mut save,
            &mut s,
            OsPhase::RollingBack,
            "rolling back x".into(),
        )
        .unwrap();
        transition(
            &mut save,
            &mut s,
            OsPhase::Idle,
            "rolled back from x".into(),
        )
        .unwrap();
        assert_eq!(saved, [OsPhase::RollingBack, OsPhase::Idle]);
        assert_eq!(
            *CAPTURE.0.lock().unwrap(),
            [
                (
                    "rolling-back".to_string(),
                    "OS update: rolling back x".to_string()
                ),
                (
                    "idle".to_string(),
                    "OS update: rolled back from x".to_string()
                )
            ]
        );
    }
}
