//! The plan: every change the desired state needs on this machine, computed whole
//! before anything is changed, with its before and after. A failed read of the machine
//! is an error, never "no change". `apply` executes exactly the operations here.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::{Existing, Host};
use crate::resource::{sha256_hex, DesiredState, Kind, Principal, Resource};
use crate::state::{ResourceState, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Change,
    Remove,
}

impl Action {
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Change => "changed",
            Action::Remove => "removed",
        }
    }
}

/// One primitive change of the machine, through the `Host` seam.
#[derive(Debug, Clone)]
pub enum Op {
    CreateDir {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    WriteFile {
        path: PathBuf,
        content: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    SetMetadata {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub action: Action,
    pub kind: &'static str,
    pub path: PathBuf,
    /// The role that declares it; empty for a removal of something no longer declared.
    pub role: String,
    pub declared_at: Option<String>,
    /// What differs, in words: "mode 0644 → 0600", "creates parent /etc/app".
    pub details: Vec<String>,
    /// A unified diff of the content; None when not text, secret, or unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    pub secret: bool,
    /// Whether the path did not exist before (the agent created it; prunable later).
    pub creates: bool,
    #[serde(skip)]
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub device_id: String,
    pub commit: Option<String>,
    pub changes: Vec<Change>,
    /// Every declared resource with its digest: what the state records after apply.
    #[serde(skip)]
    pub resources: BTreeMap<String, ResourceState>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |a| self.changes.iter().filter(|c| c.action == a).count();
        (n(Action::Create), n(Action::Change), n(Action::Remove))
    }

    /// The plan as a maintainer reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let sign = match c.action {
                Action::Create => '+',
                Action::Change => '~',
                Action::Remove => '-',
            };
            let origin = match (&c.declared_at, c.role.is_empty()) {
                (Some(at), false) => format!("(role {}, {at})", c.role),
                _ => "(no longer declared)".to_string(),
            };
            let _ = writeln!(out, "{sign} {} {} {origin}", c.kind, c.path.display());
            for d in &c.details {
                let _ = writeln!(out, "    {d}");
            }
            if let Some(diff) = &c.diff {
                for line in diff.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        let (create, change, remove) = self.counts();
        if self.is_empty() {
            let _ = writeln!(out, "No changes: the device already matches.");
        } else {
            let _ = writeln!(
                out,
                "Plan: {create} to create, {change} to change, {remove} to remove."
            );
        }
        out
    }
}

/// Computes the plan for a desired state. `previous` is the state of the last run on
/// this root filesystem (None when unknown: then nothing is pruned).
pub fn plan(
    host: &Host,
    desired: &DesiredState,
    previous: Option<&State>,
    prune: bool,
    commit: Option<String>,
) -> Result<Plan> {
    let mut changes = Vec::new();
    let mut resources = BTreeMap::new();
    // Directories that changes earlier in the plan create.
    let mut planned = HashSet::new();
    for r in &desired.resources {
        let created_before = previous
            .and_then(|s| s.resources.get(&r.kind.id()))
            .is_some_and(|s| s.created);
        if let Some(c) = plan_resource(host, r, &mut planned)? {
            resources.insert(
                r.kind.id(),
                ResourceState {
                    kind: r.kind.kind_name().into(),
                    path: r.kind.path().clone(),
                    digest: r.kind.digest(),
                    created: created_before || c.creates,
                },
            );
            changes.push(c);
        } else {
            resources.insert(
                r.kind.id(),
                ResourceState {
                    kind: r.kind.kind_name().into(),
                    path: r.kind.path().clone(),
                    digest: r.kind.digest(),
                    created: created_before,
                },
            );
        }
    }
    if let (Some(prev), true) = (previous, prune) {
        // Things this agent created that no role declares any more, deepest path first.
        let mut gone: Vec<&ResourceState> = prev
            .resources
            .iter()
            .filter(|(id, s)| s.created && s.kind != "absent" && !resources.contains_key(*id))
            .map(|(_, s)| s)
            .collect();
        gone.sort_by(|a, b| b.path.cmp(&a.path));
        for s in gone {
            let existing = host.inspect(&s.path)?;
            if let Existing::Directory { .. } = existing {
                // What others put in a directory the agent made is not the agent's to delete.
                if !host.dir_is_empty(&s.path)? {
                    log::warn!(
                        "{} is no longer declared but is not empty: left in place",
                        s.path.display()
                    );
                    continue;
                }
            }
            if existing != Existing::Missing {
                changes.push(Change {
                    action: Action::Remove,
                    kind: kind_label(&s.kind),
                    path: s.path.clone(),
                    role: String::new(),
                    declared_at: None,
                    details: vec!["created by fleet-agent and no longer declared".into()],
                    diff: None,
                    secret: false,
                    creates: false,
                    ops: vec![Op::Remove {
                        path: s.path.clone(),
                    }],
                });
            }
        }
    }
    Ok(Plan {
        device_id: desired.device_id.clone(),
        commit,
        changes,
        resources,
    })
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "directory" => "directory",
        "symlink" => "symlink",
        _ => "file",
    }
}

fn resolve(host: &Host, r: &Resource, p: &Principal, group: bool) -> Result<u32> {
    match p {
        Principal::Id(id) => Ok(*id),
        Principal::Name(name) => {
            let found = if group {
                host.gid(name)?
            } else {
                host.uid(name)?
            };
            found.ok_or_else(|| {
                Error::Other(format!(
                    "{}: the {} `{name}` does not exist on the device (for {})",
                    r.declared_at,
                    if group { "group" } else { "user" },
                    r.kind.path().display()
                ))
            })
        }
    }
}

fn describe_owner(host: &Host, uid: u32, gid: u32) -> String {
    let u = host.user_name(uid).unwrap_or_else(|| uid.to_string());
    let g = host.group_name(gid).unwrap_or_else(|| gid.to_string());
    format!("{u}:{g}")
}

/// Creates the missing parents of a path, except those an earlier change creates.
fn parents(
    host: &Host,
    path: &Path,
    planned: &mut HashSet<PathBuf>,
    ops: &mut Vec<Op>,
    details: &mut Vec<String>,
) -> Result<()> {
    for dir in host.missing_parents(path)? {
        if !planned.insert(dir.clone()) {
            continue;
        }
        details.push(format!("creates parent {} (0755 root:root)", dir.display()));
        ops.push(Op::CreateDir {
            path: dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    Ok(())
}

fn plan_resource(
    host: &Host,
    r: &Resource,
    planned: &mut HashSet<PathBuf>,
) -> Result<Option<Change>> {
    let existing = host.inspect(r.kind.path())?;
    let mut details = Vec::new();
    let mut ops = Vec::new();
    let mut diff = None;
    let mut secret = false;
    let conflict = |what: &str| {
        Err(Error::Other(format!(
            "{}: {} is {what} on the device; expected a {} (remove it with an `absent` resource first)",
            r.declared_at,
            r.kind.path().display(),
            r.kind.kind_name()
        )))
    };
    let action = match &r.kind {
        Kind::File {
            path,
            content,
            mode,
            owner,
            group,
            secret: is_secret,
        } => {
            secret = *is_secret;
            let uid = resolve(host, r, owner, false)?;
            let gid = resolve(host, r, group, true)?;
            let write = Op::WriteFile {
                path: path.clone(),
                content: content.clone(),
                mode: *mode,
                uid,
                gid,
            };
            match existing.clone() {
                Existing::Missing => {
                    parents(host, path, planned, &mut ops, &mut details)?;
                    details.push(format!(
                        "mode {mode:04o}, owner {}, {} bytes",
                        describe_owner(host, uid, gid),
                        content.len()
                    ));
                    diff = content_diff(path, b"", content, secret, &mut details);
                    ops.push(write);
                    Some(Action::Create)
                }
                Existing::File {
                    mode: m,
                    uid: u,
                    gid: g,
                } => {
                    let current = host.read(path)?;
                    if current != *content {
                        diff = content_diff(path, &current, content, secret, &mut details);
                        meta_details(host, (m, u, g), (*mode, uid, gid), &mut details);
                        ops.push(write);
                        Some(Action::Change)
                    } else if (m, u, g) != (*mode, uid, gid) {
                        meta_details(host, (m, u, g), (*mode, uid, gid), &mut details);
                        ops.push(Op::SetMetadata {
                            path: path.clone(),
                            mode: *mode,
                            uid,
                            gid,
                        });
                        Some(Action::Change)
                    } else {
                        None
                    }
                }
                Existing::Symlink { target } => {
                    details.push(format!("replaces a symlink to {}", target.display()));
                    diff = content_diff(path, b"", content, secret, &mut details);
                    ops.push(write);
                    Some(Action::Change)
                }
                Existing::Directory { .. } => return conflict("a directory"),
                Existing::Other => return conflict("a special file"),
            }
        }
        Kind::Directory {
            path,
            mode,
            owner,
            group,
        } => {
            let uid = resolve(host, r, owner, false)?;
            let gid = resolve(host, r, group, true)?;
            match existing {
                Existing::Missing => {
                    parents(host, path, planned, &mut ops, &mut details)?;
                    details.push(format!(
                        "mode {mode:04o}, owner {}",
                        describe_owner(host, uid, gid)
                    ));
                    planned.insert(path.clone());
                    ops.push(Op::CreateDir {
                        path: path.clone(),
                        mode: *mode,
                        uid,
                        gid,
                    });
                    Some(Action::Create)
                }
                Existing::Directory {
                    mode: m,
                    uid: u,
                    gid: g,
                } if (m, u, g) != (*mode, uid, gid) => {
                    meta_details(host, (m, u, g), (*mode, uid, gid), &mut details);
                    ops.push(Op::SetMetadata {
                        path: path.clone(),
                        mode: *mode,
                        uid,
                        gid,
                    });
                    Some(Action::Change)
                }
                Existing::Directory { .. } => None,
                Existing::File { .. } => return conflict("a file"),
                Existing::Symlink { .. } => return conflict("a symlink"),
                Existing::Other => return conflict("a special file"),
            }
        }
        Kind::Symlink { path, target } => {
            let op = Op::Symlink {
                path: path.clone(),
                target: target.clone(),
            };
            match existing.clone() {
                Existing::Missing => {
                    parents(host, path, planned, &mut ops, &mut details)?;
                    details.push(format!("→ {}", target.display()));
                    ops.push(op);
                    Some(Action::Create)
                }
                Existing::Symlink { target: t } if &t == target => None,
                Existing::Symlink { target: t } => {
                    details.push(format!("target {} → {}", t.display(), target.display()));
                    ops.push(op);
                    Some(Action::Change)
                }
                Existing::File { .. } => {
                    details.push(format!(
                        "replaces a file with a link → {}",
                        target.display()
                    ));
                    ops.push(op);
                    Some(Action::Change)
                }
                Existing::Directory { .. } => return conflict("a directory"),
                Existing::Other => return conflict("a special file"),
            }
        }
        Kind::Absent { path } => match &existing {
            Existing::Missing => None,
            other => {
                let what = match other {
                    Existing::Directory { .. } => "directory and everything in it",
                    Existing::Symlink { .. } => "symlink",
                    _ => "file",
                };
                details.push(format!("removes the {what}"));
                ops.push(Op::Remove { path: path.clone() });
                Some(Action::Remove)
            }
        },
    };
    Ok(action.map(|action| Change {
        action,
        kind: match &r.kind {
            Kind::Absent { .. } => "path",
            k => k.kind_name(),
        },
        path: r.kind.path().clone(),
        role: r.role.clone(),
        declared_at: Some(r.declared_at.to_string()),
        details,
        diff,
        secret,
        creates: existing == Existing::Missing,
        ops,
    }))
}

fn meta_details(
    host: &Host,
    (m, u, g): (u32, u32, u32),
    (mode, uid, gid): (u32, u32, u32),
    details: &mut Vec<String>,
) {
    if m != mode {
        details.push(format!("mode {m:04o} → {mode:04o}"));
    }
    if (u, g) != (uid, gid) {
        details.push(format!(
            "owner {} → {}",
            describe_owner(host, u, g),
            describe_owner(host, uid, gid)
        ));
    }
}

fn content_diff(
    path: &Path,
    old: &[u8],
    new: &[u8],
    secret: bool,
    details: &mut Vec<String>,
) -> Option<String> {
    if secret {
        if !old.is_empty() {
            details.push("content changed (secret: not shown)".into());
        } else {
            details.push("content is secret: not shown".into());
        }
        return None;
    }
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(o), Ok(n)) if !o.contains('\0') && !n.contains('\0') => {
            let name = path.display().to_string();
            let d = similar::TextDiff::from_lines(o, n)
                .unified_diff()
                .context_radius(3)
                .header(&name, &name)
                .to_string();
            Some(d)
        }
        _ => {
            details.push(format!(
                "binary content: sha256 {} → {}",
                &sha256_hex(old)[..12],
                &sha256_hex(new)[..12]
            ));
            None
        }
    }
}
