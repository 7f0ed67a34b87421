//! Resources: what a role can declare. One module per kind, each owning its spec (the
//! YAML schema), its validation and expansion (spec → typed value, with templates
//! rendered by the fleet loader through [`Expand`]) and its planning (typed value + the
//! machine → changes). A closed [`Kind`] enum dispatches with exhaustive matches: adding
//! a kind is one module, one variant of [`Spec`] and [`Kind`], and one arm per match
//! here and in `planner.rs` (docs/architecture.md walks through one).
//!
//! Path kinds (file, directory, symlink, absent, download) plan one at a time; packages
//! plan as one apt transaction, commands after every file, services after the commands,
//! each as a phase. An `apt_source` expands into two files (its key and its .sources
//! file) and plans as them.

use std::path::Path;

use crate::digest::Sha256;
use marked_yaml::{Span, Spanned};
use serde::{Deserialize, Serialize};

use crate::content::Content;
use crate::digest::hex;
use crate::error::{Pos, Result};
use crate::plan::{Change, ChangeAction, ChangeKind, Op, RunPhase};
pub(crate) use download::stamp;

mod absent;
mod apt_source;
mod checks;
pub(crate) mod command;
mod directory;
mod download;
mod file;
mod group;
mod package;
mod path;
mod planner;
mod service;
mod symlink;
mod user;

pub(crate) use checks::Reserved;
pub(crate) use package::PackageState;
#[cfg(test)]
pub(crate) use planner::Previous;
pub(crate) use planner::{plan, Options};

/// Everything one device should be, computed from one commit of the fleet repository.
#[derive(Debug, Clone)]
pub(crate) struct DesiredState {
    pub(crate) device_id: String,
    pub(crate) device_type: Option<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) roles: Vec<String>,
    pub(crate) resources: Vec<Resource>,
}

/// A typed resource and where it was declared.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) role: String,
    pub(crate) declared_at: Pos,
    pub(crate) kind: Kind,
    /// `disruptive: true`: its changes wait for the maintenance window and the hold file.
    pub(crate) disruptive: bool,
}

impl Resource {
    /// A change of this resource.
    pub(crate) fn change(
        &self,
        action: ChangeAction,
        details: Vec<String>,
        ops: Vec<Op>,
    ) -> Change {
        Change {
            action,
            kind: self.kind.change_kind(),
            subject: self.kind.subject(),
            phase: self.kind.phase(),
            role: self.role.clone(),
            declared_at: Some(self.declared_at.to_string()),
            details,
            diff: None,
            secret: false,
            creates: false,
            resource_id: Some(self.kind.id()),
            disruptive: self.disruptive,
            triggered_by: vec![],
            ops,
        }
    }
}

/// A resource as written in role.yml (`- KIND: {...}`); paths, content, owners and
/// targets are templates.
// Parsed once per role and kept only while loading: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Spec {
    File(file::Spec),
    Directory(directory::Spec),
    Symlink(symlink::Spec),
    Absent(absent::Spec),
    #[serde(rename = "apt_source")]
    AptSource(apt_source::Spec),
    Package(package::Spec),
    Service(service::Spec),
    User(user::Spec),
    Group(group::Spec),
    Command(command::Spec),
    Download(download::Spec),
}

/// What expanding a spec needs from the fleet loader: templates rendered in the role's
/// context and the role's own files. Problems are recorded here, with positions in
/// [`Expand::file`]; a method that records one returns None.
pub(crate) trait Expand {
    /// The role's name.
    fn role(&self) -> &str;
    /// A string of role.yml rendered as a template.
    fn text(&mut self, s: &Spanned<String>) -> Option<String>;
    /// `files/NAME` of the role, as it is: a reference, read as a stream.
    fn source(&mut self, name: &Spanned<String>) -> Result<Option<Content>>;
    /// `templates/NAME` of the role, rendered.
    fn template(&mut self, name: &Spanned<String>) -> Result<Option<Vec<u8>>>;
    /// Records a problem at a position of role.yml.
    fn problem(&mut self, span: &Span, message: String);
    /// How many problems have been recorded so far.
    fn problems(&self) -> usize;
    /// The agent's own files, which no resource may touch.
    fn reserved(&self) -> &Reserved;
    /// The position of a value of role.yml.
    fn pos(&self, span: &Span) -> Pos;
    /// How many device-held secrets templates have read so far: a value whose rendering
    /// changed it carries one.
    fn secrets_read(&self) -> usize;
}

impl Spec {
    /// The typed resources of this spec (an apt source is two files), or None when a
    /// problem was recorded.
    pub(crate) fn expand(&self, x: &mut dyn Expand) -> Result<Option<Vec<Kind>>> {
        let before = x.problems();
        let kinds = match self {
            Spec::File(s) => file::expand(s, x)?.map(|k| vec![Kind::File(k)]),
            Spec::Directory(s) => directory::expand(s, x).map(|k| vec![Kind::Directory(k)]),
            Spec::Symlink(s) => symlink::expand(s, x).map(|k| vec![Kind::Symlink(k)]),
            Spec::Absent(s) => absent::expand(s, x).map(|k| vec![Kind::Absent(k)]),
            Spec::AptSource(s) => {
                apt_source::expand(s, x)?.map(|files| files.into_iter().map(Kind::File).collect())
            }
            Spec::Package(s) => package::expand(s, x).map(|k| vec![Kind::Package(k)]),
            Spec::Service(s) => service::expand(s, x).map(|k| vec![Kind::Service(k)]),
            Spec::User(s) => user::expand(s, x).map(|k| vec![Kind::User(k)]),
            Spec::Group(s) => group::expand(s, x).map(|k| vec![Kind::Group(k)]),
            Spec::Command(s) => command::expand(s, x).map(|k| vec![Kind::Command(k)]),
            Spec::Download(s) => download::expand(s, x).map(|k| vec![Kind::Download(k)]),
        };
        Ok(kinds.filter(|_| x.problems() == before))
    }
}

/// A typed resource. Serialized (tagged by kind) only for the digests of the kinds that
/// are not paths.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Kind {
    File(file::File),
    Directory(directory::Directory),
    Symlink(symlink::Symlink),
    Absent(absent::Absent),
    Package(package::Package),
    Service(service::Service),
    Group(group::Group),
    User(user::User),
    Command(command::Command),
    Download(download::Download),
}

/// Where apt looks for sources and keys: files there are planned in the sources phase.
pub(crate) const APT_DIRS: [&str; 2] = ["/etc/apt/sources.list.d/", "/etc/apt/keyrings/"];

/// The phase of a path: the sources phase for apt's sources and keys, else files.
pub(crate) fn path_phase(path: &Path) -> RunPhase {
    let p = path.display().to_string();
    if APT_DIRS.iter().any(|d| p.starts_with(d)) {
        RunPhase::Sources
    } else {
        RunPhase::Files
    }
}

impl Kind {
    /// The resource's identity: two resources with the same id conflict.
    pub(crate) fn id(&self) -> String {
        match self {
            Kind::Package(p) => format!("package:{}", p.name),
            Kind::Service(s) => format!("service:{}", s.unit),
            Kind::Group(g) => format!("group:{}", g.name),
            Kind::User(u) => format!("user:{}", u.name),
            Kind::Command(c) => format!("command:{}", c.name),
            Kind::File(_)
            | Kind::Directory(_)
            | Kind::Symlink(_)
            | Kind::Absent(_)
            | Kind::Download(_) => format!("path:{}", self.subject()),
        }
    }

    /// The path of a path kind.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Kind::File(f) => Some(&f.path),
            Kind::Directory(d) => Some(&d.path),
            Kind::Symlink(l) => Some(&l.path),
            Kind::Absent(a) => Some(&a.path),
            Kind::Download(d) => Some(&d.path),
            Kind::Package(_)
            | Kind::Service(_)
            | Kind::Group(_)
            | Kind::User(_)
            | Kind::Command(_) => None,
        }
    }

    /// What the resource is about, for people: a path, a package, a unit, a name.
    pub(crate) fn subject(&self) -> String {
        match self {
            Kind::Package(p) => p.name.clone(),
            Kind::Service(s) => s.unit.clone(),
            Kind::Group(g) => g.name.clone(),
            Kind::User(u) => u.name.clone(),
            Kind::Command(c) => c.name.clone(),
            Kind::File(_)
            | Kind::Directory(_)
            | Kind::Symlink(_)
            | Kind::Absent(_)
            | Kind::Download(_) => self.path().expect("a path kind").display().to_string(),
        }
    }

    /// The kind's name as role.yml spells it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::File(_) => "file",
            Kind::Directory(_) => "directory",
            Kind::Symlink(_) => "symlink",
            Kind::Absent(_) => "absent",
            Kind::Package(_) => "package",
            Kind::Service(_) => "service",
            Kind::Group(_) => "group",
            Kind::User(_) => "user",
            Kind::Command(_) => "command",
            Kind::Download(_) => "download",
        }
    }

    /// What a change of this resource is called in plans and logs.
    pub(crate) fn change_kind(&self) -> ChangeKind {
        match self {
            Kind::File(_) => ChangeKind::File,
            Kind::Directory(_) => ChangeKind::Directory,
            Kind::Symlink(_) => ChangeKind::Symlink,
            Kind::Absent(_) => ChangeKind::Path,
            Kind::Package(_) => ChangeKind::Apt,
            Kind::Service(_) => ChangeKind::Service,
            Kind::Group(_) => ChangeKind::Group,
            Kind::User(_) => ChangeKind::User,
            Kind::Command(_) => ChangeKind::Command,
            Kind::Download(_) => ChangeKind::Download,
        }
    }

    pub(crate) fn phase(&self) -> RunPhase {
        match self {
            Kind::Package(_) => RunPhase::Packages,
            Kind::Service(_) => RunPhase::Services,
            Kind::Group(_) => RunPhase::Groups,
            Kind::User(_) => RunPhase::Users,
            Kind::Command(_) => RunPhase::Commands,
            Kind::File(_)
            | Kind::Directory(_)
            | Kind::Symlink(_)
            | Kind::Absent(_)
            | Kind::Download(_) => path_phase(self.path().expect("a path kind")),
        }
    }

    /// A digest of everything this resource declares, recorded in the state.
    pub(crate) fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.name());
        h.update([0]);
        h.update(self.subject());
        h.update([0]);
        match self {
            Kind::File(f) => f.digest_into(&mut h),
            Kind::Directory(d) => d.digest_into(&mut h),
            Kind::Symlink(l) => h.update(l.target.as_os_str().as_encoded_bytes()),
            Kind::Absent(_) => {}
            Kind::Package(_)
            | Kind::Service(_)
            | Kind::Group(_)
            | Kind::User(_)
            | Kind::Command(_)
            | Kind::Download(_) => h.update(serde_json::to_vec(self).expect("resources serialize")),
        }
        hex(&h.finalize())
    }
}
