//! `decide` and `verdict`: every transition of the OS-update state machine.

use super::*;

const NOW: u64 = 1_800_000_000;

fn image(artifact: &str) -> Image {
    Image {
        artifact: artifact.into(),
        uri: format!("http://127.0.0.1:8123/{artifact}.mender"),
        sha256: None,
    }
}

fn declared(artifact: Option<&str>, reboot: Reboot) -> Declared {
    Declared {
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
    }
}

/// State after installing fleet-os-2 during boot-1 on slot-a.
fn in_phase(phase: Phase) -> OsState {
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

fn idle() -> OsState {
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
        Action::Install(image("fleet-os-2"))
    );
}

#[test]
fn idle_without_a_declaration_or_when_current_does_nothing() {
    let none = declared(None, Reboot::Now);
    assert_eq!(
        decide(&none, &idle(), &facts()),
        Action::Nothing(Wait::NotDeclared)
    );
    let same = declared(Some("fleet-os-1"), Reboot::Now);
    assert_eq!(
        decide(&same, &idle(), &facts()),
        Action::Nothing(Wait::Current)
    );
    // What the client says counts, not what the state remembers.
    let mut stale = idle();
    stale.current = Some("fleet-os-0".into());
    assert_eq!(
        decide(&same, &stale, &facts()),
        Action::Nothing(Wait::Current)
    );
}

#[test]
fn a_failed_artifact_is_not_retried_but_another_one_is() {
    let mut s = idle();
    s.failed = vec!["fleet-os-2".into()];
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &s, &facts()),
        Action::Nothing(Wait::Failed("fleet-os-2".into()))
    );
    assert_eq!(
        decide(&declared(Some("fleet-os-3"), Reboot::Now), &s, &facts()),
        Action::Install(image("fleet-os-3"))
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
        Action::Nothing(Wait::Foreign)
    );
    // Without fw_printenv the client's own refusal is all there is.
    let f = Facts {
        upgrade_available: None,
        ..facts()
    };
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &idle(), &f),
        Action::Install(image("fleet-os-2"))
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
        Action::Nothing(Wait::Backoff { until: NOW + 10 })
    );
    let later = Facts {
        now: NOW + 10,
        ..facts()
    };
    assert_eq!(decide(&d, &s, &later), Action::Install(image("fleet-os-2")));
    // Another artifact is not held back by this one's failures.
    assert_eq!(
        decide(&declared(Some("fleet-os-3"), Reboot::Now), &s, &facts()),
        Action::Install(image("fleet-os-3"))
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
        Action::Nothing(Wait::NotConverged)
    );
}

#[test]
fn an_interrupted_install_is_cancelled_then_retried() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert!(matches!(
        decide(&d, &in_phase(Phase::Installing), &facts()),
        Action::Cancel(_)
    ));
    // Also after a power cut that rebooted into the same slot.
    let old_slot = Facts {
        boot_id: "boot-2".into(),
        ..facts()
    };
    assert!(matches!(
        decide(&d, &in_phase(Phase::Installing), &old_slot),
        Action::Cancel(_)
    ));
    // Cut after the slot switch, and the device booted the new slot: verify it.
    assert_eq!(
        decide(&d, &in_phase(Phase::Installing), &new_slot()),
        Action::Arrived
    );
}

#[test]
fn installed_reboots_per_policy() {
    let s = in_phase(Phase::Installed);
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Now), &s, &facts()),
        Action::Reboot
    );
    assert_eq!(
        decide(&declared(Some("fleet-os-2"), Reboot::Never), &s, &facts()),
        Action::Nothing(Wait::Operator)
    );
    let window = Reboot::Window {
        start: 2 * 60,
        end: 4 * 60,
    };
    let d = declared(Some("fleet-os-2"), window);
    assert_eq!(
        decide(&d, &s, &facts()),
        Action::Nothing(Wait::Window(window))
    );
    let at_three = Facts {
        local_minutes: 3 * 60,
        ..facts()
    };
    assert_eq!(decide(&d, &s, &at_three), Action::Reboot);
}

#[test]
fn an_installed_update_the_branch_no_longer_wants_is_cancelled() {
    let s = in_phase(Phase::Installed);
    assert!(matches!(
        decide(&declared(Some("fleet-os-3"), Reboot::Never), &s, &facts()),
        Action::Cancel(m) if m.contains("fleet-os-3")
    ));
    assert!(matches!(
        decide(&declared(None, Reboot::Never), &s, &facts()),
        Action::Cancel(_)
    ));
}

#[test]
fn rebooting_in_the_same_boot_asks_again() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(Phase::Rebooting), &facts()),
        Action::Reboot
    );
}

#[test]
fn a_new_boot_on_another_root_filesystem_starts_verifying() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(Phase::Rebooting), &new_slot()),
        Action::Arrived
    );
    // The operator rebooted (reboot: never).
    let never = declared(Some("fleet-os-2"), Reboot::Never);
    assert_eq!(
        decide(&never, &in_phase(Phase::Installed), &new_slot()),
        Action::Arrived
    );
    // A slot without a marker yet is another slot too.
    let unmarked = Facts {
        rootfs: None,
        ..new_slot()
    };
    assert_eq!(
        decide(&d, &in_phase(Phase::Rebooting), &unmarked),
        Action::Arrived
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
        decide(&d, &in_phase(Phase::Rebooting), &old_slot),
        Action::FellBack
    );
    assert_eq!(
        decide(&d, &in_phase(Phase::Installed), &old_slot),
        Action::FellBack
    );
    // A fall-back while verifying (a power cut on the new slot, then the bootloader).
    let mut verifying = in_phase(Phase::Verifying);
    verifying.boot_id = Some("boot-2".into());
    let third = Facts {
        boot_id: "boot-3".into(),
        ..facts()
    };
    assert_eq!(decide(&d, &verifying, &third), Action::FellBack);
}

#[test]
fn verifying_checks_health_until_the_deadline() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let mut s = in_phase(Phase::Verifying);
    s.boot_id = Some("boot-2".into());
    s.verify_since = Some(NOW - 100);
    assert_eq!(
        decide(&d, &s, &new_slot()),
        Action::Verify {
            deadline: NOW + 200
        }
    );
    // Verifying goes on even if the branch stops declaring the image.
    assert_eq!(
        decide(&declared(None, Reboot::Now), &s, &new_slot()),
        Action::Verify {
            deadline: NOW + 200
        }
    );
}

#[test]
fn the_verdict_commits_retries_waits_or_rolls_back() {
    let bad = vec!["ssh.service is not active".to_string()];
    assert_eq!(verdict(NOW + 10, NOW, &[], true), Some(Action::Commit));
    assert_eq!(verdict(NOW + 10, NOW, &bad, true), None);
    assert_eq!(
        verdict(NOW + 10, NOW, &bad, false),
        Some(Action::Nothing(Wait::Unhealthy {
            deadline: NOW + 10,
            problems: bad.clone()
        }))
    );
    assert!(matches!(
        verdict(NOW, NOW, &bad, true),
        Some(Action::RollBack(m)) if m.contains("ssh.service is not active")
    ));
    assert!(matches!(
        verdict(NOW, NOW + 1, &bad, false),
        Some(Action::RollBack(_))
    ));
}

#[test]
fn committed_finishes_to_idle() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        decide(&d, &in_phase(Phase::Committed), &new_slot()),
        Action::Finish
    );
}

#[test]
fn rolling_back_resumes_in_the_same_boot_and_ends_after_the_reboot() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    let mut s = in_phase(Phase::RollingBack);
    s.boot_id = Some("boot-2".into());
    let same = new_slot();
    assert!(matches!(decide(&d, &s, &same), Action::RollBack(_)));
    let back = Facts {
        boot_id: "boot-3".into(),
        ..facts()
    };
    assert_eq!(decide(&d, &s, &back), Action::RolledBack);
}

#[test]
fn rolling_back_after_a_reboot_still_on_the_new_slot_rolls_back_again() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    // The power was cut after rolling-back was saved, before `rollback`: the new,
    // uncommitted image booted again.
    match decide(&d, &in_phase(Phase::RollingBack), &new_slot()) {
        Action::RollBack(_) => {}
        other => panic!("{other:?}"),
    }
    // A new slot without any marker is not the old one either.
    let unmarked = Facts {
        rootfs: None,
        ..new_slot()
    };
    assert!(matches!(
        decide(&d, &in_phase(Phase::RollingBack), &unmarked),
        Action::RollBack(_)
    ));
    // Back on the old slot: rolled back.
    let old = Facts {
        boot_id: "boot-2".into(),
        ..facts()
    };
    assert_eq!(
        decide(&d, &in_phase(Phase::RollingBack), &old),
        Action::RolledBack
    );
    // An update that needed no reboot has no old slot marker: the reboot ends it.
    let no_reboot = OsState {
        old_rootfs: None,
        ..in_phase(Phase::RollingBack)
    };
    assert_eq!(decide(&d, &no_reboot, &new_slot()), Action::RolledBack);
}

#[test]
fn plan_lines_say_what_will_happen() {
    let d = declared(Some("fleet-os-2"), Reboot::Now);
    assert_eq!(
        plan_line(&d, &idle()),
        Some((
            "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: now".into(),
            true
        ))
    );
    let w = declared(
        Some("fleet-os-2"),
        Reboot::Window {
            start: 120,
            end: 240,
        },
    );
    assert_eq!(
        plan_line(&w, &idle()).unwrap().0,
        "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: in window 02:00-04:00"
    );
    let never = declared(Some("fleet-os-2"), Reboot::Never);
    assert_eq!(
        plan_line(&never, &idle()).unwrap().0,
        "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: never (operator)"
    );
    let current = declared(Some("fleet-os-1"), Reboot::Now);
    assert_eq!(
        plan_line(&current, &idle()),
        Some(("OS: fleet-os-1 (pi4-sim), up to date".into(), false))
    );
    assert_eq!(plan_line(&declared(None, Reboot::Now), &idle()), None);
}

#[test]
fn old_state_files_without_os_update_fields_load() {
    let s: OsState = serde_json::from_str("{}").unwrap();
    assert_eq!(s, OsState::default());
    let s: OsState = serde_json::from_str(r#"{"phase":"rolling-back"}"#).unwrap();
    assert_eq!(s.phase, Phase::RollingBack);
}

/// Captures the OS_STATE key-value of log records (the journal logger turns keys into
/// journal fields, so `journalctl -t fleet-agent OS_STATE=rolling-back` finds these).
struct Capture(std::sync::Mutex<Vec<(String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if let Some(v) = record.key_values().get(log::kv::Key::from_str("OS_STATE")) {
            self.0
                .lock()
                .unwrap()
                .push((v.to_string(), record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

#[test]
fn every_transition_is_logged_with_an_os_state_field() {
    static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));
    log::set_logger(&CAPTURE).expect("no other test installs a logger");
    log::set_max_level(log::LevelFilter::Info);
    let mut s = OsState::default();
    let mut saved = Vec::new();
    let mut save = |s: &OsState| -> crate::error::Result<()> {
        saved.push(s.phase);
        Ok(())
    };
    enter(
        &mut save,
        &mut s,
        Phase::RollingBack,
        "rolling back x".into(),
    )
    .unwrap();
    enter(&mut save, &mut s, Phase::Idle, "rolled back from x".into()).unwrap();
    assert_eq!(saved, [Phase::RollingBack, Phase::Idle]);
    assert_eq!(
        *CAPTURE.0.lock().unwrap(),
        [
            (
                "rolling-back".to_string(),
                "OS update: rolling back x".to_string()
            ),
            (
                "idle".to_string(),
                "OS update: rolled back from x".to_string()
            )
        ]
    );
}
