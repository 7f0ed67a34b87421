//! The desired state: typed resources, each with where it was declared. This is the
//! value that `load` produces and `plan` compares against the machine. New kinds
//! (apt sources, packages, services, users) are new variants here and a new phase in
//! the run order; plan and apply dispatch on the kind.

use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Pos;

/// Everything one device should be, computed from one commit of the fleet repository.
#[derive(Debug, Clone, Serialize)]
pub struct DesiredState {
    pub device_id: String,
    pub device_type: Option<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub resources: Vec<Resource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub role: String,
    #[serde(serialize_with = "ser_pos")]
    pub declared_at: Pos,
    pub kind: Kind,
}

fn ser_pos<S: serde::Serializer>(pos: &Pos, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&pos.to_string())
}

/// A user or group, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Principal {
    Name(String),
    Id(u32),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Name(n) => f.write_str(n),
            Principal::Id(i) => write!(f, "{i}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Present,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enablement {
    Enabled,
    Disabled,
    Masked,
}

/// The run order: a run applies every change of one phase before the next phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// apt sources and their signing keys (files under /etc/apt).
    Sources,
    AptUpdate,
    Packages,
    Groups,
    Users,
    Files,
    DaemonReload,
    Services,
    /// Restarts and reloads of services whose files changed.
    Handlers,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    File {
        path: PathBuf,
        #[serde(skip)]
        content: Vec<u8>,
        mode: u32,
        owner: Principal,
        group: Principal,
        /// Never printed, diffed or logged.
        secret: bool,
    },
    Directory {
        path: PathBuf,
        mode: u32,
        owner: Principal,
        group: Principal,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    Absent {
        path: PathBuf,
    },
    Package {
        name: String,
        state: PackageState,
        /// An exact version or a glob (`1.2.*`).
        version: Option<String>,
        recommends: bool,
    },
    Service {
        unit: String,
        enabled: Option<Enablement>,
        /// Some(true): started, Some(false): stopped.
        running: Option<bool>,
        restart_on: Vec<PathBuf>,
        reload_on: Vec<PathBuf>,
    },
    Group {
        name: String,
        system: bool,
        gid: Option<u32>,
    },
    User {
        name: String,
        system: bool,
        uid: Option<u32>,
        home: Option<PathBuf>,
        shell: Option<String>,
        groups: Vec<String>,
        comment: Option<String>,
    },
}

/// Where apt looks for sources and keys: files there are planned in the sources phase.
pub const APT_DIRS: [&str; 2] = ["/etc/apt/sources.list.d/", "/etc/apt/keyrings/"];

impl Kind {
    /// The resource's identity: two resources with the same id conflict.
    pub fn id(&self) -> String {
        match self {
            Kind::Package { name, .. } => format!("package:{name}"),
            Kind::Service { unit, .. } => format!("service:{unit}"),
            Kind::Group { name, .. } => format!("group:{name}"),
            Kind::User { name, .. } => format!("user:{name}"),
            _ => format!("path:{}", self.subject()),
        }
    }

    /// The path of a file-like resource.
    pub fn path(&self) -> Option<&PathBuf> {
        match self {
            Kind::File { path, .. }
            | Kind::Directory { path, .. }
            | Kind::Symlink { path, .. }
            | Kind::Absent { path } => Some(path),
            _ => None,
        }
    }

    /// What the resource is about, for people: a path, a package, a unit, a name.
    pub fn subject(&self) -> String {
        match self {
            Kind::Package { name, .. } | Kind::Group { name, .. } | Kind::User { name, .. } => {
                name.clone()
            }
            Kind::Service { unit, .. } => unit.clone(),
            _ => self.path().expect("file-like").display().to_string(),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Directory { .. } => "directory",
            Kind::Symlink { .. } => "symlink",
            Kind::Absent { .. } => "absent",
            Kind::Package { .. } => "package",
            Kind::Service { .. } => "service",
            Kind::Group { .. } => "group",
            Kind::User { .. } => "user",
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Kind::Package { .. } => Phase::Packages,
            Kind::Service { .. } => Phase::Services,
            Kind::Group { .. } => Phase::Groups,
            Kind::User { .. } => Phase::Users,
            _ => {
                let p = self.subject();
                if APT_DIRS.iter().any(|d| p.starts_with(d)) {
                    Phase::Sources
                } else {
                    Phase::Files
                }
            }
        }
    }

    /// A digest of everything this resource declares, recorded in the state.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.kind_name());
        h.update([0]);
        h.update(self.subject());
        h.update([0]);
        match self {
            Kind::File {
                content,
                mode,
                owner,
                group,
                ..
            } => {
                h.update(sha256_hex(content));
                h.update(format!("{mode:o}:{owner}:{group}"));
            }
            Kind::Directory {
                mode, owner, group, ..
            } => h.update(format!("{mode:o}:{owner}:{group}")),
            Kind::Symlink { target, .. } => h.update(target.as_os_str().as_encoded_bytes()),
            Kind::Absent { .. } => {}
            other => h.update(serde_json::to_vec(other).expect("resources serialize")),
        }
        hex(&h.finalize())
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
