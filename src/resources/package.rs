//! `package`: present, absent, or pinned (an exact version or a glob), as one apt
//! transaction per run. Planned as a phase, from dpkg's status file (read directly, so a
//! run with nothing to change runs no apt command); when something must change, `apt-get
//! -s` shows what apt will resolve, and `apt-get update` runs first when the sources
//! changed or the lists are stale. Held packages are left alone, with a note.

use std::collections::HashMap;
use std::time::Duration;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::apt::{self, Install, Installed};
use crate::plan::{Change, ChangeAction, ChangeKind, Op, RunPhase};
use crate::resources::planner::Planner;
use crate::resources::{checks, Expand, Kind, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    /// present (default) or absent.
    state: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    #[serde(default)]
    recommends: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PackageState {
    Present,
    Absent,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) state: PackageState,
    /// An exact version or a glob (`1.2.*`).
    pub(crate) version: Option<String>,
    pub(crate) recommends: bool,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Package> {
    let name = x.text(&s.name);
    let state = match s.state.as_ref().map(|st| (st, st.as_str())) {
        None | Some((_, "present")) => PackageState::Present,
        Some((_, "absent")) => PackageState::Absent,
        Some((st, other)) => {
            x.problem(
                st.span(),
                format!("`{other}` is not a package state: expected present or absent"),
            );
            PackageState::Present
        }
    };
    let version = s.version.as_ref().and_then(|v| x.text(v));
    if let (Some(at), Some(why)) = (
        &s.version,
        version.as_deref().and_then(checks::version_problem),
    ) {
        let shown = checks::shown(version.as_deref().unwrap_or_default());
        x.problem(
            at.span(),
            format!("`{shown}` is not a package version: {why}"),
        );
    }
    if let (Some(v), PackageState::Absent) = (&s.version, state) {
        x.problem(v.span(), "a version goes with state: present".into());
    }
    if let Some(n) = &name {
        if !valid_name(n) {
            x.problem(
                s.name.span(),
                format!("`{}` is not a Debian package name", checks::shown(n)),
            );
        }
    }
    Some(Package {
        name: name?,
        state,
        version,
        recommends: s.recommends,
    })
}

fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// What the packages of a run ask apt for.
#[derive(Default)]
struct Wanted {
    install: Vec<Install>,
    remove: Vec<String>,
    recommends: bool,
    /// In words, for a plan whose lists are refreshed first.
    words: Vec<String>,
    roles: Vec<String>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty()
    }
}

/// All package changes as one apt transaction, resolved as apt itself would
/// (`apt-get -s`), plus an `apt-get update` when apt's sources change in this run (the
/// lists must match them, also after a removal) or when a transaction meets stale
/// lists. A root without apt (an image being built) gets a note instead of an update
/// it cannot run.
pub(super) fn plan_phase(packages: &[&Resource], p: &mut Planner, max_age: Duration) -> Result<()> {
    let sources_change = p.changes.iter().any(|c| c.phase == RunPhase::Sources);
    let status = if packages.is_empty() {
        HashMap::new()
    } else {
        apt::dpkg_status(p.host)?
    };
    let wanted = wanted(packages, &status, p);
    log::debug!(
        "packages: {} declared; dpkg's records differ for {} (install {}, remove {})",
        packages.len(),
        wanted.install.len() + wanted.remove.len(),
        wanted.install.len(),
        wanted.remove.len()
    );
    // Only a run with a transaction looks at the lists.
    let why_stale = if wanted.is_empty() {
        None
    } else {
        stale(p, max_age)
    };
    let stale = why_stale.is_some();
    let why = match (sources_change, why_stale) {
        (true, _) => Some("apt sources changed".to_string()),
        (false, why) => why,
    };
    match why {
        Some(why) if wanted.is_empty() && !apt::has_apt(p.host) => p.notes.push(format!(
            "{why}: `apt-get update` skipped: this root has no /usr/bin/apt-get"
        )),
        Some(why) => p.changes.push(Change::run(
            ChangeKind::Apt,
            "update",
            RunPhase::AptUpdate,
            vec![why],
            vec![Op::AptUpdate],
        )),
        None => {}
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let details = simulate(p, &wanted, sources_change || stale)?;
    let mut c = Change::run(
        ChangeKind::Apt,
        "packages",
        RunPhase::Packages,
        details,
        vec![Op::Apt {
            install: wanted.install,
            remove: wanted.remove,
            recommends: wanted.recommends,
        }],
    );
    c.action = ChangeAction::Change;
    c.role = wanted.roles.join(", ");
    p.changes.push(c);
    Ok(())
}

/// Why the lists must be refreshed before a transaction, if they must: there are
/// none, they are older than the fleet's maximum age, or apt's sources or keys changed
/// after the last refresh.
fn stale(p: &Planner, max_age: Duration) -> Option<String> {
    match apt::lists_age(p.host) {
        None => Some("there are no package lists".into()),
        Some(a) if a > max_age => Some(format!("package lists are {} min old", a.as_secs() / 60)),
        Some(_) if apt::sources_newer_than_lists(p.host) => {
            Some("apt's sources changed after the lists were last refreshed".into())
        }
        Some(_) => None,
    }
}

/// The packages that differ from dpkg's records; held ones get a note instead.
fn wanted(packages: &[&Resource], status: &HashMap<String, Installed>, p: &mut Planner) -> Wanted {
    let mut w = Wanted::default();
    for r in packages {
        let Kind::Package(pkg) = &r.kind else {
            continue;
        };
        let name = &pkg.name;
        let current = status.get(name);
        let needs = match pkg.state {
            PackageState::Present => match (current, &pkg.version) {
                (Some(c), _) if !c.is_installed() => true,
                (None, _) => true,
                (Some(c), Some(v)) => !apt::version_matches(&c.version, v),
                (Some(_), None) => false,
            },
            PackageState::Absent => current.is_some_and(|c| c.is_present()),
        };
        if !needs {
            continue;
        }
        if current.is_some_and(|c| c.held()) {
            p.notes.push(format!(
                "package {name} is held (apt-mark hold): left as it is ({})",
                r.declared_at
            ));
            continue;
        }
        if !w.roles.contains(&r.role) {
            w.roles.push(r.role.clone());
        }
        match pkg.state {
            PackageState::Present => {
                w.recommends |= pkg.recommends;
                w.install.push((name.clone(), pkg.version.clone()));
                w.words.push(match &pkg.version {
                    Some(v) => format!("install {name} {v}"),
                    None => format!("install {name}"),
                });
            }
            PackageState::Absent => {
                w.remove.push(name.clone());
                w.words.push(format!("remove {name}"));
            }
        }
    }
    w
}

/// What apt would do, from the current lists. When the lists are refreshed first
/// (`refreshed`), a failure here is only a note: apt can tell after the update.
fn simulate(p: &Planner, w: &Wanted, refreshed: bool) -> Result<Vec<String>> {
    let specs = apt::specs(p.host, &w.install, &w.remove, refreshed)?;
    let (code, stdout, stderr) = apt::simulate(p.host, &specs, w.recommends)?;
    if code == 0 {
        return Ok(apt::simulated(&stdout));
    }
    if !refreshed {
        return Err(Error::Command {
            command: format!("apt-get install {} (simulated)", specs.join(" ")),
            status: format!("exit code {code}; nothing was changed"),
            stderr,
        });
    }
    let mut details = w.words.clone();
    details.push(format!(
        "(apt resolves this after the update; with the current lists: {})",
        apt::why(&stderr)
    ));
    Ok(details)
}
