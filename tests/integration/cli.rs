//! The command line keeps its promises: exit codes, help, verbosity, `status`, `plan
//! --device`, `plan --repo` on this machine, `validate` off the device and as JSON.

use std::process::Command;

use crate::support::*;

fn agent(args: &[&str]) -> Run {
    to_run(
        Command::new(BIN)
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap(),
    )
}

#[test]
fn a_missing_agent_toml_is_a_usage_error() {
    let root = tempfile::tempdir().unwrap();
    let run = agent(&["--root", root.path().to_str().unwrap(), "pull"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stderr
            .contains("agent.toml: missing: the agent configuration is needed"),
        "{run:?}"
    );
}

#[test]
fn help_documents_every_flag_and_the_exit_codes() {
    let help = agent(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes:"), "{help:?}");
    assert!(help.stdout.contains("64  wrong command line"), "{help:?}");
    for sub in [
        vec!["plan", "--help"],
        vec!["status", "--help"],
        vec!["validate", "--help"],
        vec!["os", "status", "--help"],
    ] {
        let h = agent(&sub);
        assert_eq!(h.code, 0, "{sub:?}");
        assert!(h.stdout.contains("--json"), "{sub:?}: {h:?}");
        // clap prints a flag with no doc comment as a bare line: every flag says what it does.
        for line in h
            .stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("--"))
        {
            assert!(
                line.split_whitespace().count() > 2,
                "{sub:?}: `{line}` has no help text"
            );
        }
    }
    // --wait only where a lock is taken.
    assert!(agent(&["pull", "--help"]).stdout.contains("--wait"));
    assert!(!agent(&["status", "--help"]).stdout.contains("--wait"));
    assert_eq!(agent(&["status", "--wait", "3"]).code, 64);
}

#[test]
fn quiet_is_quiet_and_verbose_says_more() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let quiet = dev.run(&["-q", "pull"]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(quiet.stderr, "", "-q prints nothing when all goes well");
    let v = dev.run(&["-v", "pull"]);
    assert!(v.stderr.contains("debug: sync: the clone is at"), "{v:?}");
    assert!(!v.stderr.contains("unchanged:"), "{v:?}");
    let vv = dev.run(&["-vv", "pull"]);
    assert!(
        vv.stderr
            .contains("debug: unchanged: file /etc/web/motd (web, roles/web/role.yml:"),
        "{vv:?}"
    );
}

#[test]
fn status_fails_after_a_failed_run_and_shows_the_branch_and_iso_times() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    let ok = dev.run(&["status"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("branch:         main"), "{ok:?}");
    let json: serde_json::Value =
        serde_json::from_str(&dev.run(&["status", "--json"]).stdout).unwrap();
    let time = json["time"].as_str().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.contains('T'),
        "{time}"
    );

    repo.commit(&[("fleet.yml", "format: 1\nroles: [web\n")], "broken");
    assert_eq!(dev.run(&["pull"]).code, 1);
    let failed = dev.run(&["status"]);
    assert_eq!(
        failed.code, 1,
        "status exits 1 after an invalid run: {failed:?}"
    );
    assert!(
        failed
            .stdout
            .contains("invalid fleet repository: nothing applied"),
        "{failed:?}"
    );
}

#[test]
fn plan_for_another_device_takes_its_type_from_its_host_vars_and_warns_when_ungrouped() {
    let mut files = basic_fleet();
    files.push(("host_vars/lab-9.yml", "device_type: pi4\n"));
    let repo = FleetRepo::new(&files);
    // This machine says pi3: the other device's own type wins.
    let dev = Device::new(&repo.url(), "pi-0001", "device_type = \"pi3\"\n");
    let plan = dev.run(&[
        "plan",
        "--repo",
        repo.work.to_str().unwrap(),
        "--device",
        "lab-9",
    ]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout
            .contains("Device lab-9 (type pi4; groups: none; roles: web)"),
        "{plan:?}"
    );
    assert!(
        plan.stderr
            .contains("warning: device lab-9 is in no group of inventory.yml"),
        "{plan:?}"
    );
    let grouped = dev.run(&[
        "plan",
        "--repo",
        repo.work.to_str().unwrap(),
        "--device",
        "pi-7",
    ]);
    assert!(!grouped.stderr.contains("in no group"), "{grouped:?}");
}

#[test]
fn plan_repo_without_root_says_it_compares_with_this_machine() {
    let repo = FleetRepo::new(&basic_fleet());
    // No --root: planned against / (nothing is changed; plan --repo takes no lock and
    // writes no state).
    let plan = agent(&[
        "plan",
        "--repo",
        repo.work.to_str().unwrap(),
        "--device",
        "pi-1",
    ]);
    assert!(
        plan.stdout.starts_with(
            "Planned against this machine (/): without --root, plan --repo compares the working tree with the machine it runs on\n"
        ),
        "{plan:?}"
    );
}

#[test]
fn validate_checks_a_device_in_no_group_and_knows_the_built_in_roles_anywhere() {
    // A fleet without an inventory; fleet.yml's role needs a variable only a host sets;
    // and the built-in kiosk role, on a machine where it is not installed.
    let repo = FleetRepo::new(&[
        (
            "fleet.yml",
            "format: 1\nroles:\n  - web\n  - role: kiosk\n    params: {url: \"https://menu.example.com\"}\n",
        ),
        (
            "roles/web/role.yml",
            "resources:\n  - file: {path: /etc/web.conf, content: \"{{ listen }}\\n\"}\n",
        ),
        ("host_vars/pi-1.yml", "vars:\n  listen: 80\n"),
    ]);
    let run = agent(&[
        "--config",
        "/nonexistent/agent.toml",
        "validate",
        "--json",
        repo.work.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["file"], "roles/web/role.yml");
    assert_eq!(problems[0]["line"], 2);
    assert_eq!(
        problems[0]["message"],
        "undefined variable `listen`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params; it is set only in host_vars/pi-1.yml (for 1 of 2 devices checked: (a device in no group))"
    );
    let ok = agent(&["validate", "examples/fleet"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("  (a device in no group)\n"), "{ok:?}");
}
