//! The agent's record of its runs: one JSON file in the state directory, written
//! atomically. It says what was applied (commit, time, outcome), what each resource
//! declared (digests, whether the agent created it), and which root filesystem it
//! belongs to: after an A/B OS update the new root has none of that, so a state from
//! another root filesystem means "converge everything, prune nothing".

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{write_atomic, Host};
use crate::osupdate::OsState;
use crate::plan::ResourceState;

pub(crate) const STATE_FILE: &str = "state.json";
/// A marker on the root filesystem itself; absent on a freshly installed slot.
pub(crate) const ROOTFS_MARKER: &str = "/etc/fleet-agent/rootfs-id";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RunOutcome {
    /// Changes were applied.
    Applied,
    /// The tip was not trusted (signature, rollback, keys): nothing was applied.
    Refused,
    /// Nothing to do: the device already matched.
    Unchanged,
    /// The fleet repository did not validate; nothing was applied.
    Invalid,
    /// Applying failed part way; the next run converges again.
    Failed,
}

impl RunOutcome {
    pub(crate) const ALL: [RunOutcome; 5] = [
        RunOutcome::Applied,
        RunOutcome::Unchanged,
        RunOutcome::Invalid,
        RunOutcome::Failed,
        RunOutcome::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Applied => "applied",
            RunOutcome::Unchanged => "unchanged",
            RunOutcome::Invalid => "invalid",
            RunOutcome::Failed => "failed",
            RunOutcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct State {
    pub(crate) version: u32,
    /// Identity of the root filesystem this state describes.
    pub(crate) rootfs: Option<String>,
    /// The commit last applied successfully.
    pub(crate) applied_commit: Option<String>,
    /// With `[trust]`: the last commit whose signature and descent were verified and
    /// that was applied; the next tip must descend from it (src/trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trusted_commit: Option<String>,
    /// The branch of the trusted commit (descent is judged within one branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trusted_branch: Option<String>,
    /// With `[trust]`: git's line for the signature of the trusted commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signature: Option<String>,
    /// With `max_commit_age`: why the feed is stale (None when it is fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stale: Option<String>,
    /// The commit the last run looked at (may differ after a failure).
    pub(crate) last_commit: Option<String>,
    /// Where the fleet repository came from: URL and branch, or a directory.
    pub(crate) source: Option<String>,
    /// The branch the last run followed (a host_vars `branch:` may differ from the
    /// configured one); None for a working tree.
    #[serde(default)]
    pub(crate) branch: Option<String>,
    /// Seconds since the epoch when the last run ended.
    pub(crate) time: Option<u64>,
    pub(crate) outcome: Option<RunOutcome>,
    pub(crate) message: Option<String>,
    pub(crate) changes: usize,
    /// True when the last run could not reach the git server.
    #[serde(default)]
    pub(crate) offline: bool,
    /// What the last run warned about (a followed branch the server does not have).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
    pub(crate) resources: BTreeMap<String, ResourceState>,
    /// The A/B OS update (src/osupdate.rs). Not tied to a root filesystem: it is carried
    /// over when the rootfs changes, since that change is the update's own doing.
    #[serde(default)]
    pub(crate) os_update: OsState,
    /// What every recorded run adds up to (metrics and reports, src/report/).
    #[serde(default)]
    pub(crate) counters: Counters,
    /// The rollout standing and deferred changes of the last run (src/release/).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) release: Option<crate::release::Recorded>,
}

/// Counters over all the runs this state has recorded: they only grow (Prometheus
/// counters), and they live here so that they survive restarts, and A/B updates when
/// the state directory is on the data partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct Counters {
    /// Runs recorded, by outcome. Their sum numbers the reports (`seq`).
    pub(crate) runs: BTreeMap<String, u64>,
    /// Changes applied.
    pub(crate) changes: u64,
    /// Changes applied by runs whose commit was the one already applied (drift).
    pub(crate) drift_corrected: u64,
    /// Runs that could not reach the fleet repository.
    pub(crate) fetch_failures: u64,
    /// Runs that found the lock held and waited for it, and how long in all.
    pub(crate) lock_waits: u64,
    pub(crate) lock_wait_ms: u64,
}

impl Counters {
    /// How many runs were recorded: the sequence number of the last report.
    pub(crate) fn seq(&self) -> u64 {
        self.runs.values().sum()
    }
}

impl State {
    pub(crate) fn path(host: &Host, state_dir: &Path) -> PathBuf {
        host.path(state_dir).join(STATE_FILE)
    }

    /// Reads the state; a missing, unreadable or corrupt file is "unknown" (None), with
    /// a warning, never an error: the run then converges everything.
    pub(crate) fn load(path: &Path) -> Option<State> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(
                    "cannot read the state file {}: {e}; converging everything",
                    path.display()
                );
                return None;
            }
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == VERSION => Some(s),
            Ok(s) => {
                warn!(
                    "state file {} has version {}; converging everything",
                    path.display(),
                    s.version
                );
                None
            }
            Err(e) => {
                warn!(
                    "state file {} is damaged ({e}); converging everything",
                    path.display()
                );
                None
            }
        }
    }

    pub(crate) fn save(&mut self, path: &Path) -> Result<()> {
        self.version = VERSION;
        if let Some(dir) = path.parent() {
            crate::host::private_dir(dir)?;
        }
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        write_atomic(path, &json, 0o600, None)
    }
}

/// The identity of the root filesystem: a random id kept on it, and the device number
/// of its mount (A and B slots differ even when both images carry the same marker).
/// None when the marker is missing (a new slot or a new device).
pub(crate) fn rootfs_id(host: &Host) -> Result<Option<String>> {
    let Some(id) = host.read_marker(Path::new(ROOTFS_MARKER))? else {
        return Ok(None);
    };
    let dev = std::fs::metadata(host.root())
        .map_err(|e| Error::io("cannot inspect", host.root(), e))?
        .dev();
    Ok(Some(format!("{id}@{dev:x}")))
}

/// Creates the marker when missing and returns the identity.
pub(crate) fn ensure_rootfs_id(host: &Host) -> Result<String> {
    if let Some(id) = rootfs_id(host)? {
        return Ok(id);
    }
    host.new_marker(Path::new(ROOTFS_MARKER))?;
    Ok(rootfs_id(host)?.expect("marker just written"))
}
