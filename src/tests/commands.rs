//! In-process planner tests of the kinds an ansible-pull fleet needs to move over:
//! `command` (its guards, `on_change`, a triggered run that did not finish), `download`
//! (the digest decides, a partial download resumes, a directory is known by its stamp),
//! `package` with `state: latest`, and the refusal of kernel, bootloader and firmware
//! packages on an A/B-managed device. Each states the plan and the commands it ran.

use crate::host::command::Scripted;
use crate::plan::{ChangeKind, Op, ResourceState};
use crate::resources::Previous;
use crate::tests::planner::{options, planned_with, root, summary, DPKG, FRESH_LISTS};

const SETUP: &str = "  - command:\n      name: setup\n      argv: [/usr/local/bin/setup, --init]\n      creates: /var/lib/setup/done\n      unless: [test, -e, /etc/setup.conf]\n";

#[test]
fn a_command_runs_only_when_its_guards_say_so() {
    let empty = root(&[]);
    let runner = Scripted::new().on("test -e /etc/setup.conf", 1, "");
    let (p, commands) = planned_with(SETUP, empty.path(), runner, false, None, &options());
    assert_eq!(
        summary(&p.unwrap()),
        ["Run command setup: runs: /var/lib/setup/done does not exist (creates); unless `test -e /etc/setup.conf` exits 1; argv: /usr/local/bin/setup --init; timeout 300 s"]
    );
    assert_eq!(
        commands,
        ["test -e /etc/setup.conf"],
        "the check ran, not the command"
    );

    let runner = Scripted::new().on("test -e /etc/setup.conf", 0, "");
    let (p, _) = planned_with(SETUP, empty.path(), runner, false, None, &options());
    assert!(p.unwrap().changes.is_empty(), "unless exits 0: not run");

    let done = root(&[("/var/lib/setup/done", "")]);
    let (p, commands) = planned_with(SETUP, done.path(), Scripted::new(), false, None, &options());
    assert!(p.unwrap().changes.is_empty());
    assert!(commands.is_empty(), "creates decides first: no check runs");
}

const RELOAD: &str = "  - file: {path: /etc/app.conf, content: \"v2\\n\"}\n  - command:\n      name: reload\n      argv: [/usr/bin/app, reload]\n      on_change: [/etc/app.conf]\n      user: app\n      cwd: /var/lib/app\n      timeout: 30\n      env: {MODE: fast}\n";

#[test]
fn on_change_runs_a_command_after_the_change_it_follows() {
    let passwd = (
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001::/var/lib/app:/bin/sh\n",
    );
    let same = root(&[("/etc/app.conf", "v2\n"), passwd]);
    let (p, commands) = planned_with(
        RELOAD,
        same.path(),
        Scripted::new(),
        false,
        None,
        &options(),
    );
    assert!(p.unwrap().changes.is_empty());
    assert!(commands.is_empty());

    let changed = root(&[("/etc/app.conf", "v1\n"), passwd]);
    let (p, _) = planned_with(
        RELOAD,
        changed.path(),
        Scripted::new(),
        false,
        None,
        &options(),
    );
    let p = p.unwrap();
    assert_eq!(
        summary(&p)[1],
        "Run command reload: runs: /etc/app.conf changes (on_change); argv: /usr/bin/app reload; as app, in /var/lib/app, timeout 30 s"
    );
    assert_eq!(p.changes[0].kind, ChangeKind::File, "the file first");
    let Op::Exec(run) = &p.changes[1].ops[0] else {
        panic!("{:?}", p.changes[1].ops)
    };
    let host = crate::host::Host::new(changed.path());
    let exec = crate::resources::command::exec(&host, run, run.timeout).unwrap();
    assert_eq!(exec.user, Some(("1001".into(), "1001".into())));
    assert_eq!(
        exec.env,
        [
            ("PATH", crate::resources::command::PATH),
            ("HOME", "/var/lib/app"),
            ("USER", "app"),
            ("LOGNAME", "app"),
            ("LANG", "C.UTF-8"),
            ("MODE", "fast"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[test]
fn a_triggered_run_that_did_not_finish_runs_next_time() {
    let same = root(&[("/etc/app.conf", "v2\n")]);
    let mut previous = Previous::new();
    previous.insert(
        "command:reload".into(),
        ResourceState {
            kind: "command".into(),
            path: "reload".into(),
            digest: String::new(),
            created: false,
            secret: false,
            stamp: None,
            pending: true,
        },
    );
    let role = "  - file: {path: /etc/app.conf, content: \"v2\\n\"}\n  - command: {name: reload, argv: [/usr/bin/app, reload], on_change: [/etc/app.conf]}\n";
    let (p, _) = planned_with(
        role,
        same.path(),
        Scripted::new(),
        false,
        Some(&previous),
        &options(),
    );
    assert_eq!(
        summary(&p.unwrap()),
        ["Run command reload: runs: its last run for a change did not finish (on_change); argv: /usr/bin/app reload; timeout 300 s"]
    );
}

fn download(sha: &str, unpack: &str) -> String {
    format!("  - download:\n      path: /opt/tool\n      url: https://user:pw@example.com/tool\n      sha256: \"{sha}\"\n{unpack}")
}

#[test]
fn a_download_is_known_by_its_digest_without_the_network() {
    let sha = crate::digest::sha256_hex(b"tool\n");
    let part = format!("/var/lib/fleet-agent/downloads/{sha}.part");
    let empty = root(&[(part.as_str(), "too")]);
    let (p, commands) = planned_with(
        &download(&sha, ""),
        empty.path(),
        Scripted::new(),
        false,
        None,
        &options(),
    );
    let p = p.unwrap();
    assert_eq!(
        summary(&p),
        [format!("Create download /opt/tool: creates parent /opt (0755 root:root); from https://example.com/tool; sha256 {sha}; resumes a partial download at 3 bytes; mode 0644, owner root:root")]
    );
    let Op::Download(f) = &p.changes[0].ops[1] else {
        panic!()
    };
    assert_eq!(
        f.cache.display().to_string(),
        "/var/lib/fleet-agent/downloads"
    );
    assert!(commands.is_empty());

    let there = root(&[("/opt/tool", "tool\n")]);
    let (p, _) = planned_with(
        &download(&sha, ""),
        there.path(),
        Scripted::new(),
        false,
        None,
        &options(),
    );
    let p = p.unwrap();
    assert!(p.changes.is_empty(), "{:?}", summary(&p));
    assert!(
        p.resources["path:/opt/tool"].stamp.is_some(),
        "a match is stamped"
    );

    let other = root(&[("/opt/tool", "old\n")]);
    let (p, _) = planned_with(
        &download(&sha, ""),
        other.path(),
        Scripted::new(),
        false,
        None,
        &options(),
    );
    assert!(summary(&p.unwrap())[0]
        .starts_with("Change download /opt/tool: its sha256 differs: downloaded again"));
}

#[test]
fn an_unpacked_directory_is_known_by_its_stamp_under_the_same_declaration() {
    let sha = "ab".repeat(32);
    let role = download(&sha, "      unpack: tar.gz\n      strip_components: 1\n");
    let dir = root(&[("/opt/tool/bin/tool", "x")]);
    let (p, _) = planned_with(&role, dir.path(), Scripted::new(), false, None, &options());
    let p = p.unwrap();
    assert_eq!(
        summary(&p),
        [format!("Change download /opt/tool: its archive's sha256 is not the one recorded: unpacked again and swapped in whole; from https://example.com/tool; sha256 {sha}; unpacks the tar.gz archive into it (without its first 1 path component), swapped in whole; mode 0755, owner root:root")]
    );
    // What a run that placed it records: then the next plan knows it.
    let mut previous = p.resources.clone();
    let host = crate::host::Host::new(dir.path());
    let r = previous.get_mut("path:/opt/tool").unwrap();
    r.stamp = crate::resources::stamp(&host, std::path::Path::new("/opt/tool"));
    let (p, _) = planned_with(
        &role,
        dir.path(),
        Scripted::new(),
        false,
        Some(&previous),
        &options(),
    );
    assert!(p.unwrap().changes.is_empty());
    // Something changed the directory: unpacked again.
    std::fs::write(dir.path().join("opt/tool/extra"), "x").unwrap();
    let (p, _) = planned_with(
        &role,
        dir.path(),
        Scripted::new(),
        false,
        Some(&previous),
        &options(),
    );
    assert_eq!(p.unwrap().changes.len(), 1);
}

#[test]
fn latest_upgrades_when_the_lists_have_a_newer_candidate() {
    let status = "Package: hello\nStatus: install ok installed\nVersion: 2.10-2\n";
    let dev = root(&[(DPKG, status), FRESH_LISTS]);
    let role = "  - package: {name: hello, state: latest}\n";
    let runner = Scripted::new()
        .on(
            "apt-cache policy -- hello",
            0,
            "hello:\n  Installed: 2.10-2\n  Candidate: 2.10-3\n",
        )
        .on(
            "apt-get -s",
            0,
            "Inst hello [2.10-2] (2.10-3 Debian:12.5/stable [arm64])\n",
        );
    let (p, commands) = planned_with(role, dev.path(), runner, false, None, &options());
    assert_eq!(
        summary(&p.unwrap()),
        ["Change apt packages: upgrade hello 2.10-2 → 2.10-3"]
    );
    assert_eq!(
        commands,
        [
            "apt-cache policy -- hello",
            "apt-get -s -q -o Debug::NoLocking=1 install --no-install-recommends -- hello"
        ]
    );

    let runner = Scripted::new().on(
        "apt-cache policy -- hello",
        0,
        "hello:\n  Installed: 2.10-2\n  Candidate: 2.10-2\n",
    );
    let (p, _) = planned_with(role, dev.path(), runner, false, None, &options());
    assert!(p.unwrap().changes.is_empty(), "at its candidate already");

    // Stale lists: refreshed first; apt tells after the update.
    let stale = root(&[(DPKG, status)]);
    let runner = Scripted::new().on("apt-get -s", 0, "");
    let (p, commands) = planned_with(role, stale.path(), runner, false, None, &options());
    assert_eq!(
        summary(&p.unwrap()),
        [
            "Run apt update: there are no package lists",
            "Change apt packages: upgrade hello if the refreshed lists have a newer version (installed 2.10-2)"
        ]
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("apt-cache")),
        "{commands:?}"
    );
}

#[test]
fn boot_packages_are_refused_on_an_a_b_device_unless_allowed() {
    let mut ab = options();
    ab.ab_managed = true;
    let status = "Package: linux-image-arm64\nStatus: install ok installed\nVersion: 6.1\n";
    let dev = root(&[(DPKG, status), FRESH_LISTS]);
    let kernel = "  - package: {name: linux-image-arm64}\n";
    let (p, _) = planned_with(kernel, dev.path(), Scripted::new(), false, None, &ab);
    assert_eq!(
        p.unwrap_err().to_string(),
        "roles/web/role.yml:2:5: linux-image-arm64 is a kernel, and this device's root filesystem is managed by A/B OS updates (an OS image is declared for it): changing it with apt can leave the device unbootable; ship it in the OS image, or declare the package with `allow_on_ab: true`"
    );
    let allowed = "  - package: {name: linux-image-arm64, allow_on_ab: true}\n";
    let (p, _) = planned_with(allowed, dev.path(), Scripted::new(), false, None, &ab);
    assert!(p.unwrap().changes.is_empty());
    let (p, _) = planned_with(kernel, dev.path(), Scripted::new(), false, None, &options());
    assert!(p.unwrap().changes.is_empty(), "not A/B-managed: allowed");

    // What apt would pull in along with a declared package counts too.
    let runner = Scripted::new().on(
        "apt-get -s",
        0,
        "Inst raspberrypi-bootloader [1.2023] (1.2024 RPi [arm64])\nInst kiosk-tools (1.0 local [all])\n",
    );
    let (p, _) = planned_with(
        "  - package: {name: kiosk-tools}\n",
        dev.path(),
        runner,
        false,
        None,
        &ab,
    );
    assert!(
        p.unwrap_err()
            .to_string()
            .starts_with("apt's transaction (upgrade raspberrypi-bootloader 1.2023 → 1.2024): raspberrypi-bootloader is the Raspberry Pi boot firmware"),
    );
}

#[test]
fn a_download_no_longer_declared_is_pruned_whole() {
    let dev = root(&[("/opt/old/bin/tool", "x"), ("/opt/old/lib/a", "y")]);
    let mut previous = Previous::new();
    previous.insert(
        "path:/opt/old".into(),
        ResourceState {
            kind: "download".into(),
            path: "/opt/old".into(),
            digest: String::new(),
            created: true,
            secret: false,
            stamp: None,
            pending: false,
        },
    );
    let (p, _) = planned_with(
        "  - directory: {path: /etc/web}\n",
        dev.path(),
        Scripted::new(),
        false,
        Some(&previous),
        &options(),
    );
    let p = p.unwrap();
    assert!(
        summary(&p).contains(
            &"Remove download /opt/old: created by fleet-agent and no longer declared".to_string()
        ),
        "{:?}",
        summary(&p)
    );
}
