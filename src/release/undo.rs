//! What a health-gated rollback cannot undo (docs/rollouts.md). Rolling back is applying
//! the good commit again; packages are where that falls short: a package the failed
//! commit installed and the good commit does not declare stays (packages are never
//! removed unless declared absent), and a version the good commit pins may no longer be
//! in any repository. Reads dpkg's status and apt's lists through the host, changes
//! nothing: the planner and apply do the rest.

use crate::host::{apt, Host};
use crate::resources::{DesiredState, Kind, PackageState};

/// The packages a commit declares present, as installed now ("name version" each):
/// recorded with the rollback when the commit fails its checks.
pub(crate) fn installed(host: &Host, desired: &DesiredState) -> Vec<String> {
    let status = apt::dpkg_status(host).unwrap_or_default();
    let mut found = Vec::new();
    for (name, state, _) in packages(desired) {
        match status.get(name) {
            Some(s) if s.is_installed() && state != PackageState::Absent => {
                found.push(format!("{name} {}", s.version));
            }
            _ => {}
        }
    }
    found
}

fn packages(d: &DesiredState) -> impl Iterator<Item = (&str, PackageState, Option<&str>)> {
    d.resources.iter().filter_map(|r| match &r.kind {
        Kind::Package(p) => Some((p.name.as_str(), p.state, p.version.as_deref())),
        _ => None,
    })
}

/// During a rollback: a version the good commit pins that the installed one does not
/// match and that apt's lists no longer have is dropped from the desired state (the
/// package stays as it is), so that the rest of the rollback applies; each in words.
/// A version apt has is left to the planner, which installs it (a downgrade included).
pub(crate) fn unpin_unavailable(host: &Host, desired: &mut DesiredState) -> Vec<String> {
    let status = apt::dpkg_status(host).unwrap_or_default();
    let mut said = Vec::new();
    for r in &mut desired.resources {
        let Kind::Package(p) = &mut r.kind else {
            continue;
        };
        let (Some(pin), Some(now)) = (&p.version, status.get(&p.name)) else {
            continue;
        };
        if !now.is_installed() || apt::version_matches(&now.version, pin) {
            continue;
        }
        // apt-cache failing (no apt here) is not "gone": the planner says what it says.
        if let Ok(None) = apt::resolve_glob(host, &p.name, pin) {
            said.push(format!(
                "package {} stays at {}: {pin} is no longer in any repository (apt-cache madison {})",
                p.name, now.version, p.name
            ));
            p.version = None;
        }
    }
    said
}

/// After a rollback: the failed commit's packages (`from`, as recorded when it failed)
/// that the good commit does not declare and that are still installed.
pub(crate) fn left_installed(
    host: &Host,
    from: &str,
    failed: &[String],
    good: &DesiredState,
) -> Vec<String> {
    let status = apt::dpkg_status(host).unwrap_or_default();
    let short = from.get(..8).unwrap_or(from);
    let mut said = Vec::new();
    for entry in failed {
        let name = entry.split(' ').next().unwrap_or_default();
        let declared = packages(good).any(|(n, _, _)| n == name);
        if !declared && status.get(name).is_some_and(|s| s.is_installed()) {
            said.push(format!("package {entry} installed by {short} stays (not declared by the good commit; packages are never removed)"));
        }
    }
    said
}
