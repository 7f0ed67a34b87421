//! The Prometheus text file for node_exporter's textfile collector: written after every
//! run that recorded its state, atomically (a temporary file in the same directory,
//! renamed over `fleet_agent.prom`: the collector reads only `*.prom`, and never sees
//! half a file). Names follow Prometheus' conventions: the `fleet_agent_` prefix, base
//! units in the name (`_seconds`), `_total` for counters, `_info` for labels worth 1;
//! an enumeration is one series per value, 1 for the current one. docs/metrics.md
//! lists every metric.

use std::fmt::Write as _;
use std::path::Path;

use crate::host::{write_atomic, Host};
use crate::osupdate::OsPhase;
use crate::report::{Report, SIGNATURE_REFUSED, SIGNATURE_UNSIGNED, SIGNATURE_VERIFIED};
use crate::state::{RunOutcome, State};

/// The file's name in the collector's directory.
pub(crate) const FILE: &str = "fleet_agent.prom";

/// Writes the metrics into `dir` (a device path; the caller saw that it exists).
pub(crate) fn write(host: &Host, dir: &Path, report: &Report, state: &State) {
    let real = host.path(dir);
    let text = render(report, state);
    if let Err(e) = write_atomic(&real.join(FILE), text.as_bytes(), 0o644, None) {
        log::warn!("cannot write the metrics: {e}");
    }
}

/// One metric: its help, type and samples.
struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl ToString) {
        self.metric(name, kind, help, &[(String::new(), value.to_string())]);
    }
}

/// `{k="v",...}` with Prometheus' escapes (backslash, double quote, newline).
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// One series per value of an enumeration, 1 for `current`.
fn stateset(label: &str, values: &[&str], current: &str) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| {
            let on = if *v == current { "1" } else { "0" };
            (labels(&[(label, v)]), on.to_string())
        })
        .collect()
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

pub(crate) fn render(r: &Report, s: &State) -> String {
    let mut o = Out(String::new());
    let c = &s.counters;
    let none = "";
    o.metric(
        "fleet_agent_info",
        "gauge",
        "The agent's version and the device it runs on (always 1).",
        &[(
            labels(&[
                ("version", &r.agent_version),
                ("device", &r.device),
                ("device_type", r.device_type.as_deref().unwrap_or(none)),
            ]),
            "1".into(),
        )],
    );
    o.metric(
        "fleet_agent_commit_info",
        "gauge",
        "The branch followed, the commit last applied and the commit the last run looked at (always 1).",
        &[(
            labels(&[
                ("branch", r.branch.as_deref().unwrap_or(none)),
                ("applied", r.applied_commit.as_deref().unwrap_or(none)),
                ("last", r.commit.as_deref().unwrap_or(none)),
            ]),
            "1".into(),
        )],
    );
    run_metrics(&mut o, r, s);
    let outcomes: Vec<(String, String)> = RunOutcome::ALL
        .iter()
        .map(|o| {
            let n = c.runs.get(o.as_str()).copied().unwrap_or(0);
            (labels(&[("outcome", o.as_str())]), n.to_string())
        })
        .collect();
    o.metric(
        "fleet_agent_runs_total",
        "counter",
        "Runs recorded, by outcome.",
        &outcomes,
    );
    o.one(
        "fleet_agent_changes_total",
        "counter",
        "Changes applied.",
        c.changes,
    );
    o.one(
        "fleet_agent_drift_corrected_changes_total",
        "counter",
        "Changes applied by runs whose commit was the one already applied (drift corrected).",
        c.drift_corrected,
    );
    o.one(
        "fleet_agent_fetch_failures_total",
        "counter",
        "Runs that could not reach the fleet repository (they used the last fetched commit).",
        c.fetch_failures,
    );
    o.one(
        "fleet_agent_lock_waits_total",
        "counter",
        "Runs that found another run holding the lock and waited for it.",
        c.lock_waits,
    );
    o.one(
        "fleet_agent_lock_wait_seconds_total",
        "counter",
        "Time runs spent waiting for another run's lock.",
        seconds(c.lock_wait_ms),
    );
    os_metrics(&mut o, r, s);
    o.0
}

/// The last run: when, how long, how it ended, what it changed.
fn run_metrics(o: &mut Out, r: &Report, s: &State) {
    o.one(
        "fleet_agent_last_run_timestamp_seconds",
        "gauge",
        "When the last run ended (Unix time).",
        s.time.unwrap_or(0),
    );
    o.one(
        "fleet_agent_last_run_duration_seconds",
        "gauge",
        "How long the last run took.",
        seconds(r.duration_ms),
    );
    let outcomes: Vec<&str> = RunOutcome::ALL.iter().map(|o| o.as_str()).collect();
    o.metric(
        "fleet_agent_last_run_outcome",
        "gauge",
        "The outcome of the last run: 1 for the one it had.",
        &stateset("outcome", &outcomes, &r.outcome),
    );
    o.one(
        "fleet_agent_last_run_exit_code",
        "gauge",
        "The exit code of the last run (fleet-agent --help lists them).",
        r.exit_code,
    );
    o.one(
        "fleet_agent_last_run_changes",
        "gauge",
        "Changes the last run applied.",
        r.changes_applied,
    );
    o.one(
        "fleet_agent_last_run_drift_corrected_changes",
        "gauge",
        "Changes the last run applied although its commit was the one already applied.",
        r.drift_corrected,
    );
    o.one(
        "fleet_agent_last_run_offline",
        "gauge",
        "1 when the last run could not reach the fleet repository.",
        u8::from(r.offline),
    );
    release_metrics(o, r);
    o.metric(
        "fleet_agent_signature_status",
        "gauge",
        "Whether the applied commit's signature was verified: 1 for the status it has.",
        &stateset(
            "status",
            &[SIGNATURE_UNSIGNED, SIGNATURE_VERIFIED, SIGNATURE_REFUSED],
            &r.signature,
        ),
    );
    o.one(
        "fleet_agent_feed_stale",
        "gauge",
        "1 when the tip is older than max_commit_age_secs (a frozen feed; docs/signing.md).",
        u8::from(s.stale.is_some()),
    );
}

/// The rollout and the brakes (docs/rollouts.md): 0 when nothing is declared or held.
fn release_metrics(o: &mut Out, r: &Report) {
    let rel = r.release.clone().unwrap_or_default();
    o.one(
        "fleet_agent_rollout_held_back",
        "gauge",
        "1 when the branch's rollout holds this device on the commit it last applied.",
        u8::from(rel.rollout.as_ref().is_some_and(|s| s.held_back)),
    );
    o.one(
        "fleet_agent_rollout_bucket",
        "gauge",
        "The device's bucket (0-9999) in its branch's rollout; -1 without one.",
        rel.rollout.as_ref().map_or(-1, |s| i64::from(s.bucket)),
    );
    o.one(
        "fleet_agent_deferred_changes",
        "gauge",
        "Disruptive changes the last run deferred (a maintenance window, the hold file).",
        rel.deferred.len()
            + (rel.handlers.iter())
                .filter(|h| {
                    !rel.deferred
                        .iter()
                        .any(|d| d.ends_with(&format!(" {}", h.unit)))
                })
                .count(),
    );
}

/// The A/B OS update and reboots.
fn os_metrics(o: &mut Out, r: &Report, s: &State) {
    let os = &s.os_update;
    let phases: Vec<&str> = OsPhase::ALL.iter().map(|p| p.as_str()).collect();
    o.metric(
        "fleet_agent_os_update_phase",
        "gauge",
        "The A/B OS update's phase: 1 for the current one.",
        &stateset("phase", &phases, os.phase.as_str()),
    );
    o.metric(
        "fleet_agent_os_update_info",
        "gauge",
        "The OS artifact running (current) and the one being installed or verified (target) (always 1).",
        &[(
            labels(&[
                ("current", os.current.as_deref().unwrap_or("")),
                ("target", os.target.as_deref().unwrap_or("")),
            ]),
            "1".into(),
        )],
    );
    o.one(
        "fleet_agent_os_update_failed_artifacts",
        "gauge",
        "OS artifacts that failed and are not retried until `fleet-agent os retry`.",
        os.failed.len(),
    );
    let reasons: Vec<(String, String)> = ["os-update", "packages"]
        .iter()
        .map(|why| {
            let on = r.reboot_required.iter().any(|w| w == why);
            (labels(&[("reason", why)]), u8::from(on).to_string())
        })
        .collect();
    o.metric(
        "fleet_agent_reboot_required",
        "gauge",
        "1 when the device waits for a reboot: an installed OS update (os-update), packages (/run/reboot-required).",
        &reasons,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("a", "x\"y\\z\nw"), ("b", "")]),
            r#"{a="x\"y\\z\nw",b=""}"#
        );
    }

    #[test]
    fn an_enumeration_is_one_series_per_value() {
        assert_eq!(
            stateset("phase", &["idle", "installing"], "installing"),
            [
                (r#"{phase="idle"}"#.to_string(), "0".to_string()),
                (r#"{phase="installing"}"#.to_string(), "1".to_string())
            ]
        );
    }
}
