//! The fleet seen from its stored run reports, next to the fleet repository: `fleet
//! status` (each device's last report against the tip of its branch) and `plan --all`
//! (every device planned against its last report's facts, with a working tree). Run by
//! a maintainer or CI; reads the reports (store.rs) and the repository, and never
//! reaches a device. Like run.rs this orchestrates and prints nothing: cli/render.rs
//! renders what it returns. docs/reporting.md describes the reports and the transport.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::DEFAULT_ROLES_DIR;
use crate::error::{Error, Result};
use crate::fleet::source::Source;
use crate::fleet::{Device, Fleet, FleetFile};
use crate::run::reserved_by_default;

mod facts_host;
mod plan_all;
mod status;
pub(crate) mod store;
#[cfg(test)]
mod tests;

pub(crate) use plan_all::{DevicePlan, Outcome};
pub(crate) use status::{BranchStatus, DeviceStatus, FleetStatus, Standing};

/// Where the reports and the repository are.
pub(crate) struct Sources {
    /// A directory of journal files (systemd-journal-remote's output) or a JSON-lines export.
    pub(crate) reports: PathBuf,
    /// The fleet repository: a working tree (of a clone) or a bare repository.
    pub(crate) repo: PathBuf,
    /// Only devices that follow this branch.
    pub(crate) branch: Option<String>,
}

/// `fleet status`: `not_seen_after`: a device whose last report is older is not seen.
pub(crate) fn status(src: &Sources, not_seen_after: u64) -> Result<FleetStatus> {
    let reports = store::read(&src.reports)?;
    let repo = open_repository(&src.repo);
    if repo.is_none() {
        log::warn!(
            "{} is not a git repository: no branch tips, so no device counts as converged",
            src.repo.display()
        );
    }
    let tip = |branch: &str| repo.as_ref().and_then(|r| tip_of(r, branch));
    let now = crate::time::now();
    let branches = status::by_branch(&reports, &tip, now, not_seen_after, src.branch.as_deref());
    let never_seen = match inventory(&src.repo, repo.as_ref()) {
        Ok(named) => named
            .into_iter()
            .filter(|d| !reports.by_device.contains_key(d))
            .collect(),
        Err(e) => {
            log::warn!(
                "cannot read the inventory ({e}): devices that never reported are not listed"
            );
            Vec::new()
        }
    };
    Ok(FleetStatus {
        reports: src.reports.display().to_string(),
        repository: src.repo.display().to_string(),
        now,
        not_seen_after_secs: not_seen_after,
        entries: reports.entries,
        duplicates: reports.duplicates,
        unreadable: reports.unreadable,
        branches,
        never_seen,
    })
}

/// What `plan --all` found.
pub(crate) struct FleetPlan {
    pub(crate) repository: String,
    pub(crate) reports: String,
    pub(crate) branch: Option<String>,
    pub(crate) devices: Vec<DevicePlan>,
    /// Devices the inventory names that have no report: not planned.
    pub(crate) unreported: Vec<String>,
}

/// `plan --all`: the working tree `src.repo` planned for every device with a report.
pub(crate) fn plan_all(src: &Sources) -> Result<FleetPlan> {
    let reports = plan_all::timed("reading the reports", || store::read(&src.reports))?;
    let dir = src
        .repo
        .canonicalize()
        .map_err(|e| Error::io("cannot open the fleet repository", &src.repo, e))?;
    let source = Source::Dir(dir.clone());
    let builtin = crate::fleet::builtin_roles(Path::new(DEFAULT_ROLES_DIR));
    let fleet_file = FleetFile::read(&source)?;
    let fleet = Fleet::load(&source, Some(&builtin), &fleet_file, reserved_by_default())?;
    let repo = open_repository(&dir);
    let old = |commit: &str, device: &Device| {
        let repo = repo.as_ref()?;
        let oid = git2::Oid::from_str(commit).ok()?;
        declared_at(repo, oid, &builtin, device)
            .map_err(|e| log::debug!("{}: the files of commit {commit}: {e}", device.id))
            .ok()
    };
    let devices = plan_all::timed("planning", || {
        Ok(plan_all::plan_devices(
            &fleet,
            &fleet_file,
            &reports,
            src.branch.as_deref(),
            &old,
        ))
    })?;
    let unreported = fleet
        .named_devices()
        .into_iter()
        .filter(|d| !reports.by_device.contains_key(d))
        .collect();
    Ok(FleetPlan {
        repository: dir.display().to_string(),
        reports: src.reports.display().to_string(),
        branch: src.branch.clone(),
        devices,
        unreported,
    })
}

/// The files a commit declares for a device, by path (what a device that applied it
/// and converged has).
fn declared_at(
    repo: &git2::Repository,
    commit: git2::Oid,
    builtin: &Source,
    device: &Device,
) -> Result<HashMap<String, Vec<u8>>> {
    let source = Source::commit(repo, commit)?;
    let file = FleetFile::read(&source)?;
    let fleet = Fleet::load(&source, Some(builtin), &file, reserved_by_default())?;
    let desired = fleet.for_device(device)?.desired;
    facts_host::declared_contents(&desired)
}

/// The git repository at `dir` (a working tree's or a bare one), if it is one.
fn open_repository(dir: &Path) -> Option<git2::Repository> {
    git2::Repository::open(dir)
        .map_err(|e| log::debug!("{}: {}", dir.display(), e.message()))
        .ok()
}

/// A branch's tip as the server has it: `origin/BRANCH` in a clone (as of its last
/// fetch), else the local branch (a bare repository: the server's own).
fn tip_of(repo: &git2::Repository, branch: &str) -> Option<String> {
    let names = [
        format!("refs/remotes/origin/{branch}"),
        format!("refs/heads/{branch}"),
    ];
    let first = usize::from(repo.is_bare());
    names[first..]
        .iter()
        .find_map(|n| repo.refname_to_id(n).ok())
        .map(|id| id.to_string())
}

/// The devices the inventory names: from the working tree, or a bare repository's HEAD.
fn inventory(dir: &Path, repo: Option<&git2::Repository>) -> Result<Vec<String>> {
    let builtin = crate::fleet::builtin_roles(Path::new(DEFAULT_ROLES_DIR));
    let named = |source: &Source| -> Result<Vec<String>> {
        let file = FleetFile::read(source)?;
        Ok(Fleet::load(source, Some(&builtin), &file, reserved_by_default())?.named_devices())
    };
    match repo.filter(|r| r.is_bare()) {
        Some(r) => {
            let head = r
                .head()
                .and_then(|h| h.peel_to_commit())
                .map_err(|e| Error::git("cannot read HEAD", e))?;
            named(&Source::commit(r, head.id())?)
        }
        None => named(&Source::Dir(dir.to_path_buf())),
    }
}
