//! All rendering of the command line: plans as text and JSON, `status`, `validate`,
//! `os status`, `fleet status` and `plan --all`. Text is built as strings and printed once.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::redact;
use crate::fleetwide::{
    BranchStatus, DevicePlan, DeviceStatus, FleetPlan, FleetStatus, Outcome, Standing,
};
use crate::osupdate::{status_text, OsState};
use crate::plan::{ChangeAction, Plan};
use crate::run::{PlanOutcome, Planned};
use crate::state::{RunOutcome, State};
use crate::time::format_time;

/// Prints to stdout; a reader that went away (`| head`) is not an error worth a panic.
/// (SIGPIPE stays ignored, as Rust sets it: the ssh transport writes to a child's pipe.)
pub(super) fn print(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("serializes") + "\n"
}

/// The device and the source, then the plan.
pub(super) fn plan_text(p: &Planned) -> String {
    let d = &p.desired;
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let first = if p.against_this_machine {
        "Planned against this machine (/): without --root, plan --repo compares the working tree with the machine it runs on\n"
    } else {
        ""
    };
    let signature = p
        .signature
        .as_ref()
        .map(|s| format!("Signature: {s}\n"))
        .unwrap_or_default();
    format!(
        "{first}Device {} (type {}; groups: {}; roles: {})\nFleet repository {} at {}\n{signature}{}",
        d.device_id,
        d.device_type.as_deref().unwrap_or("unknown"),
        list(&d.groups),
        list(&d.roles),
        p.origin,
        p.commit_label,
        changes(&p.plan)
    )
}

/// The OS line of `plan`, if any.
pub(super) fn os_line(p: &Planned) -> String {
    p.os_line
        .as_ref()
        .map(|(line, _)| format!("{line}\n"))
        .unwrap_or_default()
}

/// The plan as a maintainer reads it.
fn changes(plan: &Plan) -> String {
    let mut out = String::new();
    for c in &plan.changes {
        let sign = match c.action {
            ChangeAction::Create => '+',
            ChangeAction::Change => '~',
            ChangeAction::Remove => '-',
            ChangeAction::Run => '!',
        };
        let origin = match (&c.declared_at, c.role.is_empty()) {
            (Some(at), false) => format!(" (role {}, {at})", c.role),
            _ if c.action == ChangeAction::Remove => " (no longer declared)".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(out, "{sign} {} {}{origin}", c.kind, c.subject);
        for d in &c.details {
            let _ = writeln!(out, "    {d}");
        }
        if let Some(diff) = &c.diff {
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let (create, change, remove) = plan.counts();
    if plan.is_empty() {
        let _ = writeln!(out, "No changes: the device already matches.");
    } else {
        let _ = writeln!(
            out,
            "Plan: {create} to create, {change} to change, {remove} to remove."
        );
    }
    out
}

/// `plan --json`.
pub(super) fn plan_json(p: &Planned) -> String {
    let d = &p.desired;
    let os = match &p.os_line {
        None => serde_json::Value::Null,
        Some((text, pending)) => serde_json::json!({
            "device_type": p.os_declared.device_type,
            "current": p.os_state.current,
            "artifact": p.os_declared.image.as_ref().map(|i| &i.artifact),
            "uri": p.os_declared.image.as_ref().map(|i| redact(&i.uri)),
            "image_from": p.os_declared.image_from,
            "reboot": p.os_declared.reboot.to_string(),
            "phase": p.os_state.phase.as_str(),
            "failed": p.os_state.failed,
            "pending": pending,
            "summary": text,
        }),
    };
    let mut v = serde_json::json!({
        "device": d.device_id,
        "device_type": d.device_type,
        "groups": d.groups,
        "roles": d.roles,
        "source": p.origin,
        "commit": p.commit,
        "changes": p.plan.changes,
        "notes": p.plan.notes,
        "os": os,
    });
    if let Some(s) = &p.signature {
        v["signature"] = serde_json::Value::String(s.clone());
    }
    json(&v)
}

/// `plan` for a branch that needs a newer agent: say so, install nothing.
pub(super) fn agent_upgrade(outcome: &PlanOutcome, as_json: bool) -> String {
    let PlanOutcome::AgentUpgrade {
        req,
        device,
        origin,
        commit,
    } = outcome
    else {
        return String::new();
    };
    if as_json {
        return json(&serde_json::json!({
            "device": device,
            "source": origin,
            "commit": commit,
            "agent_upgrade": {
                "running": crate::VERSION,
                "min_agent_version": req.min.to_string(),
                "at": req.pos.to_string(),
            },
            "changes": [],
        }));
    }
    format!(
        "Device {device}\nFleet repository {origin}\n{}\n",
        req.report()
    )
}

/// `validate DIR`.
pub(super) fn validated(dir: &Path, checked: &[String]) -> String {
    let mut out = format!(
        "{}: valid ({} device{} checked)\n",
        dir.display(),
        checked.len(),
        if checked.len() == 1 { "" } else { "s" }
    );
    for d in checked {
        let _ = writeln!(out, "  {d}");
    }
    out
}

/// `validate --json`.
pub(super) fn validation_json(v: &crate::run::Validation) -> String {
    let (valid, devices, problems) = match &v.outcome {
        Ok(checked) => (true, checked.clone(), vec![]),
        Err(problems) => (false, vec![], problems.clone()),
    };
    let problems: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "file": p.pos.file,
                "line": p.pos.line,
                "column": p.pos.column,
                "message": p.message,
                "text": p.to_string(),
            })
        })
        .collect();
    json(&serde_json::json!({
        "repository": v.dir.display().to_string(),
        "valid": valid,
        "devices_checked": devices,
        "problems": problems,
    }))
}

/// `status [--json]`.
pub(super) fn status(path: &Path, state: Option<&State>, as_json: bool) -> String {
    let Some(s) = state else {
        return if as_json {
            "null\n".into()
        } else {
            format!("no run recorded yet ({})\n", path.display())
        };
    };
    if as_json {
        return json(&with_iso_times(s));
    }
    let outcome = match s.outcome {
        Some(RunOutcome::Applied) => "applied",
        Some(RunOutcome::Unchanged) => "unchanged (device already matched)",
        Some(RunOutcome::Invalid) => "invalid fleet repository: nothing applied",
        Some(RunOutcome::Failed) => "failed",
        Some(RunOutcome::Refused) => "refused: the tip is not trusted, nothing applied",
        None => "unknown",
    };
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<16}{v}");
    };
    line(
        "last run:",
        &s.time.map(format_time).unwrap_or_else(|| "never".into()),
    );
    let offline = match (s.offline, &s.last_commit) {
        (false, _) => "",
        (true, Some(_)) => " (server unreachable: used the last fetched commit)",
        // A first clone that failed: there is no commit to fall back on.
        (true, None) => " (server unreachable: no commit fetched yet)",
    };
    line("outcome:", &format!("{outcome}{offline}"));
    line(
        "applied commit:",
        s.applied_commit.as_deref().unwrap_or("none"),
    );
    if s.last_commit != s.applied_commit {
        line("last commit:", s.last_commit.as_deref().unwrap_or("none"));
    }
    line("source:", s.source.as_deref().unwrap_or("unknown"));
    if let Some(b) = &s.branch {
        line("branch:", b);
    }
    if let Some(c) = &s.trusted_commit {
        line("trusted commit:", c);
    }
    if let Some(sig) = &s.signature {
        line("signature:", sig);
    }
    if let Some(stale) = &s.stale {
        line("stale feed:", stale);
    }
    line("changes:", &s.changes.to_string());
    line("resources:", &s.resources.len().to_string());
    if let Some(m) = &s.message {
        line("message:", m);
    }
    for w in &s.warnings {
        line("warning:", w);
    }
    if let Some(r) = &s.release {
        if let Some(st) = &r.rollout {
            line("rollout:", &st.line());
        }
        if let Some(why) = &r.deferral {
            let what: Vec<String> = (r.deferred.iter().cloned())
                .chain(
                    (r.handlers.iter())
                        .filter(|h| !r.deferred.iter().any(|d| d.ends_with(&h.unit)))
                        .map(|h| format!("{} {}", h.verb, h.unit)),
                )
                .collect();
            line("deferred:", &format!("{} ({why})", what.join(", ")));
        }
        release_health(r, &mut line);
    }
    out
}

/// The health lines of `status`: the last outcome, a rollback under way, and each
/// commit that failed here with the command that takes it again.
fn release_health(r: &crate::release::Recorded, line: &mut impl FnMut(&str, &str)) {
    if let Some(h) = &r.health {
        line("health:", h);
    }
    if let Some(rb) = &r.rollback {
        let said = format!("from {} to {}: the next run finishes it", rb.from, rb.to);
        line("rolling back:", &said);
    }
    for n in &r.not_undone {
        line("not undone:", n);
    }
    for f in &r.failed {
        let short = f.get(..12).unwrap_or(f);
        let said = format!("{f} (failed its health checks here: skipped until a newer commit; `fleet-agent release retry {short}` takes it again)");
        line("failed commit:", &said);
    }
}

/// The state as JSON with its times (seconds since the epoch in state.json) in ISO 8601.
fn with_iso_times(s: &State) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("state serializes");
    let iso = |v: &mut serde_json::Value| {
        if let Some(secs) = v.as_u64() {
            *v = serde_json::Value::String(format_time(secs));
        }
    };
    iso(&mut v["time"]);
    for key in ["changed", "verify_since"] {
        iso(&mut v["os_update"][key]);
    }
    if v["os_update"]["backoff"].is_object() {
        iso(&mut v["os_update"]["backoff"]["after"]);
    }
    v
}

/// `os status [--json]`.
pub(super) fn os_status(os: &OsState, as_json: bool) -> String {
    if as_json {
        json(os)
    } else {
        status_text(os, format_time)
    }
}

/// A commit, short.
fn short(commit: Option<&str>) -> String {
    commit.map_or("none".into(), |c| c[..c.len().min(12)].to_string())
}

/// Seconds as the largest whole unit: 7d, 12h, 30m, 90s.
fn age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `fleet status`: per branch, per commit, the devices that need a look.
pub(super) fn fleet_status(s: &FleetStatus, devices: bool, only: &[String]) -> String {
    let mut out = String::new();
    let dup = match s.duplicates {
        0 => String::new(),
        n => format!(", {n} stored twice and counted once"),
    };
    let bad = match s.unreadable {
        0 => String::new(),
        n => format!(", {n} unreadable"),
    };
    let devices_seen: usize = s.branches.iter().map(|b| b.devices.len()).sum();
    let _ = writeln!(
        out,
        "{devices_seen} devices, {} report entries in {}{dup}{bad}; not seen: no report for {}",
        s.entries,
        s.reports,
        age(s.not_seen_after_secs)
    );
    let width = s
        .branches
        .iter()
        .flat_map(|b| &b.devices)
        .map(|d| d.device.len())
        .max()
        .unwrap_or(6);
    for b in &s.branches {
        branch_status(&mut out, b, width, s.not_seen_after_secs);
    }
    if !s.never_seen.is_empty() {
        let _ = writeln!(
            out,
            "never seen (named by the inventory, no report): {}",
            s.never_seen.join(", ")
        );
    }
    if devices || !only.is_empty() {
        let _ = writeln!(out, "devices:");
        for b in &s.branches {
            for d in b
                .devices
                .iter()
                .filter(|d| only.is_empty() || only.contains(&d.device))
            {
                let _ = writeln!(out, "  {}", device_line(d, width));
            }
        }
    }
    out
}

fn branch_status(out: &mut String, b: &BranchStatus, width: usize, limit: u64) {
    let count = |st: Standing| b.counts.get(&st).copied().unwrap_or(0);
    let counts: Vec<String> = Standing::ALL
        .iter()
        .filter(|st| count(**st) > 0)
        .map(|st| format!("{} {}", count(*st), st.as_str()))
        .collect();
    let tip = b
        .tip
        .as_deref()
        .map_or("not in the repository".into(), |t| short(Some(t)));
    let _ = writeln!(
        out,
        "branch {} (tip {tip}): {} devices: {}",
        b.branch,
        b.devices.len(),
        counts.join(", ")
    );
    let _ = writeln!(
        out,
        "  {:<14}{:>10}{:>8}{:>9}{:>10}",
        "commit", "converged", "failed", "pending", "not seen"
    );
    for (commit, n) in &b.commits {
        let c = |st: Standing| n.get(&st).copied().unwrap_or(0);
        let tip_mark = if Some(commit.as_str()) == b.tip.as_deref() {
            "  (tip)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:<14}{:>10}{:>8}{:>9}{:>10}{tip_mark}",
            short(Some(commit)),
            c(Standing::Converged),
            c(Standing::Failed),
            c(Standing::Pending),
            c(Standing::NotSeen)
        );
    }
    for (st, title) in [
        (Standing::Failed, "failed:".to_string()),
        (Standing::Pending, "pending:".to_string()),
        (Standing::NotSeen, format!("not seen for {}:", age(limit))),
    ] {
        let list: Vec<&DeviceStatus> = b.devices.iter().filter(|d| d.standing == st).collect();
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title}");
        for d in list {
            let _ = writeln!(out, "    {}", device_line(d, width));
        }
    }
}

/// One device: standing, commit, when, and why.
fn device_line(d: &DeviceStatus, width: usize) -> String {
    let when = d.last_seen.map_or("never".into(), format_time);
    let mut line = format!(
        "{:<width$}  {:<9}  {} at {}  {when}",
        d.device,
        d.standing.as_str(),
        d.outcome,
        short(d.commit.as_deref())
    );
    if d.offline {
        line.push_str("  (fleet repository unreachable)");
    }
    if d.os_phase != "idle" && !d.os_phase.is_empty() {
        line.push_str(&format!("  (OS update {})", d.os_phase));
    }
    if d.missing_reports > 0 {
        line.push_str(&format!("  ({} reports missing)", d.missing_reports));
    }
    if let Some(e) = &d.error {
        line.push_str(&format!(": {}", one_line(e)));
    }
    line
}

/// An error on one line: its lines joined, without the closing "nothing was changed".
fn one_line(error: &str) -> String {
    error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "nothing was changed" && *l != "---")
        .collect::<Vec<_>>()
        .join(" ")
}

/// `fleet status --json` (`only`: those devices only, when given).
pub(super) fn fleet_status_json(s: &FleetStatus, only: &[String]) -> String {
    let mut v = serde_json::to_value(s).expect("status serializes");
    if let Some(branches) = v["branches"].as_array_mut() {
        for b in branches {
            if let Some(devices) = b["devices"].as_array_mut() {
                devices.retain(|d| {
                    only.is_empty() || only.iter().any(|o| d["device"].as_str() == Some(o))
                });
                for d in devices {
                    if let Some(t) = d["last_seen"].as_u64() {
                        d["last_seen"] = serde_json::Value::String(format_time(t));
                    }
                }
            }
            let commits: Vec<serde_json::Value> = b["commits"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|pair| serde_json::json!({"commit": pair[0], "devices": pair[1]}))
                        .collect()
                })
                .unwrap_or_default();
            b["commits"] = serde_json::Value::Array(commits);
        }
    }
    v["now"] = serde_json::Value::String(format_time(s.now));
    json(&v)
}

/// `plan --all`: how many devices change, which resources, which services restart,
/// which reboot, which fail; each device's plan with `detail`.
pub(super) fn fleet_plan(p: &FleetPlan, detail: bool) -> String {
    let mut out = String::new();
    let on = p
        .branch
        .as_deref()
        .map_or(String::new(), |b| format!(" on branch {b}"));
    let n = p.devices.len();
    let changing: Vec<&DevicePlan> = p.devices.iter().filter(|d| d.changes()).collect();
    let failing: Vec<&DevicePlan> = p.devices.iter().filter(|d| d.fails()).collect();
    let _ = writeln!(
        out,
        "Fleet repository {} planned for {n} devices{on}, each against its last report ({})",
        p.repository, p.reports
    );
    let _ = writeln!(
        out,
        "{} of {n} devices change, {} unchanged, {} fail",
        changing.len(),
        n - changing.len() - failing.len(),
        failing.len()
    );
    fleet_plan_resources(&mut out, p);
    let reboots: Vec<&str> = p
        .devices
        .iter()
        .filter(|d| {
            matches!(
                &d.outcome,
                Outcome::Planned {
                    os_line: Some((_, true)),
                    ..
                }
            )
        })
        .map(|d| d.device.as_str())
        .collect();
    let _ = writeln!(out, "reboot for an OS update: {}", list_or_none(&reboots));
    let _ = writeln!(
        out,
        "devices that change: {}",
        list_or_none(&names(&changing))
    );
    held_back_line(&mut out, p);
    for d in &failing {
        let _ = writeln!(
            out,
            "fails: {}: {}",
            d.device,
            failure(d).replace('\n', "\n  ")
        );
    }
    if !p.unreported.is_empty() {
        let _ = writeln!(out, "not planned (no report): {}", p.unreported.join(", "));
    }
    if detail {
        for d in &p.devices {
            let _ = writeln!(out, "\n== {} ({})", d.device, facts_of(d));
            if let Some(h) = &d.held_back {
                let _ = writeln!(out, "{h}");
            }
            match &d.outcome {
                Outcome::Planned { plan, os_line } => {
                    out.push_str(&changes(plan));
                    if let Some((line, _)) = os_line {
                        let _ = writeln!(out, "{line}");
                    }
                }
                _ => {
                    let _ = writeln!(out, "{}", failure(d));
                }
            }
        }
    }
    out
}

/// Each resource that changes, with how many devices, and the restarts.
/// The devices the working tree's rollout holds back, when there are any.
fn held_back_line(out: &mut String, p: &FleetPlan) {
    let held: Vec<&str> = (p.devices.iter())
        .filter(|d| d.held_back.is_some())
        .map(|d| d.device.as_str())
        .collect();
    if !held.is_empty() {
        let said = held.join(", ");
        let _ = writeln!(
            out,
            "held back by the rollout (stay on their commit): {said}"
        );
    }
}

fn fleet_plan_resources(out: &mut String, p: &FleetPlan) {
    let mut by: Vec<((char, String, String), usize)> = Vec::new();
    // A device the rollout holds back does not take the tree now.
    for d in p.devices.iter().filter(|d| d.held_back.is_none()) {
        let Outcome::Planned { plan, .. } = &d.outcome else {
            continue;
        };
        for c in &plan.changes {
            let key = (sign(c.action), c.kind.to_string(), c.subject.clone());
            match by.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => by.push((key, 1)),
            }
        }
    }
    let (restarts, resources): (Vec<_>, Vec<_>) = by
        .into_iter()
        .partition(|((_, kind, _), _)| kind == "restart" || kind == "reload");
    let plural = |n: usize| if n == 1 { "device" } else { "devices" };
    if !resources.is_empty() {
        let _ = writeln!(out, "changes:");
    }
    for ((sign, kind, subject), n) in &resources {
        let _ = writeln!(out, "  {sign} {kind} {subject}: {n} {}", plural(*n));
    }
    let services: Vec<String> = restarts
        .iter()
        .map(|((_, kind, unit), n)| format!("{unit} ({kind}, {n} {})", plural(*n)))
        .collect();
    let _ = writeln!(out, "services restarted: {}", list_or_none(&services));
}

fn sign(a: ChangeAction) -> char {
    match a {
        ChangeAction::Create => '+',
        ChangeAction::Change => '~',
        ChangeAction::Remove => '-',
        ChangeAction::Run => '!',
    }
}

fn names<'a>(list: &[&'a DevicePlan]) -> Vec<&'a str> {
    list.iter().map(|d| d.device.as_str()).collect()
}

fn list_or_none(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Which report a device was planned against.
fn facts_of(d: &DevicePlan) -> String {
    match (d.facts_seq, &d.facts_time) {
        (Some(seq), Some(t)) => format!("report {seq}, {t}"),
        _ => "no report with facts".into(),
    }
}

/// Why a device could not be planned.
fn failure(d: &DevicePlan) -> String {
    match &d.outcome {
        Outcome::LoadFails(problems) => format!("does not load:\n{}", problems.join("\n")),
        Outcome::PlanFails(e) => format!("cannot be planned: {e}"),
        Outcome::NeedsAgent(why) => why.clone(),
        Outcome::NoFacts => "no report of this device carries its facts".into(),
        Outcome::Planned { .. } => String::new(),
    }
}

/// `plan --all --json`.
pub(super) fn fleet_plan_json(p: &FleetPlan) -> String {
    let devices: Vec<serde_json::Value> = p
        .devices
        .iter()
        .map(|d| {
            let (changes, notes, os) = match &d.outcome {
                Outcome::Planned { plan, os_line } => (
                    serde_json::to_value(&plan.changes).expect("changes serialize"),
                    serde_json::to_value(&plan.notes).expect("notes serialize"),
                    os_line.as_ref().map(
                        |(text, pending)| serde_json::json!({"summary": text, "pending": pending}),
                    ),
                ),
                _ => (serde_json::json!([]), serde_json::json!([]), None),
            };
            serde_json::json!({
                "device": d.device,
                "branch": d.branch,
                "facts_report": d.facts_seq,
                "facts_time": d.facts_time,
                "changes_pending": d.changes(),
                "held_back": d.held_back,
                "fails": d.fails().then(|| failure(d)),
                "changes": changes,
                "notes": notes,
                "os": os,
            })
        })
        .collect();
    json(&serde_json::json!({
        "repository": p.repository,
        "reports": p.reports,
        "branch": p.branch,
        "devices_planned": p.devices.len(),
        "devices_changing": p.devices.iter().filter(|d| d.changes()).map(|d| &d.device).collect::<Vec<_>>(),
        "devices_failing": p.devices.iter().filter(|d| d.fails()).map(|d| &d.device).collect::<Vec<_>>(),
        "not_planned": p.unreported,
        "devices": devices,
    }))
}
