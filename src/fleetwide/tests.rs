//! In-process tests of the fleet-wide views: reading stored reports (a report stored
//! twice counts once, gaps are counted), where each device stands, and planning a
//! device from its report's facts with the unchanged planner (no machine reached).

use std::collections::BTreeMap;

use crate::digest::sha256_hex;
use crate::fleet::tests::desired;
use crate::fleetwide::facts_host::{self, Contents, Scratch};
use crate::fleetwide::status::{by_branch, Standing};
use crate::fleetwide::store::{parse, Reports};
use crate::plan::Plan;
use crate::report::facts::{PackageFact, ResourceFact};
use crate::report::{Facts, PathFact, Report, ServiceFact};
use crate::resources::{plan, DesiredState};

fn report(device: &str, seq: u64, id: &str) -> Report {
    serde_json::from_value(serde_json::json!({
        "schema": 1, "id": id, "seq": seq, "device": device, "agent_version": "0.1.0",
        "command": "pull", "exit_code": 0, "outcome": "unchanged", "branch": "main",
        "commit": "c1", "applied_commit": "c1", "started": "2026-12-05T06:00:00Z",
        "finished": "2026-12-05T06:00:01Z", "duration_ms": 9,
    }))
    .unwrap()
}

/// A line of `journalctl -o json`: the report in FLEET_REPORT (as a string, or as the
/// array of bytes journalctl prints for a value with control characters).
fn entry(r: &Report, as_bytes: bool) -> String {
    let json = serde_json::to_string(r).unwrap();
    let field = if as_bytes {
        serde_json::json!(json.as_bytes())
    } else {
        serde_json::json!(json)
    };
    serde_json::json!({"__REALTIME_TIMESTAMP": "1", "FLEET_REPORT": field}).to_string()
}

#[test]
fn a_report_stored_twice_counts_once_and_gaps_are_counted() {
    let lines = [
        entry(&report("a", 1, "id1"), false),
        entry(&report("a", 2, "id2"), true),
        entry(&report("a", 2, "id2"), false),
        entry(&report("b", 7, "id7"), false),
        entry(&report("a", 5, "id5"), false),
        "{\"FLEET_REPORT\": \"not json\"}".to_string(),
        entry(&report("a", 4, "id4"), false),
    ];
    let r = parse(&lines.join("\n"));
    assert_eq!((r.entries, r.duplicates, r.unreadable), (7, 1, 1));
    let seqs: Vec<u64> = r.by_device["a"].iter().map(|x| x.seq).collect();
    assert_eq!(seqs, [1, 2, 4, 5], "in their numbers' order");
    assert_eq!(r.latest("a").unwrap().seq, 5);
    assert_eq!(r.missing("a"), 1, "report 3 never arrived");
    assert_eq!(r.missing("b"), 0);
    assert!(r.latest_facts("a").is_none());
}

#[test]
fn each_device_stands_against_its_branch_tip() {
    let mut reports = Reports::default();
    let mut add = |device: &str, outcome: &str, applied: &str, finished: &str| {
        let mut r = report(device, 1, device);
        r.outcome = outcome.into();
        r.applied_commit = Some(applied.into());
        r.finished = finished.into();
        if outcome == "failed" {
            r.errors = vec!["`apt-get` failed".into()];
        }
        reports.by_device.insert(device.into(), vec![r]);
    };
    let now = crate::time::parse_time("2026-12-05T06:00:00Z").unwrap();
    add("ok", "applied", "tip", "2026-12-05T05:59:00Z");
    add("old", "unchanged", "older", "2026-12-05T05:59:00Z");
    add("broken", "failed", "older", "2026-12-05T05:59:00Z");
    add("gone", "applied", "tip", "2026-11-20T00:00:00Z");
    let tip = |b: &str| (b == "main").then(|| "tip".to_string());
    let branches = by_branch(&reports, &tip, now, 7 * 86_400, None);
    assert_eq!(branches.len(), 1);
    let standing: BTreeMap<&str, Standing> = branches[0]
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.standing))
        .collect();
    assert_eq!(
        standing,
        BTreeMap::from([
            ("broken", Standing::Failed),
            ("gone", Standing::NotSeen),
            ("ok", Standing::Converged),
            ("old", Standing::Pending),
        ])
    );
    // Per commit: the tip first.
    assert_eq!(branches[0].commits[0].0, "tip");
    assert!(by_branch(&reports, &tip, now, 60, Some("canary")).is_empty());
}

const ROLE: &str = "resources:\n  - directory: {path: /etc/web}\n  - file: {path: /etc/web/web.conf, content: \"port=80\\n\", mode: \"0640\"}\n  - symlink: {path: /etc/web/current, target: web.conf}\n  - package: {name: nginx}\n  - service: {name: nginx, enabled: true, state: started, restart_on: [/etc/web/web.conf]}\n";

fn web(resources: &str) -> DesiredState {
    desired(&[("roles/web/role.yml", resources)]).unwrap()
}

/// The facts of a device on which `ROLE` converged.
fn converged_facts() -> Facts {
    let file = |mode: &str, content: &str| PathFact::File {
        mode: mode.into(),
        uid: 0,
        gid: 0,
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(content.as_bytes())),
        secret: false,
    };
    let mut f = Facts {
        systemd: true,
        passwd: Some(
            "root:x:0:0:root:/root:/bin/bash\nwww:x:33:33::/var/www:/usr/sbin/nologin\n".into(),
        ),
        group: Some("root:x:0:\nwww:x:33:\n".into()),
        ..Facts::default()
    };
    f.paths.insert(
        "/etc/web".into(),
        PathFact::Directory {
            mode: "0755".into(),
            uid: 0,
            gid: 0,
        },
    );
    f.paths
        .insert("/etc/web/web.conf".into(), file("0640", "port=80\n"));
    f.paths.insert(
        "/etc/web/current".into(),
        PathFact::Symlink {
            target: "web.conf".into(),
        },
    );
    f.packages.insert(
        "nginx".into(),
        Some(PackageFact {
            version: "1.22.1-9".into(),
            want: "install".into(),
            state: "installed".into(),
        }),
    );
    f.services.insert(
        "nginx.service".into(),
        ServiceFact {
            enabled: Some("enabled".into()),
            active: Some("active".into()),
        },
    );
    for (kind, path) in [("directory", "/etc/web"), ("file", "/etc/web/web.conf")] {
        f.resources.insert(
            format!("path:{path}"),
            ResourceFact {
                kind: kind.into(),
                path: path.into(),
                created: true,
                secret: false,
            },
        );
    }
    f
}

/// Plans `desired` against `facts`, with `old` the applied commit's declared files.
fn planned(desired: &DesiredState, facts: &Facts, old: Option<&DesiredState>) -> Plan {
    let scratch = Scratch::new("test").unwrap();
    let contents = Contents {
        new: facts_host::declared_contents(desired).unwrap(),
        old: old.map(|o| facts_host::declared_contents(o).unwrap()),
        converged: true,
    };
    let (host, previous) = facts_host::host(&scratch, facts, &contents).unwrap();
    plan(
        &host,
        desired,
        Some(&previous),
        &crate::tests::planner::options(),
        None,
    )
    .unwrap()
}

use crate::tests::planner::summary;

#[test]
fn a_device_whose_report_matches_the_declaration_plans_nothing() {
    let p = planned(&web(ROLE), &converged_facts(), None);
    assert_eq!(summary(&p), Vec::<String>::new());
}

#[test]
fn what_the_report_shows_different_is_planned_as_changes() {
    let mut facts = converged_facts();
    // Drifted content, another mode and owner, a link gone, nginx stopped.
    facts.paths.insert(
        "/etc/web/web.conf".into(),
        PathFact::File {
            mode: "0644".into(),
            uid: 33,
            gid: 33,
            size: Some(2),
            sha256: Some(sha256_hex(b"x\n")),
            secret: false,
        },
    );
    facts
        .paths
        .insert("/etc/web/current".into(), PathFact::Missing);
    facts.services.get_mut("nginx.service").unwrap().active = Some("failed".into());
    let p = planned(&web(ROLE), &facts, None);
    assert_eq!(
        summary(&p),
        [
            "Change file /etc/web/web.conf: mode 0644 → 0640; owner www:www → root:root",
            "Create symlink /etc/web/current: → web.conf",
            "Change service nginx.service: failed → started",
        ]
    );
    assert!(
        p.changes[0]
            .diff
            .as_deref()
            .unwrap()
            .contains("-(the content of /etc/web/web.conf on the device"),
        "content not in the report: a placeholder"
    );
}

#[test]
fn the_applied_commits_content_gives_the_real_diff_and_new_things_are_created() {
    let old = web(ROLE);
    let new = web(&format!(
        "{}  - file: {{path: /etc/web/extra, content: \"x\\n\"}}\n  - package: {{name: jq}}\n",
        ROLE.replace("port=80", "port=81")
    ));
    let p = planned(&new, &converged_facts(), Some(&old));
    assert_eq!(
        summary(&p),
        [
            "Run apt update: there are no package lists",
            "Change apt packages: install jq newest",
            "Change file /etc/web/web.conf: ",
            "Create file /etc/web/extra: mode 0644, owner root:root, 2 bytes",
            "Run restart nginx.service: because /etc/web/web.conf changed",
        ]
    );
    let diff = p.changes[2].diff.as_deref().unwrap();
    assert!(diff.contains("-port=80\n+port=81"), "{diff}");
}

#[test]
fn a_secret_changes_only_when_its_declaration_does() {
    let secret = |value: &str| {
        web(&format!(
            "resources:\n  - file: {{path: /etc/token, content: \"{value}\", mode: \"0600\", secret: true}}\n"
        ))
    };
    let mut facts = Facts::default();
    facts.paths.insert(
        "/etc/token".into(),
        PathFact::File {
            mode: "0600".into(),
            uid: 0,
            gid: 0,
            size: None,
            sha256: None,
            secret: true,
        },
    );
    let same = planned(&secret("abc"), &facts, Some(&secret("abc")));
    assert!(same.is_empty(), "{:?}", summary(&same));
    let changed = planned(&secret("xyz"), &facts, Some(&secret("abc")));
    assert_eq!(
        summary(&changed),
        ["Change file /etc/token: content changed (secret: not shown)"]
    );
    // Without the applied commit, a secret's content is unknown: a change.
    assert!(!planned(&secret("abc"), &facts, None).is_empty());
}

/// `plan --all` with the working tree's rollout: at 0 % every device that applied a
/// commit is held back (and does not count as changing), a device that applied
/// nothing takes the tree; at 100 % none is held back.
#[test]
fn plan_all_says_which_devices_the_rollout_holds_back() {
    use crate::fleet::{Fleet, FleetFile};
    let plan_at = |percent: u32, r: &Report| {
        let fleet_yml = format!("format: 1\nvars: {{port: 80, greeting: hi}}\nroles: [web]\nrollout: {{id: r1, percent: {percent}}}\n");
        let src = crate::fleet::tests::source(&[("fleet.yml", fleet_yml.as_str())]);
        let file = FleetFile::read(&src).unwrap();
        let fleet = Fleet::load(&src, None, &file, crate::fleet::tests::reserved()).unwrap();
        crate::fleetwide::plan_all::plan_device(&fleet, &file, r, None, &|_, _| None)
    };
    let applied = report("pi-1", 1, "id1");
    let held = plan_at(0, &applied).held_back.unwrap();
    let b = crate::release::bucket("pi-1", "r1");
    assert_eq!(
        held,
        format!("held back: bucket {b} ≥ 0 (rollout `r1` at 0 %): staying on c1")
    );
    let mut new = report("pi-2", 1, "id2");
    new.applied_commit = None;
    assert_eq!(
        plan_at(0, &new).held_back,
        None,
        "nothing applied yet: takes the tree"
    );
    assert_eq!(plan_at(100, &applied).held_back, None);
}
