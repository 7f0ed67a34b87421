//! In-process tests of path safety: a scratch root with planted symlinks, the planner
//! and apply over it, and proof that nothing outside the root was read or changed.
//! Each case runs twice: with openat2 (where the kernel has it) and with the O_NOFOLLOW
//! walk that replaces it on older kernels.

use crate::fleet::tests::desired;
use crate::host::command::Scripted;
use crate::host::Host;
use crate::plan::{Plan, ResourceState};
use crate::resources::{plan, Previous};
use crate::tests::planner::options;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

const OUTSIDE_SECRET: &str = "outside secret\n";

/// A scratch root and a directory beside it that the root must never reach.
struct Scene {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        for d in [&root, &root.join("etc"), &root.join("run"), &outside] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(outside.join("victim.conf"), OUTSIDE_SECRET).unwrap();
        Scene {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn link(&self, device_path: &str, target: impl AsRef<Path>) {
        let p = self.root.join(device_path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// What is outside: names, content, mode and owner.
    fn outside_now(&self) -> BTreeMap<String, String> {
        std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let content = std::fs::read(&p).unwrap_or_default();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    format!(
                        "{:o} {}:{} {}",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid(),
                        String::from_utf8_lossy(&content)
                    ),
                )
            })
            .collect()
    }
}

/// Plans role web's `resources` on `host` and applies the plan: the plan, or the first
/// error of planning or applying, as text (diffs included).
fn converge(host: &Host, resources: &str, previous: Option<&Previous>) -> Result<String, String> {
    let role = format!("resources:\n{resources}");
    let desired = desired(&[("roles/web/role.yml", role.as_str())]).unwrap();
    let p: Plan = plan(host, &desired, previous, &options(), None).map_err(|e| e.to_string())?;
    let shown = p
        .changes
        .iter()
        .map(|c| {
            format!(
                "{:?} {} {}: {}\n{}",
                c.action,
                c.kind,
                c.subject,
                c.details.join("; "),
                c.diff.clone().unwrap_or_default()
            )
        })
        .collect::<String>();
    let (_, applied) = crate::apply::apply(host, &p, "test");
    applied.map_err(|e| format!("{shown}apply: {e}"))?;
    Ok(shown)
}

/// Both resolutions: openat2 (where the kernel has it) and the O_NOFOLLOW walk.
fn hosts(root: &Path) -> [Host; 2] {
    let h = || Host::with_runner(root, Arc::new(Scripted::new()));
    [h().with_links(false, false), h().with_links(false, true)]
}

#[test]
fn a_parent_linked_out_of_the_root_never_reaches_outside() {
    let cases = [
        ("file", "  - file: {path: /etc/app/victim.conf, content: \"pwned\\n\"}\n"),
        ("directory", "  - directory: {path: /etc/app/newdir}\n"),
        ("symlink", "  - symlink: {path: /etc/app/newlink, target: /etc/shadow}\n"),
        ("absent", "  - absent: {path: /etc/app/victim.conf}\n"),
        ("mode", "  - file: {path: /etc/app/victim.conf, content: \"outside secret\\n\", mode: \"0600\"}\n"),
        ("owner", "  - file: {path: /etc/app/victim.conf, content: \"outside secret\\n\", owner: \"4321\"}\n"),
    ];
    for walk in [false, true] {
        for (what, resources) in cases {
            let scene = Scene::new();
            scene.link("/etc/app", &scene.outside);
            let before = scene.outside_now();
            let host = &hosts(&scene.root)[walk as usize];
            let result = converge(host, resources, None);
            let shown = match &result {
                Ok(s) | Err(s) => s,
            };
            assert!(
                !shown.contains("outside secret"),
                "{what} (walk {walk}): the plan shows the outside file:\n{shown}"
            );
            assert_eq!(
                scene.outside_now(),
                before,
                "{what} (walk {walk}): changed outside the root ({result:?})"
            );
        }
    }
}

#[test]
fn what_was_pruned_is_never_looked_for_outside() {
    for walk in [false, true] {
        let scene = Scene::new();
        scene.link("/etc/app", &scene.outside);
        let before = scene.outside_now();
        let previous: Previous = [(
            "path:/etc/app/victim.conf".to_string(),
            ResourceState {
                kind: "file".into(),
                path: "/etc/app/victim.conf".into(),
                digest: String::new(),
                created: true,
                secret: false,
                stamp: None,
                pending: false,
            },
        )]
        .into_iter()
        .collect();
        let host = &hosts(&scene.root)[walk as usize];
        let shown = converge(
            host,
            "  - file: {path: /etc/other, content: x}\n",
            Some(&previous),
        );
        assert_eq!(scene.outside_now(), before, "walk {walk}: {shown:?}");
    }
}

#[test]
fn an_absolute_link_on_the_way_resolves_inside_the_root() {
    // Debian's /var/run -> /run, and a relative link that climbs above the root.
    let name = format!("fleet-agent-test-{}", std::process::id());
    for walk in [false, true] {
        let scene = Scene::new();
        scene.link("/var/run", "/run");
        scene.link("/etc/up", "../../../../../../../../../../../run");
        let host = &hosts(&scene.root)[walk as usize];
        let resources = format!(
            "  - file: {{path: /var/run/{name}.pid, content: \"1\\n\"}}\n  - file: {{path: /etc/up/{name}.up, content: \"2\\n\"}}\n"
        );
        let shown = converge(host, &resources, None).unwrap();
        assert!(
            shown.contains(&format!("Create file /var/run/{name}.pid")),
            "{shown}"
        );
        let inside = |n: &str| std::fs::read_to_string(scene.root.join("run").join(n)).unwrap();
        assert_eq!(inside(&format!("{name}.pid")), "1\n", "walk {walk}");
        assert_eq!(inside(&format!("{name}.up")), "2\n", "walk {walk}");
        for n in [format!("{name}.pid"), format!("{name}.up")] {
            assert!(
                !Path::new("/run").join(&n).exists(),
                "walk {walk}: written to the machine's own /run/{n}"
            );
        }
        // A second run finds everything in place: reads resolve the same way.
        assert_eq!(converge(host, &resources, None).unwrap(), "", "walk {walk}");
    }
}

/// The running system: a link on the way is followed only when root alone can change it.
#[test]
fn on_the_running_system_a_link_a_user_can_change_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it gives files to another user): run scripts/test.sh as root"
    );
    for walk in [false, true] {
        let scene = Scene::new();
        std::fs::set_permissions(&scene.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = scene.root.join("home/kiosk");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
        scene.link("/home/kiosk/.config", "/etc");
        std::os::unix::fs::lchown(home.join(".config"), Some(1000), Some(1000)).unwrap();
        scene.link("/var/run", "/run");
        std::fs::create_dir_all(scene.root.join("srv")).unwrap();
        std::fs::set_permissions(
            scene.root.join("srv"),
            std::fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        scene.link("/srv/www", "/etc");
        let host = Host::with_runner(&scene.root, Arc::new(Scripted::new())).with_links(true, walk);

        let err = converge(
            &host,
            "  - file: {path: /home/kiosk/.config/sudoers, content: x}\n",
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "cannot inspect /home/kiosk/.config/sudoers: the symlink /home/kiosk/.config → /etc on the way is not followed: its directory belongs to uid 1000, and on the running system only links that root alone can change are followed",
            "walk {walk}"
        );
        let err = converge(&host, "  - file: {path: /srv/www/x, content: x}\n", None).unwrap_err();
        assert!(
            err.contains(": its directory is writable by group or others (mode 0775), and"),
            "{err}"
        );
        assert!(!scene.root.join("etc/sudoers").exists() && !scene.root.join("etc/x").exists());
        // A link that only root can change (Debian's /var/run) is followed.
        converge(&host, "  - file: {path: /var/run/ok, content: x}\n", None).unwrap();
        assert!(scene.root.join("run/ok").exists(), "walk {walk}");
    }
}

#[test]
fn a_link_at_the_path_itself_is_replaced_never_followed() {
    for walk in [false, true] {
        let scene = Scene::new();
        scene.link("/etc/app.conf", scene.outside.join("victim.conf"));
        let before = scene.outside_now();
        let host = &hosts(&scene.root)[walk as usize];
        let shown = converge(
            host,
            "  - file: {path: /etc/app.conf, content: \"mine\\n\"}\n",
            None,
        )
        .unwrap();
        assert!(!shown.contains("outside secret"), "{shown}");
        assert_eq!(scene.outside_now(), before);
        let p = scene.root.join("etc/app.conf");
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(p).unwrap(), "mine\n");
    }
}
