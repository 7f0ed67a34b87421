//! Bad input: each class of mistake in a fleet repository gives a message naming
//! file:line:column and what was expected, and the device is left exactly as it was.

use crate::support::*;

const WEB_ROLE: &str = "roles/web/role.yml";

fn role(resources: &str) -> String {
    format!("resources:\n{resources}")
}

/// What is wrong, the files changed on top of the basic fleet, the expected message.
type Case = (&'static str, Vec<(&'static str, String)>, &'static str);

/// A few classes end to end (the binary, a real pull): every class and its exact
/// position is tested in-process in src/fleet/tests.rs; here, that nothing changes.
fn cases() -> Vec<Case> {
    vec![
        ("YAML syntax", vec![("fleet.yml", "format: 1\nroles: [web\n".into())], "fleet.yml:3:1: YAML syntax error"),
        (
            "undefined variable in a template file",
            vec![("roles/web/templates/web.conf.j2", "listen = {{ listen }}\nname = {{ device.nmae }}\n".into())],
            "roles/web/templates/web.conf.j2:2:11: undefined variable `device.nmae`",
        ),
        (
            "missing role",
            vec![("fleet.yml", "format: 1\nroles:\n  - web\n  - nope\n".into())],
            "fleet.yml:4:5: no role `nope`: expected roles/nope/role.yml",
        ),
        (
            "two resources on one path",
            vec![(WEB_ROLE, role("  - file:\n      path: /etc/x\n      content: a\n  - absent:\n      path: /etc/x\n"))],
            "roles/web/role.yml:5:5: /etc/x is also managed by the resource at roles/web/role.yml:2:5",
        ),
        (
            "a template that loops 100 million times",
            vec![("roles/web/templates/web.conf.j2", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}\n".into())],
            "roles/web/templates/web.conf.j2:1:1: the device's templates take more than 1000000 steps with this one",
        ),
        (
            "a YAML file over max_yaml_bytes",
            vec![
                ("fleet.yml", "format: 1\nsettings: {max_yaml_bytes: 2000}\nvars:\n  greeting: hello\n  port: 8080\nroles:\n  - web\n".into()),
                ("group_vars/shop.yml", format!("vars:\n  greeting: hello shop\n#{}\n", "x".repeat(3000))),
            ],
            "group_vars/shop.yml: 3031 bytes, more than max_yaml_bytes (2000 bytes; fleet.yml settings)",
        ),
        (
            "a unit name that systemctl would read as an option",
            vec![(WEB_ROLE, role("  - service:\n      name: \"--root=/.\"\n      enabled: true\n"))],
            "roles/web/role.yml:3:13: `--root=/.` is not a unit name",
        ),
        (
            "a user the device does not have",
            vec![(WEB_ROLE, role("  - file:\n      path: /etc/x\n      content: x\n      owner: kiosk\n"))],
            "roles/web/role.yml:2:5: the user `kiosk` does not exist on the device",
        ),
        (
            "a host_vars file named .yaml",
            vec![("host_vars/pi-0001.yaml", "vars:\n  greeting: never applied\n".into())],
            "host_vars/pi-0001.yaml: not a vars file: host_vars/ holds only <name>.yml files (hidden files are ignored): rename it to host_vars/pi-0001.yml",
        ),
    ]
}

#[test]
fn each_class_of_bad_input_is_reported_where_it_is_and_nothing_changes() {
    let mut table = String::new();
    for (what, files, expected) in cases() {
        let repo = FleetRepo::new(&basic_fleet());
        let dev = Device::new(&repo.url(), "pi-0001", "");
        assert_eq!(
            dev.run(&["pull"]).code,
            0,
            "{what}: the good commit applies"
        );
        // Drift that a valid run would correct: an invalid one must not touch it either.
        std::fs::write(dev.path("/etc/web/motd"), "local edit\n").unwrap();
        let before = dev.snapshot();

        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        repo.commit(&files, what);
        let run = dev.run(&["pull"]);
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{what}: expected `{expected}` in\n{run:?}"
        );
        assert_eq!(
            dev.snapshot(),
            before,
            "{what}: the device is left exactly as it was"
        );
        let state = dev.state();
        let outcome = state["outcome"].as_str().unwrap();
        assert!(
            outcome == "invalid" || outcome == "failed",
            "{what}: {outcome}"
        );
        let plan = dev.run(&["plan"]);
        assert_eq!(plan.code, 1, "{what}: plan exits 1 on an error");
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or(expected)
            .trim();
        table.push_str(&format!("| {what} | `{line}` |\n"));
    }
    println!("{table}");
}

#[test]
fn validate_reports_every_problem_at_once() {
    let mut files = basic_fleet();
    files.push((WEB_ROLE, "resources:\n  - file:\n      path: /etc/x\n      content: \"{{ nope }}\"\n  - file:\n      path: /etc/y\n      source: missing\n"));
    files.push((
        "roles/unused/role.yml",
        "resources:\n  - directory: {path: /x, colour: red}\n",
    ));
    files.push(("host_vars/pi-0002.yml", "vars: [not, a, mapping]\n"));
    let repo = FleetRepo::new(&files);
    let out = to_run(
        std::process::Command::new(BIN)
            .args(["validate", repo.work.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 1, "{out:?}");
    for expected in [
        "roles/web/role.yml:4:16: undefined variable `nope`",
        "roles/web/role.yml:7:15: roles/web/files/missing does not exist",
        "roles/unused/role.yml:2:27: unknown key `colour`",
        "host_vars/pi-0002.yml:1:7: expected a mapping of variable names to values",
    ] {
        assert!(
            out.stderr.contains(expected),
            "expected `{expected}` in\n{out:?}"
        );
    }
    assert!(out.stderr.contains("(4 problems)"), "{out:?}");
}
