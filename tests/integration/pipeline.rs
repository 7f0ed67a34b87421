//! plan → apply → plan, idempotence, diffs, pruning, secrets, locking, interruption.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::support::*;

#[test]
fn first_apply_then_nothing_to_do() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");

    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains("+ file /etc/web/web.conf (role web, roles/web/role.yml:"),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("Plan: 4 to create, 0 to change, 0 to remove."),
        "{plan:?}"
    );
    assert!(!dev.path("/etc/web").exists(), "plan changed nothing");

    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(
        dev.read("/etc/web/web.conf"),
        "listen = 8080\ngreeting = hello shop\n"
    );
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    let meta = std::fs::metadata(dev.path("/etc/web/web.conf")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::metadata(dev.path("/etc/web")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(dev.path("/etc/web/current"))
            .unwrap()
            .to_str(),
        Some("web.conf")
    );
    assert_eq!(dev.state()["outcome"], "applied");
    assert_eq!(
        dev.state()["applied_commit"],
        git(&repo.work, &["rev-parse", "HEAD"])
    );

    // A second run changes nothing, not even inode numbers, and says so.
    let before = dev.snapshot();
    let again = dev.run(&["pull"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("no changes"), "{again:?}");
    assert_eq!(dev.snapshot(), before);
    assert_eq!(dev.state()["outcome"], "unchanged");
    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("No changes"), "{plan:?}");
}

#[test]
fn a_change_is_planned_as_a_diff_then_applied() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);

    repo.commit(
        &[(
            "fleet.yml",
            "format: 1\nvars:\n  greeting: hello\n  port: 9090\nroles:\n  - web\n",
        )],
        "port 9090",
    );
    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("~ file /etc/web/web.conf"), "{plan:?}");
    assert!(
        plan.stdout.contains("-listen = 8080\n    +listen = 9090"),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 1 to change, 0 to remove."),
        "{plan:?}"
    );
    assert_eq!(
        dev.read("/etc/web/web.conf"),
        "listen = 8080\ngreeting = hello shop\n",
        "plan changed nothing"
    );

    let json = dev.run(&["plan", "--json"]);
    assert_eq!(json.code, 2);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["changes"][0]["action"], "change");
    assert_eq!(v["changes"][0]["subject"], "/etc/web/web.conf");
    assert_eq!(v["groups"][0], "shop");

    let apply = dev.run(&["apply"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(
        dev.read("/etc/web/web.conf"),
        "listen = 9090\ngreeting = hello shop\n"
    );
    assert_eq!(dev.run(&["plan"]).code, 0);
}

#[test]
fn drift_and_metadata_are_corrected() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    std::fs::write(dev.path("/etc/web/motd"), "edited by hand\n").unwrap();
    std::fs::set_permissions(
        dev.path("/etc/web/web.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 2);
    assert!(plan.stdout.contains("-edited by hand"), "{plan:?}");
    assert!(plan.stdout.contains("mode 0666 → 0640"), "{plan:?}");
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    assert_eq!(
        std::fs::metadata(dev.path("/etc/web/web.conf"))
            .unwrap()
            .mode()
            & 0o7777,
        0o640
    );
}

#[test]
fn removed_declarations_are_pruned_but_foreign_files_stay() {
    let mut files = basic_fleet();
    files.push(("roles/extra/role.yml", "resources:\n  - file:\n      path: /etc/extra.conf\n      content: x\n  - file:\n      path: /etc/existing.conf\n      content: managed\n"));
    files[0] = (
        "fleet.yml",
        "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web, extra]\n",
    );
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    std::fs::write(dev.path("/etc/existing.conf"), "was here before\n").unwrap();
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(dev.read("/etc/existing.conf"), "managed");

    repo.commit(
        &[(
            "fleet.yml",
            "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web]\n",
        )],
        "drop extra",
    );
    let plan = dev.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("- file /etc/extra.conf (no longer declared)"),
        "{plan:?}"
    );
    assert!(
        !plan.stdout.contains("/etc/existing.conf"),
        "not created by the agent: left alone\n{plan:?}"
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert!(!dev.path("/etc/extra.conf").exists());
    assert!(dev.path("/etc/existing.conf").exists());
}

/// A directory the agent created and that holds a file someone else put there is left
/// in place when no role declares it any more, with a note in `pull`'s log; it stays
/// recorded, so the pull after the foreign file is gone removes it.
#[test]
fn a_directory_left_in_place_is_noted_by_pull_and_pruned_later() {
    let mut files = basic_fleet();
    files[0] = (
        "fleet.yml",
        "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web, extra]\n",
    );
    files.push(("roles/extra/role.yml", "resources:\n  - directory: {path: /etc/extra}\n  - file: {path: /etc/extra/a.conf, content: x}\n"));
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    std::fs::write(dev.path("/etc/extra/local.conf"), "someone else's\n").unwrap();
    repo.commit(
        &[(
            "fleet.yml",
            "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web]\n",
        )],
        "drop extra",
    );
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("note: /etc/extra is no longer declared but is not empty: left in place"),
        "{run:?}"
    );
    assert!(!dev.path("/etc/extra/a.conf").exists());
    assert!(dev.path("/etc/extra/local.conf").exists());
    assert_eq!(dev.state()["resources"]["path:/etc/extra"]["created"], true);

    std::fs::remove_file(dev.path("/etc/extra/local.conf")).unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!dev.path("/etc/extra").exists(), "{run:?}");
    assert!(dev.state()["resources"].get("path:/etc/extra").is_none());
}

#[test]
fn secret_content_is_never_printed() {
    let mut files = basic_fleet();
    files.push(("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/token\n      content: \"s3cr3t-{{ greeting }}\"\n      mode: \"0600\"\n      secret: true\n"));
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let plan = dev.run(&["plan"]);
    let json = dev.run(&["plan", "--json"]);
    let pull = dev.run(&["pull"]);
    assert_eq!(dev.read("/etc/token"), "s3cr3t-hello shop");
    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: rotated\n")],
        "rotate",
    );
    let change = dev.run(&["plan"]);
    assert!(
        change
            .stdout
            .contains("content changed (secret: not shown)"),
        "{change:?}"
    );
    for run in [plan, json, pull, change, dev.run(&["pull", "-v"])] {
        assert!(!run.text().contains("s3cr3t"), "{run:?}");
    }
}

#[test]
fn a_second_run_waits_for_the_lock_or_says_why_not() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let state_dir = dev.path("/var/lib/fleet-agent");
    // Another run: the same flock on the same file, held by this process.
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = std::fs::File::create(state_dir.join("lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let busy = dev.run(&["pull"]);
    assert_eq!(busy.code, 4, "{busy:?}");
    assert!(
        busy.stderr
            .contains("another fleet-agent run holds the lock"),
        "{busy:?}"
    );
    assert!(!dev.path("/etc/web").exists());

    let waiting = dev.command(&["pull", "--wait", "10"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(lock);
    let out = to_run(waiting.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    assert!(dev.path("/etc/web/web.conf").exists());
}

#[test]
fn two_concurrent_pulls_apply_once() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let a = dev.command(&["pull", "--wait", "30"]).spawn().unwrap();
    let b = dev.command(&["pull", "--wait", "30"]).spawn().unwrap();
    let (a, b) = (
        to_run(a.wait_with_output().unwrap()),
        to_run(b.wait_with_output().unwrap()),
    );
    assert_eq!((a.code, b.code), (0, 0), "{a:?}\n{b:?}");
    let applied = [&a, &b]
        .iter()
        .filter(|r| r.stderr.contains("4 created"))
        .count();
    let unchanged = [&a, &b]
        .iter()
        .filter(|r| r.stderr.contains("no changes"))
        .count();
    assert_eq!((applied, unchanged), (1, 1), "{a:?}\n{b:?}");
}

#[test]
fn kill_during_apply_then_a_normal_run_converges() {
    // Many files so that the apply (an fsync per file) is under way when it is killed.
    let mut role = String::from("resources:\n");
    for i in 0..400 {
        role.push_str(&format!(
            "  - file:\n      path: /srv/data/f{i:04}\n      content: \"{}\"\n",
            format!("content {i} ").repeat(200)
        ));
    }
    let mut files = basic_fleet();
    files.push(("roles/web/role.yml", Box::leak(role.into_boxed_str())));
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let expected = |i: usize| format!("content {i} ").repeat(200);

    let mut child = dev.command(&["pull"]).spawn().unwrap();
    let dir = dev.path("/srv/data");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) < 20
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    nix_kill(child.id());
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed");

    // Whatever is there is whole: every file is complete (temporary files aside).
    let written: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!written.is_empty());
    for name in written.iter().filter(|n| !n.ends_with(".fleet-agent-tmp")) {
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            expected(i),
            "{name} is whole"
        );
    }

    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    for i in 0..400 {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("f{i:04}"))).unwrap(),
            expected(i)
        );
    }
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with("-tmp")
        })
        .count();
    assert_eq!(
        leftovers, 0,
        "no temporary file is left after the converging run"
    );
    assert_eq!(dev.run(&["plan"]).code, 0);
}

fn nix_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_damaged_state_file_means_converge_everything() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    std::fs::write(dev.path("/var/lib/fleet-agent/state.json"), "{ not json").unwrap();
    std::fs::remove_file(dev.path("/etc/web/motd")).unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("state file") && run.stderr.contains("damaged"),
        "{run:?}"
    );
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    assert_eq!(dev.state()["outcome"], "applied");
}

#[test]
fn another_root_filesystem_converges_everything_and_prunes_nothing() {
    let mut files = basic_fleet();
    files.push((
        "roles/extra/role.yml",
        "resources:\n  - file:\n      path: /etc/extra.conf\n      content: x\n",
    ));
    files[0] = (
        "fleet.yml",
        "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web, extra]\n",
    );
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    let first_id = dev.state()["rootfs"].as_str().unwrap().to_string();
    // An A/B swap: the new root filesystem has no marker (and none of the files).
    std::fs::remove_file(dev.path("/etc/fleet-agent/rootfs-id")).unwrap();
    repo.commit(
        &[(
            "fleet.yml",
            "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web]\n",
        )],
        "drop extra",
    );
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("root filesystem is not the one of the last run"),
        "{run:?}"
    );
    assert!(
        dev.path("/etc/extra.conf").exists(),
        "what an old root's state says is not pruned on a new root"
    );
    assert_ne!(dev.state()["rootfs"].as_str().unwrap(), first_id);
}

#[test]
fn status_reports_the_last_run() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let none = dev.run(&["status"]);
    assert!(none.stdout.contains("no run recorded yet"), "{none:?}");
    assert_eq!(dev.run(&["pull"]).code, 0);
    let status = dev.run(&["status"]);
    assert!(
        status.stdout.contains("outcome:        applied"),
        "{status:?}"
    );
    assert!(
        status
            .stdout
            .contains(&git(&repo.work, &["rev-parse", "HEAD"])),
        "{status:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&dev.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["outcome"], "applied");
    assert_eq!(json["resources"].as_object().unwrap().len(), 4);
}

#[test]
fn plan_on_a_working_tree_fetches_nothing_and_changes_nothing() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new("file:///nonexistent", "pi-0002", "");
    let plan = dev.run(&["plan", "--repo", repo.work.to_str().unwrap()]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("+ file /etc/web/motd"));
    assert!(
        !dev.path("/var/lib/fleet-agent").exists(),
        "no state, no clone, no lock"
    );
    let other = dev.run(&[
        "plan",
        "--repo",
        repo.work.to_str().unwrap(),
        "--device",
        "lab-1",
    ]);
    assert!(
        other
            .stdout
            .contains("Device lab-1 (type unknown; groups: none; roles: web)"),
        "{other:?}"
    );
}

#[test]
fn the_bundled_example_fleet_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fleet");
    let out = std::process::Command::new(BIN)
        .args(["validate", dir])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("valid (11 devices checked)"), "{run:?}");
}

/// A run with no package change never runs apt: under --root on an image without apt,
/// a changed apt source is written and the refresh it would need is a note, and the
/// run succeeds (issue 13, item 5). Before: `apt-get update` failed the run.
#[test]
fn a_source_change_without_apt_in_the_root_is_a_note() {
    let mut files = basic_fleet();
    files.push((
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/apt/sources.list.d/x.sources, content: \"Types: deb\\nURIs: http://127.0.0.1:9/\\nSuites: x\\nComponents: main\\n\"}\n",
    ));
    let repo = FleetRepo::new(&files);
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(
            "note: apt sources changed: `apt-get update` skipped: this root has no /usr/bin/apt-get"
        ),
        "{run:?}"
    );
    assert!(dev.path("/etc/apt/sources.list.d/x.sources").exists());
}
