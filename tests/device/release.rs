//! The brakes of a release on a booted Debian (docs/rollouts.md): a maintenance window
//! and the hold file defer the disruptive changes (the package transaction, a service
//! start, a restart) while the rest applies at once; a deferred restart runs once the
//! window opens or the hold file is gone. And a rollout that holds this device back,
//! then takes it.

use crate::harness::Booted;
use crate::support::FleetRepo;
use crate::{commit, device_fleet, setup, starts_of, timed, PACKAGES};

/// The device's local time in minutes after midnight.
fn now_minutes(dev: &Booted) -> u16 {
    let hm = dev.sh("date +%H:%M");
    let (h, m) = hm.split_once(':').unwrap();
    h.parse::<u16>().unwrap() * 60 + m.parse::<u16>().unwrap()
}

fn hhmm(m: u16) -> String {
    let m = m % (24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// The device fleet with `extra` at the end of fleet.yml.
fn fleet_with(apt_port: u16, greeting: &str, extra: &str) -> Vec<(String, String)> {
    let mut files = device_fleet(apt_port, greeting, PACKAGES);
    files[0].1.push_str(extra);
    files
}

fn window(from: u16, to: u16) -> String {
    format!(
        "maintenance:\n  window: \"{}-{}\"\n  unsynchronized_clock: trust\n",
        hhmm(from),
        hhmm(to)
    )
}

fn installed(dev: &Booted, package: &str) -> bool {
    dev.exec(&["dpkg-query", "-W", "-f", "${Status}", package])
        .stdout
        .contains("install ok installed")
}

fn release(dev: &Booted) -> serde_json::Value {
    let text = std::fs::read_to_string(dev.path("/var/lib/fleet-agent/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["release"].clone()
}

#[test]
fn a_window_and_the_hold_file_defer_disruptive_changes_only() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-window"));
    let now = now_minutes(&dev);
    // Outside: starts in two hours. Inside: began an hour ago, ends in an hour (the
    // test never runs near either edge).
    let (outside, inside) = (
        window(now + 120, now + 180),
        window(now + 23 * 60, now + 60),
    );
    commit(&repo, &fleet_with(apt.port, "hello", &outside), "outside");
    let until = format!("deferred until {}", hhmm(now + 120));

    let plan = dev.agent(&["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("note: apt packages: {until}")),
        "{plan:?}"
    );
    let pull = timed("pull outside the window", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    // Files, users and the unit file applied at once; no package, no start.
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=hello");
    assert_eq!(dev.sh("id -nG fleetapp"), "fleetapp fleetdata");
    assert!(!installed(&dev, "fleet-test-hello"));
    assert_ne!(
        dev.sh("systemctl is-active fleet-demo.service || true"),
        "active"
    );
    let r = release(&dev);
    assert_eq!(r["deferral"], until.as_str());
    let deferred = r["deferred"].to_string();
    assert!(
        deferred.contains("apt packages") && deferred.contains("service fleet-demo.service"),
        "{r}"
    );

    commit(&repo, &fleet_with(apt.port, "hello", &inside), "inside");
    let pull = timed("pull inside the window", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    assert!(installed(&dev, "fleet-test-hello"));
    assert_eq!(dev.sh("systemctl is-active fleet-demo.service"), "active");
    assert!(
        release(&dev).is_null(),
        "nothing deferred: {}",
        release(&dev)
    );
    let starts = starts_of(&dev, "fleet-demo.service");

    // The hold file: the configuration changes, its restart waits.
    dev.sh("mkdir -p /run/fleet-agent && touch /run/fleet-agent/hold");
    commit(&repo, &fleet_with(apt.port, "held", &inside), "held");
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=held");
    assert_eq!(starts_of(&dev, "fleet-demo.service"), starts);
    let r = release(&dev);
    assert_eq!(r["deferral"], "deferred while /run/fleet-agent/hold exists");
    assert_eq!(r["handlers"][0]["unit"], "fleet-demo.service", "{r}");
    let plan = dev.agent(&["plan"]);
    assert!(plan.stdout.contains("note: try-restart fleet-demo.service (due since an earlier run): deferred while /run/fleet-agent/hold exists"), "{plan:?}");

    // Removed: the deferred restart runs, once.
    dev.sh("rm /run/fleet-agent/hold");
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(
        starts_of(&dev, "fleet-demo.service"),
        starts + 1,
        "{pull:?}"
    );
    assert!(release(&dev).is_null());
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(starts_of(&dev, "fleet-demo.service"), starts + 1);

    // Outside the window again: a change's restart waits for the window.
    commit(&repo, &fleet_with(apt.port, "late", &outside), "late");
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=late");
    assert_eq!(starts_of(&dev, "fleet-demo.service"), starts + 1);
    commit(&repo, &fleet_with(apt.port, "late", &inside), "window open");
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(starts_of(&dev, "fleet-demo.service"), starts + 2);
    rollout_holds_this_device_back(&dev, &repo, apt.port, &inside);
}

/// A rollout at 0 % holds the device on the commit it applied; at 100 % it takes the tip.
fn rollout_holds_this_device_back(dev: &Booted, repo: &FleetRepo, port: u16, inside: &str) {
    let applied = repo.commit(&[], "nothing new");
    assert_eq!(dev.agent(&["pull"]).code, 0);
    let at = |p: u32| format!("{inside}rollout: {{id: r1, percent: {p}}}\n");
    commit(repo, &fleet_with(port, "rolled", &at(0)), "r1 at 0 %");
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=late");
    let plan = dev.agent(&["plan"]);
    assert!(plan.stdout.contains("held back: bucket "), "{plan:?}");
    assert!(
        plan.stdout
            .contains(&format!("staying on {}", &applied[..12])),
        "{plan:?}"
    );
    commit(repo, &fleet_with(port, "rolled", &at(100)), "r1 at 100 %");
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=rolled");
}

const HEALTH_UNIT: &str = "[Unit]\nDescription=Fleet health demo\n\n[Service]\nExecStart=/bin/sh -c 'grep -qx good /etc/fleet-health.conf && exec sleep infinity'\n\n[Install]\nWantedBy=multi-user.target\n";

/// A unit that runs only with `mode: good`, health-checked; `slow` seconds of a command
/// on every change of its configuration (so that a rollback can be killed half way).
/// The command check makes the outcome certain: the unit is `active` for the moment
/// between its start and its shell's exit, which a first poll can catch.
fn health_fleet(mode: &str, note: &str) -> Vec<(String, String)> {
    vec![
        (
            "fleet.yml".into(),
            format!("format: 1\nvars: {{mode: {mode}, note: {note}}}\nroles: [app]\nhealth:\n  timeout_seconds: 5\n  units: [fleet-health.service]\n  commands: [\"grep -qx good /etc/fleet-health.conf\"]\n"),
        ),
        ("roles/app/files/fleet-health.service".into(), HEALTH_UNIT.into()),
        (
            "roles/app/role.yml".into(),
            "resources:
  - file: {path: /etc/systemd/system/fleet-health.service, source: fleet-health.service}
  - file: {path: /etc/fleet-health.conf, content: \"{{ mode }}\\n\"}
  - file: {path: /etc/fleet-health.note, content: \"{{ note }}\\n\"}
  - command: {name: settle, shell: \"sleep 3\", on_change: [/etc/fleet-health.conf]}
  - service: {name: fleet-health, enabled: true, state: started, restart_on: [/etc/fleet-health.conf]}
"
            .into(),
        ),
    ]
}

fn state(dev: &Booted) -> serde_json::Value {
    let text = std::fs::read_to_string(dev.path("/var/lib/fleet-agent/state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_commit_that_fails_its_health_checks_is_rolled_back_and_skipped() {
    let repo = FleetRepo::new(&[("README", "health\n")]);
    let git = crate::support::GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = Booted::start("fa-health");
    let name = crate::harness::instance_name("fa-health");
    dev.write(
        "/etc/fleet-agent/agent.toml",
        &format!(
            "repo = \"{}\"\nbranch = \"main\"\ndevice_id = \"{name}\"\n",
            git.url("fleet.git")
        ),
    );
    let sha = |dev: &Booted| dev.sh("sha256sum /etc/fleet-health.conf | cut -d' ' -f1");
    let c1 = {
        commit(&repo, &health_fleet("good", "one"), "good");
        crate::support::git(&repo.work, &["rev-parse", "HEAD"])
    };
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.sh("systemctl is-active fleet-health.service"), "active");
    assert_eq!(state(&dev)["release"]["good"], c1.as_str());
    let good_digest = sha(&dev);

    // A commit that breaks the unit: checked for 5 s, rolled back.
    commit(&repo, &health_fleet("bad", "two"), "breaks the unit");
    let c2 = crate::support::git(&repo.work, &["rev-parse", "HEAD"]);
    let pull = timed("pull of a failing commit and its rollback", || {
        dev.agent(&["pull"])
    });
    eprintln!("[health] pull:\n{}", pull.stderr);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr.contains("fleet-health.service is not active"),
        "{pull:?}"
    );
    assert_eq!(sha(&dev), good_digest);
    assert_eq!(dev.sh("cat /etc/fleet-health.note"), "one");
    assert_eq!(dev.sh("systemctl is-active fleet-health.service"), "active");
    let s = state(&dev);
    eprintln!(
        "[health] state: {}",
        serde_json::to_string_pretty(&s["release"]).unwrap()
    );
    assert_eq!(s["applied_commit"], c1.as_str());
    assert_eq!(s["release"]["failed"][0], c2.as_str());
    assert!(s["release"]["rollback"].is_null());
    assert!(s["release"]["health"]
        .as_str()
        .unwrap()
        .starts_with(&format!("rolled back from {c2} to {c1} in ")));

    // Later polls skip it; a newer commit is taken.
    assert_eq!(dev.agent(&["pull"]).code, 0);
    let plan = dev.agent(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "health: {} failed its checks on this device: staying on {}",
            &c2[..12],
            &c1[..12]
        )),
        "{plan:?}"
    );
    assert_eq!(sha(&dev), good_digest);
    // The operator's retry: the same commit is taken and checked again (and fails
    // again, so it is rolled back again and marked failed again).
    let retry = dev.agent(&["release", "retry", &c2[..12]]);
    assert_eq!(retry.code, 0, "{retry:?}");
    assert!(state(&dev)["release"].get("failed").is_none());
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 1, "taken and checked again: {pull:?}");
    assert!(
        pull.stderr
            .contains(&format!("health checks of {c2} failed")),
        "{pull:?}"
    );
    assert_eq!(state(&dev)["release"]["failed"][0], c2.as_str());
    assert_eq!(sha(&dev), good_digest);
    commit(&repo, &health_fleet("good", "three"), "fixed");
    let c3 = crate::support::git(&repo.work, &["rev-parse", "HEAD"]);
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(dev.sh("cat /etc/fleet-health.note"), "three");
    assert_eq!(state(&dev)["release"]["good"], c3.as_str());

    // kill -9 during the rollback (in its 3 s command), then a normal run finishes it.
    commit(&repo, &health_fleet("bad", "four"), "breaks it again");
    let c4 = crate::support::git(&repo.work, &["rev-parse", "HEAD"]);
    let mut child = dev.spawn_agent(&["pull"]);
    let began = std::time::Instant::now();
    while state(&dev)["release"]["rollback"].is_null() {
        assert!(began.elapsed().as_secs() < 60, "no rollback recorded");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    dev.sh("kill -9 $(pidof fleet-agent)");
    let _ = child.wait();
    assert_eq!(state(&dev)["release"]["rollback"]["to"], c3.as_str());
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.sh("cat /etc/fleet-health.note"), "three");
    assert_eq!(sha(&dev), good_digest);
    assert_eq!(dev.sh("systemctl is-active fleet-health.service"), "active");
    let s = state(&dev);
    assert!(s["release"]["rollback"].is_null(), "{s}");
    assert_eq!(s["release"]["failed"][1], c4.as_str());
}

/// The health checks of the device fleet's role: the configuration says hello.
const HELLO_HEALTH: &str =
    "health:\n  timeout_seconds: 3\n  commands: [\"grep -qx greeting=hello /etc/fleet-demo.conf\"]\n";

/// A rollback puts back the version the good commit pins when apt still has it (a
/// downgrade), and lists the package the failed commit added, which stays. The health
/// checks are declared by the role.
#[test]
fn a_rollback_downgrades_what_apt_can_and_lists_what_stays() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-undo"));
    let version = |dev: &Booted| dev.sh("dpkg-query -W -f '${Version}' fleet-test-hello");
    // The checks are the role's own (role.yml `health:`).
    let mut good = device_fleet(apt.port, "hello", PACKAGES);
    good[2].1.push_str(HELLO_HEALTH);
    commit(&repo, &good, "good");
    let pull = timed("good pull", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(version(&dev), "1.0");
    assert!(!installed(&dev, "fleet-test-manual"));

    let packages = "  - package: {name: fleet-test-hello, version: \"1.1\"}\n  - package: {name: fleet-test-service}\n  - package: {name: fleet-test-manual}\n";
    let mut bad = device_fleet(apt.port, "broken", packages);
    bad[2].1.push_str(HELLO_HEALTH);
    commit(
        &repo,
        &bad,
        "hello 1.1 and a new package, and a broken greeting",
    );
    let c2 = crate::support::git(&repo.work, &["rev-parse", "HEAD"]);
    let pull = timed("failing pull and its rollback", || dev.agent(&["pull"]));
    eprintln!("[undo] pull:\n{}", pull.stderr);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert_eq!(version(&dev), "1.0", "apt still has 1.0: rolled back");
    assert!(installed(&dev, "fleet-test-manual"), "never removed");
    let said = format!("package fleet-test-manual 1.0 installed by {} stays (not declared by the good commit; packages are never removed)", &c2[..8]);
    let rel = release(&dev);
    eprintln!(
        "[undo] release: {}",
        serde_json::to_string_pretty(&rel).unwrap()
    );
    assert_eq!(rel["not_undone"], serde_json::json!([said]));
    assert!(rel["rollback"].is_null());
    let status = dev.agent(&["status"]);
    assert!(
        status.stdout.contains(&format!("not undone:     {said}\n")),
        "{status:?}"
    );
    assert!(
        pull.stderr.contains(&format!("not undone: {said}")),
        "{pull:?}"
    );
}
