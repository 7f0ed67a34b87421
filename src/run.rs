//! A run, from the configuration to the recorded state: prepare (configuration, lock,
//! source, the agent-version gate, load, plan), then stop at the plan (`plan`) or apply
//! it (`apply`, `pull`), record the outcome in the state, and for `pull` take the OS
//! update step. This is the only place the stages are wired together. It prints
//! nothing: it returns what happened (or hands the plan to `show` before applying), and
//! the command line renders it. Logs go to the journal or stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};

use crate::config::{redact, Config, DEFAULT_CONFIG};
use crate::device::HostReads;
use crate::error::{exit, Error, Result};
use crate::fleet::gate::{self, Requirement};
use crate::fleet::source::Source;
use crate::fleet::{Device, Fleet, FleetFile, ForDevice, Settings};
use crate::host::Host;
use crate::lock::RunLock;
use crate::osupdate::{self, Declared, OsState};
use crate::plan::{ChangeKind, Plan, ResourceState};
use crate::resources::{self, DesiredState, Reserved};
use crate::state::{self, RunOutcome, State};
use crate::sync::{self, Synced};
use crate::trust;

/// What the command line asks for.
pub(crate) struct Request<'a> {
    pub(crate) host: &'a Host,
    pub(crate) config_path: &'a Path,
    /// How long to wait for another run's lock.
    pub(crate) wait: Duration,
    /// A working tree instead of the configured repository.
    pub(crate) repo: Option<PathBuf>,
    /// Another device id or type than the configured ones.
    pub(crate) device: Option<String>,
    pub(crate) device_type: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// The timer's job: sync, plan, apply, record, OS update.
    Pull,
    /// Plan and apply (a working tree, another device).
    Apply,
    /// Only plan.
    Plan,
}

/// A device's plan, with what the command line shows around it.
pub(crate) struct Planned {
    pub(crate) desired: DesiredState,
    /// Where the branch came from: URL#branch or the working tree.
    pub(crate) origin: String,
    pub(crate) commit: Option<String>,
    /// The short commit, or "working tree".
    pub(crate) commit_label: String,
    pub(crate) plan: Plan,
    pub(crate) os_declared: Declared,
    pub(crate) os_state: OsState,
    /// The OS line of the plan and whether it is a pending change.
    pub(crate) os_line: Option<(String, bool)>,
    /// A working tree planned against the machine this runs on (`--repo` without
    /// `--root`), which is worth saying first.
    pub(crate) against_this_machine: bool,
    /// The rollout standing and what a window or the hold file deferred.
    pub(crate) release: crate::release::Recorded,
    /// The health checks that gate this configuration (`health:`).
    pub(crate) health: Option<crate::release::Health>,
    /// With `[trust]` (or a working tree with `.fleet/allowed_signers`): the
    /// signature status of what is planned.
    pub(crate) signature: Option<String>,
}

impl Planned {
    /// Whether applying would change something (the OS update included).
    pub(crate) fn pending(&self) -> bool {
        !self.plan.is_empty() || self.os_line.as_ref().is_some_and(|(_, p)| *p)
    }
}

/// What `plan` found.
pub(crate) enum PlanOutcome {
    Planned(Box<Planned>),
    /// The branch needs a newer agent; `pull` would upgrade it first.
    AgentUpgrade {
        req: Requirement,
        device: String,
        origin: String,
        commit: Option<String>,
    },
}

/// The plan, changing nothing.
pub(crate) fn plan(req: &Request) -> Result<PlanOutcome> {
    match execute(req, Mode::Plan, &mut |_| {})? {
        Done::Planned(p) => Ok(PlanOutcome::Planned(p)),
        Done::AgentUpgrade(outcome) => Ok(outcome),
        Done::Exit(_) => unreachable!("plan does not apply"),
    }
}

/// `apply` or `pull`: the exit code. `show` sees the plan before it is applied.
pub(crate) fn converge(req: &Request, mode: Mode, show: &mut dyn FnMut(&Planned)) -> Result<i32> {
    let first = execute(req, mode, show);
    // Health checks failed and the rollback is recorded: a second run applies the last
    // commit that passed (a run killed during it is finished by the next one the same way).
    let pending = |s: Option<State>| {
        s.and_then(|s| s.release)
            .is_some_and(|r| r.rollback.is_some())
    };
    if mode == Mode::Pull
        && first.is_err()
        && pending(status(req.host, req.config_path).ok().and_then(|s| s.1))
    {
        if let Err(e) = execute(req, mode, &mut |_| {}) {
            log::error!("{e}");
        }
    }
    match first? {
        Done::Exit(code) => Ok(code),
        Done::Planned(_) | Done::AgentUpgrade(_) => unreachable!("only plan stops there"),
    }
}

enum Done {
    Planned(Box<Planned>),
    AgentUpgrade(PlanOutcome),
    Exit(i32),
}

/// What a run knows before it loads the branch.
struct Run<'a> {
    host: &'a Host,
    config: Config,
    mode: Mode,
    state_path: PathBuf,
    previous: Option<State>,
    commit: Option<String>,
    /// Why the server could not be reached (the last fetched commit is used).
    offline: Option<String>,
    origin: String,
    /// The previous state when it describes this root filesystem (set by `plan`).
    previous_here: Option<State>,
    /// `--repo`: a working tree, not the configured repository.
    working_tree: bool,
    /// The branch followed (None for a working tree).
    branch: Option<String>,
    /// The agent's own files, which no resource may touch.
    reserved: Reserved,
    /// The branch agent.toml names (the run may follow another one).
    configured_branch: String,
    /// What this run warns about, recorded in the state for `status`.
    warnings: Vec<String>,
    /// What applying knew, for the report.
    applied: Option<crate::report::Applied>,
    /// The branch's tip when the run stays on another commit.
    tip: Option<String>,
    /// With `[trust]`: the commit verified (or trusted before) and its signature.
    trusted: Option<(String, String)>,
    /// The signature status `plan` shows.
    signature: Option<String>,
    /// With `max_commit_age_secs`: why the feed is stale.
    stale: Option<String>,
    /// The refused tip and why, when the run converges to the last trusted commit.
    refused: Option<(String, String)>,
    _lock: Option<RunLock>,
}

fn execute(req: &Request, mode: Mode, show: &mut dyn FnMut(&Planned)) -> Result<Done> {
    let started = std::time::SystemTime::now();
    let mut run = Run::prepare(req, mode)?;
    let done = stages(&mut run, req, mode, show);
    if mode != Mode::Plan {
        run.report(started, &done);
    }
    done
}

/// Sync, load, plan, then stop at the plan or apply it.
fn stages(
    run: &mut Run,
    req: &Request,
    mode: Mode,
    show: &mut dyn FnMut(&Planned),
) -> Result<Done> {
    run.log_start(req);
    let planned = match run.load_and_plan(req) {
        Ok(Loaded::Planned(p)) => p,
        Ok(Loaded::Done(done)) => return Ok(done),
        // A read of the clone failed: noted in the clone, so that the sync clones it
        // again, and tried once more.
        Err((_, e)) if matches!(e, Error::Damaged(_)) && req.repo.is_none() => {
            warn!("{e}");
            sync::mark_damaged(run.host, &run.config, &e.to_string());
            match run.load_and_plan(req) {
                Ok(Loaded::Planned(p)) => p,
                Ok(Loaded::Done(done)) => return Ok(done),
                Err((outcome, e)) => return run.stopped(outcome, e),
            }
        }
        Err((outcome, e)) => return run.stopped(outcome, e),
    };
    if mode == Mode::Plan {
        return Ok(Done::Planned(planned));
    }
    show(&planned);
    run.apply(*planned).map(Done::Exit)
}

/// What was loaded (-vv), and a warning for a device given by `--device` that is in no group.
fn note_loaded(req: &Request, desired: &DesiredState) {
    log::debug!(
        "loaded: groups [{}], roles [{}], {} resources",
        desired.groups.join(", "),
        desired.roles.join(", "),
        desired.resources.len()
    );
    if req.device.is_some() && desired.groups.is_empty() {
        warn!(
            "device {} is in no group of inventory.yml: it gets fleet.yml's vars and roles (and its host_vars) only",
            desired.device_id
        );
    }
}

/// How far loading got.
enum Loaded {
    Planned(Box<Planned>),
    /// The run ends here (a branch that needs a newer agent, for `plan`).
    Done(Done),
}

/// A stopped stage: what to record and why.
type Stopped = (RunOutcome, Error);

impl Run<'_> {
    fn log_start(&self, req: &Request) {
        let run = self;
        let mode = self.mode;
        log::debug!(
            "{mode:?}: device {} (type {}), repository {} branch {}, state {}",
            run.config.device_id,
            run.config
                .device_type
                .as_deref()
                .unwrap_or("from host_vars"),
            req.repo
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| redact(&run.config.repo)),
            run.config.branch,
            run.state_path.display()
        );
    }
}

/// What loading the branch gives a device.
struct LoadedState {
    desired: DesiredState,
    settings: Settings,
    /// Its OS image: a group_vars or host_vars `os_image:`, else its type's in fleet.yml.
    os_declared: Declared,
    brakes: crate::release::Brakes,
}

/// The device's desired state, the fleet's settings, its `os:` declaration and the
/// device's own OS image choice. Facts and secrets are read from the machine through
/// the host, only those the templates use; a read that failed fails the load.
fn load(
    run: &Run,
    source: &Source,
    builtin: Option<&Source>,
    fleet_file: &FleetFile,
) -> Result<LoadedState> {
    let config = &run.config;
    let fleet = Fleet::load(source, builtin, fleet_file, run.reserved.clone())?;
    let reads = std::sync::Arc::new(HostReads::new(run.host));
    let mut device = Device {
        id: config.device_id.clone(),
        device_type: config.device_type.clone(),
        reads: reads.clone(),
    };
    if device.device_type.is_none() {
        device.device_type = fleet.host_facts(&device.id)?.device_type;
    }
    let for_device = fleet.for_device(&device);
    if let Some(e) = reads.failure() {
        return Err(e);
    }
    let ForDevice {
        desired,
        os_image,
        brakes,
    } = for_device?;
    log::debug!("facts read: [{}]", reads.read().join(", "));
    let mut os_declared = Declared::new(fleet.os.as_ref(), desired.device_type.as_deref());
    if let Some((image, at)) = os_image {
        os_declared = os_declared.overridden(image, at.to_string());
    }
    Ok(LoadedState {
        desired,
        settings: fleet.settings.clone(),
        os_declared,
        brakes,
    })
}

/// Syncs the configured branch, then the branch the device's host_vars there tell it
/// to follow instead, if any (decided on the configured branch only: no flip-flop). A
/// followed branch the server does not have leaves the device on its configured
/// branch, with a warning (journal, state, `status`).
fn sync_followed(host: &Host, config: &mut Config, warnings: &mut Vec<String>) -> Result<Synced> {
    let first = sync::sync(host, config)?;
    let follow = {
        let source = Source::commit(&first.repo, first.commit)?;
        crate::fleet::host_facts(&source, &config.device_id)
            .ok()
            .and_then(|f| f.branch)
    };
    match follow {
        Some(branch) if branch != config.branch => {
            info!(
                "host_vars/{}.yml: following branch {branch} instead of {}",
                config.device_id, config.branch
            );
            let configured = std::mem::replace(&mut config.branch, branch);
            match sync::sync(host, config) {
                Err(Error::NoBranch { url, branch }) => {
                    let w = format!(
                        "host_vars/{}.yml names the branch `{branch}`, which the fleet repository {url} does not have: staying on the configured branch {configured}",
                        config.device_id
                    );
                    warn!("{w}");
                    warnings.push(w);
                    config.branch = configured;
                    Ok(first)
                }
                other => other,
            }
        }
        _ => Ok(first),
    }
}

impl<'a> Run<'a> {
    /// The configuration (with the request's device), the lock, the previous state.
    fn prepare(req: &Request<'a>, mode: Mode) -> Result<Run<'a>> {
        let host = req.host;
        let mut config = Config::load(req.config_path, host, req.repo.is_none())?;
        if let Some(d) = &req.device {
            config.device_id = d.clone();
            // Another device's type is its own (host_vars), not this machine's.
            config.device_type = None;
        }
        if let Some(t) = &req.device_type {
            config.device_type = Some(t.clone());
        }
        let reads_only = mode == Mode::Plan && req.repo.is_some();
        let lock = if reads_only {
            None
        } else {
            Some(RunLock::acquire(&host.path(&config.state_dir), req.wait)?)
        };
        let state_path = State::path(host, &config.state_dir);
        let reserved = reserved(&config, config_on_device(host, req.config_path).as_deref());
        Ok(Run {
            reserved,
            host,
            previous: State::load(&state_path),
            state_path,
            configured_branch: config.branch.clone(),
            config,
            mode,
            commit: None,
            offline: None,
            origin: String::new(),
            previous_here: None,
            working_tree: req.repo.is_some(),
            branch: None,
            warnings: Vec::new(),
            applied: None,
            tip: None,
            trusted: None,
            signature: None,
            stale: None,
            refused: None,
            _lock: lock,
        })
    }

    /// The source (sync, or the maintainer's working tree), the agent-version gate,
    /// the load and the plan. What stops it is recorded by the caller.
    fn load_and_plan(&mut self, req: &Request) -> Result<Loaded, Stopped> {
        let failed = |e: Error| (RunOutcome::Failed, e);
        self.config.branch = self.configured_branch.clone();
        self.warnings.clear();
        let mut synced: Option<Synced> = None;
        let source = match &req.repo {
            Some(dir) => {
                let dir = dir
                    .canonicalize()
                    .map_err(|e| failed(Error::io("cannot open the fleet repository", dir, e)))?;
                self.origin = dir.display().to_string();
                self.signature = self.working_tree_signature(&dir);
                Source::Dir(dir)
            }
            None => {
                self.origin = format!("{}#{}", redact(&self.config.repo), self.config.branch);
                let (s, commit) = self.sync_and_trust()?;
                synced = Some(s);
                let s = synced.as_ref().expect("just synced");
                Source::commit(&s.repo, commit).map_err(failed)?
            }
        };
        let builtin = crate::fleet::builtin_roles(&self.config.roles_dir);
        let fleet_file = FleetFile::read(&source).map_err(failed)?;
        if let Some(done) = self.gate(&fleet_file, &source)? {
            return Ok(Loaded::Done(done));
        }
        let invalid = |e: Error| match e {
            Error::Invalid(_) => (RunOutcome::Invalid, e),
            e => (RunOutcome::Failed, e),
        };
        let mut loaded = load(self, &source, Some(&builtin), &fleet_file).map_err(invalid)?;
        note_loaded(req, &loaded.desired);
        // The tip is validated above; a device its rollout holds back stays on the
        // commit it last applied, which the clone has (docs/rollouts.md).
        let brakes = loaded.brakes.clone();
        let mut standing =
            (brakes.rollout.as_ref()).map(|r| crate::release::standing(r, &self.config.device_id));
        if let (Some(old), Some(s)) = (self.stays_on(standing.as_mut()), &synced) {
            let old_source = Source::commit(&s.repo, old).map_err(|e| {
                failed(Error::Other(format!("held back by the rollout, but the commit it last applied is not in the clone ({e}): nothing applied")))
            })?;
            let old_file = FleetFile::read(&old_source).map_err(failed)?;
            self.tip = self.commit.clone();
            loaded = load(self, &old_source, Some(&builtin), &old_file).map_err(invalid)?;
            self.commit = Some(old.to_string());
        }
        // A rollback leaves the packages apt can no longer put back as they are.
        let rolling_back = (self.previous.as_ref().and_then(|p| p.release.as_ref()))
            .and_then(|r| r.rollback.as_ref())
            .is_some_and(|rb| Some(&rb.to) == self.commit.as_ref());
        let not_undone = rolling_back
            .then(|| crate::release::undo::unpin_unavailable(self.host, &mut loaded.desired));
        let mut planned =
            (self.plan(loaded.desired, &loaded.settings, loaded.os_declared)).map_err(failed)?;
        self.brake(&mut planned, &brakes, standing);
        if let Some(said) = not_undone {
            planned
                .plan
                .notes
                .extend(said.iter().map(|n| format!("health: {n}")));
            planned.release.not_undone = said;
        }
        Ok(Loaded::Planned(Box::new(planned)))
    }

    /// The branch may need a newer agent: read before the full load, which an old
    /// agent may not understand. `plan` reports it; `pull` on the device upgrades and
    /// re-executes (or fails); elsewhere the full load rejects the branch and says why.
    fn gate(&self, fleet_file: &FleetFile, source: &Source) -> Result<Option<Done>, Stopped> {
        let Some(r) = fleet_file.requirement().filter(|r| !r.is_met()) else {
            return Ok(None);
        };
        if self.mode == Mode::Plan {
            return Ok(Some(Done::AgentUpgrade(PlanOutcome::AgentUpgrade {
                req: r,
                device: self.config.device_id.clone(),
                origin: self.origin.clone(),
                commit: self.commit.clone(),
            })));
        }
        if self.mode == Mode::Pull && crate::selfupdate::may_upgrade(self.host) {
            let pin = gate::pinned_version(source).map_err(|e| (RunOutcome::Failed, e))?;
            let e = crate::selfupdate::upgrade_and_reexec(self.host, &r, pin.as_deref());
            return Err((RunOutcome::Failed, e));
        }
        Ok(None)
    }

    /// Plans against this root filesystem's state only.
    fn plan(
        &mut self,
        desired: DesiredState,
        settings: &Settings,
        os_declared: Declared,
    ) -> Result<Planned> {
        let rootfs = state::rootfs_id(self.host)?;
        self.previous_here = self
            .previous
            .clone()
            .filter(|s| s.rootfs.is_some() && s.rootfs == rootfs);
        if self.previous.is_some() && self.previous_here.is_none() {
            info!("the root filesystem is not the one of the last run: converging everything");
        }
        let plan = resources::plan(
            self.host,
            &desired,
            self.previous_here.as_ref().map(|s| &s.resources),
            &resources::Options {
                prune: settings.prune,
                apt_lists_max_age: Duration::from_secs(settings.apt_lists_max_age_minutes * 60),
                state_dir: self.config.state_dir.clone(),
                http_timeout: Duration::from_secs(self.config.http.timeout_secs),
                ab_managed: os_declared.image.is_some(),
            },
            self.commit.clone(),
        )?;
        let os_state = self
            .previous
            .as_ref()
            .map(|p| p.os_update.clone())
            .unwrap_or_default();
        let os_line = osupdate::plan_line(&os_declared, &os_state);
        Ok(Planned {
            desired,
            origin: self.origin.clone(),
            commit: self.commit.clone(),
            commit_label: self.commit_label(),
            plan,
            os_declared,
            os_state,
            os_line,
            against_this_machine: self.working_tree && self.host.is_live(),
            release: Default::default(),
            health: None,
            signature: self.signature.clone(),
        })
    }

    /// The run's report and metrics, after everything it recorded.
    fn report(&self, started: std::time::SystemTime, done: &Result<Done>) {
        let (exit_code, error) = match done {
            Ok(Done::Exit(code)) => (*code, self.refused.as_ref().map(|r| r.1.clone())),
            Ok(_) => (exit::OK, None),
            Err(e) => (e.exit_code(), Some(e.to_string())),
        };
        crate::report::after_run(&crate::report::Finished {
            host: self.host,
            config: &self.config,
            command: if self.mode == Mode::Pull {
                "pull"
            } else {
                "apply"
            },
            state_path: &self.state_path,
            started,
            before: self
                .previous
                .as_ref()
                .map(|p| p.counters.clone())
                .unwrap_or_default(),
            applied: self.applied.as_ref(),
            exit_code,
            error,
        });
    }

    fn commit_label(&self) -> String {
        self.commit
            .as_deref()
            .map(|c| c[..12].to_string())
            .unwrap_or_else(|| "working tree".into())
    }

    /// A run that stops before applying records why (plan records nothing); a pull
    /// still takes the OS step of a stopped run (an update being verified cannot
    /// converge: its health timeout still runs).
    fn stopped(&self, outcome: RunOutcome, e: Error) -> Result<Done> {
        if self.mode == Mode::Plan {
            return Err(e);
        }
        let recorded = record(
            &self.state_path,
            self.previous.clone(),
            self.previous.as_ref(),
            |s| {
                s.last_commit = self.commit.clone();
                s.branch = self.branch.clone();
                s.outcome = Some(outcome);
                s.message = Some(e.to_string());
                s.offline = self.offline.is_some();
                s.changes = 0;
                s.warnings = self.warnings.clone();
                s.stale = self.stale.clone();
            },
        );
        // A full disk may refuse the record too: the run's own error is the one to
        // return.
        let mut recorded = match recorded {
            Ok(r) => r,
            Err(record_error) => {
                log::error!("{record_error}");
                return Err(e);
            }
        };
        if self.mode == Mode::Pull {
            match self.os_update(&mut recorded, |step, os, save| {
                osupdate::stopped_pull_step(step, os, self.offline.is_none(), save)
            }) {
                Ok(false) => {}
                Ok(true) => {
                    log::error!("{e}");
                    return Ok(Done::Exit(exit::REBOOTING));
                }
                // Both errors are shown: the load error first, then the OS step's.
                Err(os) => {
                    log::error!("{e}");
                    return Err(os);
                }
            }
        }
        Err(e)
    }

    /// Runs an OS-update step whose every transition is saved into `recorded`; true
    /// when it asked for a reboot.
    fn os_update(
        &self,
        recorded: &mut State,
        step: impl FnOnce(&osupdate::Step, &mut OsState, &mut osupdate::Save) -> Result<bool>,
    ) -> Result<bool> {
        let os_step = osupdate::Step {
            host: self.host,
            config: &self.config.os_update,
            state_dir: &self.config.state_dir,
            http_timeout: Duration::from_secs(self.config.http.timeout_secs),
            download_deadline: Duration::from_secs(self.config.http.download_deadline_secs),
        };
        let mut os = recorded.os_update.clone();
        let mut save = |os: &OsState| -> Result<()> {
            recorded.os_update = os.clone();
            recorded.save(&self.state_path)
        };
        step(&os_step, &mut os, &mut save)
    }

    /// Applies the plan, records the state, and for `pull` takes the OS step.
    fn apply(&mut self, mut planned: Planned) -> Result<i32> {
        self.note_triggered(&planned.plan)?;
        let plan = &planned.plan;
        self.log_notes(plan);
        let (done, result) = if plan.is_empty() {
            (0, Ok(()))
        } else {
            let applied = crate::apply::apply(self.host, plan, &planned.commit_label);
            crate::selfupdate::note_installed(self.host);
            applied
        };
        if let Err(e @ Error::Damaged(_)) = &result {
            // A file's blob could not be read: the next sync clones again instead of
            // failing on the same object.
            sync::mark_damaged(self.host, &self.config, &e.to_string());
        }
        restamp(self.host, &mut planned.plan, done);
        let plan = &planned.plan;
        let rootfs = state::ensure_rootfs_id(self.host)?;
        let failed = result.as_ref().err().map(|e| e.to_string());
        self.applied = Some(crate::report::Applied::new(
            plan,
            done,
            &planned.desired,
            result.is_ok(),
        ));
        let carried = self.previous.as_ref();
        let mut recorded = record(&self.state_path, self.previous_here.clone(), carried, |s| {
            s.os_update = planned.os_state.clone();
            s.rootfs = Some(rootfs);
            s.last_commit = self.commit.clone();
            s.branch = self.branch.clone();
            s.source = Some(planned.origin.clone());
            s.changes = done;
            s.offline = self.offline.is_some();
            s.warnings = self.warnings.clone();
            s.release = Some(planned.release.clone()).filter(|r| !r.is_empty());
            match &failed {
                None => record_applied(s, plan, self.commit.clone(), self.offline.clone()),
                Some(m) => record_failed(s, plan, done, m),
            }
            self.record_trust(s, failed.is_none());
        })?;
        self.health_gate(&planned, &mut recorded, result.is_ok(), done)?;
        if self.mode == Mode::Pull {
            let this_run = osupdate::RunFacts {
                converged: result.is_ok(),
                reached: self.offline.is_none(),
            };
            let rebooting = match self.os_update(&mut recorded, |step, os, save| {
                osupdate::pull_step(step, &planned.os_declared, os, this_run, save)
            }) {
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
        Ok(self.applied_exit(&planned))
    }

    /// What an applied run records of trust: freshness, the trusted commit; and after
    /// converging to it having refused the tip, the refusal as the outcome and the
    /// tip as the last commit looked at.
    fn record_trust(&self, s: &mut State, converged: bool) {
        s.stale = self.stale.clone();
        if let Some((commit, signature)) = &self.trusted {
            s.trusted_commit = Some(commit.clone());
            s.trusted_branch = self.branch.clone();
            s.signature = Some(signature.clone());
        }
        if let (Some((tip, why)), true) = (&self.refused, converged) {
            s.outcome = Some(RunOutcome::Refused);
            s.message = Some(why.clone());
            s.last_commit = Some(tip.clone());
        }
    }

    /// The journal line of an applied run and its exit code.
    fn applied_exit(&self, planned: &Planned) -> i32 {
        let (plan, device) = (&planned.plan, &planned.desired.device_id);
        let label = &planned.commit_label;
        if plan.is_empty() {
            info!("{device}: no changes at {label}");
        } else {
            let (c, m, r) = plan.counts();
            info!("{device}: applied {label}: {c} created, {m} changed, {r} removed");
        }
        if self.refused.is_some() {
            return exit::REFUSED;
        }
        if let Some(why) = &self.offline {
            warn!("converged to the last fetched commit ({why})");
            return exit::UNREACHABLE;
        }
        exit::OK
    }
}

impl Run<'_> {
    /// `apply` prints the plan, notes included; `pull` prints nothing, so its notes
    /// (held packages, directories left in place, skipped starts, a device held back,
    /// deferred changes) go to the journal.
    fn log_notes(&self, plan: &Plan) {
        if self.mode == Mode::Pull {
            for n in &plan.notes {
                info!("note: {n}");
            }
        }
    }

    /// A device its rollout holds back: the commit it last applied, when that is not
    /// the tip (a device that applied nothing yet takes the tip).
    fn stays_on(&self, standing: Option<&mut crate::release::Standing>) -> Option<git2::Oid> {
        let rel = (self.previous.as_ref()).and_then(|p| p.release.as_ref());
        if let Some(to) = rel.and_then(|r| crate::release::health_target(r, self.commit.as_deref()))
        {
            return git2::Oid::from_str(&to).ok().filter(|_| !self.working_tree);
        }
        let s = standing.filter(|s| s.held_back && !self.working_tree)?;
        let applied = self.previous.as_ref()?.applied_commit.clone()?;
        if Some(&applied) == self.commit.as_ref() {
            return None;
        }
        s.tip = self.commit.clone();
        git2::Oid::from_str(&applied).ok()
    }

    /// The rollout's line in the plan, and the disruptive changes a maintenance window
    /// or the hold file defers (handlers deferred earlier are due again when not).
    fn brake(
        &self,
        planned: &mut Planned,
        brakes: &crate::release::Brakes,
        standing: Option<crate::release::Standing>,
    ) {
        use crate::release;
        if let Some(s) = &standing {
            let short = |c: &str| c.chars().take(12).collect::<String>();
            let said = match (&s.tip, &planned.commit) {
                (Some(tip), Some(on)) => {
                    format!("staying on {}, the branch is at {}", short(on), short(tip))
                }
                _ if !s.held_back => String::new(),
                _ if planned.commit.is_some()
                    && self
                        .previous
                        .as_ref()
                        .and_then(|p| p.applied_commit.as_ref())
                        == planned.commit.as_ref() =>
                {
                    "it already applied this commit".into()
                }
                _ if self.working_tree => "a working tree is never held back".into(),
                _ => "nothing applied yet, so it takes this commit".into(),
            };
            let sep = if said.is_empty() { "" } else { ": " };
            planned
                .plan
                .notes
                .insert(0, format!("{}{sep}{said}", s.line()));
        }
        let carried = (self.previous.as_ref().and_then(|p| p.release.as_ref()))
            .map(|r| r.handlers.clone())
            .unwrap_or_default();
        let hold = self.host.path(Path::new(release::HOLD_FILE)).exists();
        let minutes = crate::time::local_minutes(crate::time::now());
        let synced =
            brakes.window.as_ref().is_none_or(|w| w.trust_clock) || release::clock_synchronized();
        let reason = release::deferral(brakes.window.as_ref(), minutes, synced, hold);
        let mut recorded = release::Recorded {
            rollout: standing,
            ..Default::default()
        };
        match reason {
            None => release::resume(&mut planned.plan, &carried, |verb, unit| {
                crate::host::systemd::systemctl(self.host, verb, unit)
            }),
            Some(why) => {
                let records = (self.previous_here.as_ref()).map(|p| p.resources.clone());
                let (deferred, mut handlers) =
                    release::defer(&mut planned.plan, &why, &records.unwrap_or_default());
                for h in carried {
                    if !handlers.contains(&h) {
                        let due = format!("{} {} (due since an earlier run)", h.verb, h.unit);
                        planned.plan.notes.push(format!("{due}: {why}"));
                        handlers.push(h);
                    }
                }
                let held = !deferred.is_empty() || !handlers.is_empty();
                recorded.deferral = held.then_some(why);
                recorded.deferred = deferred;
                recorded.handlers = handlers;
            }
        }
        planned.release = recorded;
        planned.health = brakes.health.clone();
        self.carry_health(planned);
    }

    /// The health record carried from the last run, and the plan's note when a rollback
    /// is under way or the tip failed its checks here.
    fn carry_health(&self, planned: &mut Planned) {
        let prev = (self.previous.as_ref().and_then(|p| p.release.clone())).unwrap_or_default();
        let short = |c: &str| c.chars().take(12).collect::<String>();
        if let Some(rb) = &prev.rollback {
            let why = rb.problems.join("; ");
            let (from, to) = (short(&rb.from), short(&rb.to));
            planned.plan.notes.insert(
                0,
                format!("health: rolling back from {from} to {to} ({why})"),
            );
        } else if let (Some(tip), Some(good)) = (&self.tip, &prev.good) {
            if prev.failed.contains(tip) && tip != good {
                let (tip, good) = (short(tip), short(good));
                let note = format!("health: {tip} failed its checks on this device: staying on {good} until a newer commit");
                planned.plan.notes.insert(0, note);
            }
        }
        let r = &mut planned.release;
        (r.good, r.failed, r.rollback, r.health, r.not_undone) = (
            prev.good,
            prev.failed,
            prev.rollback,
            prev.health,
            prev.not_undone,
        );
    }

    /// After a pull that changed something under `health:`: the checks, polled until
    /// they pass or the bound is reached. Passed: the commit is the device's good one.
    /// Failed: the commit is marked failed and the rollback to the good one is recorded
    /// before anything else (`converge` runs it). A finished rollback is cleared.
    fn health_gate(
        &self,
        planned: &Planned,
        recorded: &mut State,
        ok: bool,
        done: usize,
    ) -> Result<()> {
        let (Some(h), Some(commit)) = (&planned.health, &planned.commit) else {
            return Ok(());
        };
        let rel = recorded.release.get_or_insert_with(Default::default);
        if let Some(rb) = rel.rollback.clone().filter(|rb| &rb.to == commit && ok) {
            osupdate::health::restart_inactive(self.host, &h.units);
            let took = crate::time::now().saturating_sub(rb.at);
            let said = format!(
                "rolled back from {} to {commit} in {took} s after the failed check",
                rb.from
            );
            warn!("health: {said}");
            let left = crate::release::undo::left_installed(
                self.host,
                &rb.from,
                &rb.packages,
                &planned.desired,
            );
            rel.not_undone.extend(left);
            for n in &rel.not_undone {
                warn!("health: not undone: {n}");
            }
            (rel.rollback, rel.health) = (None, Some(said));
            return recorded.save(&self.state_path);
        }
        if !ok || self.mode != Mode::Pull || (done == 0 && rel.good.is_some()) {
            return Ok(());
        }
        let problems = osupdate::health::poll(
            self.host,
            &crate::fleet::os::Health {
                timeout_seconds: h.timeout_seconds,
                offline_timeout_seconds: h.timeout_seconds,
                units: h.units.clone(),
                commands: h.commands.clone(),
                urls: h.urls.clone(),
            },
        );
        if problems.is_empty() {
            info!("health: {commit} passed its checks");
            (rel.good, rel.health) = (Some(commit.clone()), Some(format!("{commit} passed")));
            rel.not_undone.clear();
            return recorded.save(&self.state_path);
        }
        let why = problems.join("; ");
        rel.health = Some(format!("{commit} failed: {why}"));
        let Some(good) = rel.good.clone().filter(|g| g != commit) else {
            recorded.save(&self.state_path)?;
            return Err(Error::Other(format!("health checks failed ({why}), and no earlier commit passed them here: nothing to roll back to")));
        };
        rel.failed.push(commit.clone());
        rel.rollback = Some(crate::release::Rollback {
            from: commit.clone(),
            to: good.clone(),
            problems,
            at: crate::time::now(),
            packages: crate::release::undo::installed(self.host, &planned.desired),
        });
        recorded.save(&self.state_path)?;
        Err(Error::Other(format!(
            "health checks of {commit} failed ({why}): rolling back to {good}"
        )))
    }

    /// Before applying: the commands that `on_change` makes due are recorded as pending,
    /// so that a run killed before they finish runs them next time (their trigger will
    /// not change again).
    fn note_triggered(&self, plan: &Plan) -> Result<()> {
        let triggered: Vec<&String> = triggered(plan).collect();
        if triggered.is_empty() {
            return Ok(());
        }
        let mut s = self.previous.clone().unwrap_or_default();
        mark_pending(&mut s, plan, triggered.into_iter());
        s.save(&self.state_path)
    }
}

/// Records these commands as pending: their trigger will not change again, so the
/// next run must run them.
fn mark_pending<'p>(s: &mut State, plan: &'p Plan, ids: impl Iterator<Item = &'p String>) {
    for id in ids {
        if let Some(r) = plan.resources.get(id) {
            let pending = ResourceState {
                pending: true,
                ..r.clone()
            };
            s.resources.insert(id.clone(), pending);
        }
    }
}

/// The ids of the commands in a plan that `on_change` makes due.
fn triggered(plan: &Plan) -> impl Iterator<Item = &String> {
    plan.changes.iter().filter_map(|c| {
        let id = c.resource_id.as_ref()?;
        let on_change = c
            .details
            .first()
            .is_some_and(|d| d.contains(resources::command::TRIGGERED));
        (c.kind == ChangeKind::Command && on_change).then_some(id)
    })
}

/// After applying: what each download placed in this run looks like now (its stamp),
/// so that the next run knows it without hashing it.
fn restamp(host: &Host, plan: &mut Plan, done: usize) {
    let placed: Vec<String> = plan
        .changes
        .iter()
        .take(done)
        .filter(|c| c.kind == ChangeKind::Download)
        .filter_map(|c| c.resource_id.clone())
        .collect();
    for id in placed {
        if let Some(r) = plan.resources.get_mut(&id) {
            r.stamp = resources::stamp(host, &r.path);
        }
    }
}

fn record_applied(s: &mut State, plan: &Plan, commit: Option<String>, offline: Option<String>) {
    s.applied_commit = commit;
    s.outcome = Some(if plan.is_empty() {
        RunOutcome::Unchanged
    } else {
        RunOutcome::Applied
    });
    s.message = offline;
    s.resources = plan.resources.clone();
}

/// Keeps what is known: the resources applied before the failure count; the commands
/// `on_change` made due that did not run stay pending.
fn record_failed(s: &mut State, plan: &Plan, done: usize, message: &str) {
    s.outcome = Some(RunOutcome::Failed);
    s.message = Some(message.to_string());
    let ran: Vec<&String> = plan
        .changes
        .iter()
        .take(done)
        .filter_map(|c| c.resource_id.as_ref())
        .collect();
    mark_pending(s, plan, triggered(plan).filter(|id| !ran.contains(id)));
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

/// Updates the state file from the previous state (or a fresh one); the counters carry
/// on from the last recorded state (`carried`), whichever root filesystem it describes.
fn record(
    path: &Path,
    previous: Option<State>,
    carried: Option<&State>,
    update: impl FnOnce(&mut State),
) -> Result<State> {
    let mut s = previous.unwrap_or_default();
    update(&mut s);
    s.time = Some(crate::time::now());
    crate::report::count(&mut s, carried);
    s.save(path)?;
    Ok(s)
}

/// The agent's own files on the device, which no resource may touch (docs/security.md):
/// the state directory, agent.toml, the root filesystem's and the OS update's markers,
/// the built-in roles, and the kernel's /proc, /sys and /dev. `config_file` is the
/// agent.toml in use, as a device path, when it is on the device.
pub(crate) fn reserved(config: &Config, config_file: Option<&Path>) -> Reserved {
    reserved_at(&config.state_dir, &config.roles_dir, config_file)
}

/// The agent's own files on a device with the default agent.toml (`plan --all`, which
/// plans devices from their reports).
pub(crate) fn reserved_by_default() -> Reserved {
    reserved_at(
        Path::new(crate::config::DEFAULT_STATE_DIR),
        Path::new(crate::config::DEFAULT_ROLES_DIR),
        None,
    )
}

fn reserved_at(state_dir: &Path, roles_dir: &Path, config_file: Option<&Path>) -> Reserved {
    let mut paths: Vec<(PathBuf, &str)> = vec![
        (state_dir.to_path_buf(), "the agent's state directory"),
        (DEFAULT_CONFIG.into(), "the agent's configuration"),
        (state::ROOTFS_MARKER.into(), "the root filesystem's marker"),
        (osupdate::SLOT_MARKER.into(), "the OS update's slot marker"),
        (roles_dir.to_path_buf(), "the built-in roles"),
        ("/proc".into(), "the kernel's process filesystem"),
        ("/sys".into(), "the kernel's sysfs"),
        ("/dev".into(), "the device filesystem"),
    ];
    if let Some(c) = config_file.filter(|c| *c != Path::new(DEFAULT_CONFIG)) {
        paths.push((c.to_path_buf(), "the agent's configuration"));
    }
    Reserved::new(paths.into_iter().map(|(p, what)| (p, what.to_string())))
}

/// The device path of the agent.toml in use, when it is under the root.
fn config_on_device(host: &Host, config_path: &Path) -> Option<PathBuf> {
    let rel = config_path.strip_prefix(host.root()).ok()?;
    Some(Path::new("/").join(rel))
}

/// What `validate DIR` found: the devices checked, or every problem.
pub(crate) struct Validation {
    pub(crate) dir: PathBuf,
    pub(crate) outcome: std::result::Result<Vec<String>, Vec<crate::error::Invalid>>,
}

/// `validate DIR`: the fleet repository checked for every device it names.
pub(crate) fn validate(dir: &Path, host: &Host, config_path: &Path) -> Result<Validation> {
    let config = Config::load(config_path, host, false)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::io("cannot open the fleet repository", dir, e))?;
    let source = Source::Dir(dir.clone());
    let builtin = crate::fleet::builtin_roles(&config.roles_dir);
    let fleet_file = FleetFile::read(&source)?;
    let on_device = config_on_device(host, config_path);
    let reserved = reserved(&config, on_device.as_deref());
    let outcome = match Fleet::load(&source, Some(&builtin), &fleet_file, reserved)
        .and_then(|f| f.validate_all())
    {
        Ok(checked) => Ok(checked),
        Err(Error::Invalid(problems)) => Err(problems),
        Err(other) => return Err(other),
    };
    Ok(Validation { dir, outcome })
}

/// The recorded state and where it is.
pub(crate) fn status(host: &Host, config_path: &Path) -> Result<(PathBuf, Option<State>)> {
    let config = Config::load(config_path, host, false)?;
    let path = State::path(host, &config.state_dir);
    let state = State::load(&path);
    Ok((path, state))
}

/// What `os retry` cleared.
pub(crate) struct Retried {
    pub(crate) recorded: bool,
    pub(crate) failed: Vec<String>,
    pub(crate) backoff: Option<String>,
}

/// `os retry`: forget failed artifacts and the backoff, under the run lock.
pub(crate) fn os_retry(host: &Host, config_path: &Path, wait: Duration) -> Result<Retried> {
    let config = Config::load(config_path, host, false)?;
    let path = State::path(host, &config.state_dir);
    let _lock = RunLock::acquire(&host.path(&config.state_dir), wait)?;
    let Some(mut state) = State::load(&path) else {
        return Ok(Retried {
            recorded: false,
            failed: vec![],
            backoff: None,
        });
    };
    let failed = std::mem::take(&mut state.os_update.failed);
    let backoff = state.os_update.backoff.take().map(|b| b.artifact);
    state.save(&path)?;
    let retried = Retried {
        recorded: true,
        failed,
        backoff,
    };
    log::info!(OS_STATE = state.os_update.phase.as_str(); "OS update: retry: {}", retried.summary().trim_end().replace('\n', "; "));
    Ok(retried)
}

/// `release retry`: forget that `commit` (a prefix of 7 or more hex digits; every
/// commit when None) failed its health checks, under the run lock. None: no state yet;
/// else the commits cleared. A rollback under way is left to finish.
pub(crate) fn release_retry(
    host: &Host,
    config_path: &Path,
    commit: Option<&str>,
    wait: Duration,
) -> Result<Option<Vec<String>>> {
    let config = Config::load(config_path, host, false)?;
    let path = State::path(host, &config.state_dir);
    let _lock = RunLock::acquire(&host.path(&config.state_dir), wait)?;
    let Some(mut state) = State::load(&path) else {
        return Ok(None);
    };
    let Some(rel) = state.release.as_mut().filter(|r| !r.failed.is_empty()) else {
        return Ok(Some(vec![]));
    };
    let failed = std::mem::take(&mut rel.failed);
    // A prefix shorter than git's shortest abbreviation could name several commits.
    let c = commit.map(str::to_ascii_lowercase).filter(|c| c.len() >= 7);
    let (cleared, kept): (Vec<String>, Vec<String>) = (failed.into_iter())
        .partition(|f| commit.is_none() || c.as_ref().is_some_and(|c| f.starts_with(c)));
    if cleared.is_empty() {
        return Err(Error::Other(format!(
            "`{}` is not a commit that failed its health checks here (7 to 40 hex digits; failed: {})",
            commit.unwrap_or_default(),
            kept.join(", ")
        )));
    }
    rel.failed = kept;
    state.save(&path)?;
    log::info!("release: retry: allowed again: {}", cleared.join(", "));
    Ok(Some(cleared))
}

impl Retried {
    /// What was cleared, a line each.
    pub(crate) fn summary(&self) -> String {
        if !self.recorded {
            return "no run recorded yet: nothing to retry\n".into();
        }
        let mut said = String::new();
        if !self.failed.is_empty() {
            said.push_str(&format!("allowed again: {}\n", self.failed.join(", ")));
        }
        if let Some(b) = &self.backoff {
            said.push_str(&format!("backoff of {b} cleared\n"));
        }
        if said.is_empty() {
            said.push_str("nothing to retry\n");
        }
        said
    }
}

impl Run<'_> {
    /// Syncs, then decides which commit to load: the tip when it is trusted (or
    /// `[trust]` is off); after a refusal, the last trusted commit again for `pull` and
    /// `apply` (it was verified, so re-applying it is safe and corrects drift), and
    /// nothing for `plan` or a device without one.
    fn sync_and_trust(&mut self) -> Result<(Synced, git2::Oid), Stopped> {
        let failed = |e: Error| (RunOutcome::Failed, e);
        let synced = match sync_followed(self.host, &mut self.config, &mut self.warnings) {
            Ok(s) => s,
            Err(e) => {
                if let Error::Unreachable { message } = &e {
                    self.offline = Some(message.clone());
                }
                return Err(failed(e));
            }
        };
        self.commit = Some(synced.commit.to_string());
        self.branch = Some(self.config.branch.clone());
        self.offline = synced.offline.clone();
        self.origin = format!("{}#{}", redact(&self.config.repo), self.config.branch);
        self.stale = freshness(self.host, &self.config, &synced);
        match self.check_trust(&synced) {
            Ok(()) => {
                let tip = synced.commit;
                Ok((synced, tip))
            }
            Err(e @ Error::Refused { .. }) => match self.fallback(&synced) {
                Some(base) => {
                    log::error!("{e}");
                    self.refused = Some((synced.commit.to_string(), e.to_string()));
                    self.commit = Some(base.to_string());
                    Ok((synced, base))
                }
                None => Err((RunOutcome::Refused, e)),
            },
            Err(e) => Err(failed(e)),
        }
    }

    /// The last trusted commit of this branch, when the run may converge to it again.
    fn fallback(&mut self, synced: &Synced) -> Option<git2::Oid> {
        let p = self.previous.as_ref()?;
        if self.mode == Mode::Plan || p.trusted_branch.as_ref() != Some(&self.config.branch) {
            return None;
        }
        let base = git2::Oid::from_str(p.trusted_commit.as_deref()?).ok()?;
        synced.repo.find_commit(base).ok()?;
        self.trusted = Some((base.to_string(), p.signature.clone().unwrap_or_default()));
        Some(base)
    }
}

impl Run<'_> {
    /// With `[trust]`: the synced tip is applied only when trusted (src/trust). A tip
    /// equal to the last trusted commit is not verified again.
    fn check_trust(&mut self, synced: &Synced) -> Result<()> {
        let Some(path) = self.config.trust.allowed_signers.clone() else {
            return Ok(());
        };
        let tip = synced.commit.to_string();
        let previous = self.previous.as_ref();
        let base = previous.and_then(|p| p.trusted_commit.clone());
        let same_branch =
            previous.and_then(|p| p.trusted_branch.as_ref()) == Some(&self.config.branch);
        if base.as_deref() == Some(tip.as_str()) && same_branch {
            let signature = previous
                .and_then(|p| p.signature.clone())
                .unwrap_or_default();
            log::debug!("trust: {} was verified before: {signature}", &tip[..12]);
            self.signature = Some(signature.clone());
            self.trusted = Some((tip, signature));
            return Ok(());
        }
        let file = self.host.path(&path);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::io("cannot read the trusted keys", &file, e))?;
        let provisioned = trust::Signers::parse(&text);
        for (line, why) in &provisioned.problems {
            warn!("{}:{line}: {why}: this line trusts no key", path.display());
        }
        let base = base.and_then(|b| git2::Oid::from_str(&b).ok());
        let verdict = match base {
            Some(b) if !same_branch => {
                info!("trust: branch {} is new to this device: its tip must be signed by a trusted key", self.config.branch);
                trust::decide_other_branch(&synced.repo, synced.commit, b, &provisioned)
            }
            Some(b) => {
                if synced.repo.find_commit(b).is_err() {
                    sync::deepen(self.host, &self.config, &synced.repo)?;
                }
                trust::decide(&synced.repo, synced.commit, Some(b), &provisioned)
            }
            None => trust::decide(&synced.repo, synced.commit, None, &provisioned),
        };
        self.take_verdict(tip, verdict)
    }

    fn take_verdict(&mut self, tip: String, verdict: trust::Verdict) -> Result<()> {
        match verdict {
            trust::Verdict::Trusted {
                signed,
                rollback,
                rotations,
            } => {
                info!("trust: {}: {signed}", &tip[..12]);
                if let Some(to) = rollback {
                    warn!(
                        "trust: {} is a signed, explicit rollback to {to}",
                        &tip[..12]
                    );
                }
                if rotations > 0 {
                    info!(
                        "trust: followed {rotations} change(s) of {}",
                        trust::REPO_SIGNERS
                    );
                }
                self.signature = Some(signed.clone());
                self.trusted = Some((tip, signed));
                Ok(())
            }
            trust::Verdict::Refused(reason) => {
                self.signature = Some(format!("refused: {reason}"));
                Err(Error::Refused {
                    commit: tip[..12].to_string(),
                    reason,
                })
            }
        }
    }

    /// `plan --repo`: the signature of the working tree's HEAD, when the fleet signs
    /// (agent.toml's keys, or the repository's `.fleet/allowed_signers`). The working
    /// tree itself may differ from HEAD; that is said.
    fn working_tree_signature(&self, dir: &Path) -> Option<String> {
        let repo = git2::Repository::open(dir).ok()?;
        let head = repo.head().ok()?.peel_to_commit().ok()?;
        let provisioned = match &self.config.trust.allowed_signers {
            Some(p) => trust::Signers::parse(&std::fs::read_to_string(self.host.path(p)).ok()?),
            None if dir.join(trust::REPO_SIGNERS).exists() => trust::Signers::default(),
            None => return None,
        };
        let keys = match head.parent(0) {
            Ok(parent) => trust::keys_at(&repo, &parent, &provisioned).ok()?,
            Err(_) => provisioned,
        };
        let short = &head.id().to_string()[..12];
        Some(match trust::verify(&repo, &head, &keys) {
            Ok(good) => format!("HEAD {short}: {good} (the working tree may differ from HEAD)"),
            Err(why) => format!("HEAD {short}: not trusted: {why}"),
        })
    }
}

/// Where systemd-timesyncd says the clock was synchronized (it has no RTC otherwise).
const CLOCK_SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";

/// With `[trust] max_commit_age_secs`: why the tip is too old to be a live feed (a
/// frozen mirror, a withheld push). Not judged while the clock is not synchronized: a
/// Pi without a real-time clock boots with a time of its last shutdown or of its image.
fn freshness(host: &Host, config: &Config, synced: &Synced) -> Option<String> {
    let max = config.trust.max_commit_age_secs?;
    if !host.path(Path::new(CLOCK_SYNCHRONIZED)).exists() {
        log::debug!("freshness not checked: the clock is not synchronized ({CLOCK_SYNCHRONIZED} is missing)");
        return None;
    }
    let commit = synced.repo.find_commit(synced.commit).ok()?;
    let committed = u64::try_from(commit.committer().when().seconds()).unwrap_or(0);
    let age = crate::time::now().saturating_sub(committed);
    (age > max).then(|| {
        let why = format!(
            "the tip {} was committed {} ({}s ago), longer ago than max_commit_age_secs = {max}: the feed may be frozen",
            &synced.commit.to_string()[..12],
            crate::time::format_time(committed),
            age
        );
        warn!("{why}");
        why
    })
}
