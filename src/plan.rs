//! The plan: every change the desired state needs on this machine, computed whole
//! before anything is changed, with its before and after, in run order (sources → apt
//! update → packages → groups → users → files → daemon-reload → services → handlers).
//! A failed read of the machine is an error, never "no change". `apply` executes
//! exactly the operations here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::{Existing, Host};
use crate::resource::{
    sha256_hex, DesiredState, Enablement, Kind, PackageState, Phase, Principal, Resource,
};
use crate::state::{ResourceState, State};
use crate::system;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Change,
    Remove,
    /// A command with an effect but no lasting resource: apt-get update, restarts.
    Run,
}

impl Action {
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Change => "changed",
            Action::Remove => "removed",
            Action::Run => "ran",
        }
    }
}

/// One primitive change of the machine, through the `Host` seam. Owners are resolved
/// when applied: a user created earlier in the same run owns its files.
#[derive(Debug, Clone)]
pub enum Op {
    CreateDir {
        path: PathBuf,
        mode: u32,
        owner: Principal,
        group: Principal,
    },
    WriteFile {
        path: PathBuf,
        content: Vec<u8>,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub action: Action,
    pub kind: &'static str,
    /// A path, a package, a unit, a user.
    pub subject: String,
    pub phase: Phase,
    /// The role that declares it; empty for what the run itself adds (apt update,
    /// daemon-reload) or removes (no longer declared).
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
    /// The state's id of the resource this changes (None for runs such as apt update).
    #[serde(skip)]
    pub resource_id: Option<String>,
    #[serde(skip)]
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub device_id: String,
    pub commit: Option<String>,
    pub changes: Vec<Change>,
    /// What the run will not do and why (held packages, starts without systemd).
    pub notes: Vec<String>,
    /// Every declared resource with its digest: what the state records after apply.
    #[serde(skip)]
    pub resources: BTreeMap<String, ResourceState>,
}

/// Plan settings from the fleet repository.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub prune: bool,
    /// Package lists older than this are refreshed before a package transaction.
    pub apt_lists_max_age: Duration,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |a: &[Action]| {
            self.changes
                .iter()
                .filter(|c| a.contains(&c.action))
                .count()
        };
        (
            n(&[Action::Create]),
            n(&[Action::Change, Action::Run]),
            n(&[Action::Remove]),
        )
    }

    pub fn has_phase(&self, phase: Phase) -> bool {
        self.changes.iter().any(|c| c.phase == phase)
    }

    /// The plan as a maintainer reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let sign = match c.action {
                Action::Create => '+',
                Action::Change => '~',
                Action::Remove => '-',
                Action::Run => '!',
            };
            let origin = match (&c.declared_at, c.role.is_empty()) {
                (Some(at), false) => format!(" (role {}, {at})", c.role),
                _ if c.action == Action::Remove => " (no longer declared)".to_string(),
                _ => String::new(),
            };
            let _ = writeln!(out, "{sign} {} {}{origin}", c.kind, c.subject);
            for d in &c.details {
                let _ = writeln!(out, "    {d}");
            }
            if let Some(diff) = &c.diff {
                for line in diff.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
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
    options: Options,
    commit: Option<String>,
) -> Result<Plan> {
    let mut p = Planner {
        host,
        changes: Vec::new(),
        notes: Vec::new(),
        planned_dirs: HashSet::new(),
        declared_users: HashSet::new(),
        declared_groups: HashSet::new(),
    };
    for r in &desired.resources {
        match &r.kind {
            Kind::User { name, .. } => {
                p.declared_users.insert(name.clone());
                // useradd makes the user's own group.
                p.declared_groups.insert(name.clone());
            }
            Kind::Group { name, .. } => {
                p.declared_groups.insert(name.clone());
            }
            _ => {}
        }
    }
    let mut resources = BTreeMap::new();
    let by_phase = |phase: Phase| {
        desired
            .resources
            .iter()
            .filter(move |r| r.kind.phase() == phase)
    };

    for phase in [Phase::Sources, Phase::Groups, Phase::Users, Phase::Files] {
        for r in by_phase(phase) {
            let created_before = previous
                .and_then(|s| s.resources.get(&r.kind.id()))
                .is_some_and(|s| s.created);
            let change = match &r.kind {
                Kind::Group { .. } | Kind::User { .. } => p.account(r)?,
                _ => p.path_resource(r)?,
            };
            let creates = change.as_ref().is_some_and(|c| c.creates);
            resources.insert(r.kind.id(), resource_state(r, created_before || creates));
            p.changes.extend(change);
        }
    }
    let packages: Vec<&Resource> = by_phase(Phase::Packages).collect();
    for r in &packages {
        resources.insert(r.kind.id(), resource_state(r, false));
    }
    p.packages(&packages, options)?;

    if let (Some(prev), true) = (previous, options.prune) {
        p.prune(prev, &resources)?;
    }

    let services: Vec<&Resource> = by_phase(Phase::Services).collect();
    for r in &services {
        resources.insert(r.kind.id(), resource_state(r, false));
    }
    p.services(&services)?;

    let mut changes = p.changes;
    // Stable: the declared order within each phase.
    changes.sort_by_key(|c| c.phase);
    Ok(Plan {
        device_id: desired.device_id.clone(),
        commit,
        changes,
        notes: p.notes,
        resources,
    })
}

fn resource_state(r: &Resource, created: bool) -> ResourceState {
    ResourceState {
        kind: r.kind.kind_name().into(),
        path: PathBuf::from(r.kind.subject()),
        digest: r.kind.digest(),
        created,
    }
}

struct Planner<'h> {
    host: &'h Host,
    changes: Vec<Change>,
    notes: Vec<String>,
    /// Directories that changes earlier in the plan create.
    planned_dirs: HashSet<PathBuf>,
    declared_users: HashSet<String>,
    declared_groups: HashSet<String>,
}

fn change(r: &Resource, action: Action, details: Vec<String>, ops: Vec<Op>) -> Change {
    Change {
        action,
        kind: match &r.kind {
            Kind::Absent { .. } => "path",
            k => k.kind_name(),
        },
        subject: r.kind.subject(),
        phase: r.kind.phase(),
        role: r.role.clone(),
        declared_at: Some(r.declared_at.to_string()),
        details,
        diff: None,
        secret: false,
        creates: false,
        resource_id: Some(r.kind.id()),
        ops,
    }
}

fn run_change(
    kind: &'static str,
    subject: String,
    phase: Phase,
    details: Vec<String>,
    ops: Vec<Op>,
) -> Change {
    Change {
        action: Action::Run,
        kind,
        subject,
        phase,
        role: String::new(),
        declared_at: None,
        details,
        diff: None,
        secret: false,
        creates: false,
        resource_id: None,
        ops,
    }
}

impl Planner<'_> {
    /// A user or group name: it exists, or a user/group resource of this plan makes it.
    fn check_principal(&self, r: &Resource, p: &Principal, group: bool) -> Result<Option<u32>> {
        match p {
            Principal::Id(id) => Ok(Some(*id)),
            Principal::Name(name) => {
                let found = if group {
                    self.host.gid(name)?
                } else {
                    self.host.uid(name)?
                };
                let declared = if group {
                    self.declared_groups.contains(name)
                } else {
                    self.declared_users.contains(name)
                };
                match (found, declared) {
                    (Some(id), _) => Ok(Some(id)),
                    (None, true) => Ok(None),
                    (None, false) => Err(Error::Other(format!(
                        "{}: the {} `{name}` does not exist on the device (for {}); declare it with a `{}` resource",
                        r.declared_at,
                        if group { "group" } else { "user" },
                        r.kind.subject(),
                        if group { "group" } else { "user" },
                    ))),
                }
            }
        }
    }

    fn describe_owner(&self, owner: &Principal, group: &Principal) -> String {
        let name = |p: &Principal, group: bool| match p {
            Principal::Name(n) => n.clone(),
            Principal::Id(id) => {
                let n = if group {
                    self.host.group_name(*id)
                } else {
                    self.host.user_name(*id)
                };
                n.unwrap_or_else(|| id.to_string())
            }
        };
        format!("{}:{}", name(owner, false), name(group, true))
    }

    fn describe_ids(&self, uid: u32, gid: u32) -> String {
        let u = self.host.user_name(uid).unwrap_or_else(|| uid.to_string());
        let g = self.host.group_name(gid).unwrap_or_else(|| gid.to_string());
        format!("{u}:{g}")
    }

    /// Creates the missing parents of a path, except those an earlier change creates.
    fn parents(&mut self, path: &Path, ops: &mut Vec<Op>, details: &mut Vec<String>) -> Result<()> {
        for dir in self.host.missing_parents(path)? {
            if !self.planned_dirs.insert(dir.clone()) {
                continue;
            }
            details.push(format!("creates parent {} (0755 root:root)", dir.display()));
            ops.push(Op::CreateDir {
                path: dir,
                mode: 0o755,
                owner: Principal::Id(0),
                group: Principal::Id(0),
            });
        }
        Ok(())
    }

    fn meta_details(
        &self,
        (m, u, g): (u32, u32, u32),
        mode: u32,
        want: (Option<u32>, Option<u32>),
        owner: (&Principal, &Principal),
        details: &mut Vec<String>,
    ) -> bool {
        let mut differs = false;
        if m != mode {
            details.push(format!("mode {m:04o} → {mode:04o}"));
            differs = true;
        }
        if want.0 != Some(u) || want.1 != Some(g) {
            details.push(format!(
                "owner {} → {}",
                self.describe_ids(u, g),
                self.describe_owner(owner.0, owner.1)
            ));
            differs = true;
        }
        differs
    }

    fn path_resource(&mut self, r: &Resource) -> Result<Option<Change>> {
        let path = r.kind.path().expect("file-like resource").clone();
        let existing = self.host.inspect(&path)?;
        let mut details = Vec::new();
        let mut ops = Vec::new();
        let mut diff = None;
        let mut secret = false;
        let conflict = |what: &str| {
            Err(Error::Other(format!(
                "{}: {} is {what} on the device; expected a {} (remove it by hand or in an earlier commit with an `absent` resource)",
                r.declared_at,
                path.display(),
                r.kind.kind_name()
            )))
        };
        let action = match &r.kind {
            Kind::File {
                content,
                mode,
                owner,
                group,
                secret: is_secret,
                ..
            } => {
                secret = *is_secret;
                let want = (
                    self.check_principal(r, owner, false)?,
                    self.check_principal(r, group, true)?,
                );
                let write = Op::WriteFile {
                    path: path.clone(),
                    content: content.clone(),
                    mode: *mode,
                    owner: owner.clone(),
                    group: group.clone(),
                };
                match existing.clone() {
                    Existing::Missing => {
                        self.parents(&path, &mut ops, &mut details)?;
                        details.push(format!(
                            "mode {mode:04o}, owner {}, {} bytes",
                            self.describe_owner(owner, group),
                            content.len()
                        ));
                        diff = content_diff(&path, b"", content, secret, &mut details);
                        ops.push(write);
                        Some(Action::Create)
                    }
                    Existing::File {
                        mode: m,
                        uid: u,
                        gid: g,
                    } => {
                        let current = self.host.read(&path)?;
                        if current != *content {
                            diff = content_diff(&path, &current, content, secret, &mut details);
                            self.meta_details((m, u, g), *mode, want, (owner, group), &mut details);
                            ops.push(write);
                            Some(Action::Change)
                        } else if self.meta_details(
                            (m, u, g),
                            *mode,
                            want,
                            (owner, group),
                            &mut details,
                        ) {
                            ops.push(set_metadata(&path, *mode, owner, group));
                            Some(Action::Change)
                        } else {
                            None
                        }
                    }
                    Existing::Symlink { target } => {
                        details.push(format!("replaces a symlink to {}", target.display()));
                        diff = content_diff(&path, b"", content, secret, &mut details);
                        ops.push(write);
                        Some(Action::Change)
                    }
                    Existing::Directory { .. } => return conflict("a directory"),
                    Existing::Other => return conflict("a special file"),
                }
            }
            Kind::Directory {
                mode, owner, group, ..
            } => {
                let want = (
                    self.check_principal(r, owner, false)?,
                    self.check_principal(r, group, true)?,
                );
                match existing.clone() {
                    Existing::Missing => {
                        self.parents(&path, &mut ops, &mut details)?;
                        details.push(format!(
                            "mode {mode:04o}, owner {}",
                            self.describe_owner(owner, group)
                        ));
                        self.planned_dirs.insert(path.clone());
                        ops.push(Op::CreateDir {
                            path: path.clone(),
                            mode: *mode,
                            owner: owner.clone(),
                            group: group.clone(),
                        });
                        Some(Action::Create)
                    }
                    Existing::Directory {
                        mode: m,
                        uid: u,
                        gid: g,
                    } => {
                        if self.meta_details((m, u, g), *mode, want, (owner, group), &mut details) {
                            ops.push(set_metadata(&path, *mode, owner, group));
                            Some(Action::Change)
                        } else {
                            None
                        }
                    }
                    Existing::File { .. } => return conflict("a file"),
                    Existing::Symlink { .. } => return conflict("a symlink"),
                    Existing::Other => return conflict("a special file"),
                }
            }
            Kind::Symlink { target, .. } => {
                let op = Op::Symlink {
                    path: path.clone(),
                    target: target.clone(),
                };
                match existing.clone() {
                    Existing::Missing => {
                        self.parents(&path, &mut ops, &mut details)?;
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
            Kind::Absent { .. } => match &existing {
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
            _ => unreachable!("only file-like resources here"),
        };
        Ok(action.map(|action| {
            let mut c = change(r, action, details, ops);
            c.diff = diff;
            c.secret = secret;
            c.creates = existing == Existing::Missing;
            c
        }))
    }

    /// groupadd, useradd, usermod: on a root that is not the running system, `--root`.
    fn account_change(
        &self,
        r: &Resource,
        action: Action,
        details: Vec<String>,
        mut argv: Vec<String>,
    ) -> Change {
        if !self.host.is_live() {
            argv.insert(1, format!("--root={}", self.host.root().display()));
        }
        let mut c = change(
            r,
            action,
            details,
            vec![Op::Command {
                argv,
                in_root: false,
            }],
        );
        c.creates = action == Action::Create;
        c
    }

    fn account(&mut self, r: &Resource) -> Result<Option<Change>> {
        match &r.kind {
            Kind::Group { name, system, gid } => {
                let groups = system::accounts(self.host, "/etc/group")?;
                match groups.get(name) {
                    Some(g) => {
                        if let Some(want) = gid.filter(|w| *w != g.id) {
                            return Err(Error::Other(format!(
                                "{}: group `{name}` has gid {} on the device, not {want}; changing a gid is not done automatically",
                                r.declared_at, g.id
                            )));
                        }
                        Ok(None)
                    }
                    None => {
                        let mut argv = vec!["groupadd".to_string()];
                        if *system {
                            argv.push("--system".into());
                        }
                        if let Some(g) = gid {
                            argv.extend(["--gid".into(), g.to_string()]);
                        }
                        argv.push(name.clone());
                        let details = vec![format!(
                            "{}group{}",
                            if *system { "system " } else { "" },
                            gid.map(|g| format!(", gid {g}")).unwrap_or_default()
                        )];
                        Ok(Some(self.account_change(r, Action::Create, details, argv)))
                    }
                }
            }
            Kind::User {
                name,
                system,
                uid,
                home,
                shell,
                groups,
                comment,
            } => {
                let users = system::accounts(self.host, "/etc/passwd")?;
                let all_groups = system::accounts(self.host, "/etc/group")?;
                for g in groups {
                    if !all_groups.contains_key(g) && !self.declared_groups.contains(g) {
                        return Err(Error::Other(format!(
                            "{}: user `{name}`: the group `{g}` does not exist on the device; declare it with a `group` resource",
                            r.declared_at
                        )));
                    }
                }
                let mut sorted_groups = groups.clone();
                sorted_groups.sort();
                match users.get(name) {
                    None => {
                        let mut argv = vec!["useradd".to_string()];
                        if *system {
                            argv.push("--system".into());
                        }
                        if let Some(u) = uid {
                            argv.extend(["--uid".into(), u.to_string()]);
                        }
                        argv.push("--user-group".into());
                        if let Some(h) = home {
                            argv.extend([
                                "--home-dir".into(),
                                h.display().to_string(),
                                "--create-home".into(),
                            ]);
                        } else if !system {
                            argv.push("--create-home".into());
                        }
                        if let Some(s) = shell {
                            argv.extend(["--shell".into(), s.clone()]);
                        }
                        if !groups.is_empty() {
                            argv.extend(["--groups".into(), groups.join(",")]);
                        }
                        if let Some(c) = comment {
                            argv.extend(["--comment".into(), c.clone()]);
                        }
                        argv.push(name.clone());
                        let mut details =
                            vec![format!("{}user", if *system { "system " } else { "" })];
                        if let Some(h) = home {
                            details.push(format!("home {}", h.display()));
                        }
                        if let Some(s) = shell {
                            details.push(format!("shell {s}"));
                        }
                        if !groups.is_empty() {
                            details.push(format!("groups {}", groups.join(", ")));
                        }
                        Ok(Some(self.account_change(r, Action::Create, details, argv)))
                    }
                    Some(u) => {
                        if let Some(want) = uid.filter(|w| *w != u.id) {
                            return Err(Error::Other(format!(
                                "{}: user `{name}` has uid {} on the device, not {want}; changing a uid is not done automatically",
                                r.declared_at, u.id
                            )));
                        }
                        let mut argv = vec!["usermod".to_string()];
                        let mut details = Vec::new();
                        if let Some(h) = home.as_ref().filter(|h| Path::new(&u.home) != h.as_path())
                        {
                            details.push(format!("home {} → {}", u.home, h.display()));
                            argv.extend(["--home".into(), h.display().to_string()]);
                        }
                        if let Some(s) = shell.as_ref().filter(|s| **s != u.shell) {
                            details.push(format!("shell {} → {s}", u.shell));
                            argv.extend(["--shell".into(), s.clone()]);
                        }
                        if let Some(c) = comment.as_ref().filter(|c| **c != u.comment) {
                            details.push(format!("comment `{}` → `{c}`", u.comment));
                            argv.extend(["--comment".into(), c.clone()]);
                        }
                        let mut current: Vec<String> = all_groups
                            .values()
                            .filter(|g| g.members.contains(name) && g.id != u.gid)
                            .map(|g| g.name.clone())
                            .collect();
                        current.sort();
                        if current != sorted_groups {
                            details.push(format!(
                                "groups {} → {}",
                                current.join(", "),
                                sorted_groups.join(", ")
                            ));
                            argv.extend(["--groups".into(), sorted_groups.join(",")]);
                        }
                        if details.is_empty() {
                            return Ok(None);
                        }
                        argv.push(name.clone());
                        Ok(Some(self.account_change(r, Action::Change, details, argv)))
                    }
                }
            }
            _ => unreachable!("only accounts here"),
        }
    }

    /// All package changes as one apt transaction, resolved as apt itself would
    /// (`apt-get -s`), plus an `apt-get update` when sources change or lists are stale.
    /// Reads dpkg's status file only: a run with nothing to change runs no apt command.
    fn packages(&mut self, packages: &[&Resource], options: Options) -> Result<()> {
        let sources_change = self.changes.iter().any(|c| c.phase == Phase::Sources);
        let status = if packages.is_empty() {
            HashMap::new()
        } else {
            system::dpkg_status(self.host)?
        };
        let mut install: Vec<(String, Option<String>)> = Vec::new();
        let mut remove = Vec::new();
        let mut recommends = false;
        let mut wanted = Vec::new();
        let mut roles: Vec<String> = Vec::new();
        for r in packages {
            let Kind::Package {
                name,
                state,
                version,
                recommends: rec,
            } = &r.kind
            else {
                continue;
            };
            let current = status.get(name);
            let needs = match state {
                PackageState::Present => match (current, version) {
                    (Some(c), _) if !c.is_installed() => true,
                    (None, _) => true,
                    (Some(c), Some(v)) => !version_matches(&c.version, v),
                    (Some(_), None) => false,
                },
                PackageState::Absent => current.is_some_and(|c| c.is_present()),
            };
            if !needs {
                continue;
            }
            if current.is_some_and(|c| c.held()) {
                self.notes.push(format!(
                    "package {name} is held (apt-mark hold): left as it is ({})",
                    r.declared_at
                ));
                continue;
            }
            if !roles.contains(&r.role) {
                roles.push(r.role.clone());
            }
            match state {
                PackageState::Present => {
                    recommends |= *rec;
                    install.push((name.clone(), version.clone()));
                    wanted.push(match version {
                        Some(v) => format!("install {name} {v}"),
                        None => format!("install {name}"),
                    });
                }
                PackageState::Absent => {
                    remove.push(name.clone());
                    wanted.push(format!("remove {name}"));
                }
            }
        }
        let transaction = !install.is_empty() || !remove.is_empty();
        // Only a run with a transaction looks at the lists' age.
        let lists_age = if transaction {
            system::apt_lists_age(self.host)
        } else {
            None
        };
        let stale = transaction && lists_age.is_none_or(|a| a > options.apt_lists_max_age);
        if sources_change || stale {
            let why = if sources_change {
                "apt sources changed".to_string()
            } else {
                match lists_age {
                    Some(a) => format!("package lists are {} min old", a.as_secs() / 60),
                    None => "there are no package lists".to_string(),
                }
            };
            self.changes.push(run_change(
                "apt",
                "update".into(),
                Phase::AptUpdate,
                vec![why],
                vec![Op::AptUpdate],
            ));
        }
        if !transaction {
            return Ok(());
        }

        // What apt would do, from the current lists.
        let mut details = Vec::new();
        let specs = apt_specs(self.host, &install, &remove, stale || sources_change)?;
        let mut argv = vec!["apt-get", "-s", "-q", "-o", "Debug::NoLocking=1", "install"];
        if !recommends {
            argv.push("--no-install-recommends");
        }
        argv.extend(specs.iter().map(String::as_str));
        let (code, stdout, stderr) = self.host.run_status(&argv, true)?;
        if code == 0 {
            details.extend(simulated(&stdout));
        } else if sources_change || stale {
            details.extend(wanted.iter().cloned());
            details.push(format!(
                "(apt resolves this after the update; with the current lists: {})",
                first_line(&stderr)
            ));
        } else {
            return Err(Error::Command {
                command: format!("apt-get install {} (simulated)", specs.join(" ")),
                status: format!("exit code {code}; nothing was changed"),
                stderr,
            });
        }
        let mut c = run_change(
            "apt",
            "packages".into(),
            Phase::Packages,
            details,
            vec![Op::Apt {
                install,
                remove,
                recommends,
            }],
        );
        c.action = Action::Change;
        c.role = roles.join(", ");
        self.changes.push(c);
        Ok(())
    }

    /// Things this agent created that no role declares any more, deepest path first.
    fn prune(&mut self, prev: &State, declared: &BTreeMap<String, ResourceState>) -> Result<()> {
        let mut gone: Vec<&ResourceState> = prev
            .resources
            .iter()
            .filter(|(id, s)| {
                s.created
                    && ["file", "directory", "symlink"].contains(&s.kind.as_str())
                    && !declared.contains_key(*id)
            })
            .map(|(_, s)| s)
            .collect();
        gone.sort_by(|a, b| b.path.cmp(&a.path));
        for s in gone {
            let existing = self.host.inspect(&s.path)?;
            if let Existing::Directory { .. } = existing {
                // What others put in a directory the agent made is not the agent's to delete.
                if !self.host.dir_is_empty(&s.path)? {
                    self.notes.push(format!(
                        "{} is no longer declared but is not empty: left in place",
                        s.path.display()
                    ));
                    continue;
                }
            }
            if existing != Existing::Missing {
                let p = s.path.display().to_string();
                let phase = if crate::resource::APT_DIRS.iter().any(|d| p.starts_with(d)) {
                    Phase::Sources
                } else {
                    Phase::Files
                };
                self.changes.push(Change {
                    action: Action::Remove,
                    kind: match s.kind.as_str() {
                        "directory" => "directory",
                        "symlink" => "symlink",
                        _ => "file",
                    },
                    subject: p,
                    phase,
                    role: String::new(),
                    declared_at: None,
                    details: vec!["created by fleet-agent and no longer declared".into()],
                    diff: None,
                    secret: false,
                    creates: false,
                    resource_id: Some(format!("path:{}", s.path.display())),
                    ops: vec![Op::Remove {
                        path: s.path.clone(),
                    }],
                });
            }
        }
        Ok(())
    }

    /// Enablement and running state of units, daemon-reload when unit files change, and
    /// handlers: one restart (or reload) per service whose declared files change.
    fn services(&mut self, services: &[&Resource]) -> Result<()> {
        let live = self.host.systemd_running();
        let changed: Vec<(String, Phase)> = self
            .changes
            .iter()
            .filter(|c| c.kind != "apt")
            .map(|c| (c.subject.clone(), c.phase))
            .collect();
        let unit_files_change = changed.iter().any(|(p, _)| is_unit_file(p));
        if unit_files_change && live {
            self.changes.push(run_change(
                "systemd",
                "daemon-reload".into(),
                Phase::DaemonReload,
                vec!["unit files changed".into()],
                vec![Op::Command {
                    argv: vec!["systemctl".into(), "daemon-reload".into()],
                    in_root: false,
                }],
            ));
        }
        let packages_change = self.changes.iter().any(|c| c.phase == Phase::Packages);
        for r in services {
            let Kind::Service {
                unit,
                enabled,
                running,
                restart_on,
                reload_on,
            } = &r.kind
            else {
                continue;
            };
            let mut details = Vec::new();
            let mut ops = Vec::new();
            let root = (!live).then(|| format!("--root={}", self.host.root().display()));
            let systemctl = |verb: &str| {
                let mut argv = vec!["systemctl".to_string()];
                argv.extend(root.clone());
                argv.extend([verb.to_string(), unit.clone()]);
                Op::Command {
                    argv,
                    in_root: false,
                }
            };
            if let Some(want) = enabled {
                let now = system::unit_enablement(self.host, unit)?;
                // A unit that a package or a file of this run delivers is not there yet.
                let arriving = now == "not-found"
                    && (packages_change
                        || changed
                            .iter()
                            .any(|(p, _)| p.ends_with(&format!("/{unit}"))));
                if now == "not-found" && !arriving {
                    return Err(Error::Other(format!(
                        "{}: there is no unit {unit} on the device",
                        r.declared_at
                    )));
                }
                let wanted = match want {
                    Enablement::Enabled => "enabled",
                    Enablement::Disabled => "disabled",
                    Enablement::Masked => "masked",
                };
                let matches = match want {
                    Enablement::Enabled => [
                        "enabled",
                        "enabled-runtime",
                        "static",
                        "alias",
                        "indirect",
                        "generated",
                    ]
                    .contains(&now.as_str()),
                    Enablement::Disabled => {
                        ["disabled", "static", "indirect"].contains(&now.as_str())
                    }
                    Enablement::Masked => now == "masked" || now == "masked-runtime",
                };
                if !matches {
                    details.push(format!(
                        "{} → {wanted}",
                        if arriving { "not installed yet" } else { &now }
                    ));
                    if now.starts_with("masked") && *want != Enablement::Masked {
                        ops.push(systemctl("unmask"));
                    }
                    ops.push(systemctl(match want {
                        Enablement::Enabled => "enable",
                        Enablement::Disabled => "disable",
                        Enablement::Masked => "mask",
                    }));
                }
            }
            let mut starts = false;
            if let Some(run) = running {
                if live {
                    let active = system::unit_activity(self.host, unit)?;
                    let is_active =
                        active == "active" || active == "activating" || active == "reloading";
                    if *run && !is_active {
                        details.push(format!("{active} → started"));
                        ops.push(systemctl("start"));
                        starts = true;
                    } else if !*run && is_active {
                        details.push(format!("{active} → stopped"));
                        ops.push(systemctl("stop"));
                    }
                } else {
                    self.notes.push(format!(
                        "{unit}: {} skipped: systemd is not running here",
                        if *run { "start" } else { "stop" }
                    ));
                }
            }
            if !ops.is_empty() {
                self.changes.push(change(r, Action::Change, details, ops));
            }
            // Handlers: the service's own unit file or drop-ins count as its files.
            let restart_by: Vec<&String> = changed
                .iter()
                .map(|(p, _)| p)
                .filter(|p| {
                    restart_on.iter().any(|f| Path::new(p) == f) || is_unit_file_of(p, unit)
                })
                .collect();
            let reload_by: Vec<&String> = changed
                .iter()
                .map(|(p, _)| p)
                .filter(|p| reload_on.iter().any(|f| Path::new(p) == f))
                .collect();
            let stopped = *running == Some(false);
            if starts || stopped || (restart_by.is_empty() && reload_by.is_empty()) {
                continue;
            }
            if !live {
                self.notes.push(format!(
                    "{unit}: restart skipped: systemd is not running here"
                ));
                continue;
            }
            let (verb, by) = if restart_by.is_empty() {
                ("reload-or-restart", reload_by)
            } else {
                ("try-restart", restart_by)
            };
            let because = by.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ");
            let mut c = change(
                r,
                Action::Run,
                vec![format!("because {because} changed")],
                vec![systemctl(verb)],
            );
            c.kind = if verb == "try-restart" {
                "restart"
            } else {
                "reload"
            };
            c.phase = Phase::Handlers;
            self.changes.push(c);
        }
        Ok(())
    }
}

const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system/",
    "/usr/lib/systemd/system/",
    "/lib/systemd/system/",
    "/run/systemd/system/",
];

fn is_unit_file(path: &str) -> bool {
    UNIT_DIRS.iter().any(|d| path.starts_with(d))
}

/// The unit file of `unit` or one of its drop-ins.
fn is_unit_file_of(path: &str, unit: &str) -> bool {
    UNIT_DIRS.iter().any(|d| {
        path.strip_prefix(d)
            .is_some_and(|rest| rest == unit || rest.starts_with(&format!("{unit}.d/")))
    })
}

fn set_metadata(path: &Path, mode: u32, owner: &Principal, group: &Principal) -> Op {
    Op::SetMetadata {
        path: path.to_path_buf(),
        mode,
        owner: owner.clone(),
        group: group.clone(),
    }
}

/// An exact version, or a glob such as `1.2*`.
pub fn version_matches(installed: &str, wanted: &str) -> bool {
    if wanted.contains(['*', '?', '[']) {
        glob_match::glob_match(wanted, installed)
    } else {
        installed == wanted
    }
}

/// The apt-get arguments: `name`, `name=version` (globs resolved against the lists),
/// `name-` for removal. `lenient`: a glob that matches nothing yet stays unresolved.
fn apt_specs(
    host: &Host,
    install: &[(String, Option<String>)],
    remove: &[String],
    lenient: bool,
) -> Result<Vec<String>> {
    let mut specs = Vec::new();
    for (name, version) in install {
        match version {
            None => specs.push(name.clone()),
            Some(v) if v.contains(['*', '?', '[']) => match resolve_glob(host, name, v)? {
                Some(exact) => specs.push(format!("{name}={exact}")),
                None if lenient => specs.push(name.clone()),
                None => {
                    return Err(Error::Other(format!(
                        "no version of {name} matching `{v}` is in the package lists (apt-cache madison {name}); nothing was changed"
                    )))
                }
            },
            Some(v) => specs.push(format!("{name}={v}")),
        }
    }
    specs.extend(remove.iter().map(|n| format!("{n}-")));
    Ok(specs)
}

pub fn resolve_glob(host: &Host, name: &str, glob: &str) -> Result<Option<String>> {
    Ok(system::candidate_versions(host, name)?
        .into_iter()
        .find(|v| version_matches(v, glob)))
}

/// `apt-get -s` lines as plan details: install, upgrade, remove.
fn simulated(stdout: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Inst", name, old, new, ..] if old.starts_with('[') => out.push(format!(
                "upgrade {name} {} → {}",
                old.trim_matches(['[', ']']),
                new.trim_start_matches('(')
            )),
            ["Inst", name, new, ..] => {
                out.push(format!("install {name} {}", new.trim_start_matches('(')))
            }
            ["Remv", name, ver, ..] => {
                out.push(format!("remove {name} {}", ver.trim_matches(['[', ']'])))
            }
            ["Remv", name] => out.push(format!("remove {name}")),
            _ => {}
        }
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or_else(|| s.lines().next())
        .unwrap_or("")
        .to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulation_lines_become_details() {
        let out = "NOTE: This is only a simulation!\nInst fleet-test-dep (1.0 local [all])\nInst fleet-test-hello [1.0] (1.1 local [all])\nConf fleet-test-dep (1.0 local [all])\nRemv old-thing [2.3]\n";
        assert_eq!(
            simulated(out),
            [
                "install fleet-test-dep 1.0",
                "upgrade fleet-test-hello 1.0 → 1.1",
                "remove old-thing 2.3"
            ]
        );
    }

    #[test]
    fn versions_match_exactly_or_by_glob() {
        assert!(version_matches("1.1-2", "1.1-2"));
        assert!(!version_matches("1.1-2", "1.1"));
        assert!(version_matches("1.1-2", "1.1*"));
        assert!(!version_matches("1.10-1", "1.1-*"));
    }

    #[test]
    fn unit_files_and_drop_ins_belong_to_their_unit() {
        assert!(is_unit_file_of(
            "/etc/systemd/system/web.service",
            "web.service"
        ));
        assert!(is_unit_file_of(
            "/etc/systemd/system/web.service.d/port.conf",
            "web.service"
        ));
        assert!(!is_unit_file_of(
            "/etc/systemd/system/web.service.d/port.conf",
            "api.service"
        ));
        assert!(!is_unit_file_of("/etc/web.service", "web.service"));
    }
}
