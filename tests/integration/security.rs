//! The fleet repository can never reach outside what it may manage (docs/security.md),
//! end to end: the real binary, a real git repository, a scratch root with planted
//! links. Each class is tested in full in-process (src/tests/paths.rs, src/fleet/tests.rs,
//! src/tests/planner.rs); here, that the binary keeps each promise on a real pull.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

const STATE: &str = "/data/fleet-agent";

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn one_role(resources: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yml", "format: 1\nroles: [app]\n".into()),
        (
            "inventory.yml",
            "groups:\n  shop:\n    devices: [\"pi-*\"]\n".into(),
        ),
        ("roles/app/role.yml", format!("resources:\n{resources}")),
    ]
}

fn as_files<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(p, c)| (*p, c.as_str())).collect()
}

#[test]
fn a_link_out_of_the_root_is_never_read_or_written() {
    let files = one_role("  - file: {path: /etc/app/app.conf, content: \"mine\\n\"}\n");
    let repo = FleetRepo::new(&as_files(&files));
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let outside = dev._tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("app.conf"), "outside secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, dev.path("/etc/app")).unwrap();

    let plan = dev.run(&["plan"]);
    assert!(!plan.text().contains("outside secret"), "{plan:?}");
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr.contains(&format!(
            "cannot create /etc/app/app.conf: its parent /etc/app is a symlink to {}, which does not lead to a directory inside the root",
            outside.display()
        )),
        "{pull:?}"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("app.conf")).unwrap(),
        "outside secret\n"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn the_agents_own_files_are_off_limits() {
    let good = one_role("  - file: {path: /etc/app.conf, content: x}\n");
    let repo = FleetRepo::new(&as_files(&good));
    let dev = Device::new(
        &repo.url(),
        "pi-0001",
        &format!("state_dir = \"{STATE}\"\n"),
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
    let hostile = one_role(&format!(
        "  - file: {{path: /etc/app.conf, content: x}}\n  - absent: {{path: {STATE}}}\n  - absent: {{path: /etc/fleet-agent/rootfs-id}}\n"
    ));
    repo.commit(&as_files(&hostile), "remove the agent's state");
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 1, "{pull:?}");
    for expected in [
        "roles/app/role.yml:3:20: /data/fleet-agent is the agent's state directory: the agent's own files are off limits",
        "roles/app/role.yml:4:20: /etc/fleet-agent/rootfs-id is the root filesystem's marker: the agent's own files are off limits",
    ] {
        assert!(pull.stderr.contains(expected), "expected `{expected}` in {pull:?}");
    }
    assert!(dev.path(&format!("{STATE}/repo.git")).is_dir());
    assert!(dev.path("/etc/fleet-agent/rootfs-id").is_file());
    let state = std::fs::read_to_string(dev.path(&format!("{STATE}/state.json"))).unwrap();
    assert!(state.contains("\"outcome\": \"invalid\""), "{state}");
}

#[test]
fn the_state_directory_the_clone_and_the_lock_are_private() {
    let files = one_role("  - file: {path: /etc/app.conf, content: x}\n");
    let repo = FleetRepo::new(&as_files(&files));
    let dev = Device::new(
        &repo.url(),
        "pi-0001",
        &format!("state_dir = \"{STATE}\"\n"),
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
    let state = dev.path(STATE);
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("repo.git")), 0o700, "the clone");
    assert_eq!(mode(&state.join("lock")), 0o600, "the lock");
    assert_eq!(mode(&state.join("state.json")), 0o600, "the state");
    // A state directory an older agent made 0755 is tightened.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(mode(&state), 0o700);
}

#[test]
fn a_secret_is_0600_and_its_digest_does_not_depend_on_its_content() {
    let secret = |value: &str| {
        one_role(&format!(
            "  - file: {{path: /etc/app/token, content: \"{value}\", secret: true}}\n"
        ))
    };
    let repo = FleetRepo::new(&as_files(&secret("hunter2")));
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(mode(&dev.path("/etc/app/token")), 0o600);
    let digest = |dev: &Device| dev.state()["resources"]["path:/etc/app/token"]["digest"].clone();
    let first = digest(&dev);
    repo.commit(&as_files(&secret("letmein")), "rotate the secret");
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(dev.read("/etc/app/token"), "letmein");
    assert_eq!(
        digest(&dev),
        first,
        "the recorded digest follows the secret's content"
    );
    let status = dev.run(&["status", "--json"]);
    for value in ["hunter2", "letmein"] {
        let sha = sha256_hex(value.as_bytes());
        assert!(!status.stdout.contains(&sha), "{status:?}");
    }
}

#[test]
fn a_symlink_in_the_repository_is_the_same_error_for_plan_repo_and_pull() {
    let files = one_role("  - file: {path: /etc/app.conf, source: app.conf}\n");
    let repo = FleetRepo::new(&as_files(&files));
    std::fs::create_dir_all(repo.work.join("roles/app/files")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.work.join("roles/app/files/app.conf")).unwrap();
    repo.commit(&[], "a link to the host's /etc/passwd");
    let dev = Device::new(&repo.url(), "pi-0001", "");
    let expected = "roles/app/role.yml:2:41: roles/app/files/app.conf: a symlink: links in the fleet repository are never followed (commit the file itself)";
    let plan = dev.run(&["plan", "--repo", repo.work.to_str().unwrap()]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(plan.stderr.contains(expected), "{plan:?}");
    let pull = dev.run(&["pull"]);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(pull.stderr.contains(expected), "{pull:?}");
    assert!(!dev.path("/etc/app.conf").exists());
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}
