//! The second example fleet, examples/ansible-migrated (docs/migrating-from-ansible-pull.md):
//! it validates, and each of its devices plans exactly as its README says. The README's
//! block under `### \`ID\`` is the plan of device ID on an empty Debian 12 root (with its
//! architecture in dpkg's status and its two secrets), summarized: the device line, one
//! line per change (`+ file /etc/motd (base)`), the plan's count and the OS line. Every
//! device with a host_vars file has a block, so the README cannot leave one out. The
//! secrets' values appear nowhere in the plans.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::{to_run, BIN};

const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ansible-migrated");

/// Each device's Debian architecture (dpkg's), as the README says.
const ARCHITECTURES: [(&str, &str); 5] = [
    ("kiosk-lobby", "arm64"),
    ("kiosk-canteen", "arm64"),
    ("ci-pi3-1", "armhf"),
    ("ci-imx8-1", "arm64"),
    ("sensor-gw-1", "armhf"),
];
const SECRETS: [(&str, &str); 2] = [
    ("monitoring_token", "monitoring-token-value"),
    ("runner_token", "runner-token-value"),
];

/// The README's expected plan summary of each device, by id.
fn readme_blocks() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(Path::new(FLEET).join("README.md")).unwrap();
    let mut blocks = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(id) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) else {
            continue;
        };
        let block: Vec<&str> = lines
            .by_ref()
            .skip_while(|l| *l != "```text")
            .skip(1)
            .take_while(|l| *l != "```")
            .collect();
        blocks.insert(id.to_string(), block.join("\n") + "\n");
    }
    blocks
}

/// An empty Debian 12 root for one device: os-release, dpkg's architecture, secrets.
fn device_root(dir: &Path, arch: &str) {
    let write = |p: &str, content: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        0o644,
    );
    write(
        "/var/lib/dpkg/status",
        &format!(
            "Package: dpkg\nStatus: install ok installed\nArchitecture: {arch}\nVersion: 1.21.22\n"
        ),
        0o644,
    );
    for (name, value) in SECRETS {
        write(
            &format!("/etc/fleet-agent/secrets/{name}"),
            &format!("{value}\n"),
            0o600,
        );
    }
}

/// The plan's text summarized as the README writes it: the device line, each change
/// with its role, the packages apt is asked for and why a command runs, the count and
/// the OS line.
fn summary(plan: &str) -> String {
    let mut out = String::new();
    let mut details_of = "";
    for line in plan.lines() {
        let change = ["+ ", "~ ", "! ", "- "].iter().any(|s| line.starts_with(s));
        if let Some(detail) = line.strip_prefix("    ") {
            let kept = match details_of {
                "apt" => ["install ", "upgrade ", "remove "]
                    .iter()
                    .any(|w| detail.starts_with(w)),
                "command" => detail.starts_with("runs: "),
                _ => false,
            };
            if kept {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        details_of = match line {
            "~ apt packages" => "apt",
            _ if line.starts_with("! command ") => "command",
            _ => "",
        };
        if change {
            // `+ file /etc/motd (role base, roles/base/role.yml:3:5)` → `... (base)`
            let shown = match line.find(" (role ") {
                Some(i) => {
                    let role = line[i + 7..].split(',').next().unwrap_or("");
                    format!("{} ({role})", &line[..i])
                }
                None => line.to_string(),
            };
            out.push_str(&shown);
            out.push('\n');
        } else if ["Device ", "Plan: ", "OS: "]
            .iter()
            .any(|s| line.starts_with(s))
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_migrated_fleet_validates_and_every_device_plans_as_its_readme_says() {
    let out = to_run(
        Command::new(BIN)
            .args(["validate", FLEET])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("valid (9 devices checked)"), "{out:?}");

    let blocks = readme_blocks();
    let mut devices: Vec<String> = std::fs::read_dir(Path::new(FLEET).join("host_vars"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().replace(".yml", ""))
        .collect();
    devices.sort();
    let described: Vec<&String> = blocks.keys().collect();
    assert_eq!(
        described,
        devices.iter().collect::<Vec<_>>(),
        "a README block per device"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for (id, arch) in ARCHITECTURES {
        let root = tmp.path().join(id);
        device_root(&root, arch);
        let plan = |json: bool| {
            let mut args = vec![
                "--root",
                root.to_str().unwrap(),
                "plan",
                "--repo",
                FLEET,
                "--device",
                id,
            ];
            if json {
                args.push("--json");
            }
            let out = to_run(
                Command::new(BIN)
                    .args(&args)
                    .env("TZ", "UTC")
                    .output()
                    .unwrap(),
            );
            assert_eq!(out.code, 2, "{id}: {out:?}");
            for (_, value) in SECRETS {
                assert!(
                    !out.stdout.contains(value) && !out.stderr.contains(value),
                    "{id}: a secret's value is shown"
                );
            }
            out.stdout
        };
        let text = plan(false);
        plan(true);
        let actual = summary(&text);
        if blocks.get(id) != Some(&actual) {
            mismatches.push(format!("### `{id}`\n\n```text\n{actual}```\n"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "examples/ansible-migrated/README.md differs from the plans; they are:\n\n{}",
        mismatches.join("\n")
    );
}
