//! `fleet status`: each device's last report against the tip of the branch it follows.
//! A device is, in this order: not seen (its last report is older than the limit),
//! failed (its last run failed or found the branch invalid, with the error), converged
//! (it applied the tip), or pending (seen, on an older commit). Inventory devices with
//! no report at all are never seen.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fleetwide::store::Reports;
use crate::report::Report;

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Standing {
    Converged,
    Failed,
    Pending,
    NotSeen,
}

impl Standing {
    pub(crate) const ALL: [Standing; 4] = [
        Standing::Converged,
        Standing::Failed,
        Standing::Pending,
        Standing::NotSeen,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Standing::Converged => "converged",
            Standing::Failed => "failed",
            Standing::Pending => "pending",
            Standing::NotSeen => "not seen",
        }
    }
}

/// One device, from its last report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeviceStatus {
    pub(crate) device: String,
    pub(crate) standing: Standing,
    pub(crate) branch: Option<String>,
    /// The commit it stands at: the one it applied, or for a failed run the one it tried.
    pub(crate) commit: Option<String>,
    pub(crate) applied_commit: Option<String>,
    pub(crate) outcome: String,
    pub(crate) error: Option<String>,
    /// When its last run ended (seconds since the epoch, the device's clock).
    pub(crate) last_seen: Option<u64>,
    pub(crate) seq: u64,
    pub(crate) offline: bool,
    /// Reports numbered between its first and last one that were never stored.
    pub(crate) missing_reports: u64,
    pub(crate) os_phase: String,
}

/// One branch: its tip and its devices.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BranchStatus {
    pub(crate) branch: String,
    /// None: the repository has no such branch.
    pub(crate) tip: Option<String>,
    pub(crate) counts: BTreeMap<Standing, usize>,
    /// By the commit they stand at: how many of each standing.
    pub(crate) commits: Vec<(String, BTreeMap<Standing, usize>)>,
    pub(crate) devices: Vec<DeviceStatus>,
}

/// What `fleet status` found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetStatus {
    pub(crate) reports: String,
    pub(crate) repository: String,
    pub(crate) now: u64,
    pub(crate) not_seen_after_secs: u64,
    pub(crate) entries: usize,
    pub(crate) duplicates: usize,
    pub(crate) unreadable: usize,
    pub(crate) branches: Vec<BranchStatus>,
    /// Devices the inventory names that never reported.
    pub(crate) never_seen: Vec<String>,
}

impl FleetStatus {
    /// Whether any device's last run failed.
    pub(crate) fn any_failed(&self) -> bool {
        self.branches
            .iter()
            .any(|b| b.counts.get(&Standing::Failed).copied().unwrap_or(0) > 0)
    }
}

/// How one device stands, given its branch's tip.
pub(crate) fn device_status(
    r: &Report,
    tip: Option<&str>,
    now: u64,
    limit: u64,
    missing: u64,
) -> DeviceStatus {
    let last_seen = crate::time::parse_time(&r.finished);
    let failed = matches!(r.outcome.as_str(), "failed" | "invalid" | "refused");
    let standing = if last_seen.is_none_or(|t| now.saturating_sub(t) > limit) {
        Standing::NotSeen
    } else if failed {
        Standing::Failed
    } else if tip.is_some() && r.applied_commit.as_deref() == tip {
        Standing::Converged
    } else {
        Standing::Pending
    };
    DeviceStatus {
        device: r.device.clone(),
        standing,
        branch: r.branch.clone(),
        commit: if failed {
            r.commit.clone()
        } else {
            r.applied_commit.clone()
        },
        applied_commit: r.applied_commit.clone(),
        outcome: r.outcome.clone(),
        error: r.errors.first().cloned(),
        last_seen,
        seq: r.seq,
        offline: r.offline,
        missing_reports: missing,
        os_phase: r.os_update.phase.clone(),
    }
}

/// Groups the devices' last reports by branch (only `only_branch`, when given).
pub(crate) fn by_branch(
    reports: &Reports,
    tip: &dyn Fn(&str) -> Option<String>,
    now: u64,
    limit: u64,
    only_branch: Option<&str>,
) -> Vec<BranchStatus> {
    let mut branches: BTreeMap<String, BranchStatus> = BTreeMap::new();
    for device in reports.by_device.keys() {
        let Some(r) = reports.latest(device) else {
            continue;
        };
        let name = r.branch.clone().unwrap_or_else(|| "(working tree)".into());
        if only_branch.is_some_and(|b| b != name) {
            continue;
        }
        let b = branches
            .entry(name.clone())
            .or_insert_with(|| BranchStatus {
                tip: tip(&name),
                branch: name,
                counts: BTreeMap::new(),
                commits: Vec::new(),
                devices: Vec::new(),
            });
        let d = device_status(r, b.tip.as_deref(), now, limit, reports.missing(device));
        *b.counts.entry(d.standing).or_default() += 1;
        b.devices.push(d);
    }
    for b in branches.values_mut() {
        let mut commits: BTreeMap<String, BTreeMap<Standing, usize>> = BTreeMap::new();
        for d in &b.devices {
            let c = d.commit.clone().unwrap_or_else(|| "none".into());
            *commits.entry(c).or_default().entry(d.standing).or_default() += 1;
        }
        let mut list: Vec<_> = commits.into_iter().collect();
        // The tip first, then by how many devices stand there.
        list.sort_by_key(|(c, n)| {
            (
                Some(c.as_str()) != b.tip.as_deref(),
                std::cmp::Reverse(n.values().sum::<usize>()),
            )
        });
        b.commits = list;
    }
    branches.into_values().collect()
}
