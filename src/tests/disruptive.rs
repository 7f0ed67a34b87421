//! In-process tests of `disruptive: true` (docs/rollouts.md): a role marks resources
//! disruptive, the planner plans them as usual, and a maintenance window or the hold
//! file defers their changes, with the commands that `on_change` makes due by them; the
//! state keeps what is on the machine and a deferred triggered command stays due.

use crate::host::command::Scripted;
use crate::plan::ResourceState;
use crate::release::defer;
use crate::tests::planner::{options, planned_with, root, summary};

const ROLE: &str = "  - file: {path: /etc/app.conf, content: \"v2\\n\"}
    disruptive: true
  - file: {path: /etc/other.conf, content: \"o\\n\"}
  - command: {name: reload, argv: [/usr/bin/app, reload], on_change: [/etc/app.conf]}
  - command: {name: flush, argv: [/usr/bin/app, flush], on_change: [/etc/other.conf]}
    disruptive: true
  - command: {name: log, argv: [/usr/bin/logger, changed], on_change: [/etc/other.conf]}
";

fn record(path: &str, digest: &str) -> ResourceState {
    ResourceState {
        kind: "file".into(),
        path: path.into(),
        digest: digest.into(),
        created: false,
        secret: false,
        stamp: None,
        pending: false,
    }
}

#[test]
fn a_disruptive_resource_waits_with_the_commands_it_triggers() {
    let r = root(&[("/etc/app.conf", "v1\n")]);
    let (p, _) = planned_with(ROLE, r.path(), Scripted::new(), false, None, &options());
    let mut p = p.unwrap();
    assert_eq!(p.changes.len(), 5, "planned as usual: {:#?}", summary(&p));
    let previous = [(
        "path:/etc/app.conf".to_string(),
        record("/etc/app.conf", "v1"),
    )];
    let (deferred, handlers) = defer(&mut p, "deferred until 02:00", &previous.into());
    assert_eq!(
        summary(&p),
        [
            "Create file /etc/other.conf: mode 0644, owner root:root, 2 bytes",
            "Run command log: runs: /etc/other.conf changes (on_change); argv: /usr/bin/logger changed; timeout 300 s"
        ]
    );
    assert_eq!(
        deferred,
        ["file /etc/app.conf", "command reload", "command flush"],
        "reload follows a deferred file; flush is itself disruptive"
    );
    assert_eq!(
        p.notes,
        deferred
            .iter()
            .map(|d| format!("{d}: deferred until 02:00"))
            .collect::<Vec<_>>()
    );
    assert!(handlers.is_empty());
    // The state records what is on the machine: the old file; flush's trigger applied
    // now and will not change again, so flush stays due; reload comes with its file.
    assert_eq!(p.resources["path:/etc/app.conf"].digest, "v1");
    assert!(p.resources["command:flush"].pending);
    assert!(
        !p.resources.contains_key("command:reload"),
        "no record before: none now"
    );
}

#[test]
fn without_a_deferral_a_disruptive_resource_applies_at_once() {
    let r = root(&[]);
    let (p, _) = planned_with(ROLE, r.path(), Scripted::new(), false, None, &options());
    let p = p.unwrap();
    assert!(p.changes.iter().all(|c| c.role == "web"));
    assert_eq!(p.changes.iter().filter(|c| c.disruptive).count(), 2);
}
