//! The built-in kiosk role (the project's roles/kiosk), used by name from a fleet
//! repository served by file://: what it plans with its defaults and with every
//! parameter, the errors of bad parameters (`choices:`), and a fleet role of the same
//! name replacing it. The device suite (tests/device/kiosk.rs) runs it for real.

use crate::support::*;

const ROLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/roles");
const DEVICE: &str = "kiosk-1";
const HOST_VARS: &str = "host_vars/kiosk-1.yml";

/// Packages the role installs, already installed: planning runs no apt command.
const PACKAGES: [&str; 8] = [
    "cage",
    "xwayland",
    "chromium",
    "firefox-esr",
    "fonts-dejavu-core",
    "libpam-systemd",
    "curl",
    "libc6",
];

fn kiosk_device(host_vars: &str, more: &[(&str, &str)]) -> (FleetRepo, Device) {
    let mut files = vec![("fleet.yml", "format: 1\n"), (HOST_VARS, host_vars)];
    files.extend_from_slice(more);
    let repo = FleetRepo::new(&files);
    let dev = Device::new(
        &repo.url(),
        DEVICE,
        &format!("roles_dir = \"{ROLES_DIR}\"\n"),
    );
    let status: String = PACKAGES
        .iter()
        .map(|p| format!("Package: {p}\nStatus: install ok installed\nVersion: 1.0\n\n"))
        .collect();
    let dpkg = dev.path("/var/lib/dpkg/status");
    std::fs::create_dir_all(dpkg.parent().unwrap()).unwrap();
    std::fs::write(dpkg, status).unwrap();
    (repo, dev)
}

/// `plan --json`: exit 2 (changes pending) and the changes by subject.
fn plan(dev: &Device) -> Vec<serde_json::Value> {
    let run = dev.run(&["plan", "--json"]);
    assert_eq!(run.code, 2, "{run:?}");
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    plan["changes"].as_array().unwrap().clone()
}

fn change<'a>(changes: &'a [serde_json::Value], subject: &str) -> &'a serde_json::Value {
    changes
        .iter()
        .find(|c| c["subject"] == subject)
        .unwrap_or_else(|| panic!("no change of {subject} in {changes:#?}"))
}

/// The content a file change writes (the added lines of its diff).
fn content(changes: &[serde_json::Value], path: &str) -> String {
    change(changes, path)["diff"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| format!("{}\n", &l[1..]))
        .collect()
}

const LAUNCHER: &str = "/usr/local/lib/fleet-kiosk/kiosk-launch";
const UNIT: &str = "/etc/systemd/system/fleet-kiosk.service";

#[test]
fn the_builtin_kiosk_role_plans_with_its_defaults() {
    let (_repo, dev) = kiosk_device(
        "roles:\n  - role: kiosk\n    params: {url: \"https://menu.example.com/it's\"}\n",
        &[],
    );
    let changes = plan(&dev);
    assert!(
        !changes.iter().any(|c| c["kind"] == "apt"),
        "the packages are installed: no apt change: {changes:#?}"
    );
    let launcher = content(&changes, LAUNCHER);
    for want in [
        "url='https://menu.example.com/it'\\''s'\n",
        "curl --silent --output /dev/null",
        "export XCURSOR_PATH=/usr/local/share/fleet-kiosk/icons\n",
        "exec cage -d -- chromium \\\n",
        "    --ozone-platform=wayland \\\n",
        "    --kiosk \\\n",
        "    --noerrdialogs \\\n",
        "    --disable-infobars \\\n",
        "    --no-first-run \\\n",
        "    --disable-session-crashed-bubble \\\n",
        "    \"$url\"\n",
    ] {
        assert!(launcher.contains(want), "{want:?} in\n{launcher}");
    }
    assert!(!launcher.contains("sleep 0"), "no start delay:\n{launcher}");
    assert!(change(&changes, LAUNCHER)["details"]
        .to_string()
        .contains("mode 0755, owner root:root"));

    let unit = content(&changes, UNIT);
    for want in [
        "User=kiosk\n",
        "PAMName=fleet-kiosk\n",
        "TTYPath=/dev/tty7\n",
        "ExecStart=/usr/local/lib/fleet-kiosk/kiosk-launch\n",
        "Restart=always\n",
        "StartLimitIntervalSec=0\n",
        "WantedBy=graphical.target\n",
    ] {
        assert!(unit.contains(want), "{want:?} in\n{unit}");
    }
    assert!(content(&changes, "/etc/pam.d/fleet-kiosk").contains("pam_systemd.so"));
    let user = change(&changes, "kiosk");
    assert_eq!(user["kind"], "user");
    assert!(
        user["details"]
            .as_array()
            .unwrap()
            .contains(&"groups video, render, input".into()),
        "{user:#?}"
    );
    assert_eq!(
        change(&changes, "/etc/systemd/system/default.target")["details"][0],
        "→ /lib/systemd/system/graphical.target"
    );
    let service = change(&changes, "fleet-kiosk.service");
    assert_eq!(service["kind"], "service");
    assert_eq!(
        change(
            &changes,
            "/usr/local/share/fleet-kiosk/icons/default/cursors/left_ptr"
        )["kind"],
        "file"
    );
    // The role's positions say it is the built-in one.
    assert!(
        service["declared_at"]
            .as_str()
            .unwrap()
            .starts_with("builtin:kiosk/role.yml:"),
        "{service:#?}"
    );
}

#[test]
fn every_kiosk_parameter_reaches_the_launcher_and_the_unit() {
    let (_repo, dev) = kiosk_device(
        "roles:
  - role: kiosk
    params:
      url: http://127.0.0.1:8080/
      browser: firefox-esr
      rotation: 270
      extra_flags: [--private-window, \"--arg with space\"]
      user: signage
      hide_cursor: false
      start_delay: 5
      wait_for_url: false
",
        &[],
    );
    let changes = plan(&dev);
    let launcher = content(&changes, LAUNCHER);
    for want in [
        "sleep 5\n",
        "export MOZ_ENABLE_WAYLAND=1\n",
        "exec cage -d -r -r -r -- firefox-esr \\\n",
        "    '--private-window' \\\n",
        "    '--arg with space' \\\n",
    ] {
        assert!(launcher.contains(want), "{want:?} in\n{launcher}");
    }
    for absent in ["curl", "XCURSOR", "chromium"] {
        assert!(!launcher.contains(absent), "no {absent} in\n{launcher}");
    }
    assert!(content(&changes, UNIT).contains("User=signage\n"));
    assert_eq!(change(&changes, "signage")["kind"], "user");
}

#[test]
fn a_templated_or_quoted_false_choice_is_the_boolean_false() {
    // `choices:` compares rendered text; the value that passes takes its choice's type, so
    // `{% if hide_cursor %}` sees false, not the non-empty string "false".
    for (vars, hide_cursor) in [
        ("vars: {hide: false}\n", "\"{{ hide }}\""),
        ("", "\"false\""),
        ("", "'false'"),
    ] {
        let host_vars = format!(
            "{vars}roles:\n  - role: kiosk\n    params: {{url: http://x/, hide_cursor: {hide_cursor}, rotation: \"{{{{ 90 }}}}\"}}\n"
        );
        let (_repo, dev) = kiosk_device(&host_vars, &[]);
        let launcher = content(&plan(&dev), LAUNCHER);
        assert!(!launcher.contains("XCURSOR"), "{host_vars}\n{launcher}");
        assert!(
            launcher.contains("exec cage -d -r -- chromium"),
            "{launcher}"
        );
        // And on disk, from an apply into the --root.
        let pull = dev.run(&["pull"]);
        assert_eq!(pull.code, 0, "{pull:?}");
        let written = dev.read(LAUNCHER);
        assert!(!written.contains("XCURSOR"), "{host_vars}\n{written}");
    }
    // A templated true still hides it.
    let (_repo, dev) = kiosk_device(
        "vars: {hide: true}\nroles:\n  - role: kiosk\n    params: {url: http://x/, hide_cursor: \"{{ hide }}\"}\n",
        &[],
    );
    assert!(content(&plan(&dev), LAUNCHER).contains("export XCURSOR_THEME=default\n"));
}

#[test]
fn bad_kiosk_parameters_are_reported_where_they_are_written() {
    let cases = [
        (
            "roles:\n  - role: kiosk\n    params:\n      url: http://x/\n      rotation: 45\n",
            "host_vars/kiosk-1.yml:5:17: role `kiosk`: `45` is not a value of its parameter `rotation`: expected one of 0, 90, 180, 270",
        ),
        (
            "roles:\n  - role: kiosk\n    params: {url: http://x/, browser: firefox}\n",
            "host_vars/kiosk-1.yml:3:39: role `kiosk`: `firefox` is not a value of its parameter `browser`: expected one of chromium, firefox-esr",
        ),
        (
            "roles:\n  - role: kiosk\n    params: {url: http://x/, hide_cursor: yes}\n",
            "host_vars/kiosk-1.yml:3:43: role `kiosk`: `yes` is not a value of its parameter `hide_cursor`: expected one of true, false",
        ),
        (
            "roles:\n  - kiosk\n",
            "host_vars/kiosk-1.yml:2:5: role `kiosk` needs the parameter `url`",
        ),
        (
            "roles:\n  - role: kiosk\n    params: {url: http://x/, rotate: 90}\n",
            "host_vars/kiosk-1.yml:3:30: role `kiosk` has no parameter `rotate`",
        ),
    ];
    for (host_vars, want) in cases {
        let (_repo, dev) = kiosk_device(host_vars, &[]);
        let run = dev.run(&["pull"]);
        assert_eq!(run.code, 1, "{host_vars}: {run:?}");
        assert!(run.stderr.contains(want), "{want}\n{run:?}");
        assert!(run.stderr.contains("nothing was changed"), "{run:?}");
        assert!(!dev.path(UNIT).exists());
        assert!(!dev.path("/etc/pam.d").exists(), "nothing was written");
    }
}

#[test]
fn choices_are_checked_in_fleet_roles_too() {
    // A default outside its own choices, and choices that are not a list.
    let (_repo, dev) = kiosk_device(
        "roles: [screen, other]\n",
        &[
            (
                "roles/screen/role.yml",
                "params:\n  mode:\n    default: wide\n    choices: [narrow, tall]\nresources: []\n",
            ),
            (
                "roles/other/role.yml",
                "params:\n  mode:\n    default: 1\n    choices: 1\nresources: []\n",
            ),
        ],
    );
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    for want in [
        "roles/screen/role.yml:3:14: role `screen`: `wide` is not a value of its parameter `mode`: expected one of narrow, tall",
        "roles/other/role.yml:4:14: expected `choices:` as a list of plain values",
    ] {
        assert!(run.stderr.contains(want), "{want}\n{run:?}");
    }
}

#[test]
fn a_fleet_role_named_kiosk_replaces_the_builtin_one() {
    let (_repo, dev) = kiosk_device(
        "roles:\n  - role: kiosk\n    params: {url: http://x/}\n",
        &[(
            "roles/kiosk/role.yml",
            "params:\n  url:\nresources:\n  - file: {path: /etc/our-kiosk.url, content: \"{{ url }}\\n\"}\n",
        )],
    );
    let changes = plan(&dev);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(
        change(&changes, "/etc/our-kiosk.url")["declared_at"],
        "roles/kiosk/role.yml:4:5"
    );
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(dev.read("/etc/our-kiosk.url"), "http://x/\n");
    assert!(!dev.path(UNIT).exists(), "the built-in role was not used");
}
