//! In-process planner tests: a desired state from an in-memory fleet, a scratch root
//! with the device's records (dpkg's status, passwd, apt lists), and a scripted command
//! runner that answers `apt-get -s`, `apt-cache madison` and `systemctl` as the real
//! tools do. Each test states the plan and the exact commands planning ran.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::fleet::tests::desired;
use crate::host::command::Scripted;
use crate::host::Host;
use crate::plan::{ChangeKind, Op, Plan, ResourceState};
use crate::resources::{plan, Options, Previous};

pub(crate) fn options() -> Options {
    Options {
        prune: true,
        apt_lists_max_age: Duration::from_secs(3600),
        state_dir: "/var/lib/fleet-agent".into(),
        http_timeout: Duration::from_secs(5),
        ab_managed: false,
    }
}

/// A scratch root: `files` written under it (device path → content).
pub(super) fn root(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// Fresh package lists (so that no `apt-get update` is planned for their age).
pub(super) const FRESH_LISTS: (&str, &str) =
    ("/var/lib/apt/lists/deb_dists_bookworm_main_Packages", "");

/// The role `web` with these resources, for device pi-1.
fn role(resources: &str) -> Vec<(&'static str, String)> {
    vec![("roles/web/role.yml", format!("resources:\n{resources}"))]
}

/// Plans `resources` of role web on `root` with `runner`; the plan, and the commands run
/// with the root's path shown as ROOT.
fn planned(
    resources: &str,
    root: &Path,
    runner: Scripted,
    live: bool,
    previous: Option<&Previous>,
) -> (Plan, Vec<String>) {
    let (p, commands) = planned_with(resources, root, runner, live, previous, &options());
    (p.unwrap(), commands)
}

/// The same with other options; the plan or its error.
pub(super) fn planned_with(
    resources: &str,
    root: &Path,
    runner: Scripted,
    live: bool,
    previous: Option<&Previous>,
    options: &Options,
) -> (crate::error::Result<Plan>, Vec<String>) {
    let files = role(resources);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let desired = desired(&files).unwrap();
    let runner = Arc::new(runner);
    let host = Host::with_runner(root, runner.clone()).with_systemd(live);
    let p = plan(&host, &desired, previous, options, None);
    let shown = root.display().to_string();
    let commands = runner
        .commands()
        .iter()
        .map(|c| c.replace(&shown, "ROOT"))
        .collect();
    (p, commands)
}

pub(crate) fn summary(p: &Plan) -> Vec<String> {
    p.changes
        .iter()
        .map(|c| {
            format!(
                "{:?} {} {}: {}",
                c.action,
                c.kind,
                c.subject,
                c.details.join("; ")
            )
        })
        .collect()
}

fn argvs(p: &Plan) -> Vec<String> {
    p.changes
        .iter()
        .flat_map(|c| &c.ops)
        .filter_map(|op| match op {
            Op::Command { argv, .. } => Some(argv.join(" ")),
            _ => None,
        })
        .collect()
}

pub(super) const DPKG: &str = "/var/lib/dpkg/status";

#[test]
fn packages_that_match_run_no_command() {
    let root = root(&[(
        DPKG,
        "Package: curl\nStatus: install ok installed\nVersion: 7.88\n\nPackage: nano\nStatus: deinstall ok config-files\nVersion: 7.2\n",
    )]);
    let (p, commands) = planned(
        "  - package: {name: curl}\n  - package: {name: nano, state: absent}\n",
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert!(p.changes.is_empty(), "{:?}", summary(&p));
    assert_eq!(
        commands,
        Vec::<String>::new(),
        "a no-op plan runs no command"
    );
}

#[test]
fn a_held_package_is_left_alone_with_a_note() {
    let root = root(&[(
        DPKG,
        "Package: jq\nStatus: hold ok installed\nVersion: 1.6-2\n",
    )]);
    let (p, commands) = planned(
        "  - package: {name: jq, version: \"1.7-1\"}\n",
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert!(p.changes.is_empty(), "{:?}", summary(&p));
    assert_eq!(
        p.notes,
        ["package jq is held (apt-mark hold): left as it is (roles/web/role.yml:2:5)"]
    );
    assert!(commands.is_empty(), "{commands:?}");
}

#[test]
fn stale_lists_are_refreshed_first_and_apt_resolves_after() {
    // No lists at all: `apt-get update` first; the simulation cannot find the package
    // yet, which is only a detail of the plan.
    let root = root(&[(DPKG, "")]);
    let runner = Scripted::new().fails(
        "apt-get -s",
        100,
        "Reading package lists...\nE: Unable to locate package hello\n",
    );
    let (p, commands) = planned(
        "  - package: {name: hello}\n",
        root.path(),
        runner,
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        [
            "Run apt update: there are no package lists",
            "Change apt packages: install hello; (apt resolves this after the update; with the current lists: E: Unable to locate package hello)",
        ]
    );
    assert_eq!(
        commands,
        ["apt-get -s -q -o Debug::NoLocking=1 install --no-install-recommends -- hello"]
    );
}

#[test]
fn with_fresh_lists_a_package_apt_cannot_find_is_a_plan_error() {
    let root = root(&[(DPKG, ""), FRESH_LISTS]);
    let runner = Scripted::new().fails("apt-get -s", 100, "E: Unable to locate package hullo\n");
    let desired = desired(&[(
        "roles/web/role.yml",
        "resources:\n  - package: {name: hullo}\n",
    )])
    .unwrap();
    let host = Host::with_runner(root.path(), Arc::new(runner));
    let err = plan(&host, &desired, None, &options(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "`apt-get install hullo (simulated)` failed (exit code 100; nothing was changed)"
        ),
        "{err}"
    );
}

#[test]
fn a_glob_pin_is_resolved_against_the_lists() {
    let root = root(&[
        (
            DPKG,
            "Package: hello\nStatus: install ok installed\nVersion: 2.9-1\n",
        ),
        FRESH_LISTS,
    ]);
    let runner = Scripted::new()
        .on(
            "apt-cache madison -- hello",
            0,
            "     hello |   2.10-3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n     hello |   2.9-1 | http://old bookworm/main amd64 Packages\n",
        )
        .on("apt-get -s", 0, "Inst hello [2.9-1] (2.10-3 Debian:12 [amd64])\nConf hello (2.10-3 Debian:12 [amd64])\n");
    let (p, commands) = planned(
        "  - package: {name: hello, version: \"2.10-*\"}\n",
        root.path(),
        runner,
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        ["Change apt packages: upgrade hello 2.9-1 → 2.10-3"]
    );
    assert_eq!(
        commands,
        [
            "apt-cache madison -- hello",
            "apt-get -s -q -o Debug::NoLocking=1 install --no-install-recommends -- hello=2.10-3",
        ]
    );
}

#[test]
fn a_masked_unit_is_unmasked_before_it_is_enabled() {
    let root = root(&[]);
    let runner = Scripted::new().on("systemctl --root=", 0, "masked\n");
    let (p, commands) = planned(
        "  - service: {name: web, enabled: true}\n",
        root.path(),
        runner,
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        ["Change service web.service: masked → enabled"]
    );
    assert_eq!(
        argvs(&p),
        [
            "systemctl --root=ROOT unmask -- web.service"
                .replace("ROOT", &root.path().display().to_string()),
            "systemctl --root=ROOT enable -- web.service"
                .replace("ROOT", &root.path().display().to_string()),
        ]
    );
    assert_eq!(
        commands,
        ["systemctl --root=ROOT is-enabled -- web.service"]
    );
}

#[test]
fn a_unit_that_is_nowhere_is_a_plan_error() {
    let root = root(&[]);
    let runner = Scripted::new().fails(
        "systemctl --root=",
        1,
        "Failed to get unit file state for nope.service: No such file or directory\n",
    );
    let desired = desired(&[(
        "roles/web/role.yml",
        "resources:\n  - service: {name: nope, enabled: true}\n",
    )])
    .unwrap();
    let host = Host::with_runner(root.path(), Arc::new(runner));
    let err = plan(&host, &desired, None, &options(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "roles/web/role.yml:2:5: there is no unit nope.service on the device"
    );
}

#[test]
fn accounts_differ_in_shell_comment_and_groups() {
    let root = root(&[
        (
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1001:App:/var/lib/app:/bin/sh\n",
        ),
        (
            "/etc/group",
            "root:x:0:\napp:x:1001:\nvideo:x:44:\naudio:x:29:app\n",
        ),
    ]);
    let (p, commands) = planned(
        "  - user: {name: app, home: /var/lib/app, shell: /usr/sbin/nologin, groups: [video], comment: App service}\n",
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        ["Change user app: shell /bin/sh → /usr/sbin/nologin; comment `App` → `App service`; groups audio → video"]
    );
    let r = root.path().display().to_string();
    assert_eq!(
        argvs(&p),
        [format!(
            "usermod --root={r} --shell /usr/sbin/nologin --comment App service --groups video -- app"
        )]
    );
    assert!(commands.is_empty(), "{commands:?}");
}

#[test]
fn a_user_in_a_group_that_nobody_declares_is_a_plan_error() {
    let root = root(&[("/etc/group", "root:x:0:\n")]);
    let desired = desired(&[(
        "roles/web/role.yml",
        "resources:\n  - user: {name: app, groups: [gpio]}\n",
    )])
    .unwrap();
    let host = Host::with_runner(root.path(), Arc::new(Scripted::new()));
    let err = plan(&host, &desired, None, &options(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "roles/web/role.yml:2:5: user `app`: the group `gpio` does not exist on the device; declare it with a `group` resource");
}

#[test]
fn what_the_agent_created_and_no_role_declares_is_pruned_deepest_first() {
    let root = root(&[
        ("/etc/old/a.conf", "a\n"),
        ("/etc/kept/mine.conf", "not the agent's\n"),
    ]);
    let made = |kind: &str, path: &str| {
        (
            format!("path:{path}"),
            ResourceState {
                kind: kind.into(),
                path: path.into(),
                digest: String::new(),
                created: true,
                secret: false,
                stamp: None,
                pending: false,
            },
        )
    };
    let previous: Previous = [
        made("directory", "/etc/old"),
        made("file", "/etc/old/a.conf"),
        made("directory", "/etc/kept"),
        made("file", "/etc/gone-already"),
    ]
    .into_iter()
    .collect();
    let (p, _) = planned(
        "  - file: {path: /etc/new, content: x}\n",
        root.path(),
        Scripted::new(),
        false,
        Some(&previous),
    );
    assert_eq!(
        summary(&p),
        [
            "Create file /etc/new: mode 0644, owner root:root, 1 bytes",
            "Remove file /etc/old/a.conf: created by fleet-agent and no longer declared",
            "Remove directory /etc/old: created by fleet-agent and no longer declared",
        ]
    );
    assert_eq!(
        p.notes,
        ["/etc/kept is no longer declared but is not empty: left in place"]
    );
}

#[test]
fn where_systemd_runs_a_changed_file_restarts_its_service_once() {
    let root = root(&[("/etc/web/web.conf", "old\n")]);
    let runner = Scripted::new()
        .on("systemctl is-enabled", 0, "enabled\n")
        .on("systemctl is-active", 0, "active\n");
    let (p, commands) = planned(
        "  - file: {path: /etc/web/web.conf, content: \"new\\n\"}\n  - file: {path: /etc/systemd/system/web.service.d/port.conf, content: \"[Service]\\n\"}\n  - service: {name: web, enabled: true, state: started, restart_on: [/etc/web/web.conf]}\n",
        root.path(),
        runner,
        true,
        None,
    );
    let kinds: Vec<ChangeKind> = p.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::File,
            ChangeKind::File,
            ChangeKind::Systemd,
            ChangeKind::Restart
        ]
    );
    assert_eq!(
        summary(&p)[3],
        "Run restart web.service: because /etc/web/web.conf, /etc/systemd/system/web.service.d/port.conf changed"
    );
    assert_eq!(
        argvs(&p),
        [
            "systemctl daemon-reload",
            "systemctl try-restart -- web.service"
        ]
    );
    assert_eq!(
        commands,
        [
            "systemctl is-enabled -- web.service",
            "systemctl is-active -- web.service"
        ]
    );
}

#[test]
fn a_service_started_in_this_run_is_not_restarted_too() {
    let root = root(&[]);
    let runner = Scripted::new()
        .on("systemctl is-enabled", 0, "enabled\n")
        .on("systemctl is-active", 3, "inactive\n");
    let (p, _) = planned(
        "  - file: {path: /etc/web/web.conf, content: x}\n  - service: {name: web, state: started, restart_on: [/etc/web/web.conf]}\n",
        root.path(),
        runner,
        true,
        None,
    );
    assert_eq!(
        summary(&p)[1..],
        ["Change service web.service: inactive → started"]
    );
}

#[test]
fn a_secret_without_a_mode_is_0600_and_its_content_is_not_in_its_digest() {
    let root = root(&[]);
    let resources = |content: &str| {
        format!("  - file: {{path: /etc/web/token, content: \"{content}\", secret: true}}\n")
    };
    let (p, _) = planned(
        &resources("hunter2"),
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        ["Create file /etc/web/token: creates parent /etc (0755 root:root); creates parent /etc/web (0755 root:root); mode 0600, owner root:root, 7 bytes; content is secret: not shown"]
    );
    let digest = |p: &Plan| p.resources["path:/etc/web/token"].digest.clone();
    let (other, _) = planned(
        &resources("letmein"),
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert_eq!(
        digest(&p),
        digest(&other),
        "the recorded digest depends on the secret's content"
    );
    let plain = crate::digest::sha256_hex(b"hunter2");
    assert!(!digest(&p).contains(&plain));
}

#[test]
fn the_plan_marks_setuid_and_setgid() {
    let root = root(&[]);
    let (p, _) = planned(
        "  - file: {path: /usr/local/bin/helper, content: x, mode: \"4755\", setuid: true}\n  - directory: {path: /srv/shared, mode: \"2775\", setgid: true}\n",
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        [
            "Create file /usr/local/bin/helper: creates parent /usr (0755 root:root); creates parent /usr/local (0755 root:root); creates parent /usr/local/bin (0755 root:root); mode 4755, owner root:root, 1 bytes; SETUID: runs as user root",
            "Create directory /srv/shared: creates parent /srv (0755 root:root); mode 2775, owner root:root; SETGID: new entries get group root",
        ]
    );
}

/// A directory left in place because of a foreign file stays recorded as created, so
/// that the run after the foreign file is gone prunes it, instead of forgetting it.
#[test]
fn a_directory_left_in_place_is_pruned_once_its_foreign_files_are_gone() {
    let root = root(&[("/etc/kept/mine.conf", "not the agent's\n")]);
    let previous: Previous = [(
        "path:/etc/kept".to_string(),
        ResourceState {
            kind: "directory".into(),
            path: "/etc/kept".into(),
            digest: String::new(),
            created: true,
            secret: false,
            stamp: None,
            pending: false,
        },
    )]
    .into_iter()
    .collect();
    let declared = "  - file: {path: /etc/new, content: x}\n";
    let (first, _) = planned(
        declared,
        root.path(),
        Scripted::new(),
        false,
        Some(&previous),
    );
    assert_eq!(
        first.notes,
        ["/etc/kept is no longer declared but is not empty: left in place"]
    );
    assert_eq!(
        first.resources.get("path:/etc/kept"),
        previous.get("path:/etc/kept")
    );

    std::fs::remove_file(root.path().join("etc/kept/mine.conf")).unwrap();
    let (second, _) = planned(
        declared,
        root.path(),
        Scripted::new(),
        false,
        Some(&first.resources),
    );
    assert_eq!(
        summary(&second)[1..],
        ["Remove directory /etc/kept: created by fleet-agent and no longer declared"]
    );
    assert!(second.notes.is_empty());
}

/// An apt source that no role declares any more is removed in the sources phase, and
/// the lists are refreshed in the same run so that they match the sources again.
#[test]
fn removing_an_apt_source_refreshes_the_lists() {
    let source = "/etc/apt/sources.list.d/old.sources";
    let root = root(&[
        (DPKG, ""),
        FRESH_LISTS,
        ("/usr/bin/apt-get", ""),
        (source, "Types: deb\n"),
    ]);
    let previous: Previous = [(
        format!("path:{source}"),
        ResourceState {
            kind: "file".into(),
            path: source.into(),
            digest: String::new(),
            created: true,
            secret: false,
            stamp: None,
            pending: false,
        },
    )]
    .into_iter()
    .collect();
    let (p, _) = planned(
        "  - file: {path: /etc/motd, content: hi}\n",
        root.path(),
        Scripted::new(),
        false,
        Some(&previous),
    );
    assert_eq!(
        summary(&p)[..2],
        [
            "Remove file /etc/apt/sources.list.d/old.sources: created by fleet-agent and no longer declared",
            "Run apt update: apt sources changed",
        ]
    );
}

/// A changed source with no package change, on a root without apt (an image being
/// built): a note, not an `apt-get update` that cannot run there.
#[test]
fn a_source_change_on_a_root_without_apt_is_a_note() {
    let root = root(&[]);
    let (p, commands) = planned(
        "  - file: {path: /etc/apt/sources.list.d/x.sources, content: \"Types: deb\\n\"}\n",
        root.path(),
        Scripted::new(),
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        ["Create file /etc/apt/sources.list.d/x.sources: creates parent /etc (0755 root:root); creates parent /etc/apt (0755 root:root); creates parent /etc/apt/sources.list.d (0755 root:root); mode 0644, owner root:root, 11 bytes"]
    );
    assert_eq!(
        p.notes,
        ["apt sources changed: `apt-get update` skipped: this root has no /usr/bin/apt-get"]
    );
    assert!(commands.is_empty(), "{commands:?}");
}

/// Lists refreshed before a source was changed (by hand, or a refresh that failed part
/// way) are stale for the next transaction, however young they are.
#[test]
fn sources_newer_than_the_lists_make_them_stale() {
    let root = root(&[(DPKG, ""), FRESH_LISTS]);
    let lists = root.path().join("var/lib/apt/lists");
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::open(&lists)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    std::fs::create_dir_all(root.path().join("etc/apt/sources.list.d")).unwrap();
    std::fs::write(
        root.path().join("etc/apt/sources.list.d/by-hand.sources"),
        "x",
    )
    .unwrap();
    let runner = Scripted::new().on("apt-get -s", 0, "Inst hello (2.10-3 Debian:12 [amd64])\n");
    let (p, _) = planned(
        "  - package: {name: hello}\n",
        root.path(),
        runner,
        false,
        None,
    );
    assert_eq!(
        summary(&p),
        [
            "Run apt update: apt's sources changed after the lists were last refreshed",
            "Change apt packages: install hello 2.10-3",
        ]
    );
}
