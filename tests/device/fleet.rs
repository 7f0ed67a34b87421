//! `fleet status` and `plan --all` on a fleet of 50 devices: 47 cheap `--root` devices
//! running the agent inside one booted Debian (their reports go through its journal
//! and uploader), and 3 booted devices with a real service. Every report travels the
//! real way to a systemd-journal-remote on 127.0.0.1; `fleet status` and `plan --all`
//! run on this machine, like a maintainer's, next to the fleet repository.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::Booted;
use crate::reporting::{fleet_agent, reporting_device, root_device, seq, state, Receiver};
use crate::support::{git, FleetRepo, GitHttpServer};
use crate::{timed, SERVICE_UNIT};

/// The pause between the pulls of C1 and those of C2: the devices that do not pull C2
/// are then at least this much older than the oldest report of a C2 pull. The "not
/// seen" bound is set between the two at the time of `fleet status` (however long the
/// pulls took on a loaded machine): FRESH seconds above the age of the oldest C2 pull.
const GAP: u64 = 15;
const FRESH: u64 = 8;

fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn root_ids() -> Vec<String> {
    (0..47).map(|i| format!("d-{i:02}")).collect()
}

const BOOTED: [&str; 3] = ["b-1", "b-2", "b-3"];

fn on_canary(id: &str) -> bool {
    id >= "d-40" && id.starts_with("d-")
}

/// The fleet of commit C1 (main).
fn fleet_files() -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yml", "format: 1\nroles: [base]\n".into()),
        (
            "inventory.yml",
            "groups:\n  shop-a:\n    devices: [\"d-0*\", b-1]\n  shop-b:\n    devices: [\"d-1*\", \"d-2*\", b-2]\n  shop-c:\n    devices: [\"d-3*\", \"d-4*\", b-3, spare-1]\n  booted:\n    devices: [\"b-*\"]\n".into(),
        ),
        ("group_vars/shop-a.yml", "vars:\n  greeting: hello a\n".into()),
        ("group_vars/shop-b.yml", "vars:\n  greeting: hello b\n".into()),
        ("group_vars/shop-c.yml", "vars:\n  greeting: hello c\n".into()),
        (
            "group_vars/booted.yml",
            "vars:\n  level: info\nroles: [app]\n".into(),
        ),
        (
            "roles/base/role.yml",
            "resources:\n  - directory: {path: /etc/fleet}\n  - file: {path: /etc/fleet/motd, content: \"{{ greeting }} from {{ device.id }}\\n\"}\n".into(),
        ),
        ("roles/app/files/fleet-demo.service", SERVICE_UNIT.into()),
        (
            "roles/app/role.yml",
            "resources:\n  - file: {path: /etc/systemd/system/fleet-demo.service, source: fleet-demo.service}\n  - file: {path: /etc/fleet-demo.conf, content: \"level={{ level }}\\n\"}\n  - service: {name: fleet-demo, enabled: true, state: started, restart_on: [/etc/fleet-demo.conf]}\n".into(),
        ),
    ]
}

/// Writes files into the working tree (not committed).
fn write(repo: &FleetRepo, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = repo.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// Runs `pull` on each `--root` device of the hub, one after the other, and returns
/// each exit code.
fn pull_roots(hub: &Booted, ids: &[String]) -> BTreeMap<String, i32> {
    let list: Vec<&str> = ids.iter().map(String::as_str).collect();
    let out = hub.sh(&format!(
        "for d in {}; do fleet-agent --root /srv/devices/$d -q pull >/dev/null 2>&1; echo \"$d $?\"; done",
        list.join(" ")
    ));
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(d, c)| (d.to_string(), c.parse().unwrap()))
        .collect()
}

fn pull_booted(devices: &[Booted], which: &[&str]) {
    for (dev, id) in devices.iter().zip(BOOTED) {
        if which.contains(&id) {
            let r = dev.agent(&["pull"]);
            assert_eq!(r.code, 0, "{id}: {r:?}");
        }
    }
}

/// Each device's state: (root device or booted index, state.json).
struct Fleet<'a> {
    hub: &'a Booted,
    booted: &'a [Booted],
}

impl Fleet<'_> {
    fn state(&self, id: &str) -> serde_json::Value {
        match BOOTED.iter().position(|b| *b == id) {
            Some(i) => state(&self.booted[i], "/"),
            None => state(self.hub, &format!("/srv/devices/{id}")),
        }
    }

    fn all(&self) -> Vec<String> {
        root_ids()
            .into_iter()
            .chain(BOOTED.iter().map(|b| b.to_string()))
            .collect()
    }

    fn last_seqs(&self) -> BTreeMap<String, u64> {
        self.all()
            .into_iter()
            .map(|id| {
                let s = seq(&self.state(&id));
                (id, s)
            })
            .collect()
    }
}

#[test]
fn fleet_status_and_plan_all_on_50_devices() {
    let receiver = Receiver::start();
    let repo = FleetRepo::new(&[("README", "fifty\n")]);
    let refs: Vec<(&str, String)> = fleet_files();
    let c1 = repo.commit(
        &refs
            .iter()
            .map(|(a, b)| (*a, b.as_str()))
            .collect::<Vec<_>>(),
        "C1",
    );
    // canary: C1 and a greeting of its own.
    git(&repo.work, &["checkout", "-q", "-b", "canary"]);
    write(
        &repo,
        &[(
            "group_vars/shop-c.yml",
            "vars:\n  greeting: hello c (canary)\n",
        )],
    );
    git(&repo.work, &["commit", "-q", "-am", "canary"]);
    git(&repo.work, &["push", "-q", "origin", "canary"]);
    git(&repo.work, &["checkout", "-q", "main"]);
    let canary_tip = git(&repo.work, &["rev-parse", "canary"]);
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let url = server.url("fleet.git");

    let (hub, booted) = timed("four booted devices with reporting", || {
        std::thread::scope(|s| {
            let hub = s.spawn(|| reporting_device("fa-hub", &receiver, None, &[]));
            let booted: Vec<_> = BOOTED
                .iter()
                .map(|id| {
                    let receiver = &receiver;
                    s.spawn(move || reporting_device(&format!("fa-{id}"), receiver, None, &[]))
                })
                .collect();
            (
                hub.join().unwrap(),
                booted
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>(),
            )
        })
    });
    for id in root_ids() {
        root_device(
            &hub,
            &id,
            &url,
            if on_canary(&id) { "canary" } else { "main" },
        );
    }
    for (dev, id) in booted.iter().zip(BOOTED) {
        dev.write(
            "/etc/fleet-agent/agent.toml",
            &format!("repo = \"{url}\"\nbranch = \"main\"\ndevice_id = \"{id}\"\n"),
        );
    }
    let fleet = Fleet {
        hub: &hub,
        booted: &booted,
    };

    // Everyone converges on C1 (canary on its tip).
    let codes = timed("50 first pulls", || {
        pull_booted(&booted, &BOOTED);
        pull_roots(&hub, &root_ids())
    });
    assert!(codes.values().all(|c| *c == 0), "{codes:?}");
    // Some devices will not be seen again for a while.
    std::thread::sleep(Duration::from_secs(GAP));

    // C2: shop-a's greeting, and a device whose host_vars name a role that does not exist.
    let c2 = repo.commit(
        &[
            (
                "group_vars/shop-a.yml",
                "vars:\n  greeting: hello a, again\n",
            ),
            ("host_vars/d-13.yml", "roles: [does-not-exist]\n"),
        ],
        "C2",
    );
    let offline = ["d-20", "d-21", "d-22"];
    for id in offline {
        root_device(&hub, id, "http://127.0.0.1:9/fleet.git", "main");
    }
    let not_seen: BTreeSet<&str> = [
        "d-30", "d-31", "d-32", "d-33", "d-43", "d-44", "d-45", "d-46",
    ]
    .into();
    let again: Vec<String> = root_ids()
        .into_iter()
        .filter(|d| !not_seen.contains(d.as_str()))
        .collect();
    let c2_pulls = epoch_now();
    let codes = timed("pulls after C2", || {
        pull_booted(&booted, &BOOTED);
        pull_roots(&hub, &again)
    });
    for (id, code) in &codes {
        let want = match id.as_str() {
            "d-13" => 1,
            id if offline.contains(&id) => 3,
            _ => 0,
        };
        assert_eq!(*code, want, "{id}");
    }
    timed("delivery", || {
        receiver.wait_for(&fleet.last_seqs(), Duration::from_secs(60))
    });

    // fleet status against every device's own state.
    let not_seen = epoch_now() - c2_pulls + FRESH;
    let out = fleet_agent(&[
        "fleet",
        "status",
        "--reports",
        receiver.dir.path().to_str().unwrap(),
        "--repo",
        repo.work.to_str().unwrap(),
        "--not-seen-for",
        &format!("{not_seen}s"),
    ]);
    eprintln!("[fleet status]\n{}", out.stdout);
    assert_eq!(out.code, 1, "a device failed: exit 1\n{out:?}");
    let now = epoch_now();
    let json = fleet_agent(&[
        "fleet",
        "status",
        "--json",
        "--reports",
        receiver.dir.path().to_str().unwrap(),
        "--repo",
        repo.work.to_str().unwrap(),
        "--not-seen-for",
        &format!("{not_seen}s"),
    ]);
    let status: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    check_status(
        &fleet,
        &status,
        (now, not_seen),
        &[("main", &c2), ("canary", &canary_tip)],
    );
    assert_eq!(status["never_seen"], serde_json::json!(["spare-1"]));
    let _ = c1;

    // C3, in the working tree: what would it do?
    write(
        &repo,
        &[
            ("group_vars/shop-b.yml", "vars:\n  greeting: hello b, new\n"),
            (
                "group_vars/booted.yml",
                "vars:\n  level: debug\nroles: [app]\n",
            ),
            ("host_vars/d-05.yml", "vars:\n  greeting: special\n"),
        ],
    );
    std::fs::remove_file(repo.work.join("host_vars/d-13.yml")).unwrap();
    let args = |json: bool| {
        let mut a = vec![
            "plan".to_string(),
            "--all".into(),
            "--repo".into(),
            repo.work.display().to_string(),
            "--reports".into(),
            receiver.dir.path().display().to_string(),
            "--branch".into(),
            "main".into(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    let text = fleet_agent(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("[plan --all]\n{}", text.stdout);
    assert_eq!(text.code, 2, "{text:?}");
    assert!(
        text.stdout
            .contains("services restarted: fleet-demo.service (restart, 3 devices)"),
        "{}",
        text.stdout
    );
    let planned = fleet_agent(&args(true).iter().map(String::as_str).collect::<Vec<_>>());
    let planned: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    let predicted: BTreeSet<String> = planned["devices_changing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();

    // C3 merged: every device pulls.
    let c3 = repo.commit(&[], "C3");
    for id in offline {
        root_device(&hub, id, &url, "main");
    }
    let before: BTreeMap<String, u64> = fleet.last_seqs();
    timed("pulls after C3", || {
        pull_booted(&booted, &BOOTED);
        pull_roots(&hub, &root_ids())
    });
    let changed: BTreeSet<String> = fleet
        .all()
        .into_iter()
        .filter(|id| {
            let st = fleet.state(id);
            assert_eq!(seq(&st), before[id] + 1, "{id} ran once");
            st["outcome"] == "applied"
        })
        .collect();
    eprintln!(
        "[plan --all] predicted {} devices: {predicted:?}",
        predicted.len()
    );
    eprintln!(
        "[plan --all] changed by C3 {c3}: {} devices: {changed:?}",
        changed.len()
    );
    assert_eq!(
        predicted, changed,
        "plan --all predicted exactly the devices C3 changed"
    );
}

/// Each device's standing in `fleet status` is what its state file says.
fn check_status(
    fleet: &Fleet,
    status: &serde_json::Value,
    (now, not_seen): (u64, u64),
    tips: &[(&str, &str)],
) {
    let mut seen = 0;
    for b in status["branches"].as_array().unwrap() {
        let branch = b["branch"].as_str().unwrap();
        let tip = tips.iter().find(|(n, _)| *n == branch).unwrap().1;
        assert_eq!(b["tip"], tip, "{branch}");
        for d in b["devices"].as_array().unwrap() {
            seen += 1;
            let id = d["device"].as_str().unwrap();
            let st = fleet.state(id);
            let time = st["time"].as_u64().unwrap();
            let outcome = st["outcome"].as_str().unwrap();
            let want = if now.saturating_sub(time) > not_seen {
                "not-seen"
            } else if outcome == "failed" || outcome == "invalid" {
                "failed"
            } else if st["applied_commit"] == tip {
                "converged"
            } else {
                "pending"
            };
            assert_eq!(d["standing"], want, "{id}: {d}\nstate: {st}");
            assert_eq!(d["outcome"], outcome, "{id}");
            assert_eq!(d["applied_commit"], st["applied_commit"], "{id}");
            assert_eq!(d["seq"], seq(&st), "{id}");
            assert_eq!(d["offline"], st["offline"], "{id}");
            assert_eq!(d["branch"], st["branch"], "{id}");
        }
    }
    assert_eq!(seen, 50, "every device is in fleet status");
}
