//! A device as its last report describes it, for planning without reaching it: a
//! scratch root materialized from the report's facts, a metadata overlay for the
//! managed paths, and a command runner that answers `systemctl` and apt from the
//! report. The planner then runs unchanged over this `Host` (docs/architecture.md,
//! "Planning from a report").
//!
//! A managed file's content is the declared content when the recorded sha256 matches
//! it, else a placeholder that differs from anything declared (the device has other
//! content: a change). What the report does not describe is absent from the scratch
//! root: a newly declared path is planned as created, a newly declared package as
//! installed, a service the report does not know as changing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::host::command::{Cmd, Output, Runner};
use crate::host::{Existing, Host};
use crate::plan::ResourceState;
use crate::report::{Facts, PathFact, ServiceFact};
use crate::resources::{DesiredState, Kind};

/// A scratch root that is removed with this value.
pub(crate) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub(crate) fn new(label: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "fleet-agent-plan-{}-{}",
            std::process::id(),
            crate::host::random_id()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot make a scratch root for {label}"), &dir, e))?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The declared content of files, by path: what the working tree declares, and what
/// the commit the report says the device applied declared (None: not available).
pub(crate) struct Contents {
    pub(crate) new: HashMap<String, Vec<u8>>,
    pub(crate) old: Option<HashMap<String, Vec<u8>>>,
    /// The report's run converged: every file is as `old` declares it.
    pub(crate) converged: bool,
}

/// The device of a report, ready to plan: its `Host`, its previous resource records.
pub(crate) fn host(
    scratch: &Scratch,
    facts: &Facts,
    declared: &Contents,
) -> Result<(Host, BTreeMap<String, ResourceState>)> {
    let root = &scratch.dir;
    let write = |device_path: &str, content: &[u8]| write_file(root, device_path, content);
    if let Some(p) = &facts.passwd {
        write("/etc/passwd", p.as_bytes())?;
    }
    if let Some(g) = &facts.group {
        write("/etc/group", g.as_bytes())?;
    }
    write("/var/lib/dpkg/status", dpkg_status(facts).as_bytes())?;
    let recorded = materialize(root, facts, declared)?;
    let runner = Arc::new(ReportRunner {
        services: facts.services.clone(),
    });
    let previous = facts
        .resources
        .iter()
        .map(|(id, r)| {
            let state = ResourceState {
                kind: r.kind.clone(),
                path: r.path.clone().into(),
                digest: String::new(),
                created: r.created,
                secret: r.secret,
                stamp: None,
                pending: false,
            };
            (id.clone(), state)
        })
        .collect();
    Ok((
        Host::from_report(root, runner, facts.systemd, recorded),
        previous,
    ))
}

/// The managed paths under the scratch root, and what the report says of each.
fn materialize(
    root: &Path,
    facts: &Facts,
    declared: &Contents,
) -> Result<HashMap<PathBuf, Existing>> {
    let mut recorded = HashMap::new();
    for (path, fact) in &facts.paths {
        let real = device(root, path);
        let existing = match fact {
            PathFact::Missing | PathFact::Unreadable { .. } => Existing::Missing,
            PathFact::Other => Existing::Other,
            PathFact::Directory { mode, uid, gid } => {
                std::fs::create_dir_all(&real).map_err(|e| Error::io("cannot create", &real, e))?;
                Existing::Directory {
                    mode: octal(mode),
                    uid: *uid,
                    gid: *gid,
                }
            }
            PathFact::Symlink { target } => {
                if let Some(dir) = real.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
                }
                let _ = std::fs::remove_file(&real);
                std::os::unix::fs::symlink(target, &real)
                    .map_err(|e| Error::io("cannot create the symlink", &real, e))?;
                Existing::Symlink {
                    target: target.into(),
                }
            }
            PathFact::File {
                mode,
                uid,
                gid,
                sha256,
                ..
            } => {
                let content = file_content(path, sha256.as_deref(), declared);
                write_file(root, path, &content)?;
                Existing::File {
                    mode: octal(mode),
                    uid: *uid,
                    gid: *gid,
                }
            }
        };
        recorded.insert(PathBuf::from(path), existing);
    }
    Ok(recorded)
}

/// Writes a file of the scratch root, with its parents.
fn write_file(root: &Path, device_path: &str, content: &[u8]) -> Result<()> {
    let real = device(root, device_path);
    if let Some(dir) = real.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    std::fs::write(&real, content).map_err(|e| Error::io("cannot write", &real, e))
}

fn device(root: &Path, device_path: &str) -> PathBuf {
    root.join(device_path.trim_start_matches('/'))
}

fn octal(mode: &str) -> u32 {
    u32::from_str_radix(mode, 8).unwrap_or(0)
}

/// The content every declared file will have, by path (read whole: planning from
/// reports runs on a maintainer's machine, never on a device).
pub(crate) fn declared_contents(desired: &DesiredState) -> Result<HashMap<String, Vec<u8>>> {
    desired
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::File(f) => Some(
                f.content
                    .read_all()
                    .map(|c| (f.path.display().to_string(), c)),
            ),
            _ => None,
        })
        .collect()
}

/// The content the device has, as far as the report tells: the working tree's or the
/// applied commit's declared content when the recorded sha256 matches it (a secret
/// file, which has none: the applied commit's, when the run converged), else a
/// placeholder that nothing declares.
fn file_content(path: &str, sha256: Option<&str>, declared: &Contents) -> Vec<u8> {
    let new = declared.new.get(path);
    let old = declared.old.as_ref().and_then(|o| o.get(path));
    let matches = |c: Option<&Vec<u8>>| match (c, sha256) {
        (Some(c), Some(h)) => sha256_hex(c) == h,
        (Some(_), None) => declared.converged,
        _ => false,
    };
    if matches(new) && (sha256.is_some() || old.is_some_and(|o| Some(o) == new)) {
        return new.cloned().unwrap_or_default();
    }
    if matches(old) {
        return old.cloned().unwrap_or_default();
    }
    match sha256 {
        Some(h) => {
            format!("(the content of {path} on the device, sha256 {h}, is not in its report)\n")
                .into_bytes()
        }
        None => {
            format!("(the content of the secret file {path} on the device is not in its report)\n")
                .into_bytes()
        }
    }
}

/// dpkg's status file with the declared packages the report knows.
fn dpkg_status(facts: &Facts) -> String {
    let mut out = String::new();
    for (name, fact) in &facts.packages {
        let Some(p) = fact else { continue };
        let _ = writeln!(
            out,
            "Package: {name}\nStatus: {} ok {}\nVersion: {}\n",
            p.want, p.state, p.version
        );
    }
    out
}

/// Answers the commands the planner runs from the report: `systemctl is-enabled` and
/// `is-active` from the recorded services ("unknown" for a unit it does not know),
/// `apt-cache madison` with no candidates, and `apt-get -s` with the transaction as
/// asked (apt itself is not consulted). Anything else is an error: planning from a
/// report cannot run it.
struct ReportRunner {
    services: BTreeMap<String, ServiceFact>,
}

impl Runner for ReportRunner {
    fn run(&self, cmd: Cmd) -> Result<Output> {
        let argv: Vec<&str> = cmd
            .argv
            .iter()
            .copied()
            // `--root=` and the `--` before names (names never start with `-`).
            .filter(|a| !a.starts_with("--root=") && *a != "--")
            .collect();
        let say = |word: &str| Ok(ok(format!("{word}\n")));
        let service = |unit: &str| self.services.get(unit).cloned().unwrap_or_default();
        match argv.as_slice() {
            ["systemctl", "is-enabled", unit] => {
                say(service(unit).enabled.as_deref().unwrap_or("unknown"))
            }
            ["systemctl", "is-active", unit] => {
                say(service(unit).active.as_deref().unwrap_or("unknown"))
            }
            ["apt-cache", "madison", _] => Ok(ok(String::new())),
            ["apt-get", "-s", rest @ ..] => Ok(ok(simulated(rest))),
            _ => Err(Error::Other(format!(
                "`{}` cannot be answered from a device's report",
                cmd.line()
            ))),
        }
    }
}

fn ok(stdout: String) -> Output {
    Output {
        code: 0,
        stdout,
        stderr: String::new(),
    }
}

/// `apt-get -s install SPECS` as apt would print the transaction it was asked for.
fn simulated(args: &[&str]) -> String {
    let mut out = String::new();
    let specs = args
        .iter()
        .skip_while(|a| **a != "install")
        .skip(1)
        .filter(|a| !a.starts_with('-'));
    for spec in specs {
        if let Some(name) = spec.strip_suffix('-') {
            let _ = writeln!(out, "Remv {name}");
        } else if let Some((name, version)) = spec.split_once('=') {
            let _ = writeln!(out, "Inst {name} ({version} report)");
        } else {
            let _ = writeln!(out, "Inst {spec} (newest report)");
        }
    }
    out
}
