//! `settings.min_agent_version`: validated with its position, reported by `plan`, and
//! never acted on by a `--root` run (it is not the device's agent). The upgrade itself
//! needs apt and systemd: tests/device/self_update.rs.

use crate::support::*;

fn fleet_with(settings: &str) -> String {
    format!(
        "format: 1\nsettings:\n{settings}vars:\n  greeting: hello\n  port: 8080\nroles:\n  - web\n"
    )
}

/// A repository whose first commit applied, then `fleet.yml` replaced.
fn applied_then(fleet_yml: &str) -> (FleetRepo, Device) {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0, "the first commit applies");
    std::fs::write(dev.path("/etc/web/motd"), "local edit\n").unwrap();
    repo.commit(
        &[
            ("fleet.yml", fleet_yml),
            (
                "roles/web/templates/web.conf.j2",
                "changed = {{ listen }}\n",
            ),
        ],
        "needs another agent",
    );
    (repo, dev)
}

#[test]
fn a_min_agent_version_that_is_not_a_version_is_reported_where_it_is() {
    for (value, expected) in [
        (
            "\"1.2\"",
            "fleet.yml:3:22: `1.2` is not a version: expected X.Y.Z",
        ),
        (
            "1.2.x",
            "fleet.yml:3:22: `1.2.x` is not a version: expected X.Y.Z",
        ),
        ("\"0.1.0-1\"", "fleet.yml:3:22: `0.1.0-1` is not a version"),
    ] {
        let (_repo, dev) = applied_then(&fleet_with(&format!("  min_agent_version: {value}\n")));
        let before = dev.snapshot();
        let run = dev.run(&["pull"]);
        assert_eq!(run.code, 1, "{value}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{value}: `{expected}` in\n{run:?}"
        );
        assert_eq!(dev.snapshot(), before, "{value}: nothing changed");
        assert_eq!(dev.state()["outcome"], "invalid", "{value}");
    }
    // A wrong type, from the typed settings (marked-yaml places this one at the
    // document, not at the value: the message names what was expected).
    let (_repo, dev) = applied_then(&fleet_with("  min_agent_version: [1, 2, 3]\n"));
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("fleet.yml:") && run.stderr.contains("sequence, expected a string"),
        "{run:?}"
    );
}

#[test]
fn an_agent_that_is_new_enough_applies_as_usual() {
    let ours = env!("CARGO_PKG_VERSION");
    let (_repo, dev) = applied_then(&fleet_with(&format!("  min_agent_version: \"{ours}\"\n")));
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(dev.read("/etc/web/web.conf"), "changed = 8080\n");
}

#[test]
fn an_old_agent_plans_the_upgrade_only_and_a_root_run_refuses() {
    // A newer format that this agent cannot read, as a newer branch would have: the
    // lenient read still finds the requirement.
    let fleet_yml = "format: 2\nsettings:\n  min_agent_version: \"999.0.0\"\n  shiny_new_setting: true\nroles: [web]\n";
    let (_repo, dev) = applied_then(fleet_yml);
    let before = dev.snapshot();

    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 2, "an upgrade is pending: {plan:?}");
    let expected = format!(
        "agent {} is older than the branch's min_agent_version 999.0.0 (fleet.yml:3:22): pull would upgrade the agent first",
        env!("CARGO_PKG_VERSION")
    );
    assert!(plan.stdout.contains(&expected), "{plan:?}");
    let json = dev.run(&["plan", "--json"]);
    assert_eq!(json.code, 2, "{json:?}");
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["agent_upgrade"]["min_agent_version"], "999.0.0");
    assert_eq!(value["agent_upgrade"]["at"], "fleet.yml:3:22");
    assert_eq!(value["changes"], serde_json::json!([]));
    assert_eq!(dev.state()["outcome"], "applied", "plan records nothing");

    // --root: not the device's agent. It reports, with the position, and changes nothing.
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr.contains("fleet.yml:3:22: fleet-agent")
            && pull
                .stderr
                .contains("is older than min_agent_version 999.0.0")
            && pull.stderr.contains("--root runs do not upgrade it"),
        "{pull:?}"
    );
    assert!(!pull.stderr.contains("upgrading fleet-agent"), "{pull:?}");
    assert_eq!(dev.snapshot(), before, "nothing changed");
    assert_eq!(dev.state()["outcome"], "invalid");
    let status = dev.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("is older than min_agent_version 999.0.0"),
        "{status:?}"
    );
    let apply = dev.run(&["apply"]);
    assert_eq!(apply.code, 1, "{apply:?}");
    assert_eq!(dev.snapshot(), before, "nothing changed");
}

#[test]
fn a_maintainer_sees_the_requirement_in_plan_and_validate() {
    let repo = FleetRepo::new(&basic_fleet());
    repo.commit(
        &[("fleet.yml", &fleet_with("  min_agent_version: 999.1.2\n"))],
        "needs a newer agent",
    );
    let work = repo.work.to_str().unwrap();
    let plan = to_run(
        std::process::Command::new(BIN)
            .args([
                "--config",
                "/dev/null",
                "plan",
                "--repo",
                work,
                "--device",
                "pi-0001",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains("min_agent_version 999.1.2"),
        "{plan:?}"
    );
    let validate = to_run(
        std::process::Command::new(BIN)
            .args(["--config", "/dev/null", "validate", work])
            .output()
            .unwrap(),
    );
    assert_eq!(validate.code, 1, "{validate:?}");
    assert!(
        validate
            .stderr
            .contains("fleet.yml:3:22: fleet-agent 0.1.0 is older than min_agent_version 999.1.2"),
        "{validate:?}"
    );
}

#[test]
fn a_fleet_agent_pin_below_min_agent_version_is_reported_where_it_is() {
    // A pin below the minimum would make the packages phase (or the self-update's apt
    // transaction, which allows downgrades) install an agent the branch refuses.
    let ours = env!("CARGO_PKG_VERSION");
    let agent_role = "description: the agent\nresources:\n  - package:\n      name: fleet-agent\n      version: \"0.0.9-1\"\n";
    let (repo, dev) = applied_then(&fleet_with(&format!("  min_agent_version: \"{ours}\"\n")));
    repo.commit(&[("roles/agent/role.yml", agent_role)], "pins an old agent");
    let before = dev.snapshot();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!(
        "roles/agent/role.yml:5:16: fleet-agent 0.0.9-1 is older than settings.min_agent_version {ours} (fleet.yml:3:22)"
    );
    assert!(run.stderr.contains(&expected), "{expected}\n{run:?}");
    assert_eq!(dev.snapshot(), before, "nothing changed");
    assert_eq!(dev.state()["outcome"], "invalid");

    // `validate` on the maintainer's tree says the same.
    let validate = to_run(
        std::process::Command::new(BIN)
            .args([
                "--config",
                "/dev/null",
                "validate",
                repo.work.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(validate.code, 1, "{validate:?}");
    assert!(validate.stderr.contains(&expected), "{validate:?}");

    // A pin that meets the minimum (a Debian revision of the same version), a glob and
    // an absent package are fine.
    repo.commit(
        &[(
            "roles/agent/role.yml",
            &format!("resources:\n  - package: {{name: fleet-agent, version: \"{ours}-2\"}}\n  - package: {{name: fleet-agent, version: \"0.0.*\"}}\n  - package: {{name: fleet-agent, version: \"0.0.1\", state: absent}}\n"),
        )],
        "pins the agent",
    );
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(dev.read("/etc/web/web.conf"), "changed = 8080\n");
}
