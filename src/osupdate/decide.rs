//! The decision: from the declaration, the persisted state and the facts of this run,
//! the one next action. Pure, and tested transition by transition (tests.rs).

use crate::fleet::os::{Health, Image, OsDecl, Reboot, Retry};
use crate::osupdate::{OsPhase, OsState};

#[cfg(test)]
pub(super) mod tests;

/// What the branch declares for this device, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    pub(crate) device_type: Option<String>,
    pub(crate) image: Option<Image>,
    /// Where the image is declared: `fleet.yml os.images.TYPE`, or the group_vars or
    /// host_vars position of an `os_image:`.
    pub(crate) image_from: Option<String>,
    pub(crate) reboot: Reboot,
    pub(crate) health: Health,
    pub(crate) retry: Retry,
}

impl Declared {
    pub(crate) fn new(decl: Option<&OsDecl>, device_type: Option<&str>) -> Declared {
        let image = decl.and_then(|d| d.image_for(device_type)).cloned();
        Declared {
            device_type: device_type.map(str::to_string),
            image_from: image
                .as_ref()
                .and(device_type)
                .map(|t| format!("fleet.yml os.images.{t}")),
            image,
            reboot: decl.map(|d| d.reboot).unwrap_or(Reboot::Now),
            health: decl.map(|d| d.health.clone()).unwrap_or_default(),
            retry: decl.map(|d| d.retry).unwrap_or_default(),
        }
    }

    /// The image a group_vars or host_vars `os_image:` chooses, above the device type's.
    pub(crate) fn overridden(mut self, image: Image, from: String) -> Declared {
        self.image = Some(image);
        self.image_from = Some(from);
        self
    }

    /// `, image from WHERE` for the plan line (empty without an image).
    pub(crate) fn image_source(&self) -> String {
        self.image_from
            .as_ref()
            .map(|f| format!(" (image from {f})"))
            .unwrap_or_default()
    }
}

/// What this run observed, read before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Seconds since the epoch.
    pub(crate) now: u64,
    /// Device-local minutes after midnight.
    pub(crate) local_minutes: u16,
    pub(crate) boot_id: String,
    /// This root filesystem's OS-update marker (SLOT_MARKER; None on a new slot).
    pub(crate) rootfs: Option<String>,
    /// `show-artifact`.
    pub(crate) artifact: Option<String>,
    /// Why `show-artifact` failed (then `artifact` is None); a health problem while
    /// verifying.
    pub(crate) artifact_error: Option<String>,
    /// `fw_printenv upgrade_available`; None without fw_printenv.
    pub(crate) upgrade_available: Option<bool>,
    /// This run applied every role without error (from the last fetched commit when
    /// the fleet repository could not be reached).
    pub(crate) converged: bool,
    /// This run reached the fleet repository.
    pub(crate) reached: bool,
}

/// Why nothing is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wait {
    /// No `os:` image for this device type.
    NotDeclared,
    /// The declared artifact is running.
    Current,
    /// The declared artifact failed before.
    Failed(String),
    /// Backing off after a failed download or install.
    Backoff { until: u64 },
    /// The bootloader has an update pending that this agent did not start.
    Foreign,
    /// This run did not converge; no update starts on a device that is not healthy.
    NotConverged,
    /// Installed; the reboot window is closed.
    Window(Reboot),
    /// Installed; `reboot: never` leaves the reboot to an operator.
    Operator,
    /// Verifying; the roles did not converge in this run, checks again next run.
    Unhealthy {
        deadline: u64,
        problems: Vec<String>,
    },
    /// Verifying; healthy as far as the device can tell, but the fleet repository is
    /// out of reach: no verdict before the offline timeout.
    Unverified { until: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OsAction {
    Nothing(Wait),
    /// idle → installing → installed (or idle with a backoff).
    Install(Image),
    /// An install that was interrupted or is no longer wanted: `rollback`, → idle.
    Cancel(String),
    /// installed → rebooting; the run ends with exit 5.
    Reboot,
    /// New boot on another root filesystem: → verifying.
    Arrived,
    /// New boot on the old root filesystem: the bootloader fell back. Mark failed,
    /// `rollback` (2 is fine), → idle.
    FellBack,
    /// Run the health checks (deadlines: seconds since the epoch).
    Verify(Deadlines),
    /// Health passed: `commit`, → committed.
    Commit,
    /// → rolling-back: `rollback`, reboot to the old slot; the run ends with exit 5.
    /// On evidence (a failed check, a refused commit): the artifact is marked failed.
    RollBack(String),
    /// The same, after the new root filesystem stayed unverified (offline) past the
    /// offline timeout: no evidence against the artifact, which is retried after a
    /// backoff.
    RollBackUnverified(String),
    /// Back on the old slot after a rollback: → idle.
    RolledBack,
    /// committed → idle with current = target.
    Finish,
}

/// When a verification gives up: on a failed check, or on being unable to reach the
/// fleet repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// Health checks that still fail then roll back (counted from the first run on the
    /// new slot that reached the fleet repository).
    pub(crate) health: u64,
    /// Still unverified then: roll back, retry later (counted from the first run).
    pub(crate) offline: u64,
}

/// The next action, from the declaration, the persisted state and this run's facts.
pub(crate) fn decide(d: &Declared, s: &OsState, f: &Facts) -> OsAction {
    let rebooted = s.boot_id.as_deref() != Some(f.boot_id.as_str());
    let on_old_slot = f.rootfs.is_some() && f.rootfs == s.old_rootfs;
    match s.phase {
        OsPhase::Idle => {
            let Some(img) = &d.image else {
                return OsAction::Nothing(Wait::NotDeclared);
            };
            if f.artifact.as_deref() == Some(img.artifact.as_str()) {
                return OsAction::Nothing(Wait::Current);
            }
            if s.failed.contains(&img.artifact) {
                return OsAction::Nothing(Wait::Failed(img.artifact.clone()));
            }
            if f.upgrade_available == Some(true) {
                return OsAction::Nothing(Wait::Foreign);
            }
            if let Some(b) = &s.backoff {
                if b.artifact == img.artifact && f.now < b.after {
                    return OsAction::Nothing(Wait::Backoff { until: b.after });
                }
            }
            if !f.converged || !f.reached {
                return OsAction::Nothing(Wait::NotConverged);
            }
            OsAction::Install(img.clone())
        }
        // Cut after the client switched the boot slot and the device rebooted into it:
        // verify it (a commit the client refuses rolls back).
        OsPhase::Installing if rebooted && !on_old_slot => OsAction::Arrived,
        OsPhase::Installing => OsAction::Cancel("an install was interrupted".into()),
        // An operator (or a power cut) rebooted before the agent did: same as below.
        OsPhase::Installed | OsPhase::Rebooting if rebooted => {
            if on_old_slot {
                OsAction::FellBack
            } else {
                OsAction::Arrived
            }
        }
        OsPhase::Installed => {
            let wanted = d.image.as_ref().map(|i| &i.artifact);
            if wanted != s.target.as_ref() {
                return OsAction::Cancel(match wanted {
                    Some(a) => format!("the branch now declares {a}"),
                    None => "the branch no longer declares an OS image".into(),
                });
            }
            match d.reboot {
                Reboot::Now => OsAction::Reboot,
                Reboot::Never => OsAction::Nothing(Wait::Operator),
                w if w.window_open(f.local_minutes) => OsAction::Reboot,
                w => OsAction::Nothing(Wait::Window(w)),
            }
        }
        // The reboot was asked for and this is still the same boot: ask again.
        OsPhase::Rebooting => OsAction::Reboot,
        OsPhase::Verifying if on_old_slot => OsAction::FellBack,
        OsPhase::Verifying => {
            let since = s.verify_since.unwrap_or(f.now);
            let reached = s.reached_at.or(f.reached.then_some(f.now)).unwrap_or(since);
            OsAction::Verify(Deadlines {
                health: reached + d.health.timeout_seconds,
                offline: since + d.health.offline_timeout_seconds,
            })
        }
        OsPhase::Committed => OsAction::Finish,
        // Rebooted but still on the failed, uncommitted image (the power was cut before
        // `rollback`, or the bootloader tried the new slot again): roll back again.
        OsPhase::RollingBack if rebooted && s.old_rootfs.is_some() && !on_old_slot => again(
            s,
            "the new root filesystem is still running after the reboot",
        ),
        OsPhase::RollingBack if rebooted => OsAction::RolledBack,
        OsPhase::RollingBack => again(s, "resuming an interrupted rollback"),
    }
}

/// A rollback taken up again keeps its kind: with blame when the artifact was marked
/// failed, else without (its backoff is already set).
fn again(s: &OsState, why: &str) -> OsAction {
    let blamed = s.target.as_ref().is_some_and(|t| s.failed.contains(t));
    match blamed || s.backoff.is_none() {
        true => OsAction::RollBack(why.into()),
        false => OsAction::RollBackUnverified(why.into()),
    }
}

/// After the health checks of a `Verify`: commit, roll back, check again in this run
/// (`None`), or wait for the next run. Only evidence (a check that fails, roles that
/// fail with the fleet repository in reach) counts against the new slot; a slot that
/// passes its checks but cannot reach the fleet repository is unverified, and is
/// rolled back without blame once the offline deadline passes.
pub(crate) fn verdict(
    d: Deadlines,
    now: u64,
    problems: &[String],
    converged: bool,
    reached: bool,
) -> Option<OsAction> {
    if problems.is_empty() {
        return Some(if reached {
            OsAction::Commit
        } else if now >= d.offline {
            OsAction::RollBackUnverified(
                "the fleet repository could not be reached from the new root filesystem before the offline timeout".into(),
            )
        } else {
            OsAction::Nothing(Wait::Unverified { until: d.offline })
        });
    }
    if now >= d.health {
        Some(OsAction::RollBack(format!(
            "health checks failed: {}",
            problems.join("; ")
        )))
    } else if !converged || !reached {
        // Nothing changes before the next run: no use waiting here.
        Some(OsAction::Nothing(Wait::Unhealthy {
            deadline: d.health,
            problems: problems.to_vec(),
        }))
    } else {
        None
    }
}
