//! A percentage rollout end to end (docs/rollouts.md): the real binary pulls a real git
//! repository on scratch-root devices while the branch raises its rollout from 10 % to
//! 50 % to 100 %. At each step exactly the devices the buckets predict take the new
//! commit, the others stay on the commit they last applied and `plan` says why; a
//! device offline during the ramp obeys the current percentage; a broken commit is
//! reported by every device, held back or not.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::support::{Device, FleetRepo};

const ROLLOUT: &str = "release-2";

/// The bucket as docs/rollouts.md defines it, computed here independently.
fn bucket(device: &str, rollout: &str) -> u32 {
    let digest = Sha256::digest(format!("{device}\n{rollout}").as_bytes());
    let first = u64::from_be_bytes(digest[..8].try_into().unwrap());
    (first % 10_000) as u32
}

fn fleet(release: &str, rollout: Option<u32>) -> Vec<(&'static str, String)> {
    let rollout = rollout
        .map(|p| format!("rollout:\n  id: {ROLLOUT}\n  percent: {p}\n"))
        .unwrap_or_default();
    vec![
        (
            "fleet.yml",
            format!("format: 1\nvars:\n  release: \"{release}\"\nroles: [app]\n{rollout}"),
        ),
        (
            "roles/app/role.yml",
            "resources:\n  - file:\n      path: /etc/app/release\n      content: \"{{ release }}\\n\"\n".into(),
        ),
    ]
}

fn commit(repo: &FleetRepo, files: &[(&str, String)], message: &str) -> String {
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    repo.commit(&files, message)
}

/// The devices on release 2 after each of them pulled (the late one excepted).
fn pull_all(devices: &[(String, Device)], late: &str) -> BTreeSet<String> {
    let mut taken = BTreeSet::new();
    for (id, d) in devices.iter().filter(|(id, _)| id != late) {
        let run = d.run(&["pull"]);
        assert_eq!(run.code, 0, "{id}: {run:?}");
        if d.read("/etc/app/release") == "2\n" {
            taken.insert(id.clone());
        }
    }
    taken
}

#[test]
fn a_rollout_at_10_50_100_percent_changes_exactly_the_predicted_devices() {
    let repo = FleetRepo::new(&[("README", "rollout\n")]);
    let v1 = commit(&repo, &fleet("1", None), "release 1");
    let ids: Vec<String> = (0..40).map(|i| format!("shop-{i:02}")).collect();
    let devices: Vec<(String, Device)> = ids
        .iter()
        .map(|id| (id.clone(), Device::new(&repo.url(), id, "")))
        .collect();
    assert!(pull_all(&devices, "").is_empty());
    assert!(devices
        .iter()
        .all(|(_, d)| d.read("/etc/app/release") == "1\n"));

    let predicted = |bp: u32| -> BTreeSet<String> {
        ids.iter()
            .filter(|id| bucket(id, ROLLOUT) < bp)
            .cloned()
            .collect()
    };
    let (p10, p50) = (predicted(1000), predicted(5000));
    assert!(!p10.is_empty() && p10.len() < p50.len() && p50.len() < ids.len());
    // Offline during the ramp: a device outside the 50 % set.
    let late = ids.iter().find(|id| !p50.contains(*id)).unwrap().clone();

    let v2 = commit(&repo, &fleet("2", Some(10)), "release 2 at 10 %");
    let at10 = pull_all(&devices, &late);
    eprintln!("[rollout] 10 %: {at10:?}");
    assert_eq!(at10, p10);

    // A held-back device stays on the commit it last applied, and says so.
    let (held, dev) = (devices.iter())
        .find(|(id, _)| !p10.contains(id) && *id != late)
        .unwrap();
    let plan = dev.run(&["plan"]);
    let b = bucket(held, ROLLOUT);
    let line = format!(
        "held back: bucket {b} ≥ 1000 (rollout `{ROLLOUT}` at 10 %): staying on {}, the branch is at {}",
        &v1[..12],
        &v2[..12]
    );
    assert!(plan.stdout.contains(&line), "{line}\n{plan:?}");
    let state = dev.state();
    assert_eq!(state["applied_commit"], v1.as_str());
    assert_eq!(state["release"]["rollout"]["held_back"], true);
    assert_eq!(state["release"]["rollout"]["bucket"], b);
    assert_eq!(state["release"]["rollout"]["tip"], v2.as_str());

    // A broken commit is reported by every device, held back or not; none changes.
    let broken = vec![(
        "roles/app/role.yml",
        "resources:\n  - file: {pth: /x}\n".to_string(),
    )];
    commit(&repo, &broken, "broken");
    for (id, d) in &devices {
        let run = d.run(&["pull"]);
        assert_eq!(run.code, 1, "{id}: {run:?}");
        assert!(
            run.stderr.contains("roles/app/role.yml:2:"),
            "{id}: {run:?}"
        );
    }
    commit(&repo, &fleet("2", Some(10)), "release 2 at 10 %, fixed");
    assert_eq!(pull_all(&devices, &late), p10);

    commit(&repo, &fleet("2", Some(50)), "release 2 at 50 %");
    let at50 = pull_all(&devices, &late);
    eprintln!("[rollout] 50 %: {at50:?}");
    assert_eq!(at50, p50);
    assert!(at10.is_subset(&at50));

    commit(&repo, &fleet("2", Some(100)), "release 2 at 100 %");
    let at100 = pull_all(&devices, "");
    eprintln!(
        "[rollout] 100 %: {} devices, the late {late} included",
        at100.len()
    );
    assert_eq!(at100.len(), ids.len());
}

/// A maintainer's working tree is never held back (there is no commit to stay on), and
/// a new device that applied nothing yet takes the tip whatever its bucket.
#[test]
fn a_working_tree_and_a_new_device_are_never_held_back() {
    let repo = FleetRepo::new(&[("README", "rollout\n")]);
    commit(&repo, &fleet("2", Some(0)), "release 2 at 0 %");
    let dev = Device::new(&repo.url(), "shop-00", "");
    let b = bucket("shop-00", ROLLOUT);
    let plan = dev.run(&["plan", "--repo", repo.work.to_str().unwrap()]);
    let line = format!(
        "held back: bucket {b} ≥ 0 (rollout `{ROLLOUT}` at 0 %): a working tree is never held back"
    );
    assert!(plan.stdout.contains(&line), "{plan:?}");
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.read("/etc/app/release"), "2\n");
    assert_eq!(dev.state()["release"]["rollout"]["held_back"], true);
}

/// A resource a role marks `disruptive: true` waits for the maintenance window and
/// for the hold file to go; the rest of the commit applies at once.
#[test]
fn a_disruptive_resource_waits_for_the_window_and_the_hold_file() {
    let hour: u32 = (std::process::Command::new("date").arg("+%H").output())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().parse().unwrap())
        .unwrap();
    // A window that does not hold now, judged by the clock as it is.
    let (start, end) = ((hour + 2) % 24, (hour + 3) % 24);
    let window = format!(
        "maintenance: {{window: \"{start:02}:00-{end:02}:00\", unsynchronized_clock: trust}}\n"
    );
    let role = "resources:\n  - file: {path: /etc/app/release, content: \"2\\n\"}\n  - file: {path: /etc/app/engine.conf, content: \"fast\\n\"}\n    disruptive: true\n";
    let repo = FleetRepo::new(&[("README", "disruptive\n")]);
    let fleet = format!("format: 1\nroles: [app]\n{window}");
    repo.commit(
        &[("fleet.yml", fleet.as_str()), ("roles/app/role.yml", role)],
        "a disruptive file",
    );
    let dev = Device::new(&repo.url(), "shop-00", "");
    let plan = dev.run(&["plan"]);
    let line = format!("note: file /etc/app/engine.conf: deferred until {start:02}:00");
    assert!(plan.stdout.contains(&line), "{line}\n{plan:?}");
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.read("/etc/app/release"), "2\n");
    assert!(!dev.path("/etc/app/engine.conf").exists());
    let deferred = &dev.state()["release"]["deferred"];
    assert_eq!(deferred[0], "file /etc/app/engine.conf", "{deferred}");

    // No window, the hold file present: still deferred; removed: applied.
    let fleet = "format: 1\nroles: [app]\n";
    repo.commit(&[("fleet.yml", fleet)], "no window");
    std::fs::create_dir_all(dev.path("/run/fleet-agent")).unwrap();
    std::fs::write(dev.path("/run/fleet-agent/hold"), "").unwrap();
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert!(!dev.path("/etc/app/engine.conf").exists());
    let plan = dev.run(&["plan"]);
    let line = "note: file /etc/app/engine.conf: deferred while /run/fleet-agent/hold exists";
    assert!(plan.stdout.contains(line), "{plan:?}");
    std::fs::remove_file(dev.path("/run/fleet-agent/hold")).unwrap();
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.read("/etc/app/engine.conf"), "fast\n");
    assert!(dev
        .state()
        .get("release")
        .is_none_or(|r| r.get("deferred").is_none()));
}

/// `release retry` forgets that a commit failed its health checks here, under the lock;
/// `status` names the failed commits and the command.
#[test]
fn release_retry_forgets_a_failed_commit() {
    let repo = FleetRepo::new(&[("README", "retry\n")]);
    commit(&repo, &fleet("1", None), "release 1");
    let dev = Device::new(&repo.url(), "shop-00", "");
    let (good, bad, worse) = (
        "1".repeat(40),
        "53e4ecd2".to_string() + &"a".repeat(32),
        "b".repeat(40),
    );
    let none = dev.run(&["release", "retry"]);
    assert_eq!(
        (none.code, none.stdout.as_str()),
        (0, "no run recorded yet: nothing to retry\n"),
        "{none:?}"
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
    let mut state = dev.state();
    state["release"] = serde_json::json!({"good": good, "failed": [bad, worse]});
    let path = dev.path("/var/lib/fleet-agent/state.json");
    std::fs::write(&path, state.to_string()).unwrap();

    let status = dev.run(&["status"]);
    let line = format!("failed commit:  {bad} (failed its health checks here: skipped until a newer commit; `fleet-agent release retry 53e4ecd2aaaa` takes it again)\n");
    assert!(status.stdout.contains(&line), "{status:?}");

    // Under the run lock: another run holding it makes retry wait or give up (exit 4).
    let file = std::fs::File::create(dev.path("/var/lib/fleet-agent/lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let busy = dev.run(&["release", "retry"]);
    assert_eq!(busy.code, 4, "{busy:?}");
    assert_eq!(
        dev.state()["release"]["failed"].as_array().unwrap().len(),
        2
    );
    drop(lock);
    let wrong = dev.run(&["release", "retry", "53e4"]);
    assert_eq!(wrong.code, 1, "a prefix shorter than 7: {wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("`53e4` is not a commit that failed its health checks here"),
        "{wrong:?}"
    );
    let one = dev.run(&["release", "retry", "53E4ECD2"]);
    assert_eq!(one.code, 0, "{one:?}");
    assert_eq!(
        one.stdout,
        format!("allowed again: {bad} (the next pull takes it when it is the branch's tip)\n")
    );
    assert_eq!(dev.state()["release"]["failed"], serde_json::json!([worse]));
    assert_eq!(dev.state()["release"]["good"], good.as_str());
    assert_eq!(dev.run(&["release", "retry"]).code, 0);
    assert!(dev.state()["release"].get("failed").is_none());
    let nothing = dev.run(&["release", "retry"]);
    assert_eq!(
        nothing.stdout,
        "no commit failed its health checks here: nothing to retry\n"
    );
}
