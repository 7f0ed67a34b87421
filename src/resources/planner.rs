//! The planner: compares a desired state with the machine, kind by kind and phase by
//! phase, into a complete [`Plan`] before anything changes. It reads the machine only
//! (through the `Host`); a failed read is an error, never "no change". Things the agent
//! created that no role declares any more are pruned here too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::host::{Existing, Host};
use crate::plan::{Change, ChangeAction, ChangeKind, Op, Plan, ResourceState, RunPhase};
use crate::resources::{
    absent, command, directory, download, file, group, package, path_phase, service, symlink, user,
    DesiredState, Kind, Resource,
};

/// Plan settings from the fleet repository and the agent's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) prune: bool,
    /// Package lists older than this are refreshed before a package transaction.
    pub(crate) apt_lists_max_age: Duration,
    /// The agent's state directory (a device path): downloads wait in `downloads/`.
    pub(crate) state_dir: PathBuf,
    /// Connect and read timeout of downloads.
    pub(crate) http_timeout: Duration,
    /// The root filesystem is managed by A/B OS updates (an image is declared for the
    /// device): kernel, bootloader and firmware packages are refused unless allowed.
    pub(crate) ab_managed: bool,
}

impl Options {
    /// Where downloads wait: partial ones (resumed), and verified ones until placed.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("downloads")
    }
}

/// What planning knows while it goes: the changes so far, notes, and what earlier
/// changes will have made (directories, users, groups).
pub(crate) struct Planner<'h> {
    pub(super) host: &'h Host,
    pub(super) options: &'h Options,
    /// What the last run on this root filesystem recorded.
    pub(super) previous: Option<&'h Previous>,
    /// Downloads known to match, with their stamps (recorded in the state).
    pub(super) stamps: HashMap<String, String>,
    pub(super) changes: Vec<Change>,
    pub(super) notes: Vec<String>,
    /// Directories that changes earlier in the plan create.
    pub(super) planned_dirs: HashSet<PathBuf>,
    pub(super) declared_users: HashSet<String>,
    pub(super) declared_groups: HashSet<String>,
}

/// What the last run on this root filesystem recorded of each resource.
pub(crate) type Previous = BTreeMap<String, ResourceState>;

/// Computes the plan for a desired state. `previous` is what the last run on this root
/// filesystem recorded (None when unknown: then nothing is pruned).
pub(crate) fn plan(
    host: &Host,
    desired: &DesiredState,
    previous: Option<&Previous>,
    options: &Options,
    commit: Option<String>,
) -> Result<Plan> {
    let mut p = Planner::new(host, desired, options, previous);
    let mut resources = BTreeMap::new();
    let by_phase = |phase: RunPhase| {
        desired
            .resources
            .iter()
            .filter(move |r| r.kind.phase() == phase)
    };
    for phase in [
        RunPhase::Sources,
        RunPhase::Groups,
        RunPhase::Users,
        RunPhase::Files,
    ] {
        for r in by_phase(phase) {
            let created_before = previous
                .and_then(|prev| prev.get(&r.kind.id()))
                .is_some_and(|s| s.created);
            let change = p.one(r)?;
            if change.is_none() && crate::logging::very_verbose() {
                log::debug!(
                    "unchanged: {} {} ({}, {}): {}",
                    r.kind.name(),
                    r.kind.subject(),
                    r.role,
                    r.declared_at,
                    unchanged_because(&r.kind)
                );
            }
            let creates = change.as_ref().is_some_and(|c| c.creates);
            let mut state = resource_state(r, created_before || creates);
            state.stamp = p.stamps.remove(&r.kind.id());
            resources.insert(r.kind.id(), state);
            p.changes.extend(change);
        }
    }
    let packages: Vec<&Resource> = by_phase(RunPhase::Packages).collect();
    let commands: Vec<&Resource> = by_phase(RunPhase::Commands).collect();
    for r in packages.iter().chain(&commands) {
        resources.insert(r.kind.id(), resource_state(r, false));
    }
    // Pruning comes first: an apt source that is no longer declared is removed in the
    // sources phase, and the packages phase must know it (the lists are refreshed).
    if let (Some(prev), true) = (previous, options.prune) {
        // What is left in place stays recorded, so that a later run prunes it once it
        // can (the foreign file is gone), instead of forgetting it.
        for (id, kept) in p.prune(prev, &resources)? {
            resources.insert(id, kept);
        }
    }
    package::plan_phase(&packages, &mut p, options)?;
    command::plan_phase(&commands, &mut p)?;
    let services: Vec<&Resource> = by_phase(RunPhase::Services).collect();
    for r in &services {
        resources.insert(r.kind.id(), resource_state(r, false));
    }
    service::plan_phase(&services, &mut p)?;

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

/// Why a resource that plans no change is left as it is, for `-vv`.
fn unchanged_because(kind: &Kind) -> String {
    match kind {
        Kind::File(f) => format!(
            "its content ({} bytes), mode {:04o} and owner {}:{} are as declared",
            f.content.len(),
            f.mode,
            f.owner,
            f.group
        ),
        Kind::Directory(d) => format!(
            "it is a directory with mode {:04o} and owner {}:{}",
            d.mode, d.owner, d.group
        ),
        Kind::Symlink(l) => format!("it links to {}", l.target.display()),
        Kind::Absent(_) => "nothing is there".into(),
        Kind::Group(_) => "the group exists (a gid is never changed)".into(),
        Kind::User(_) => "the user exists with the declared home, shell, comment and groups".into(),
        Kind::Download(d) => format!("it matches sha256 {}", &d.sha256[..12]),
        Kind::Package(_) | Kind::Service(_) | Kind::Command(_) => "planned as a phase".into(),
    }
}

fn resource_state(r: &Resource, created: bool) -> ResourceState {
    ResourceState {
        kind: r.kind.name().into(),
        path: PathBuf::from(r.kind.subject()),
        digest: r.kind.digest(),
        created,
        secret: matches!(&r.kind, Kind::File(f) if f.secret),
        stamp: None,
        pending: false,
    }
}

impl<'h> Planner<'h> {
    fn new(
        host: &'h Host,
        desired: &DesiredState,
        options: &'h Options,
        previous: Option<&'h Previous>,
    ) -> Planner<'h> {
        let mut p = Planner {
            host,
            options,
            previous,
            stamps: HashMap::new(),
            changes: Vec::new(),
            notes: Vec::new(),
            planned_dirs: HashSet::new(),
            declared_users: HashSet::new(),
            declared_groups: HashSet::new(),
        };
        for r in &desired.resources {
            match &r.kind {
                Kind::User(u) => {
                    p.declared_users.insert(u.name.clone());
                    // useradd makes the user's own group.
                    p.declared_groups.insert(u.name.clone());
                }
                Kind::Group(g) => {
                    p.declared_groups.insert(g.name.clone());
                }
                _ => {}
            }
        }
        p
    }

    /// The change of a resource planned on its own (not packages, not services).
    fn one(&mut self, r: &Resource) -> Result<Option<Change>> {
        match &r.kind {
            Kind::File(f) => file::plan(f, r, self),
            Kind::Directory(d) => directory::plan(d, r, self),
            Kind::Symlink(l) => symlink::plan(l, r, self),
            Kind::Absent(a) => absent::plan(a, r, self),
            Kind::Group(g) => group::plan(g, r, self),
            Kind::User(u) => user::plan(u, r, self),
            Kind::Download(d) => download::plan(d, r, self),
            Kind::Package(_) | Kind::Service(_) | Kind::Command(_) => {
                unreachable!("planned as a phase")
            }
        }
    }

    /// Things this agent created that no role declares any more, deepest path first.
    /// Returns the records of what is left in place (a directory with foreign files).
    fn prune(&mut self, prev: &Previous, declared: &Previous) -> Result<Previous> {
        let mut gone: Vec<(&String, &ResourceState)> = prev
            .iter()
            .filter(|(id, s)| {
                s.created
                    && ["file", "directory", "symlink", "download"].contains(&s.kind.as_str())
                    && !declared.contains_key(*id)
            })
            .collect();
        gone.sort_by(|a, b| b.1.path.cmp(&a.1.path));
        // Paths this prune removes: a directory whose entries all go is empty by then.
        let mut removed: HashSet<PathBuf> = HashSet::new();
        let mut kept = Previous::new();
        for (id, s) in gone {
            let existing = self.host.inspect(&s.path)?;
            // A download's directory is managed whole, and removed whole.
            if let (Existing::Directory { .. }, false) = (&existing, s.kind == "download") {
                // What others put in a directory the agent made is not the agent's to delete.
                let entries = self.host.dir_entries(&s.path)?;
                if !entries.iter().all(|e| removed.contains(e)) {
                    self.notes.push(format!(
                        "{} is no longer declared but is not empty: left in place",
                        s.path.display()
                    ));
                    kept.insert(id.clone(), s.clone());
                    continue;
                }
            }
            if existing == Existing::Missing {
                continue;
            }
            removed.insert(s.path.clone());
            self.changes.push(Change {
                action: ChangeAction::Remove,
                kind: match s.kind.as_str() {
                    "directory" => ChangeKind::Directory,
                    "symlink" => ChangeKind::Symlink,
                    "download" => ChangeKind::Download,
                    _ => ChangeKind::File,
                },
                subject: s.path.display().to_string(),
                phase: path_phase(&s.path),
                role: String::new(),
                declared_at: None,
                details: vec!["created by fleet-agent and no longer declared".into()],
                diff: None,
                secret: false,
                creates: false,
                resource_id: Some(format!("path:{}", s.path.display())),
                disruptive: false,
                triggered_by: vec![],
                ops: vec![Op::Remove {
                    path: s.path.clone(),
                }],
            });
        }
        Ok(kept)
    }
}
