//! The brakes' decisions: buckets (stable, monotone, evenly spread), percentages and
//! windows as written, deferral, and the plan with its disruptive changes held back.

use super::*;
use crate::plan::ChangeAction;

fn rollout(bp: u32) -> Rollout {
    Rollout {
        id: "r1".into(),
        basis_points: bp,
        declared_at: "fleet.yml:3:3".into(),
    }
}

#[test]
fn buckets_are_stable_and_depend_on_the_identifier() {
    assert_eq!(bucket("pi-0001", "r1"), bucket("pi-0001", "r1"));
    let moved = (0..100)
        .filter(|i| bucket(&format!("pi-{i}"), "r1") != bucket(&format!("pi-{i}"), "r2"))
        .count();
    assert!(
        moved > 95,
        "a new identifier draws new buckets ({moved} of 100 moved)"
    );
    assert!((0..1000).all(|i| bucket(&format!("d{i}"), "x") < BUCKETS));
}

/// Over 10,000 ids, the share held back at each percentage is within 3σ of the
/// binomial expectation, and every device in at 10 % is in at 50 % (monotone).
#[test]
fn the_distribution_is_within_three_sigma_and_monotone() {
    let ids: Vec<String> = (0..10_000).map(|i| format!("device-{i:05}")).collect();
    for bp in [100, 1000, 2500, 5000, 9000] {
        let p = f64::from(bp) / f64::from(BUCKETS);
        let n = ids.len() as f64;
        let taken = ids
            .iter()
            .filter(|id| !standing(&rollout(bp), id).held_back)
            .count() as f64;
        let sigma = (n * p * (1.0 - p)).sqrt();
        assert!(
            (taken - n * p).abs() <= 3.0 * sigma,
            "{bp}: {taken} devices, expected {} ± {}",
            n * p,
            3.0 * sigma
        );
    }
    for id in &ids {
        let at = |bp| !standing(&rollout(bp), id).held_back;
        assert!(!at(1000) || at(5000), "{id} is in at 10 % but not at 50 %");
        assert!(!at(5000) || at(10_000));
        assert!(!at(0));
    }
}

#[test]
fn the_plan_line_names_the_bucket_and_threshold() {
    let mut s = standing(&rollout(1000), "pi-0001");
    s.bucket = 7345;
    s.held_back = true;
    assert_eq!(
        s.line(),
        "held back: bucket 7345 ≥ 1000 (rollout `r1` at 10 %)"
    );
}

#[test]
fn percentages_as_written() {
    assert_eq!(parse_percent("10"), Some(1000));
    assert_eq!(parse_percent("12.5"), Some(1250));
    assert_eq!(parse_percent("0.01"), Some(1));
    assert_eq!(parse_percent("100"), Some(10_000));
    for bad in ["101", "-1", "1.234", "ten", "", "1e2", "100.01"] {
        assert_eq!(parse_percent(bad), None, "{bad}");
    }
    assert_eq!(percent_label(1250), "12.5 %");
    assert_eq!(percent_label(1), "0.01 %");
    assert_eq!(percent_label(10_000), "100 %");
}

fn window(text: &str) -> Window {
    let (start, end) = parse_window(text).unwrap();
    Window {
        start,
        end,
        trust_clock: false,
        declared_at: String::new(),
    }
}

#[test]
fn windows_may_wrap_midnight() {
    let night = window("23:00-02:00");
    assert!(night.contains(23 * 60));
    assert!(night.contains(60));
    assert!(!night.contains(2 * 60));
    assert!(!night.contains(12 * 60));
    let day = window("02:00-04:00");
    assert!(day.contains(2 * 60) && day.contains(3 * 60 + 59) && !day.contains(4 * 60));
    for bad in [
        "2:00-04:00",
        "02:00",
        "24:00-01:00",
        "02:00-02:00",
        "02:60-03:00",
    ] {
        assert!(parse_window(bad).is_err(), "{bad}");
    }
}

#[test]
fn what_defers_and_why() {
    let w = window("02:00-04:00");
    assert_eq!(deferral(Some(&w), 3 * 60, true, false), None);
    assert_eq!(
        deferral(Some(&w), 12 * 60, true, false).as_deref(),
        Some("deferred until 02:00")
    );
    assert!(deferral(Some(&w), 3 * 60, false, false)
        .unwrap()
        .contains("not synchronized"));
    let trusted = Window {
        trust_clock: true,
        ..w.clone()
    };
    assert_eq!(deferral(Some(&trusted), 3 * 60, false, false), None);
    assert!(deferral(Some(&trusted), 12 * 60, false, false).is_some());
    assert_eq!(
        deferral(None, 0, false, true).as_deref(),
        Some("deferred while /run/fleet-agent/hold exists")
    );
    assert_eq!(deferral(None, 0, false, false), None);
}

fn empty_plan() -> Plan {
    Plan {
        device_id: "pi-0001".into(),
        commit: None,
        changes: vec![],
        notes: vec![],
        resources: Default::default(),
    }
}

fn change(kind: ChangeKind, subject: &str, ops: Vec<Op>) -> Change {
    let mut c = Change::run(kind, subject, RunPhase::Files, vec![], ops);
    c.action = ChangeAction::Change;
    c
}

fn systemctl(verb: &str, unit: &str) -> Op {
    Op::Command {
        argv: vec!["systemctl".into(), verb.into(), "--".into(), unit.into()],
        in_root: false,
    }
}

#[test]
fn only_disruptive_changes_are_deferred_and_handlers_are_carried() {
    let mut plan = empty_plan();
    plan.changes = vec![
        change(ChangeKind::File, "/etc/app.conf", vec![]),
        change(ChangeKind::Apt, "apt update", vec![Op::AptUpdate]),
        change(
            ChangeKind::Apt,
            "packages",
            vec![Op::Apt {
                install: vec![("jq".into(), None)],
                remove: vec![],
                recommends: false,
            }],
        ),
        change(
            ChangeKind::Service,
            "app.service",
            vec![systemctl("enable", "app.service")],
        ),
        change(
            ChangeKind::Service,
            "web.service",
            vec![systemctl("start", "web.service")],
        ),
        change(
            ChangeKind::Restart,
            "kiosk.service",
            vec![systemctl("try-restart", "kiosk.service")],
        ),
    ];
    let (deferred, handlers) = defer(&mut plan, "deferred until 02:00", &Default::default());
    let kept: Vec<&str> = plan.changes.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(kept, ["/etc/app.conf", "apt update", "app.service"]);
    assert_eq!(
        deferred,
        [
            "apt packages",
            "service web.service",
            "restart kiosk.service"
        ]
    );
    assert_eq!(plan.notes[0], "apt packages: deferred until 02:00");
    assert_eq!(
        handlers,
        [Handler {
            unit: "kiosk.service".into(),
            verb: "try-restart".into()
        }]
    );
    let mut next = empty_plan();
    resume(&mut next, &handlers, |v, u| {
        vec!["systemctl".into(), v.into(), u.into()]
    });
    assert_eq!(next.changes.len(), 1);
    assert_eq!(next.changes[0].kind, ChangeKind::Restart);
    resume(&mut next, &handlers, |v, u| vec![v.into(), u.into()]);
    assert_eq!(
        next.changes.len(),
        1,
        "a unit restarted anyway is not restarted twice"
    );
}

#[test]
fn a_rollback_under_way_or_a_failed_tip_keeps_the_device_on_its_good_commit() {
    let mut r = Recorded {
        good: Some("c1".into()),
        failed: vec!["c2".into()],
        ..Default::default()
    };
    assert_eq!(health_target(&r, Some("c2")).as_deref(), Some("c1"));
    assert_eq!(
        health_target(&r, Some("c3")),
        None,
        "a newer commit is taken"
    );
    assert_eq!(health_target(&r, Some("c1")), None);
    r.rollback = Some(Rollback {
        from: "c3".into(),
        to: "c1".into(),
        problems: vec!["x.service is not active".into()],
        at: 0,
        packages: Default::default(),
    });
    assert_eq!(
        health_target(&r, Some("c3")).as_deref(),
        Some("c1"),
        "a rollback killed half way is finished first"
    );
    assert_eq!(health_target(&Recorded::default(), Some("c2")), None);
}
