//! `service`: a systemd unit enabled, disabled or masked, started or stopped, and its
//! handlers: one restart (`restart_on`, and the unit's own file and drop-ins) or reload
//! (`reload_on`) after all files are written, when those files change in the run.
//! Planned as a phase, after everything else; `daemon-reload` runs first when a unit
//! file changed. Where systemd does not run, starts, stops and restarts are notes.

use std::path::{Path, PathBuf};

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::systemd;
use crate::plan::{Change, ChangeAction, ChangeKind, Op, RunPhase};
use crate::resources::path::device_path;
use crate::resources::planner::Planner;
use crate::resources::{checks, Expand, Kind, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    /// true, false or masked.
    enabled: Option<Spanned<String>>,
    /// started or stopped.
    state: Option<Spanned<String>>,
    #[serde(default)]
    restart_on: Vec<Spanned<String>>,
    #[serde(default)]
    reload_on: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Enablement {
    Enabled,
    Disabled,
    Masked,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Service {
    pub(crate) unit: String,
    pub(crate) enabled: Option<Enablement>,
    /// Some(true): started, Some(false): stopped.
    pub(crate) running: Option<bool>,
    pub(crate) restart_on: Vec<PathBuf>,
    pub(crate) reload_on: Vec<PathBuf>,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Service> {
    let unit = x.text(&s.name).map(|u| {
        if u.contains('.') {
            u
        } else {
            format!("{u}.service")
        }
    });
    if let Some(why) = unit.as_deref().and_then(checks::unit_problem) {
        let shown = checks::shown(unit.as_deref().unwrap_or_default());
        x.problem(
            s.name.span(),
            format!("`{shown}` is not a unit name: {why}"),
        );
    }
    let enabled = match s.enabled.as_ref().map(|e| (e, e.as_str())) {
        None => None,
        Some((_, "true" | "yes")) => Some(Enablement::Enabled),
        Some((_, "false" | "no")) => Some(Enablement::Disabled),
        Some((_, "masked")) => Some(Enablement::Masked),
        Some((e, other)) => {
            x.problem(
                e.span(),
                format!("`{other}` is not an enablement: expected true, false or masked"),
            );
            None
        }
    };
    let running = match s.state.as_ref().map(|e| (e, e.as_str())) {
        None => None,
        Some((_, "started")) => Some(true),
        Some((_, "stopped")) => Some(false),
        Some((e, other)) => {
            x.problem(
                e.span(),
                format!("`{other}` is not a service state: expected started or stopped"),
            );
            None
        }
    };
    let paths = |x: &mut dyn Expand, list: &[Spanned<String>]| -> Vec<PathBuf> {
        list.iter().filter_map(|p| device_path(x, p)).collect()
    };
    let restart_on = paths(x, &s.restart_on);
    let reload_on = paths(x, &s.reload_on);
    Some(Service {
        unit: unit?,
        enabled,
        running,
        restart_on,
        reload_on,
    })
}

const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system/",
    "/usr/lib/systemd/system/",
    "/lib/systemd/system/",
    "/run/systemd/system/",
];

fn is_unit_file(path: &str) -> bool {
    UNIT_DIRS.iter().any(|d| path.starts_with(d))
}

/// The unit file of `unit` or one of its drop-ins.
fn is_unit_file_of(path: &str, unit: &str) -> bool {
    UNIT_DIRS.iter().any(|d| {
        path.strip_prefix(d)
            .is_some_and(|rest| rest == unit || rest.starts_with(&format!("{unit}.d/")))
    })
}

/// What the plan so far changes: paths and other subjects (apt and commands excluded).
struct Changed {
    subjects: Vec<String>,
    /// A package transaction or a command may deliver units.
    delivers: bool,
}

/// Enablement and running state of units, daemon-reload when unit files change, and
/// handlers: one restart (or reload) per service whose declared files change.
pub(super) fn plan_phase(services: &[&Resource], p: &mut Planner) -> Result<()> {
    let live = p.host.systemd_running();
    let changed = Changed {
        subjects: p
            .changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Apt && c.kind != ChangeKind::Command)
            .map(|c| c.subject.clone())
            .collect(),
        delivers: p
            .changes
            .iter()
            .any(|c| c.phase == RunPhase::Packages || c.phase == RunPhase::Commands),
    };
    if live && changed.subjects.iter().any(|s| is_unit_file(s)) {
        p.changes.push(Change::run(
            ChangeKind::Systemd,
            "daemon-reload",
            RunPhase::DaemonReload,
            vec!["unit files changed".into()],
            vec![Op::Command {
                argv: vec!["systemctl".into(), "daemon-reload".into()],
                in_root: false,
            }],
        ));
    }
    for r in services {
        let Kind::Service(s) = &r.kind else {
            continue;
        };
        let mut details = Vec::new();
        let mut ops = Vec::new();
        if let Some(want) = s.enabled {
            enablement(s, want, r, p, &changed, &mut details, &mut ops)?;
        }
        let starts = match s.running {
            Some(run) => activity(s, run, p, &mut details, &mut ops)?,
            None => false,
        };
        if !ops.is_empty() {
            p.changes.push(r.change(ChangeAction::Change, details, ops));
        }
        if !starts && s.running != Some(false) {
            handler(s, r, p, &changed);
        }
    }
    Ok(())
}

fn command(argv: Vec<String>) -> Op {
    Op::Command {
        argv,
        in_root: false,
    }
}

fn enablement(
    s: &Service,
    want: Enablement,
    r: &Resource,
    p: &Planner,
    changed: &Changed,
    details: &mut Vec<String>,
    ops: &mut Vec<Op>,
) -> Result<()> {
    let unit = &s.unit;
    let now = systemd::enablement(p.host, unit)?;
    // A unit that a package, a file or a command of this run delivers is not there yet.
    let arriving = now == "not-found"
        && (changed.delivers
            || changed
                .subjects
                .iter()
                .any(|c| c.ends_with(&format!("/{unit}"))));
    if now == "not-found" && !arriving {
        return Err(Error::Other(format!(
            "{}: there is no unit {unit} on the device",
            r.declared_at
        )));
    }
    let (wanted, verb, matches) = match want {
        Enablement::Enabled => (
            "enabled",
            "enable",
            [
                "enabled",
                "enabled-runtime",
                "static",
                "alias",
                "indirect",
                "generated",
            ]
            .contains(&now.as_str()),
        ),
        Enablement::Disabled => (
            "disabled",
            "disable",
            ["disabled", "static", "indirect"].contains(&now.as_str()),
        ),
        Enablement::Masked => ("masked", "mask", now == "masked" || now == "masked-runtime"),
    };
    if !matches {
        details.push(format!(
            "{} → {wanted}",
            if arriving { "not installed yet" } else { &now }
        ));
        if now.starts_with("masked") && want != Enablement::Masked {
            ops.push(command(systemd::systemctl(p.host, "unmask", unit)));
        }
        ops.push(command(systemd::systemctl(p.host, verb, unit)));
    }
    Ok(())
}

/// Starts or stops the unit where systemd runs; true when it starts.
fn activity(
    s: &Service,
    run: bool,
    p: &mut Planner,
    details: &mut Vec<String>,
    ops: &mut Vec<Op>,
) -> Result<bool> {
    let unit = &s.unit;
    if !p.host.systemd_running() {
        p.notes.push(format!(
            "{unit}: {} skipped: systemd is not running here",
            if run { "start" } else { "stop" }
        ));
        return Ok(false);
    }
    let active = systemd::activity(p.host, unit)?;
    let is_active = active == "active" || active == "activating" || active == "reloading";
    if run && !is_active {
        details.push(format!("{active} → started"));
        ops.push(command(systemd::systemctl(p.host, "start", unit)));
        return Ok(true);
    }
    if !run && is_active {
        details.push(format!("{active} → stopped"));
        ops.push(command(systemd::systemctl(p.host, "stop", unit)));
    }
    Ok(false)
}

/// The restart (or reload) of a service whose files change in this run. The service's
/// own unit file and drop-ins count as its files.
fn handler(s: &Service, r: &Resource, p: &mut Planner, changed: &Changed) {
    let unit = &s.unit;
    let restart_by: Vec<&String> = changed
        .subjects
        .iter()
        .filter(|c| s.restart_on.iter().any(|f| Path::new(c) == f) || is_unit_file_of(c, unit))
        .collect();
    let reload_by: Vec<&String> = changed
        .subjects
        .iter()
        .filter(|c| s.reload_on.iter().any(|f| Path::new(c) == f))
        .collect();
    if restart_by.is_empty() && reload_by.is_empty() {
        return;
    }
    if !p.host.systemd_running() {
        p.notes.push(format!(
            "{unit}: restart skipped: systemd is not running here"
        ));
        return;
    }
    let (verb, kind, by) = if restart_by.is_empty() {
        ("reload-or-restart", ChangeKind::Reload, reload_by)
    } else {
        ("try-restart", ChangeKind::Restart, restart_by)
    };
    let because = by.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    let mut c = r.change(
        ChangeAction::Run,
        vec![format!("because {because} changed")],
        vec![command(systemd::systemctl(p.host, verb, unit))],
    );
    c.kind = kind;
    c.phase = RunPhase::Handlers;
    p.changes.push(c);
}

#[cfg(test)]
mod tests {
    use super::is_unit_file_of;

    #[test]
    fn unit_files_and_drop_ins_belong_to_their_unit() {
        assert!(is_unit_file_of(
            "/etc/systemd/system/web.service",
            "web.service"
        ));
        assert!(is_unit_file_of(
            "/etc/systemd/system/web.service.d/port.conf",
            "web.service"
        ));
        assert!(!is_unit_file_of(
            "/etc/systemd/system/web.service.d/port.conf",
            "api.service"
        ));
        assert!(!is_unit_file_of("/etc/web.service", "web.service"));
    }
}
