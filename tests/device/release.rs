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
