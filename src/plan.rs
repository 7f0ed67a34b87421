//! The plan: plain data. Every change a desired state needs on this machine, with what
//! differs, in run order (sources → apt update → packages → groups → users → files and
//! downloads → commands → daemon-reload → services → handlers), and the primitive
//! operations (`Op`) that apply executes. `resources::plan` computes it whole before anything changes; `apply` runs
//! exactly its operations; the command line renders it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::content::Content;
use crate::host::accounts::Principal;

/// The run order: a run applies every change of one phase before the next phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RunPhase {
    /// apt sources and their signing keys (files under /etc/apt).
    Sources,
    AptUpdate,
    Packages,
    Groups,
    Users,
    Files,
    /// `command` resources, after every file and download, before the services.
    Commands,
    DaemonReload,
    Services,
    /// Restarts and reloads of services whose files changed.
    Handlers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeAction {
    Create,
    Change,
    Remove,
    /// A command with an effect but no lasting resource: apt-get update, restarts.
    Run,
}

impl ChangeAction {
    pub(crate) fn past_tense(self) -> &'static str {
        match self {
            ChangeAction::Create => "created",
            ChangeAction::Change => "changed",
            ChangeAction::Remove => "removed",
            ChangeAction::Run => "ran",
        }
    }
}

/// What a change is about, as plans, logs and `plan --json` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeKind {
    File,
    Directory,
    Symlink,
    /// An `absent` resource: whatever is at the path.
    Path,
    Group,
    User,
    Service,
    /// apt update and the packages transaction.
    Apt,
    /// A `command` resource.
    Command,
    /// A `download` resource (a file, or a directory unpacked from an archive).
    Download,
    /// daemon-reload.
    Systemd,
    /// Handlers.
    Restart,
    Reload,
}

impl ChangeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::File => "file",
            ChangeKind::Directory => "directory",
            ChangeKind::Symlink => "symlink",
            ChangeKind::Path => "path",
            ChangeKind::Group => "group",
            ChangeKind::User => "user",
            ChangeKind::Service => "service",
            ChangeKind::Apt => "apt",
            ChangeKind::Command => "command",
            ChangeKind::Download => "download",
            ChangeKind::Systemd => "systemd",
            ChangeKind::Restart => "restart",
            ChangeKind::Reload => "reload",
        }
    }
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One primitive change of the machine, through the `Host` seam. Owners are resolved
/// when applied: a user created earlier in the same run owns its files.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    CreateDir {
        path: PathBuf,
        mode: u32,
        owner: Principal,
        group: Principal,
    },
    /// Content in memory, or a reference read as a stream when applied.
    WriteFile {
        path: PathBuf,
        content: Content,
        mode: u32,
        owner: Principal,
        group: Principal,
    },
    SetMetadata {
        path: PathBuf,
        mode: u32,
        owner: Principal,
        group: Principal,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// A command of the managed system; `in_root`: chrooted under `--root`.
    Command {
        argv: Vec<String>,
        in_root: bool,
    },
    AptUpdate,
    /// One apt transaction. Versions given as globs are resolved against the lists then.
    Apt {
        install: Vec<(String, Option<String>)>,
        remove: Vec<String>,
        recommends: bool,
    },
    /// A `command` resource: its guards checked again, then run.
    Exec(Box<RunCommand>),
    /// A `download` resource: fetched (resuming), checked, placed or unpacked.
    Download(Box<crate::host::fetch::Fetch>),
}

/// What applying a `command` runs, and the guards checked again just before (an earlier
/// change of the same run may have settled them).
#[derive(Debug, Clone)]
pub(crate) struct RunCommand {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) creates: Option<PathBuf>,
    pub(crate) unless: Option<Vec<String>>,
    pub(crate) only_if: Option<Vec<String>>,
    /// The argv or environment carries a secret: shown by name only.
    pub(crate) secret: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Change {
    pub(crate) action: ChangeAction,
    pub(crate) kind: ChangeKind,
    /// A path, a package, a unit, a user.
    pub(crate) subject: String,
    pub(crate) phase: RunPhase,
    /// The role that declares it; empty for what the run itself adds (apt update,
    /// daemon-reload) or removes (no longer declared).
    pub(crate) role: String,
    pub(crate) declared_at: Option<String>,
    /// What differs, in words: "mode 0644 → 0600", "creates parent /etc/app".
    pub(crate) details: Vec<String>,
    /// A unified diff of the content; None when not text, secret, or unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) diff: Option<String>,
    pub(crate) secret: bool,
    /// Whether the path did not exist before (the agent created it; prunable later).
    pub(crate) creates: bool,
    /// The state's id of the resource this changes (None for runs such as apt update).
    #[serde(skip)]
    pub(crate) resource_id: Option<String>,
    /// Its resource is marked `disruptive: true` (src/release defers it).
    #[serde(skip)]
    pub(crate) disruptive: bool,
    /// A command that `on_change` makes due: the ids of the resources whose changes in
    /// this plan make it due (it is deferred with them).
    #[serde(skip)]
    pub(crate) triggered_by: Vec<String>,
    #[serde(skip)]
    pub(crate) ops: Vec<Op>,
}

impl Change {
    /// A change the run itself adds (apt update, daemon-reload): no role, no resource.
    pub(crate) fn run(
        kind: ChangeKind,
        subject: &str,
        phase: RunPhase,
        details: Vec<String>,
        ops: Vec<Op>,
    ) -> Change {
        Change {
            action: ChangeAction::Run,
            kind,
            subject: subject.to_string(),
            phase,
            role: String::new(),
            declared_at: None,
            details,
            diff: None,
            secret: false,
            creates: false,
            resource_id: None,
            disruptive: false,
            triggered_by: vec![],
            ops,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) device_id: String,
    pub(crate) commit: Option<String>,
    pub(crate) changes: Vec<Change>,
    /// What the run will not do and why (held packages, starts without systemd).
    pub(crate) notes: Vec<String>,
    /// Every declared resource with its digest: what the state records after apply.
    #[serde(skip)]
    pub(crate) resources: BTreeMap<String, ResourceState>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many changes create, change (or run) and remove something.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let n = |a: &[ChangeAction]| {
            self.changes
                .iter()
                .filter(|c| a.contains(&c.action))
                .count()
        };
        (
            n(&[ChangeAction::Create]),
            n(&[ChangeAction::Change, ChangeAction::Run]),
            n(&[ChangeAction::Remove]),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ResourceState {
    pub(crate) kind: String,
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
    /// The path did not exist before the agent made it: it may be pruned later.
    pub(crate) created: bool,
    /// A `secret` file: its content digest never leaves the device (src/report/).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) secret: bool,
    /// A download: what the file or directory looked like when it was known to match
    /// (device, inode, size, modification and change times), so that a no-op run need
    /// not hash it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stamp: Option<String>,
    /// A command that `on_change` made due whose run has not finished (interrupted or
    /// failed): the next run runs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) pending: bool,
}
