//! All rendering of the command line: plans as text and JSON, `status`, `validate`,
//! `os status`. Text is built as strings and printed once.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::redact;
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
    format!(
        "{first}Device {} (type {}; groups: {}; roles: {})\nFleet repository {} at {}\n{}",
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
    json(&serde_json::json!({
        "device": d.device_id,
        "device_type": d.device_type,
        "groups": d.groups,
        "roles": d.roles,
        "source": p.origin,
        "commit": p.commit,
        "changes": p.plan.changes,
        "notes": p.plan.notes,
        "os": os,
    }))
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
    let offline = if s.offline {
        " (server unreachable: used the last fetched commit)"
    } else {
        ""
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
    line("changes:", &s.changes.to_string());
    line("resources:", &s.resources.len().to_string());
    if let Some(m) = &s.message {
        line("message:", m);
    }
    out
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
