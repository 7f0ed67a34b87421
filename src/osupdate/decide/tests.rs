//! `decide` and `verdict`: every transition of the OS-update state machine.

use super::*;
use crate::osupdate::Backoff;

const NOW: u64 = 1_800_000_000;

pub(in crate::osupdate) fn image(artifact: &str) -> Image {
    Image {
        artifact: artifact.into(),
        uri: format!("http://127.0.0.1:8123/{artifact}.mender"),
        sha256: None,
    }
}

pub(in crate::osupdate) fn declared(artifact: Option<&str>, reboot: Reboot) -> Declared {
    Declared {
        image_from: None,
        device_type: Some("pi4-sim".into()),
        image: artifact.map(image),
        reboot,
        health: Health {
            timeout_seconds: 300,
            ..Health::default()
        },
        retry: Retry::default(),
    }
}

fn facts() -> Facts {
    Facts {
        now: NOW,
        local_minutes: 12 * 60,
        boot_id: "boot-1".into(),
        rootfs: Some("slot-a".into()),
        artifact: Some("fleet-os-1".into()),
        artifact_error: None,
        upgrade_available: Some(false),
        converged: true,
        reached: true,
    }
}

/// State after installing fleet-os-2 during boot-1 on slot-a.
fn in_phase(phase: OsPhase) -> OsState {
    OsState {
        phase,
        current: Some("fleet-os-1".into()),
        target: Some("fleet-os-2".into()),
        boot_id: Some("boot-1".into()),
        old_rootfs: Some("slot-a".into()),
        ..OsState::default()
    }
}

/// Facts of a later boot on the other slot (the agent already wrote its marker there).
fn new_slot() -> Facts {
    Facts {
        boot_id: "boot-2".into(),
        rootfs: Some("slot-b".into()),
        ..facts()
    }
}

pub(in crate::osupdate) fn idle() -> OsState {
    OsState {
        current: Some("fleet-os-1".into()),
        ..OsState::default()
    }
}

#[test]
fn idle_with_a_new_artifact_declared_installs_it() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &idle(), &facts()),
        OsAction::Install(image("fleet-os-2"))
    );
}

#[test]
fn idle_without_a_declaration_or_when_current_does_nothing() {
    let none = declared(None, Reboot::Now);
    assert_eq!(
        decide(&none, &idle(), &facts()),
        OsAction::Nothing(Wait::NotDeclared)
    );
    let same = declared(Some("fleet-os-1"), Reboot::Now);
    assert_eq!(
        decide(&same, &idle(), &facts()),
        OsAction::Nothing(Wait::Current)
    );
    // What the client says counts, not what the state remembers.
    let mut stale = idle();
    stale.current = Some("fleet-os-0".into());
    assert_eq!(
        decide(&same, &stale, &facts()),
        OsAction::Nothing(Wait::Current)
    );
}

#[test]
fn a_failed_artifact_is_not_retried_but_another_one_is() {
    let mut s = idle();
    s.failed = vec!["fleet-os-2".into()];
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &s, &facts()),
        OsAction::Nothing(Wait::Failed("fleet-os-2".into()))
    );
    assert_eq!(
        decide(&declared(Some("fleet-os-3"), Reboot::Now), &s, &facts()),
        OsAction::Install(image("fleet-os-3"))
    );
}

#[test]
fn a_foreign_pending_update_is_left_alone() {
    let f = Facts {
        upgrade_available: Some(true),
        ..facts()
    };
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &idle(), &f),
        OsAction::Nothing(Wait::Foreign)
    );
    // Without fw_printenv the client's own refusal is all there is.
    let f = Facts {
        upgrade_available: None,
        ..facts()
    };
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &idle(), &f),
        OsAction::Install(image("fleet-os-2"))
    );
}

#[test]
fn backoff_holds_the_same_artifact_until_its_time() {
    let mut s = idle();
    s.backoff = Some(Backoff {
        artifact: "fleet-os-2".into(),
        attempts: 2,
        after: NOW + 10,
        error: "HTTP 404".into(),
    });
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &s, &facts()),
        OsAction::Nothing(Wait::Backoff { until: NOW + 10 })
    );
    let later = Facts {
        now: NOW + 10,
        ..facts()
    };
    assert_eq!(
        decide(&d, &s, &later),
        OsAction::Install(image("fleet-os-2"))
    );
    // Another artifact is not held back by this one's failures.
    assert_eq!(
        decide(&declared(Some("fleet-os-3"), Reboot::Now), &s, &facts()),
        OsAction::Install(image("fleet-os-3"))
    );
}

#[test]
fn no_install_starts_after_a_run_that_did_not_converge() {
    let f = Facts {
        converged: false,
        ..facts()
    };
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &idle(), &f),
        OsAction::Nothing(Wait::NotConverged)
    );
}

#[test]
fn an_interrupted_install_is_cancelled_then_retried() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert!(matches!(
        decide(&d, &in_phase(OsPhase::Installing), &facts()),
        OsAction::Cancel(_)
    ));
    // Also after a power cut that rebooted into the same slot.
    let old_slot = Facts {
        boot_id: "boot-2".into(),
        ..facts()
    };
    assert!(matches!(
        decide(&d, &in_phase(OsPhase::Installing), &old_slot),
        OsAction::Cancel(_)
    ));
    // Cut after the slot switch, and the device booted the new slot: verify it.
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Installing), &new_slot()),
        OsAction::Arrived
    );
}

#[test]
fn installed_reboots_per_policy() {
    let s = in_phase(OsPhase::Installed);
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &s, &facts()),
        OsAction::Reboot
    );
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Never), &s, &facts()),
        OsAction::Nothing(Wait::Operator)
    );
    let window = Reboot::Window {
        start: 2 * 60,
        end: 4 * 60,
    };
    let d = declared(Some("fleet-os-2"), window);
    assert_eq!(
        decide(&d, &s, &facts()),
        OsAction::Nothing(Wait::Window(window))
    );
    let at_three = Facts {
        local_minutes: 3 * 60,
        ..facts()
    };
    assert_eq!(decide(&d, &s, &at_three), OsAction::Reboot);
}

#[test]
fn an_installed_update_the_branch_no_longer_wants_is_cancelled() {
    let s = in_phase(OsPhase::Installed);
    assert!(matches!(
        decide(&declared(Some("fleet-os-3"), Reboot::Never), &s, &facts()),
        OsAction::Cancel(m) if m.contains("fleet-os-3")
    ));
    assert!(matches!(
        decide(&declared(None, Reboot::Never), &s, &facts()),
        OsAction::Cancel(_)
    ));
}

#[test]
fn rebooting_in_the_same_boot_asks_again() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Rebooting), &facts()),
        OsAction::Reboot
    );
}

#[test]
fn a_new_boot_on_another_root_filesystem_starts_verifying() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Rebooting), &new_slot()),
        OsAction::Arrived
    );
    // The operator rebooted (reboot: never).
    let never = declared(Some("fleet-os-2"), Reboot::Never);
    assert_eq!(
        decide(&never, &in_phase(OsPhase::Installed), &new_slot()),
        OsAction::Arrived
    );
    // A slot without a marker yet is another slot too.
    let unmarked = Facts {
        rootfs: None,
        ..new_slot()
    };
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Rebooting), &unmarked),
        OsAction::Arrived
    );
}

#[test]
fn a_new_boot_on_the_old_root_filesystem_is_a_fall_back() {
    let old_slot = Facts {
        boot_id: "boot-2".into(),
        ..facts()
    };
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Rebooting), &old_slot),
        OsAction::FellBack
    );
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Installed), &old_slot),
        OsAction::FellBack
    );
    // A fall-back while verifying (a power cut on the new slot, then the bootloader).
    let mut verifying = in_phase(OsPhase::Verifying);
    verifying.boot_id = Some("boot-2".into());
    let third = Facts {
        boot_id: "boot-3".into(),
        ..facts()
    };
    assert_eq!(decide(&d, &verifying, &third), OsAction::FellBack);
}

#[test]
fn verifying_checks_health_until_the_deadline() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let mut s = in_phase(OsPhase::Verifying);
    s.boot_id = Some("boot-2".into());
    s.verify_since = Some(NOW - 100);
    let expected = OsAction::Verify(Deadlines {
        health: NOW + 300,
        offline: NOW - 100 + 3600,
    });
    // The health timeout counts from the first run that reaches the fleet repository
    // (this one, which is the first).
    assert_eq!(decide(&d, &s, &new_slot()), expected);
    // Verifying goes on even if the branch stops declaring the image.
    assert_eq!(
        decide(&declared(None, Reboot::Now), &s, &new_slot()),
        expected
    );
    // Once reached, the health deadline stays where it was.
    s.reached_at = Some(NOW - 100);
    assert_eq!(
        decide(&d, &s, &new_slot()),
        OsAction::Verify(Deadlines {
            health: NOW + 200,
            offline: NOW + 3500,
        })
    );
    // Never reached yet: counted from the arrival.
    s.reached_at = None;
    let offline = Facts {
        reached: false,
        ..new_slot()
    };
    assert_eq!(
        decide(&d, &s, &offline),
        OsAction::Verify(Deadlines {
            health: NOW + 200,
            offline: NOW + 3500,
        })
    );
}

fn deadlines() -> Deadlines {
    Deadlines {
        health: NOW + 10,
        offline: NOW + 100,
    }
}

#[test]
fn the_verdict_commits_retries_waits_or_rolls_back() {
    let bad = vec!["ssh.service is not active".to_string()];
    let d = deadlines();
    assert_eq!(verdict(d, NOW, &[], true, true), Some(OsAction::Commit));
    assert_eq!(verdict(d, NOW, &bad, true, true), None);
    assert_eq!(
        verdict(d, NOW, &bad, false, true),
        Some(OsAction::Nothing(Wait::Unhealthy {
            deadline: NOW + 10,
            problems: bad.clone()
        }))
    );
    assert!(matches!(
        verdict(d, NOW + 10, &bad, true, true),
        Some(OsAction::RollBack(m)) if m.contains("ssh.service is not active")
    ));
    assert!(matches!(
        verdict(d, NOW + 11, &bad, false, true),
        Some(OsAction::RollBack(_))
    ));
}

/// Out of reach of the fleet repository, a slot that passes its checks is unverified:
/// no verdict until the offline deadline, then a rollback without blame. A failing
/// check while offline is evidence, and counts as it always does.
#[test]
fn an_unreachable_fleet_repository_leaves_the_new_slot_unverified_not_unhealthy() {
    let bad = vec!["fleet-demo.service is not active".to_string()];
    let d = deadlines();
    // Past the health deadline, passing checks, offline: wait, do not blame.
    assert_eq!(
        verdict(d, NOW + 50, &[], true, false),
        Some(OsAction::Nothing(Wait::Unverified { until: NOW + 100 }))
    );
    assert_eq!(
        verdict(d, NOW + 50, &[], false, false),
        Some(OsAction::Nothing(Wait::Unverified { until: NOW + 100 })),
        "offline, a role that fails (apt cannot download) is no evidence"
    );
    assert!(matches!(
        verdict(d, NOW + 100, &[], true, false),
        Some(OsAction::RollBackUnverified(m)) if m.contains("could not be reached")
    ));
    assert_eq!(
        verdict(d, NOW + 5, &bad, true, false),
        Some(OsAction::Nothing(Wait::Unhealthy {
            deadline: NOW + 10,
            problems: bad.clone()
        }))
    );
    assert!(matches!(
        verdict(d, NOW + 10, &bad, true, false),
        Some(OsAction::RollBack(_))
    ));
    // Reached again: the checks decide at once.
    assert_eq!(
        verdict(d, NOW + 50, &[], true, true),
        Some(OsAction::Commit)
    );
}

/// An unverified rollback taken up again stays without blame; a blamed one with.
#[test]
fn a_resumed_rollback_keeps_its_kind() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let mut s = in_phase(OsPhase::RollingBack);
    s.backoff = Some(Backoff {
        artifact: "fleet-os-2".into(),
        attempts: 1,
        after: NOW + 600,
        error: "unverified".into(),
    });
    assert!(matches!(
        decide(&d, &s, &facts()),
        OsAction::RollBackUnverified(_)
    ));
    s.failed = vec!["fleet-os-2".into()];
    assert!(matches!(decide(&d, &s, &facts()), OsAction::RollBack(_)));
}

/// No install starts from a run that could not reach the fleet repository.
#[test]
fn no_install_starts_offline() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let offline = Facts {
        reached: false,
        ..facts()
    };
    assert_eq!(
        decide(&d, &idle(), &offline),
        OsAction::Nothing(Wait::NotConverged)
    );
}

#[test]
fn committed_finishes_to_idle() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(OsPhase::Committed), &new_slot()),
        OsAction::Finish
    );
}

#[test]
fn rolling_back_resumes_in_the_same_boot_and_ends_after_the_reboot() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let mut s = in_phase(OsPhase::RollingBack);
    s.boot_id = Some("boot-2".into());
    let same = new_slot();
    assert!(matches!(decide(&d, &s, &same), OsAction::RollBack(_)));
    let back = Facts {
        boot_id: "boot-3".into(),
        ..facts()
    };
    assert_eq!(decide(&d, &s, &back), OsAction::RolledBack);
}

#[test]
fn rolling_back_after_a_reboot_still_on_the_new_slot_rolls_back_again() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    // The power was cut after rolling-back was saved, before `rollback`: the new,
    // uncommitted image booted again.
    match decide(&d, &in_phase(OsPhase::RollingBack), &new_slot()) {
        OsAction::RollBack(_) => {}
        other => panic!("{other:?}"),
    }
    // A new slot without any marker is not the old one either.
    let unmarked = Facts {
        rootfs: None,
        ..new_slot()
    };
    assert!(matches!(
        decide(&d, &in_phase(OsPhase::RollingBack), &unmarked),
        OsAction::RollBack(_)
    ));
    // Back on the old slot: rolled back.
    let old = Facts {
        boot_id: "boot-2".into(),
        ..facts()
    };
    assert_eq!(
        decide(&d, &in_phase(OsPhase::RollingBack), &old),
        OsAction::RolledBack
    );
    // An update that needed no reboot has no old slot marker: the reboot ends it.
    let no_reboot = OsState {
        old_rootfs: None,
        ..in_phase(OsPhase::RollingBack)
    };
    assert_eq!(decide(&d, &no_reboot, &new_slot()), OsAction::RolledBack);
}

#[test]
fn old_state_files_without_os_update_fields_load() {
    let s: OsState = serde_json::from_str("{}").unwrap();
    assert_eq!(s, OsState::default());
    let s: OsState = serde_json::from_str(r#"{"phase":"rolling-back"}"#).unwrap();
    assert_eq!(s.phase, OsPhase::RollingBack);
}
