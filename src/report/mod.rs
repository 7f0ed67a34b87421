//! What a run tells the world after its state is recorded: one structured report (a
//! versioned JSON document, docs/reporting.md) sent as one journal entry, and the
//! Prometheus text file that node_exporter's textfile collector reads
//! (docs/metrics.md). Both are built from the recorded state (its counters survive
//! restarts) and what the run knew besides: the plan's changes and how many were
//! applied, the timings, the error. Neither can change the run's outcome: a report or
//! metrics file that cannot be written is a warning.
//!
//! The counters are counted here too (`count`), when the run records its state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::host::Host;
use crate::osupdate::{OsPhase, OsState};
use crate::plan::Plan;
use crate::resources::DesiredState;
use crate::state::{Counters, RunOutcome, State};

pub(crate) mod facts;
mod journal;
mod metrics;

pub(crate) use facts::{Facts, PathFact, ServiceFact};

/// The version of the report's JSON schema (docs/reporting.md). A reader ignores
/// fields it does not know; a change that removes or retypes one is a new version.
pub(crate) const SCHEMA: u32 = 1;
/// The journal's MESSAGE_ID of every report entry (`journalctl MESSAGE_ID=...`).
pub(crate) const MESSAGE_ID: &str = "12d25437cee5491ead203d61bd2aea51";
/// `signature`: agent.toml names no trusted keys (nothing is verified).
pub(crate) const SIGNATURE_UNSIGNED: &str = "unsigned";
/// `signature`: the applied commit was verified (docs/signing.md).
pub(crate) const SIGNATURE_VERIFIED: &str = "verified";
/// `signature`: the last run refused the tip.
pub(crate) const SIGNATURE_REFUSED: &str = "refused";
/// A run that changed nothing (outcome `unchanged`) carries no facts: the device is
/// what the previous report said. Every this many runs (about a day at the timer's
/// 15 minutes) a report carries them anyway, so that what changed beside the agent
/// (an unattended upgrade of an unpinned package, an account) shows within a day.
pub(crate) const FACTS_EVERY: u64 = 96;

/// One run, as the device reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) schema: u32,
    /// Random, unique per report: a report stored twice is counted once.
    pub(crate) id: String,
    /// The run's number on this device (1, 2, ...), from the state's counters.
    pub(crate) seq: u64,
    pub(crate) device: String,
    #[serde(default)]
    pub(crate) device_type: Option<String>,
    pub(crate) agent_version: String,
    /// pull or apply.
    pub(crate) command: String,
    pub(crate) exit_code: i32,
    /// applied, unchanged, invalid or failed.
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) branch: Option<String>,
    /// The commit the run looked at.
    #[serde(default)]
    pub(crate) commit: Option<String>,
    /// The commit last applied successfully (this run's or an earlier one's).
    #[serde(default)]
    pub(crate) applied_commit: Option<String>,
    #[serde(default)]
    pub(crate) source: Option<String>,
    /// The fleet repository could not be reached: the last fetched commit was used.
    #[serde(default)]
    pub(crate) offline: bool,
    /// ISO 8601 UTC.
    pub(crate) started: String,
    pub(crate) finished: String,
    pub(crate) duration_ms: u64,
    #[serde(default)]
    pub(crate) lock_wait_ms: u64,
    /// The rollout standing (bucket, held back, the tip) and what a maintenance window
    /// or the hold file deferred (docs/rollouts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) release: Option<crate::release::Recorded>,
    /// Every change of the plan, in run order, with whether it was applied.
    #[serde(default)]
    pub(crate) changes: Vec<ChangeReport>,
    #[serde(default)]
    pub(crate) changes_applied: u64,
    /// Changes applied although the commit was the one already applied.
    #[serde(default)]
    pub(crate) drift_corrected: u64,
    #[serde(default)]
    pub(crate) errors: Vec<String>,
    #[serde(default)]
    pub(crate) os_update: OsReport,
    /// Why the device needs a reboot: `os-update`, `packages` (/run/reboot-required).
    #[serde(default)]
    pub(crate) reboot_required: Vec<String>,
    /// Whether the commit's signature was verified (today: `unsigned`).
    #[serde(default)]
    pub(crate) signature: String,
    /// None on a run that changed nothing (see FACTS_EVERY).
    #[serde(default)]
    pub(crate) facts: Option<Facts>,
}

/// One change of the run's plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ChangeReport {
    /// create, change, remove or run.
    pub(crate) action: String,
    /// file, directory, symlink, path, group, user, service, apt, systemd, restart, reload.
    pub(crate) kind: String,
    pub(crate) subject: String,
    /// The role that declares it ("" for what the run adds or prunes).
    #[serde(default)]
    pub(crate) role: String,
    /// file:line:column in the fleet repository.
    #[serde(default)]
    pub(crate) declared_at: Option<String>,
    pub(crate) phase: String,
    pub(crate) applied: bool,
}

/// The A/B OS update as the state records it after the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct OsReport {
    pub(crate) phase: String,
    pub(crate) current: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) failed: Vec<String>,
    pub(crate) message: Option<String>,
}

impl OsReport {
    fn of(os: &OsState) -> OsReport {
        OsReport {
            phase: os.phase.as_str().into(),
            current: os.current.clone(),
            target: os.target.clone(),
            failed: os.failed.clone(),
            message: os.message.clone(),
        }
    }
}

/// What applying knew: the plan's changes, how many were applied, and, when the run
/// converged, the services as declared (the plan checked each and corrected it).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    device_type: Option<String>,
    changes: Vec<ChangeReport>,
    services: Option<BTreeMap<String, ServiceFact>>,
}

impl Applied {
    pub(crate) fn new(plan: &Plan, done: usize, desired: &DesiredState, converged: bool) -> Self {
        let changes = plan
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| ChangeReport {
                action: json_word(&c.action),
                kind: c.kind.as_str().into(),
                subject: c.subject.clone(),
                role: c.role.clone(),
                declared_at: c.declared_at.clone(),
                phase: json_word(&c.phase),
                applied: i < done,
            })
            .collect();
        Applied {
            device_type: desired.device_type.clone(),
            changes,
            services: converged.then(|| declared_services(desired)),
        }
    }
}

/// An enum's serde name (`ChangeAction::Create` → "create").
fn json_word(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The declared enablement and activity of each service, in `systemctl` words.
fn declared_services(desired: &DesiredState) -> BTreeMap<String, ServiceFact> {
    let mut out = BTreeMap::new();
    for r in &desired.resources {
        if r.kind.name() != "service" {
            continue;
        }
        let v = serde_json::to_value(&r.kind).unwrap_or_default();
        let enabled = v["enabled"].as_str().map(str::to_string);
        let active = v["running"]
            .as_bool()
            .map(|on| if on { "active" } else { "inactive" }.to_string());
        out.insert(r.kind.subject(), ServiceFact { enabled, active });
    }
    out
}

/// Counts a run into the counters it carries over from `before` (the last recorded
/// state, whichever root filesystem it described), as its state is recorded.
pub(crate) fn count(s: &mut State, before: Option<&State>) {
    let mut c: Counters = before.map(|b| b.counters.clone()).unwrap_or_default();
    let outcome = s.outcome.map_or("unknown", |o| o.as_str());
    *c.runs.entry(outcome.to_string()).or_default() += 1;
    let changes = s.changes as u64;
    c.changes += changes;
    if is_drift(s, before) {
        c.drift_corrected += changes;
    }
    if s.offline {
        c.fetch_failures += 1;
    }
    if let Some(w) = crate::lock::waited() {
        c.lock_waits += 1;
        c.lock_wait_ms += w.as_millis() as u64;
    }
    s.counters = c;
}

/// Changes on a run whose commit is the one already applied on this root filesystem
/// (a fresh slot after an OS update is converged, not corrected).
fn is_drift(s: &State, before: Option<&State>) -> bool {
    before.is_some_and(|b| {
        b.applied_commit.is_some() && b.applied_commit == s.last_commit && b.rootfs == s.rootfs
    })
}

/// What the run tells the report besides the recorded state.
pub(crate) struct Finished<'a> {
    pub(crate) host: &'a Host,
    pub(crate) config: &'a Config,
    /// pull or apply.
    pub(crate) command: &'static str,
    pub(crate) state_path: &'a Path,
    pub(crate) started: SystemTime,
    /// The counters before the run: the state's numbers after it tell whether this run
    /// recorded it, and what it added.
    pub(crate) before: Counters,
    pub(crate) applied: Option<&'a Applied>,
    pub(crate) exit_code: i32,
    pub(crate) error: Option<String>,
}

/// After a run: the report to the journal and the metrics file, from the state this
/// run recorded (none: the run stopped before recording anything, e.g. no lock).
pub(crate) fn after_run(f: &Finished) {
    let journal = f.config.report.journal.unwrap_or(f.host.is_live());
    let dir = f.host.path(&f.config.metrics.textfile_dir);
    let metrics = f.config.metrics.enabled && dir.is_dir();
    if f.config.metrics.enabled && !metrics {
        log::debug!(
            "no metrics: {} does not exist (prometheus-node-exporter creates it)",
            dir.display()
        );
    }
    if !journal && !metrics {
        return;
    }
    let Some(state) = State::load(f.state_path).filter(|s| s.counters.seq() > f.before.seq())
    else {
        log::debug!("this run recorded no state: no report, no metrics");
        return;
    };
    let report = build(f, &state, journal);
    if journal {
        send(f, &report);
    }
    if metrics {
        metrics::write(f.host, &f.config.metrics.textfile_dir, &report, &state);
    }
}

/// The report; with the device's facts only when it goes to the journal (the metrics
/// need none) and the run calls for them.
fn build(f: &Finished, state: &State, with_facts: bool) -> Report {
    let finished = SystemTime::now();
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let services = f.applied.and_then(|a| a.services.clone());
    let mut errors: Vec<String> = Vec::new();
    if matches!(
        state.outcome.map(|o| o.as_str()),
        Some("failed" | "invalid" | "refused")
    ) {
        errors.extend(state.message.clone());
    }
    if let Some(e) = &f.error {
        if !errors.contains(e) {
            errors.push(e.clone());
        }
    }
    Report {
        schema: SCHEMA,
        id: crate::host::random_id(),
        seq: state.counters.seq(),
        device: f.config.device_id.clone(),
        device_type: f
            .applied
            .and_then(|a| a.device_type.clone())
            .or_else(|| f.config.device_type.clone()),
        agent_version: crate::VERSION.into(),
        command: f.command.into(),
        exit_code: f.exit_code,
        outcome: state.outcome.map_or("unknown", |o| o.as_str()).into(),
        branch: state.branch.clone(),
        commit: state.last_commit.clone(),
        applied_commit: state.applied_commit.clone(),
        source: state.source.clone(),
        offline: state.offline,
        started: crate::time::format_time(secs(f.started)),
        finished: crate::time::format_time(secs(finished)),
        duration_ms: finished
            .duration_since(f.started)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        lock_wait_ms: crate::lock::waited().map_or(0, |w| w.as_millis() as u64),
        release: state.release.clone(),
        changes: f.applied.map(|a| a.changes.clone()).unwrap_or_default(),
        changes_applied: state.counters.changes - f.before.changes,
        drift_corrected: state.counters.drift_corrected - f.before.drift_corrected,
        errors,
        os_update: OsReport::of(&state.os_update),
        reboot_required: reboot_required(f.host, &state.os_update),
        signature: signature_status(state).into(),
        facts: (with_facts && carries_facts(state))
            .then(|| facts::gather(f.host, &state.resources, services)),
    }
}

/// The applied commit's signature status: refused by the last run, verified, or
/// not checked.
fn signature_status(state: &State) -> &'static str {
    if state.outcome == Some(RunOutcome::Refused) {
        SIGNATURE_REFUSED
    } else if state.trusted_commit.is_some() && state.trusted_commit == state.applied_commit {
        SIGNATURE_VERIFIED
    } else {
        SIGNATURE_UNSIGNED
    }
}

/// Whether a run's report carries the device's facts: not when it changed nothing,
/// except on the first run and every FACTS_EVERY runs.
fn carries_facts(state: &State) -> bool {
    let seq = state.counters.seq();
    state.outcome != Some(crate::state::RunOutcome::Unchanged) || seq % FACTS_EVERY == 1
}

/// Why the device wants a reboot: an installed OS update waiting for it, packages
/// that asked for one (Debian's /run/reboot-required).
fn reboot_required(host: &Host, os: &OsState) -> Vec<String> {
    let mut why = Vec::new();
    if matches!(
        os.phase,
        OsPhase::Installed | OsPhase::Rebooting | OsPhase::RollingBack
    ) {
        why.push("os-update".to_string());
    }
    if host.path(Path::new("/run/reboot-required")).exists() {
        why.push("packages".to_string());
    }
    why
}

/// The report as one journal entry: to the namespace's socket when it listens, else to
/// the system journal.
fn send(f: &Finished, report: &Report) {
    let json = serde_json::to_string(report).expect("reports serialize");
    let seq = report.seq.to_string();
    let schema = SCHEMA.to_string();
    let message = summary(report);
    let priority = if report.errors.is_empty() { "6" } else { "4" };
    let mut fields: Vec<(&str, &str)> = vec![
        ("MESSAGE_ID", MESSAGE_ID),
        ("MESSAGE", &message),
        ("PRIORITY", priority),
        ("SYSLOG_IDENTIFIER", "fleet-agent"),
        ("FLEET_DEVICE", &report.device),
        ("FLEET_SEQ", &seq),
        ("FLEET_REPORT_ID", &report.id),
        ("FLEET_OUTCOME", &report.outcome),
        ("FLEET_REPORT_SCHEMA", &schema),
    ];
    if let Some(b) = &report.branch {
        fields.push(("FLEET_BRANCH", b));
    }
    if let Some(c) = &report.commit {
        fields.push(("FLEET_COMMIT", c));
    }
    let invocation = std::env::var("INVOCATION_ID")
        .ok()
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(id) = &invocation {
        fields.push(("INVOCATION_ID", id));
    }
    fields.push(("FLEET_REPORT", &json));
    let payload = journal::encode(&fields);
    let ns = &f.config.report.namespace;
    if !ns.is_empty() {
        let socket = journal::namespace_socket(ns);
        match journal::send(&socket, &payload) {
            Ok(()) => return,
            Err(e) if socket.exists() => log::warn!(
                "the report spool (journal namespace {ns}) does not answer ({e}): report {seq} goes to the system journal"
            ),
            Err(_) => log::debug!("no journal namespace {ns}: report {seq} goes to the system journal"),
        }
    }
    if let Err(e) = journal::send(Path::new(journal::SYSTEM_SOCKET), &payload) {
        log::warn!("cannot send report {seq} to the journal: {e}");
    }
}

/// The entry's MESSAGE: what a person reads in `journalctl`.
fn summary(r: &Report) -> String {
    let commit = r.commit.as_deref().map_or("no commit".to_string(), |c| {
        c[..c.len().min(12)].to_string()
    });
    let mut s = format!(
        "fleet-agent report {} of {}: {} at {commit}",
        r.seq, r.device, r.outcome
    );
    if r.changes_applied > 0 {
        s.push_str(&format!(", {} changes applied", r.changes_applied));
    }
    if r.offline {
        s.push_str(", fleet repository unreachable");
    }
    if let Some(e) = r.errors.first() {
        s.push_str(&format!(": {}", e.lines().next().unwrap_or("")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunOutcome;

    fn run(before: Option<&State>, outcome: RunOutcome, commit: &str, changes: usize) -> State {
        let mut s = before.cloned().unwrap_or_default();
        s.outcome = Some(outcome);
        s.last_commit = Some(commit.into());
        s.applied_commit = Some(commit.into());
        s.changes = changes;
        s.offline = false;
        count(&mut s, before);
        s
    }

    #[test]
    fn counters_count_runs_changes_drift_and_fetch_failures() {
        let first = run(None, RunOutcome::Applied, "c1", 5);
        let noop = run(Some(&first), RunOutcome::Unchanged, "c1", 0);
        let drift = run(Some(&noop), RunOutcome::Applied, "c1", 2);
        let update = run(Some(&drift), RunOutcome::Applied, "c2", 3);
        let mut offline = update.clone();
        offline.outcome = Some(RunOutcome::Unchanged);
        offline.changes = 0;
        offline.offline = true;
        count(&mut offline, Some(&update));
        let c = &offline.counters;
        assert_eq!(c.seq(), 5);
        assert_eq!((c.runs["applied"], c.runs["unchanged"]), (3, 2));
        assert_eq!(c.changes, 5 + 2 + 3);
        assert_eq!(
            c.drift_corrected, 2,
            "changes at the commit already applied"
        );
        assert_eq!(c.fetch_failures, 1);
    }

    #[test]
    fn a_fresh_slot_is_converged_not_corrected() {
        let mut before = run(None, RunOutcome::Applied, "c1", 5);
        before.rootfs = Some("a@801".into());
        let mut s = before.clone();
        s.rootfs = Some("b@802".into());
        s.changes = 5;
        count(&mut s, Some(&before));
        assert_eq!(s.counters.drift_corrected, 0);
        assert_eq!(s.counters.changes, 10);
    }

    #[test]
    fn runs_that_change_nothing_carry_facts_once_a_day() {
        let mut s = run(None, RunOutcome::Applied, "c1", 1);
        assert!(carries_facts(&s), "the first run");
        s.outcome = Some(RunOutcome::Unchanged);
        *s.counters.runs.get_mut("applied").unwrap() = 2;
        assert!(!carries_facts(&s));
        *s.counters.runs.get_mut("applied").unwrap() = FACTS_EVERY + 1;
        assert!(carries_facts(&s));
        s.outcome = Some(RunOutcome::Failed);
        *s.counters.runs.get_mut("applied").unwrap() = 2;
        assert!(carries_facts(&s), "a failed run");
    }

    #[test]
    fn the_metrics_file_names_every_metric_with_help_and_type() {
        let s = run(None, RunOutcome::Applied, "c1", 3);
        let r: Report = serde_json::from_value(serde_json::json!({
            "schema": 1, "id": "x", "seq": 1, "device": "pi \"1\"", "agent_version": "0.1.0",
            "command": "pull", "exit_code": 0, "outcome": "applied", "branch": "main",
            "commit": "c1", "applied_commit": "c1", "started": "", "finished": "",
            "duration_ms": 1234, "changes_applied": 3, "signature": "unsigned",
        }))
        .unwrap();
        let text = metrics::render(&r, &s);
        for l in [
            "fleet_agent_info{version=\"0.1.0\",device=\"pi \\\"1\\\"\",device_type=\"\"} 1",
            "fleet_agent_last_run_duration_seconds 1.234",
            "fleet_agent_last_run_outcome{outcome=\"applied\"} 1",
            "fleet_agent_runs_total{outcome=\"applied\"} 1",
            "fleet_agent_changes_total 3",
            "fleet_agent_os_update_phase{phase=\"idle\"} 1",
            "fleet_agent_signature_status{status=\"unsigned\"} 1",
            "fleet_agent_rollout_held_back 0",
            "fleet_agent_rollout_bucket -1",
            "fleet_agent_deferred_changes 0",
        ] {
            assert!(text.lines().any(|x| x == l), "{l} in\n{text}");
        }
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for n in &names {
            assert!(n.starts_with("fleet_agent_"), "{n}");
            assert!(text.contains(&format!("# HELP {n} ")), "{n} has help");
            let counter = text.contains(&format!("# TYPE {n} counter"));
            assert_eq!(counter, n.ends_with("_total"), "{n}: _total for counters");
        }
        assert_eq!(names.len(), 24);
    }
}
