//! The device facts a run report carries: what a fleet-wide plan (`plan --all`, in
//! src/fleetwide/) needs to plan this device without reaching it. Every managed path as
//! it is after the run (type, mode, owner, size and the sha256 of a file's content; a
//! `secret` file's digest never leaves the device), dpkg's record of each declared
//! package, each declared service as a converged run left it, and /etc/passwd and
//! /etc/group (no password hashes: those are in /etc/shadow, never read). Read through
//! the `Host` seam only, after the run; a path that cannot be read is recorded as such.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::{apt, Existing, Host};
use crate::plan::ResourceState;

/// What the device was when the run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct Facts {
    /// Whether systemd manages the system (starts and restarts are real changes there).
    pub(crate) systemd: bool,
    /// Every path a resource manages (file, directory, symlink, absent).
    pub(crate) paths: BTreeMap<String, PathFact>,
    /// Every declared package: dpkg's record, or null when dpkg knows nothing of it.
    pub(crate) packages: BTreeMap<String, Option<PackageFact>>,
    /// Every declared service: as a converged run left it (null: unknown).
    pub(crate) services: BTreeMap<String, ServiceFact>,
    /// The accounts databases as they are (None: missing or unreadable).
    pub(crate) passwd: Option<String>,
    pub(crate) group: Option<String>,
    /// What the state records of each declared resource (what pruning looks at).
    pub(crate) resources: BTreeMap<String, ResourceFact>,
}

/// What is at a managed path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum PathFact {
    Missing,
    File {
        /// Octal, as role.yml writes it ("0644").
        mode: String,
        uid: u32,
        gid: u32,
        /// None for a `secret` file (nothing of its content leaves the device).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// None for a `secret` file.
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        secret: bool,
    },
    Directory {
        mode: String,
        uid: u32,
        gid: u32,
    },
    Symlink {
        target: String,
    },
    /// A device node, a socket, a fifo.
    Other,
    /// The path could not be read (the message says why).
    Unreadable {
        error: String,
    },
}

/// dpkg's record of a package (/var/lib/dpkg/status).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PackageFact {
    pub(crate) version: String,
    /// install, hold, deinstall, purge.
    pub(crate) want: String,
    /// installed, config-files, half-installed, ...
    pub(crate) state: String,
}

/// A service's enablement (`systemctl is-enabled` words) and activity (`is-active`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ServiceFact {
    pub(crate) enabled: Option<String>,
    pub(crate) active: Option<String>,
}

/// A resource as the state records it, without its declaration digest (which would
/// carry a hash of a secret's content).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ResourceFact {
    pub(crate) kind: String,
    pub(crate) path: String,
    pub(crate) created: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) secret: bool,
}

const PATH_KINDS: [&str; 4] = ["file", "directory", "symlink", "absent"];

/// The facts of a device after a run. `resources` is the state's record; `services`
/// what a converged run declared of its services (None: the run did not converge).
pub(crate) fn gather(
    host: &Host,
    resources: &BTreeMap<String, ResourceState>,
    services: Option<BTreeMap<String, ServiceFact>>,
) -> Facts {
    let mut facts = Facts {
        systemd: host.systemd_running(),
        ..Facts::default()
    };
    let mut packages = Vec::new();
    for (id, r) in resources {
        facts.resources.insert(
            id.clone(),
            ResourceFact {
                kind: r.kind.clone(),
                path: r.path.display().to_string(),
                created: r.created,
                secret: r.secret,
            },
        );
        match r.kind.as_str() {
            k if PATH_KINDS.contains(&k) => {
                facts.paths.insert(
                    r.path.display().to_string(),
                    path_fact(host, &r.path, r.secret),
                );
            }
            "package" => packages.push(r.path.display().to_string()),
            "service" => {
                let unit = r.path.display().to_string();
                let known = services.as_ref().and_then(|s| s.get(&unit)).cloned();
                facts.services.insert(unit, known.unwrap_or_default());
            }
            _ => {}
        }
    }
    if !packages.is_empty() {
        let status = apt::dpkg_status(host).unwrap_or_default();
        for name in packages {
            let fact = status.get(&name).map(|i| PackageFact {
                version: i.version.clone(),
                want: i.want.clone(),
                state: i.state.clone(),
            });
            facts.packages.insert(name, fact);
        }
    }
    let text = |p: &str| {
        host.read(Path::new(p))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    facts.passwd = text("/etc/passwd");
    facts.group = text("/etc/group");
    facts
}

fn path_fact(host: &Host, path: &Path, secret: bool) -> PathFact {
    let unreadable = |e: crate::error::Error| PathFact::Unreadable {
        error: e.to_string(),
    };
    let existing = match host.inspect(path) {
        Ok(e) => e,
        Err(e) => return unreadable(e),
    };
    match existing {
        Existing::Missing => PathFact::Missing,
        Existing::Directory { mode, uid, gid } => PathFact::Directory {
            mode: format!("{mode:04o}"),
            uid,
            gid,
        },
        Existing::Symlink { target } => PathFact::Symlink {
            target: target.display().to_string(),
        },
        Existing::Other => PathFact::Other,
        // A secret's content is not read; any other file is hashed as a stream (a
        // file of hundreds of MB is never held whole).
        Existing::File { mode, uid, gid } if secret => PathFact::File {
            mode: format!("{mode:04o}"),
            uid,
            gid,
            size: None,
            sha256: None,
            secret,
        },
        Existing::File { mode, uid, gid } => match digest_of(host, path) {
            Ok((size, sha256)) => PathFact::File {
                mode: format!("{mode:04o}"),
                uid,
                gid,
                size: Some(size),
                sha256: Some(sha256),
                secret,
            },
            Err(e) => unreadable(e),
        },
    }
}

/// The size and sha256 of a file on the device, read as a stream.
fn digest_of(host: &Host, path: &Path) -> crate::error::Result<(u64, String)> {
    let f = host.open(path)?;
    let io = |e| crate::error::Error::io("cannot read", path, e);
    let size = f.metadata().map_err(io)?.len();
    let sha256 = crate::digest::sha256_copy(f, None).map_err(io)?;
    Ok((size, sha256))
}
