//! What `pull` calls: the OS step after the roles are applied, and the OS step of a
//! pull that stopped before applying (the branch did not load, or the agent could not
//! upgrade itself). Both return true when a reboot was requested (exit 5).

use crate::error::Result;
use crate::fleet::os::{Health, Reboot};
use crate::osupdate::decide::Declared;
use crate::osupdate::executor::{boot_id, RunFacts, Save, Step, StepOutcome};
use crate::osupdate::{OsPhase, OsState};

/// The OS step of a `pull`, after the roles: whether it applied every role and whether
/// it reached the fleet repository.
pub(crate) fn pull_step(
    step: &Step,
    declared: &Declared,
    os: &mut OsState,
    this_run: RunFacts,
    save: &mut Save,
) -> Result<bool> {
    Ok(step.run(declared, os, this_run, save)? == StepOutcome::Rebooting)
}

/// The OS step of a `pull` that stopped before applying. A new slot waiting for its
/// verdict cannot converge its roles, so it counts as unhealthy: past the health
/// timeout recorded at install it rolls back and reboots, and an interrupted rollback or
/// a reboot still pending goes on. Installing or installed count too once the device
/// has rebooted since (it may run the new slot, which must reach its verdict in time);
/// in the same boot they wait, since without a declaration they would be cancelled over
/// a typo. Idle waits for a branch that loads.
pub(crate) fn stopped_pull_step(
    step: &Step,
    os: &mut OsState,
    reached: bool,
    save: &mut Save,
) -> Result<bool> {
    let rebooted =
        || -> Result<bool> { Ok(os.boot_id.as_deref() != Some(boot_id(step.host)?.as_str())) };
    let act = match os.phase {
        OsPhase::Rebooting | OsPhase::Verifying | OsPhase::RollingBack => true,
        OsPhase::Installing | OsPhase::Installed => rebooted()?,
        OsPhase::Idle | OsPhase::Committed => false,
    };
    if !act {
        return Ok(false);
    }
    let mut health = Health::default();
    if let Some(t) = os.health_timeout {
        health.timeout_seconds = t;
    }
    if let Some(t) = os.offline_timeout {
        health.offline_timeout_seconds = t;
    }
    let declared = Declared {
        image_from: None,
        device_type: None,
        image: None,
        reboot: Reboot::Now,
        health,
        retry: Default::default(),
    };
    let this_run = RunFacts {
        converged: false,
        reached,
    };
    pull_step(step, &declared, os, this_run, save)
}
