//! A/B OS updates through the Mender client (`mender-update`, or 3.x `mender`): a state
//! machine persisted in state.json (`os_update`), advanced once per `pull` after the
//! roles are applied. `decide` is pure (declaration + persisted state + facts of this
//! boot → one `OsAction`, decide.rs); the executor gathers the facts, runs each action
//! through the Mender client (client.rs) and the `Host` seam, and saves every transition
//! before acting on it, so that a run killed anywhere resumes on the next one. Also:
//! download.rs, health.rs, report.rs (the text of `os status` and `plan`), hooks.rs
//! (what `pull` calls). docs/os-updates.md has the diagram.
//!
//! Mender facts relied on (mendersoftware/mender, 4.x C++ client):
//! - exit codes: 2 "no update in progress" for commit/rollback, 4 "reboot required" for
//!   `install --reboot-exit-code` (src/mender-update/cli/cli.cpp:
//!   `NoUpdateInProgressExitStatus = 2`, `RebootExitStatus = 4`; without the flag a
//!   reboot-required install exits 0: src/mender-update/cli/actions.cpp InstallAction);
//!   3.x has had `--reboot-exit-code` since mender 2.5.0 (CHANGELOG.md).
//! - `show-artifact` prints the `artifact_name` of the stored provides, which are only
//!   replaced at commit, so during a pending update it still names the old artifact;
//!   "unknown" when there is none (src/mender-update/cli/actions.cpp ShowArtifactAction).
//! - Update Modules that cannot roll back commit during `install` ("Committing
//!   immediately", actions.cpp ResultHandler): a later `commit` then says 2.

use serde::{Deserialize, Serialize};

mod client;
mod decide;
mod download;
mod executor;
pub(crate) mod health;
mod hooks;
mod report;

pub(crate) use crate::config::OsUpdateConfig;
pub(crate) use decide::Declared;
pub(crate) use executor::{RunFacts, Save, Step};
pub(crate) use hooks::{pull_step, stopped_pull_step};
pub(crate) use report::{plan_line, status_text};

/// Where the kernel says which boot this is (a new random id every boot).
pub(crate) const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// A random marker written on the running slot just before each install (a fresh value
/// every time): an image built earlier cannot carry it, so finding it after a reboot
/// means the old slot. Separate from the agent's rootfs-id (state.rs), which must stay
/// put for the next run on the same slot to plan against its previous state.
pub(crate) const SLOT_MARKER: &str = "/etc/fleet-agent/os-update-slot";
/// A downloaded artifact, in the state directory (on /data on a Mender device).
pub(crate) const IMAGE_FILE: &str = "os-image";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OsPhase {
    #[default]
    Idle,
    /// Downloading and `install` running (an update may be half written).
    Installing,
    /// Installed to the passive slot; waiting to reboot (window, operator).
    Installed,
    /// The reboot was asked for.
    Rebooting,
    /// Running the new slot, uncommitted: health checks until commit or timeout.
    Verifying,
    /// `commit` succeeded.
    Committed,
    /// Health failed: `rollback` and a reboot to the old slot.
    RollingBack,
}

impl OsPhase {
    pub(crate) const ALL: [OsPhase; 7] = [
        OsPhase::Idle,
        OsPhase::Installing,
        OsPhase::Installed,
        OsPhase::Rebooting,
        OsPhase::Verifying,
        OsPhase::Committed,
        OsPhase::RollingBack,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OsPhase::Idle => "idle",
            OsPhase::Installing => "installing",
            OsPhase::Installed => "installed",
            OsPhase::Rebooting => "rebooting",
            OsPhase::Verifying => "verifying",
            OsPhase::Committed => "committed",
            OsPhase::RollingBack => "rolling-back",
        }
    }
}

/// Consecutive download/install failures of one artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) artifact: String,
    pub(crate) attempts: u32,
    /// No new attempt before this time (seconds since the epoch).
    pub(crate) after: u64,
    pub(crate) error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct OsState {
    pub(crate) phase: OsPhase,
    /// The artifact the client reported as committed (last seen).
    pub(crate) current: Option<String>,
    /// The artifact being installed / verified / rolled back.
    pub(crate) target: Option<String>,
    /// Artifacts that failed health or were fallen back from: never retried until
    /// `fleet-agent os retry`.
    pub(crate) failed: Vec<String>,
    pub(crate) backoff: Option<Backoff>,
    /// The boot during which the last transition happened (kernel boot id).
    pub(crate) boot_id: Option<String>,
    /// The marker (SLOT_MARKER) written on the slot the update started from, just
    /// before installing.
    pub(crate) old_rootfs: Option<String>,
    /// When the first run on the new slot began verifying.
    pub(crate) verify_since: Option<u64>,
    /// The declared health timeout when the install began: the bound still applies
    /// when a later run cannot load the branch.
    pub(crate) health_timeout: Option<u64>,
    /// The declared offline timeout when the install began (the same way).
    pub(crate) offline_timeout: Option<u64>,
    /// When a run on the new root filesystem first reached the fleet repository: the
    /// health timeout counts from there (time unverified, offline, does not count).
    pub(crate) reached_at: Option<u64>,
    /// What the last transition said (shown by `os status`).
    pub(crate) message: Option<String>,
    /// When the last transition happened.
    pub(crate) changed: Option<u64>,
}
